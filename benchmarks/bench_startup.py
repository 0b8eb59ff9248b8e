"""Start-up as a user meets it: `import declarem`, and `declarem fit` as a whole process.

Each measurement is a fresh process, timed from its start to its exit by this script (wall clock):

- ``python -c "import declarem"`` (and, for reference, ``python -c "import numpy"`` and
  ``python -c "pass"``);
- ``python -m declarem fit models/<spec> --quiet --out FILE`` with a warm derivation cache (the cache
  one cold run filled), which is what a user's second fit of a spec costs;
- the same with a cold cache (an empty directory each time), where sympy derives.

It also reports which heavy modules the warm fit imported (it should import neither sympy nor
scipy.optimize). Medians of ``--repeats`` processes; the load average is printed beside them.

    python benchmarks/bench_startup.py [--repeats 7] [--spec gmm.toml]
"""

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time

from machine import loadavg

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HEAVY = ("sympy", "scipy", "scipy.special", "scipy.optimize", "scipy.sparse", "networkx", "matplotlib")
REPORT_IMPORTS = ("import sys, runpy\n"
                  "sys.argv = ['declarem'] + sys.argv[1:]\n"
                  "try:\n    runpy.run_module('declarem', run_name='__main__')\n"
                  "except SystemExit:\n    pass\n"
                  f"print(' '.join(m for m in {HEAVY!r} if m in sys.modules))\n")


def wall_seconds(command, env):
    started = time.perf_counter()
    subprocess.run(command, cwd=ROOT, env=env, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - started


def median_seconds(command, env, repeats):
    return statistics.median(wall_seconds(command, env) for _ in range(repeats))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--spec", default="gmm.toml", help="catalog spec to fit (default: gmm.toml)")
    args = parser.parse_args()
    print(f"load average before: {loadavg()}")
    python = [sys.executable]
    with tempfile.TemporaryDirectory() as scratch:
        out = os.path.join(scratch, "fit.json")
        warm = os.path.join(scratch, "warm-cache")
        env = dict(os.environ, DECLAREM_CACHE_DIR=warm)
        fit = python + ["-m", "declarem", "fit", os.path.join("models", args.spec), "--quiet", "--out", out]
        subprocess.run(fit, cwd=ROOT, env=env, check=True)  # fills the warm cache
        rows = [("python -c pass", median_seconds(python + ["-c", "pass"], env, args.repeats)),
                ("python -c 'import numpy'", median_seconds(python + ["-c", "import numpy"], env, args.repeats)),
                ("python -c 'import declarem'", median_seconds(python + ["-c", "import declarem"], env,
                                                               args.repeats)),
                (f"declarem fit {args.spec}, warm cache", median_seconds(fit, env, args.repeats))]
        cold_times = []
        for repeat in range(max(1, args.repeats // 2)):
            cold_env = dict(os.environ, DECLAREM_CACHE_DIR=os.path.join(scratch, f"cold-{repeat}"))
            cold_times.append(wall_seconds(fit, cold_env))
        rows.append((f"declarem fit {args.spec}, cold cache", statistics.median(cold_times)))
        imported = subprocess.run(python + ["-c", REPORT_IMPORTS] + fit[3:], cwd=ROOT, env=env, check=True,
                                  capture_output=True, text=True).stdout.strip().splitlines()[-1]
    for label, seconds in rows:
        print(f"{label:<40} {seconds:7.3f} s")
    print(f"heavy modules the warm fit imported: {imported or 'none'}")
    print(f"load average after: {loadavg()}")


if __name__ == "__main__":
    main()
