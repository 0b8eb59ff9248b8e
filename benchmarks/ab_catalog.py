"""Whole catalog fits of two declarem trees, taking turns: how a change moves a fit on a noisy machine.

Usage: python benchmarks/ab_catalog.py OLD_TREE [NEW_TREE] --models NAME ... [--rounds 4] [--fits 5]

A tree is a checkout of the repository (``git worktree add /tmp/old COMMIT``); NEW_TREE defaults to
this one. Each round runs, for each tree in turn, a fresh process with that tree first on
``PYTHONPATH``: it loads the spec, compiles it, fits once to warm up, then times ``--fits`` whole
fits (``model.fit(data_path, seed=0)`` from call to result) and reports their least and median.
Taking turns spreads the machine's slow and quiet minutes over both trees; the least of each
round is the figure least disturbed by other work. It also prints each tree's iterations and
log-likelihood (to the last digit), so a change that should not move the fit can be seen not to.
"""

import argparse
import os
import statistics
import subprocess
import sys

from machine import loadavg

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

FIT = """
import os, sys, time, warnings
import declarem
warnings.simplefilter("ignore")
model = declarem.load_model(sys.argv[1])
data = os.path.join(os.path.dirname(sys.argv[1]), model.data_info["path"])
model.compiled
model.fit(data, seed=0)
times = []
for _ in range(int(sys.argv[2])):
    began = time.perf_counter()
    fit = model.fit(data, seed=0)
    times.append(time.perf_counter() - began)
print(min(times), sorted(times)[len(times) // 2], fit.n_iter, repr(fit.loglik))
"""


def timed(tree, spec, fits):
    """(least, median, iterations, log-likelihood text) of ``fits`` fits in a fresh process on ``tree``."""
    environment = dict(os.environ, PYTHONPATH=os.path.abspath(tree))
    done = subprocess.run([sys.executable, "-c", FIT, spec, str(fits)], env=environment, capture_output=True,
                          text=True, cwd=os.path.dirname(spec), check=True)
    least, median, n_iter, loglik = done.stdout.split()
    return float(least), float(median), int(n_iter), loglik


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("old")
    parser.add_argument("new", nargs="?", default=HERE)
    parser.add_argument("--models", nargs="+", required=True, help="spec names without .toml")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--fits", type=int, default=5)
    args = parser.parse_args(argv)
    for name in args.models:
        spec = os.path.join(HERE, "models", f"{name}.toml")
        print(f"{name}: load average before {loadavg()}")
        runs = {"old": [], "new": []}
        for _ in range(args.rounds):
            for label in ("old", "new"):
                runs[label].append(timed(getattr(args, label), spec, args.fits))
        for label in ("old", "new"):
            least = [run[0] for run in runs[label]]
            median = [run[1] for run in runs[label]]
            print(f"  {label}: least {' '.join(f'{t:.3f}' for t in least)} (best {min(least):.3f} s) | median "
                  f"{' '.join(f'{t:.3f}' for t in median)} (median {statistics.median(median):.3f} s) | "
                  f"{runs[label][0][2]} iterations, log-likelihood {runs[label][0][3]}")
    print(f"load average after: {loadavg()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
