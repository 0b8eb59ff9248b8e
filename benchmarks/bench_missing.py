"""Time EM iterations of a Gaussian mixture with missing values against the same fit without them.

    python benchmarks/bench_missing.py [--n N] [--missing F] [--repeats R] [--iters I] [--numpy-threads T] [--busy]

Default case (issue #10): N = 200,000 rows, D = 16, K = 16, full covariance, 10% of the cells missing
completely at random (so about 81% of the rows miss something, in about 2,500 distinct patterns). Both fits
are declarem's, from the same initialisation, with tol = 0; the complete data are the same rows before the
cells were removed. Each repeat runs the two fits in alternating order and times every EM iteration (one
E-step and one M-step) through the fit's progress hook; iteration 1 is dropped (it includes the setup),
so a fit of I iterations gives I - 1 samples. Reported: the median per-iteration time of each, their ratio
(the target is at most 3x), and the whole fit's wall time (setup included: statistics, the missing-value
patterns and plans, built once per data set).

Thread pools run one thread each by default (see bench_gmm.configure_threads). --busy starts one
single-threaded CPU-bound process beside the timing (a spinner), as users' machines often have.
"""

from __future__ import annotations

import argparse
import multiprocessing
import statistics
import time

import networkx as nx
import numpy as np

from bench_gmm import configure_threads
from machine import cpu_model, loadavg, ncpu


def make_problem(n, d, k, missing, seed=20261201):
    """Seeded data from a K-component mixture, the same rows with cells removed, and an initialisation."""
    rng = np.random.default_rng(seed)
    means = rng.normal(scale=3.0, size=(k, d))
    labels = rng.integers(0, k, n)
    x = means[labels] + rng.normal(size=(n, d))
    holes = rng.random((n, d)) < missing
    x_missing = np.where(holes, np.nan, x)
    init = {"z": {"probs": np.full(k, 1.0 / k)},
            "x": {"mean": means + rng.normal(scale=0.5, size=(k, d)), "cov": np.stack([1.5 * np.eye(d)] * k)}}
    return x, x_missing, init


def gmm(k, d):
    import declarem
    g = nx.DiGraph()
    g.add_node("z", family="categorical", latent=True, k=k)
    g.add_node("x", family="normal", dim=d, covariance="full")
    g.add_edge("z", "x")
    return declarem.Model(g)


def timed_fit(model, data, init, iters):
    """Wall time of a whole fit and the times of its iterations after the first."""
    stamps = []
    started = time.perf_counter()
    model.fit({"x": data}, init=init, max_iter=iters, tol=0.0,
              progress=lambda *args: stamps.append(time.perf_counter()))
    total = time.perf_counter() - started
    return total, list(np.diff(stamps))


def spin():
    while True:
        pass


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=200_000)
    parser.add_argument("--d", type=int, default=16)
    parser.add_argument("--k", type=int, default=16)
    parser.add_argument("--missing", type=float, default=0.10)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--iters", type=int, default=6)
    parser.add_argument("--numpy-threads", type=int, default=1)
    parser.add_argument("--busy", action="store_true")
    args = parser.parse_args(argv)
    threads = configure_threads(args.numpy_threads, 1)
    x, x_missing, init = make_problem(args.n, args.d, args.k, args.missing)
    incomplete = np.isnan(x_missing).any(axis=1)
    print(f"N={args.n} D={args.d} K={args.k} full; {args.missing:.0%} of cells missing at random: "
          f"{incomplete.mean():.1%} of rows incomplete, "
          f"{len(np.unique(np.isnan(x_missing[incomplete]), axis=0))} distinct patterns")
    print(f"machine: {cpu_model()}, {ncpu()} CPUs; {threads}")
    model = gmm(args.k, args.d)
    model.fit({"x": x_missing[:2000]}, init=init, max_iter=2)          # compile and warm up
    spinner = None
    if args.busy:
        spinner = multiprocessing.Process(target=spin, daemon=True)
        spinner.start()
    print(f"load average at start: {loadavg()}" + ("  (one spinner running)" if args.busy else ""))
    per_iter = {"complete": [], "missing": []}
    whole = {"complete": [], "missing": []}
    try:
        for repeat in range(args.repeats):
            order = ("complete", "missing") if repeat % 2 == 0 else ("missing", "complete")
            for name in order:
                total, samples = timed_fit(model, x if name == "complete" else x_missing, init, args.iters)
                whole[name].append(total)
                per_iter[name].extend(samples)
                print(f"  repeat {repeat} {name:8s}: fit {total:6.2f} s; iterations "
                      + " ".join(f"{s:.3f}" for s in samples))
    finally:
        if spinner is not None:
            spinner.terminate()
    print(f"load average at end: {loadavg()}")
    median = {name: statistics.median(values) for name, values in per_iter.items()}
    fits = {name: statistics.median(values) for name, values in whole.items()}
    print(f"per iteration (median): complete {median['complete']:.3f} s, missing {median['missing']:.3f} s, "
          f"ratio {median['missing'] / median['complete']:.2f}x")
    print(f"whole fit of {args.iters} iterations (median): complete {fits['complete']:.2f} s, "
          f"missing {fits['missing']:.2f} s, ratio {fits['missing'] / fits['complete']:.2f}x")


if __name__ == "__main__":
    main()
