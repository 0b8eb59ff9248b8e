"""Cold and warm compile times of every catalog model, each in a fresh process.

Cold: an empty derivation cache, so sympy derives every family. Warm: the cache the
cold run wrote, as a second process fitting the same spec finds it. The time is
``load_model(spec).compiled`` after ``import declarem`` (imports excluded); the
median of ``--repeats`` processes is printed.

    python benchmarks/bench_compile.py [--repeats 3]
"""

import argparse
import glob
import os
import statistics
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TIMED = ("import time, declarem\n"
         "started = time.perf_counter()\n"
         "declarem.load_model({spec!r}).compiled\n"
         "print(time.perf_counter() - started)\n")


def compile_seconds(spec, cache):
    env = dict(os.environ, DECLAREM_CACHE_DIR=cache)
    result = subprocess.run([sys.executable, "-c", TIMED.format(spec=spec)], cwd=ROOT, env=env,
                            capture_output=True, text=True, check=True)
    return float(result.stdout.strip())


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    specs = sorted(glob.glob(os.path.join(ROOT, "models", "*.toml")))
    print(f"{'model':<24} {'cold (s)':>9} {'warm (s)':>9}")
    for spec in specs:
        cold, warm = [], []
        for _ in range(args.repeats):
            with tempfile.TemporaryDirectory() as cache:
                cold.append(compile_seconds(spec, cache))
                warm.append(compile_seconds(spec, cache))
        name = os.path.splitext(os.path.basename(spec))[0]
        print(f"{name:<24} {statistics.median(cold):9.3f} {statistics.median(warm):9.3f}")


if __name__ == "__main__":
    main()
