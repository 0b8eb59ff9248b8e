"""Whole catalog fits of two declarem trees, taking turns: how a change moves a fit on a noisy machine.

Usage: python benchmarks/ab_catalog.py OLD_TREE [NEW_TREE] --models NAME ... [--rounds 4] [--fits 5] [--paired]

A tree is a checkout of the repository (``git worktree add /tmp/old COMMIT``); NEW_TREE defaults to
this one. Each round runs, for each tree in turn, a fresh process with that tree first on
``PYTHONPATH``: it loads the spec, compiles it, fits once to warm up, then times ``--fits`` whole
fits (``model.fit(data_path, seed=0)`` from call to result) and reports their least and median.
Taking turns spreads the machine's slow and quiet minutes over both trees; the least of each
round is the figure least disturbed by other work. It also prints each tree's iterations and
log-likelihood (to the last digit), so a change that should not move the fit can be seen not to.

With ``--paired`` both trees' packages are loaded into one process, each under a name of its
own, and their fits alternate one by one, ``--fits`` pairs per model, the order swapped from
pair to pair. A pair's two fits run seconds apart, so on a host whose speed moves from minute to
minute their ratio is steadier than either time; the median ratio new / old is printed too.
"""

import argparse
import os
import statistics
import subprocess
import sys
import time

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


def load_tree(tree, name):
    """The declarem package of ``tree`` imported as module ``name`` (its modules import each other relatively)."""
    import importlib.util
    package = os.path.join(os.path.abspath(tree), "declarem")
    spec = importlib.util.spec_from_file_location(name, os.path.join(package, "__init__.py"),
                                                  submodule_search_locations=[package])
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def paired(old_tree, new_tree, spec, pairs):
    """Per tree, each fit's seconds, the iterations and the log-likelihood; the trees' fits alternate in
    this process, the order swapped from pair to pair."""
    import warnings
    warnings.simplefilter("ignore")
    models = {}
    for label, tree in (("old", old_tree), ("new", new_tree)):
        package = load_tree(tree, f"declarem_{label}")
        model = package.load_model(spec)
        data = os.path.join(os.path.dirname(spec), model.data_info["path"])
        model.compiled
        model.fit(data, seed=0)
        models[label] = (model, data)
    seconds, fits = {"old": [], "new": []}, {}
    for pair in range(pairs):
        for label in ("old", "new") if pair % 2 == 0 else ("new", "old"):
            model, data = models[label]
            began = time.perf_counter()
            fits[label] = model.fit(data, seed=0)
            seconds[label].append(time.perf_counter() - began)
    return {label: (seconds[label], fits[label].n_iter, repr(fits[label].loglik)) for label in seconds}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("old")
    parser.add_argument("new", nargs="?", default=HERE)
    parser.add_argument("--models", nargs="+", required=True, help="spec names without .toml")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--fits", type=int, default=5)
    parser.add_argument("--paired", action="store_true",
                        help="both trees in this process, their fits alternating (--fits pairs; --rounds unused)")
    args = parser.parse_args(argv)
    for name in args.models:
        spec = os.path.join(HERE, "models", f"{name}.toml")
        print(f"{name}: load average before {loadavg()}")
        if args.paired:
            runs = paired(args.old, args.new, spec, args.fits)
            for label, (times, n_iter, loglik) in runs.items():
                print(f"  {label}: least {min(times):.3f} s, median {statistics.median(times):.3f} s | {n_iter} "
                      f"iterations, log-likelihood {loglik}")
            ratios = [new / old for new, old in zip(runs["new"][0], runs["old"][0])]
            print(f"  new / old: median of {len(ratios)} pairs {statistics.median(ratios):.3f}, least to least "
                  f"{min(runs['new'][0]) / min(runs['old'][0]):.3f}")
            continue
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
