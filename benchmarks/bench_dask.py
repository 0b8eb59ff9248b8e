"""A Gaussian mixture fitted out of core from Parquet part files with dask, against the in-memory fit.

    python benchmarks/bench_dask.py [--rows N] [--subset M] [--parts P] [--dir DIR] [--iters I]
                                    [--workers W] [--memory-limit BYTES] [--online-rows O] [--skip-online]

Default case (issue #12): N = 50 million rows, D = 8, K = 8, full covariance, written once (seeded) as P = 50
Parquet files of a million rows each in DIR (about 3.2 GB; kept for later runs). Timed:

- **out of core**: ``model.fit(dd.read_parquet(DIR), init=..., max_iter=I, tol=0)`` on a
  ``distributed.LocalCluster`` of W = 2 single-threaded worker processes with a memory limit of 2 GiB each.
  The workers get ``declarem.distributed.WORKER_ENVIRON`` (glibc keeps large freed arrays for reuse;
  --default-malloc leaves distributed's settings). The data are larger than the workers' memory budget, so
  the fit streams: every E-step reads each part
  again and forms T(X) chunk by chunk. Reported: the median time per iteration (iteration 1 dropped: it
  includes the setup), the whole fit, and each worker's peak resident memory (Linux's VmHWM: getrusage's
  maxrss would report this process's peak, inherited across the workers' exec).
- **in memory**: the same fit of the first M = 5 million rows as numpy arrays in this process, before and
  again after the out-of-core fit (their iterations pooled: the host's speed drifts), BLAS at one
  thread (two threads stall here: see RESULTS.md). Reported: its median time per iteration, and the
  out-of-core fit's time per row over this one's, in wall time and per core (the out-of-core fit's wall
  time times its W single-threaded workers; target under 1.5x), and in CPU seconds (the workers'
  against this process's), which other jobs on the machine do not inflate.
- **online EM** (unless --skip-online): on the first O = 1 million rows in memory, from the same start, the
  time batch EM and online EM (``method="online"``, batches of 50,000 rows, step 0.6) each take to reach the
  batch optimum's log-likelihood within 1e-4 relative (the optimum: batch EM run to tol 1e-10).

Both fits start from the same complete init (the generating means, perturbed), so no seeding is timed.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import numpy as np

from machine import cpu_model, loadavg, ncpu

D, K = 8, 8


def problem(seed=20261201):
    rng = np.random.default_rng(seed)
    means = rng.normal(scale=3.0, size=(K, D))
    init = {"z": {"probs": np.full(K, 1.0 / K)},
            "x": {"mean": means + rng.normal(scale=0.5, size=(K, D)), "cov": np.stack([1.5 * np.eye(D)] * K)}}
    return means, init


def write_parts(directory, rows, parts, means):
    """Seeded rows from the mixture, one Parquet file per part (skipped when the files are there)."""
    import pandas as pd
    os.makedirs(directory, exist_ok=True)
    per_part = rows // parts
    for part in range(parts):
        path = os.path.join(directory, f"part-{part:04d}.parquet")
        if os.path.exists(path):
            continue
        rng = np.random.default_rng([20261201, part])
        x = means[rng.integers(0, K, per_part)] + rng.normal(size=(per_part, D))
        pd.DataFrame(x, columns=[f"x_{j}" for j in range(D)]).to_parquet(path + ".tmp", index=False)
        os.replace(path + ".tmp", path)
    return per_part


def gmm():
    import networkx as nx
    import declarem
    g = nx.DiGraph()
    g.add_node("z", family="categorical", latent=True, k=K)
    g.add_node("x", family="normal", dim=D, covariance="full")
    g.add_edge("z", "x")
    return declarem.Model(g)


def timed(fit, *args, cpu=time.process_time, **kwargs):
    """Wall time of a fit, the wall and CPU times of its iterations after the first, and the fit.

    ``cpu`` reads the CPU seconds used so far by whatever runs the E-steps (this process, or the
    workers); CPU time does not grow when other jobs on the machine take the cores, so its ratio
    holds on a busy machine where wall time does not.
    """
    stamps, cpu_stamps = [], []

    def progress(*_):
        stamps.append(time.perf_counter())
        cpu_stamps.append(cpu())

    started = time.perf_counter()
    result = fit(*args, progress=progress, **kwargs)
    total = time.perf_counter() - started
    return total, list(np.diff(stamps)), list(np.diff(cpu_stamps)), result


def workers_cpu(client):
    """The CPU seconds the cluster's worker processes have used, summed."""
    return sum(client.run(time.process_time).values())


def worker_peaks(client):
    from declarem.distributed import peak_memory
    return client.run(peak_memory)


def reach_time(history_times, history, target):
    """The first time at which the objective came within 1e-4 relative of ``target``; None if never."""
    for when, value in zip(history_times, history):
        if abs(value - target) <= 1e-4 * abs(target):
            return when
    return None


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=50_000_000)
    parser.add_argument("--subset", type=int, default=5_000_000)
    parser.add_argument("--parts", type=int, default=50)
    parser.add_argument("--dir", default="/tmp/declarem-bench-parts")
    parser.add_argument("--iters", type=int, default=4)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--memory-limit", default="2GiB")
    parser.add_argument("--online-rows", type=int, default=1_000_000)
    parser.add_argument("--skip-online", action="store_true")
    parser.add_argument("--default-malloc", action="store_true",
                        help="leave the workers' glibc malloc settings as distributed sets them")
    args = parser.parse_args()

    import dask
    import dask.dataframe as dd
    import pandas as pd
    import threadpoolctl
    from distributed import Client, LocalCluster

    means, init = problem()
    directory = os.path.join(args.dir, f"n{args.rows}-p{args.parts}")
    started = time.perf_counter()
    per_part = write_parts(directory, args.rows, args.parts, means)
    print(f"data: {args.rows:,} rows in {args.parts} Parquet files under {directory} "
          f"(written or found in {time.perf_counter() - started:.1f} s)")
    print(f"machine: {cpu_model()}, {ncpu()} CPUs; load before: {loadavg()}")
    model = gmm()
    model.compiled   # derivation outside the timings

    # In memory: the first parts, as arrays.
    subset_parts = max(1, args.subset // per_part)
    frame = pd.concat([pd.read_parquet(os.path.join(directory, f"part-{p:04d}.parquet"))
                       for p in range(subset_parts)], ignore_index=True)
    subset = {"x": frame.to_numpy()}
    n_subset = len(frame)
    del frame
    in_memory_steps, in_memory_cpu_steps = [], []

    def fit_in_memory(when):
        """The in-memory fit, timed before and again after the out-of-core one: the host's speed drifts."""
        with threadpoolctl.threadpool_limits(1):
            total, steps, cpu_steps, _ = timed(model.fit, subset, init=init, max_iter=args.iters, tol=0.0)
        in_memory_steps.extend(steps)
        in_memory_cpu_steps.extend(cpu_steps)
        print(f"in memory ({when}), {n_subset:,} rows: {statistics.median(steps):.2f} s per iteration (median of "
              f"{len(steps)}), whole fit {total:.1f} s")

    fit_in_memory("before")

    # Out of core: a local cluster of single-threaded workers.
    os.environ.update(OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1")
    from declarem.distributed import WORKER_ENVIRON
    environ = {f"distributed.nanny.pre-spawn-environ.{key}": value for key, value in WORKER_ENVIRON.items()}
    if args.default_malloc:
        environ = {}
    with dask.config.set(environ), LocalCluster(n_workers=args.workers, threads_per_worker=1, memory_limit=args.memory_limit,
                      dashboard_address=None, silence_logs=40) as cluster, Client(cluster) as client:
        parts = dd.read_parquet(directory)
        total, steps, cpu_steps, fit = timed(model.fit, parts, init=init, max_iter=args.iters, tol=0.0,
                                             cpu=lambda: workers_cpu(client))
        out_of_core = statistics.median(steps)
        out_of_core_cpu = statistics.median(cpu_steps)
        peaks = worker_peaks(client)
    print(f"out of core, {args.rows:,} rows, {args.workers} workers x 1 thread, memory limit {args.memory_limit}: "
          f"{out_of_core:.1f} s per iteration (median of {len(steps)}), whole fit {total:.1f} s")
    print("  peak resident memory per worker: " + ", ".join(f"{v / 2 ** 30:.2f} GiB" for v in peaks.values()))
    fit_in_memory("after")
    in_memory = statistics.median(in_memory_steps)
    in_memory_cpu = statistics.median(in_memory_cpu_steps)
    print(f"in memory, both runs: {in_memory:.2f} s per iteration (median of {len(in_memory_steps)})")
    ratio = (out_of_core / args.rows) / (in_memory / n_subset)
    print(f"  time per row, out of core / in memory: {ratio:.2f}x wall, {ratio * args.workers:.2f}x per core "
          "(target under 1.5x)")
    cpu_ratio = (out_of_core_cpu / args.rows) / (in_memory_cpu / n_subset)
    print(f"  CPU time per row (workers' against this process's, per iteration: {out_of_core_cpu:.1f} s and "
          f"{in_memory_cpu:.2f} s): {cpu_ratio:.2f}x")

    if not args.skip_online:
        subset = {"x": subset["x"][:args.online_rows]}
        n_subset = len(subset["x"])
        with threadpoolctl.threadpool_limits(1):
            best = model.fit(subset, init=init, max_iter=500, tol=1e-10)
            target = best.loglik
            for method, options in [("batch", {}), ("online", {"method": "online", "batch_size": 50_000})]:
                stamps = []
                begun = time.perf_counter()
                fit = model.fit(subset, init=init, max_iter=60, tol=0.0,
                                progress=lambda *a: stamps.append(time.perf_counter() - begun), **options)
                when = reach_time(stamps, fit.history[1:], target)
                shown = "not within 60 iterations" if when is None else f"{when:.1f} s"
                print(f"{method} EM on {n_subset:,} rows reaches the optimum's loglik within 1e-4 relative: {shown}")
    print(f"load after: {loadavg()}")


if __name__ == "__main__":
    main()
