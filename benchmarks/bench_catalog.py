"""The whole fit of every bundled catalog model, from ``fit()`` call to result, after import with a warm cache.

    python benchmarks/bench_catalog.py [--repeats 3] [--models NAME ...] [--reference-each]

Each spec in models/ with a [data] path (or those named, e.g. ``negbin_mixture``) is loaded and compiled (the
derivation cache warm), fitted once to warm up, then fitted ``--repeats`` times as ``declarem fit SPEC --seed 0``
fits it (the spec's [fit] options); the table gives the median and least wall time, the median CPU time of the
process (above the wall time when BLAS's threads work or spin beside the fit), and the iterations, slowest
first. Issue #13 asks for each under 0.5 s. The reference workload (``machine.reference_ms``), timed before and
after, shows how fast the host ran meanwhile: on a shared host the same fit's time moves with it.
"""

import argparse
import os
import statistics
import sys
import time
import warnings

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from machine import cpu_model, loadavg, ncpu, reference_ms  # noqa: E402

import declarem  # noqa: E402

MODELS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "models")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--models", nargs="*", help="spec names without .toml (default: every one with data)")
    parser.add_argument("--reference-each", action="store_true",
                        help="time one round of the reference workload before each timed fit, and give its least and "
                             "median beside the model's: the host's speed while that model ran")
    args = parser.parse_args(argv)
    print(f"machine: {ncpu()} CPUs ({cpu_model()}); load average before: {loadavg()}; "
          f"reference workload {reference_ms():.0f} ms")
    rows = []
    for name in sorted(os.listdir(MODELS)):
        if not name.endswith(".toml") or (args.models and name[:-len(".toml")] not in args.models):
            continue
        model = declarem.load_model(os.path.join(MODELS, name))
        if not model.data_info.get("path"):
            continue
        data = os.path.join(MODELS, model.data_info["path"])
        model.compiled
        times, cpu, reference = [], [], []
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for repeat in range(args.repeats + 1):
                if args.reference_each and repeat:
                    reference.append(reference_ms(1))
                began, began_cpu = time.perf_counter(), time.process_time()
                fit = model.fit(data, seed=0)
                if repeat:
                    times.append(time.perf_counter() - began)
                    cpu.append(time.process_time() - began_cpu)
        rows.append((statistics.median(times), min(times), statistics.median(cpu), name, fit.n_iter, fit.converged,
                     f" {min(reference):.0f} / {statistics.median(reference):.0f} ms |" if reference else ""))
    extra = (" reference least / median |", "---|") if args.reference_each else ("", "")
    print(f"| model | whole fit (median) | least | CPU (median) | iterations | converged |{extra[0]}")
    print(f"|---|---|---|---|---|---|{extra[1]}")
    for seconds, least, cpu_seconds, name, n_iter, converged, reference_cell in sorted(rows, reverse=True):
        print(f"| {name} | {seconds:.3f} s | {least:.3f} s | {cpu_seconds:.3f} s | {n_iter} | "
              f"{'yes' if converged else 'no'} |{reference_cell}")
    print(f"load average after: {loadavg()}; reference workload {reference_ms():.0f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
