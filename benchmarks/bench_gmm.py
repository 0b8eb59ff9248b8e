"""Time EM iterations of a Gaussian mixture: declarem against scikit-learn's GaussianMixture, side by side.

    python benchmarks/bench_gmm.py [--cov full|diag] [--small] [--repeats R] [--iters I] [--numpy-threads T]
                                   [--dtype float64|float32]

Default case: N = 200,000 rows, D = 16, K = 16, full covariance.  --small: N = 1,000,000, D = 2, K = 3.
Both libraries get the same seeded data and the same initialisation (weights, means, covariances; scikit-learn
as weights_init / means_init / precisions_init) and run with tol = 0 and reg_covar = 1e-6, in one process, in
alternating order (repeat r runs scikit-learn first when r is even, declarem first when r is odd).  After the
timing the script prints the largest difference between the two libraries' fitted parameters.

Each repeat times one fit per library with max_iter = I (default 3) and reports two numbers, medians:
  * per-iter (fit/I):   the fit's wall time divided by I.  Includes each library's fixed per-fit work: input
                        checks and initialisation (scikit-learn: random responsibilities and one M-step from
                        them, then overwritten by the *_init arguments; declarem: k-means and one M-step, then
                        overwritten by init), declarem's sufficient statistics T(X), scikit-learn's final
                        E-step.
  * per-iter (in-fit):  the wall time of single EM iterations (one E-step and one M-step) inside the fits,
                        from each library's own per-iteration hook: scikit-learn's verbose=2 "time lapse"
                        lines, declarem's fit(progress=...) callback.  Iteration 1 is dropped (its interval
                        includes the initialisation), so each fit gives I - 1 samples; the median is over all
                        samples of all repeats.  This is the per-iteration cost the ratio and the fraction of
                        peak are reported for.

Model compilation (declarem's sympy derivation and lambdify) is excluded from both: the model is built once and
warmed up by one fit on the first 2,000 rows before any timing; that warm-up is timed separately and printed
as "compile + warm-up".  scikit-learn gets the same warm-up.

Thread pools: by default every BLAS / OpenMP pool runs one thread (--numpy-threads 1, --other-threads 1), for
both libraries.  On a 2-core machine shared with other jobs, a 2-thread OpenBLAS stalls whenever one of its
threads is descheduled (the same max_iter=7 fit measured 4.7 s and 13.7 s in consecutive repeats), while one
thread per process gives repeatable numbers; --numpy-threads 0 (leave as is: one per core) or 2 measures the
all-cores configuration, on a quiet machine.  See configure_threads for why the non-numpy pools are always
limited.  The load average is printed at the start and end of the timing and every repeat's raw times are
printed.

The run also measures numpy's GEMM rate (best of 3 products of two 4096 x 4096 float64 matrices, 2 n^3 flops
each), at the timing's thread count and on all cores, and reports the fraction of the former that each
library's in-fit iteration reaches, counting the nominal flops of one EM iteration: 4 N K D^2 for full
covariance (two N x D x D products per component, one in the E-step and one in the M-step) and 8 N K D for
diagonal covariance.  declarem's exponential-family form does fewer: two N x |T| x K products with
|T| = D + D(D+1)/2 (full) or 2D (diag) statistics, 4 N K |T| flops; its rate in that count is printed too.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import importlib
import io
import platform
import re
import statistics
import sys
import time
import warnings

import numpy as np

from machine import cpu_model as _cpu_model, loadavg as _loadavg, ncpu as _ncpu


def make_problem(n, d, k, cov_type, seed=20261122):
    """Seeded data from a K-component mixture, and an initialisation away from the truth."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(scale=2.5, size=(k, d))
    weights = rng.dirichlet(np.full(k, 5.0))
    z = rng.choice(k, size=n, p=weights)
    x = np.empty((n, d))
    for j in range(k):
        idx = np.flatnonzero(z == j)
        a = rng.normal(scale=0.4, size=(d, d))
        chol = np.linalg.cholesky(a @ a.T + 0.5 * np.eye(d))
        x[idx] = centres[j] + rng.standard_normal((idx.size, d)) @ chol.T

    w0 = np.full(k, 1.0 / k)
    m0 = x[rng.choice(n, size=k, replace=False)].copy()  # k distinct data rows
    v = x.var(axis=0)
    if cov_type == "full":
        c0 = np.broadcast_to(np.diag(v), (k, d, d)).copy()
        prec0 = np.broadcast_to(np.diag(1.0 / v), (k, d, d)).copy()
    elif cov_type == "diag":
        c0 = np.broadcast_to(v, (k, d)).copy()
        prec0 = 1.0 / c0
    else:
        raise ValueError(cov_type)
    return x, w0, m0, c0, prec0


def gemm_gflops(n=4096, reps=3, seed=0):
    rng = np.random.default_rng(seed)
    a = rng.standard_normal((n, n))
    b = rng.standard_normal((n, n))
    a @ b  # warm-up
    best = np.inf
    for _ in range(reps):
        t0 = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t0)
    return 2.0 * n**3 / best / 1e9, best


def timed(fn):
    gc.collect()
    gc.disable()
    try:
        t0 = time.perf_counter()
        out = fn()
        return time.perf_counter() - t0, out
    finally:
        gc.enable()


def configure_threads(numpy_threads, other_threads):
    """Set the thread count of numpy's BLAS and of every other BLAS / OpenMP pool loaded in the process.

    With the wheels installed here, numpy and scipy each bundle their own OpenBLAS, each defaulting to one
    thread per core. On this 2-core machine, code that alternates between them (scikit-learn's GMM calls numpy
    matmul on (N, D) blocks and scipy.linalg on D x D matrices, K times per iteration) makes the two pools'
    spinning worker threads fight over the cores: one max_iter=1 fit took anywhere from 1.1 s to 62 s. Limiting
    every pool but numpy's to one thread (the default, --other-threads 1) removes that and costs nothing, since
    the other pools only ever see D x D matrices; both libraries run under the same settings.
    """
    try:
        from threadpoolctl import ThreadpoolController
    except ImportError:  # pragma: no cover
        return "threadpoolctl not installed: thread pools left as they are"
    import os

    numpy_dir = os.path.dirname(os.path.dirname(np.__file__))
    ctl = ThreadpoolController()
    for lib in ctl.lib_controllers:
        is_numpy = os.path.basename(os.path.dirname(lib.filepath)) == "numpy.libs" or lib.filepath.startswith(
            os.path.join(numpy_dir, "numpy") + os.sep)
        want = numpy_threads if is_numpy else other_threads
        if want is not None and want > 0:
            lib.set_num_threads(want)
    return "; ".join(
        f"{os.path.basename(os.path.dirname(lib.filepath))}/{lib.internal_api} {lib.version} "
        f"threads={lib.num_threads}" for lib in ThreadpoolController().lib_controllers)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cov", choices=["full", "diag"], default="full")
    ap.add_argument("--small", action="store_true", help="N=1,000,000, D=2, K=3")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--iters", type=int, default=3, help="max_iter of every timed fit (>= 2)")
    ap.add_argument("--n", type=int, default=None)
    ap.add_argument("--d", type=int, default=None)
    ap.add_argument("--k", type=int, default=None)
    ap.add_argument("--no-gemm", action="store_true", help="skip the GEMM peak measurement")
    ap.add_argument("--dtype", choices=["float64", "float32"], default="float64",
                    help="declarem's dtype of the stored statistics (fit(dtype=...))")
    ap.add_argument("--numpy-threads", type=int, default=1,
                    help="threads of numpy's BLAS (default 1; 0: leave as is, i.e. one per core)")
    ap.add_argument("--other-threads", type=int, default=1,
                    help="threads of every other BLAS / OpenMP pool, e.g. scipy's OpenBLAS (default 1; 0: leave)")
    args = ap.parse_args(argv)
    if args.iters < 2:
        ap.error("--iters must be at least 2")

    n, d, k = (1_000_000, 2, 3) if args.small else (200_000, 16, 16)
    n = args.n or n
    d = args.d or d
    k = args.k or k
    cov = args.cov
    reg = 1e-6
    iters = args.iters

    import sklearn
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.mixture import GaussianMixture

    print(f"python {platform.python_version()}, numpy {np.__version__}, scikit-learn {sklearn.__version__}")
    print(f"machine: {platform.machine()} {_cpu_model()}, cpus={_ncpu()}; declarem checkout: {_git_head()}")
    print(f"case: N={n:,} D={d} K={k} covariance={cov} reg_covar={reg} tol=0; declarem dtype={args.dtype}; "
          f"repeats={args.repeats}, fits with max_iter={iters}")
    print(f"load average at start: {_loadavg()}")

    x, w0, m0, c0, prec0 = make_problem(n, d, k, cov)
    ckey = "cov" if cov == "full" else "var"

    lapse = re.compile(r"Iteration (\d+)\s+time lapse ([0-9.eE+-]+)s")

    def sk_fit(data, max_iter):
        gm = GaussianMixture(
            n_components=k, covariance_type=cov, weights_init=w0, means_init=m0, precisions_init=prec0,
            max_iter=max_iter, tol=0.0, reg_covar=reg, n_init=1, init_params="random", random_state=0,
            verbose=2, verbose_interval=1,
        )
        out = io.StringIO()
        with warnings.catch_warnings(), contextlib.redirect_stdout(out):
            warnings.simplefilter("ignore", ConvergenceWarning)
            gm.fit(data)
        its = [float(t) for i, t in lapse.findall(out.getvalue()) if int(i) >= 2]  # iterations 2..max_iter
        return gm, its

    # declarem: may not be importable (yet); the scikit-learn half still runs.
    try:
        import networkx as nx

        import declarem

        g = nx.DiGraph()
        g.add_node("z", family="categorical", latent=True, k=k)
        g.add_node("x", family="normal", dim=d, covariance=cov)
        g.add_edge("z", "x")
        model = declarem.Model(g)
        init = {"z": {"probs": w0}, "x": {"mean": m0, ckey: c0}}

        def dm_fit(data, max_iter):
            stamps = []
            fit = model.fit({"x": data}, init=init, max_iter=max_iter, tol=0, reg_covar=reg, dtype=args.dtype,
                            progress=lambda *_: stamps.append(time.perf_counter()))
            return fit, list(np.diff(stamps))  # iterations 2..max_iter

    except Exception as exc:  # noqa: BLE001 - report and carry on with scikit-learn only
        print(f"declarem: NOT AVAILABLE ({type(exc).__name__}: {exc}); timing scikit-learn only")
        dm_fit = None

    importlib.import_module("scipy.linalg")  # load every BLAS pool before setting thread counts

    print(f"thread pools: {configure_threads(args.numpy_threads, args.other_threads)}")

    # Warm-up on 2,000 rows (excluded from the per-iteration timing): declarem compiles its model here.
    small = x[:2000]
    t_sk_warm, _ = timed(lambda: sk_fit(small, 1))
    print(f"scikit-learn warm-up (fit on 2,000 rows, max_iter=1): {t_sk_warm:.3f} s")
    if dm_fit is not None:
        t_dm_warm, _ = timed(lambda: dm_fit(small, 1))
        t_dm_warm2, _ = timed(lambda: dm_fit(small, 1))
        print(f"declarem compile + warm-up (fit on 2,000 rows, max_iter=1): {t_dm_warm:.3f} s "
              f"(second such fit: {t_dm_warm2:.3f} s)")

    libs = {"scikit-learn": sk_fit}
    if dm_fit is not None:
        libs["declarem"] = dm_fit
    fit_times = {name: [] for name in libs}
    iter_times = {name: [] for name in libs}
    last = {}
    for r in range(args.repeats):
        order = list(libs) if r % 2 == 0 else list(reversed(list(libs)))
        for name in order:
            t, (res, its) = timed(lambda: libs[name](x, iters))
            fit_times[name].append(t)
            iter_times[name].extend(its)
            last[name] = res
        print(f"  repeat {r + 1}/{args.repeats} ({' then '.join(order)}): " + "; ".join(
            f"{name} fit {fit_times[name][-1]:.3f}s, iterations "
            + " ".join(f"{v:.3f}" for v in iter_times[name][len(iter_times[name]) - (iters - 1):]) + "s"
            for name in libs))

    per_fit = {name: statistics.median(np.asarray(fit_times[name]) / iters) for name in libs}
    per_iter = {name: statistics.median(iter_times[name]) if iter_times[name] else float("nan") for name in libs}
    overhead = {name: statistics.median(np.asarray(fit_times[name]) - iters * per_iter[name]) for name in libs}

    print()
    print(f"medians over {args.repeats} repeats:")
    print(f"{'':14s} {'per-iter (fit/' + str(iters) + ')':>18s} {'per-iter (in-fit)':>18s} {'fixed per fit':>15s}")
    for name in libs:
        print(f"{name:14s} {per_fit[name]:16.4f} s {per_iter[name]:16.4f} s {overhead[name]:13.3f} s")
    if "declarem" in libs:
        print(f"{'ratio dm/sk':14s} {per_fit['declarem'] / per_fit['scikit-learn']:17.3f}x "
              f"{per_iter['declarem'] / per_iter['scikit-learn']:17.3f}x")

        # Same computation? Compare the final parameters of the last fits.
        gm, fit = last["scikit-learn"], last["declarem"]
        p = fit.params
        diffs = {
            "weights": np.max(np.abs(np.asarray(p["z"]["probs"]) - gm.weights_)),
            "means": np.max(np.abs(np.asarray(p["x"]["mean"]) - gm.means_)),
            "covariances": np.max(np.abs(np.asarray(p["x"][ckey]) - gm.covariances_)),
        }
        ll_sk = gm.score(x) * n
        print("max |declarem - scikit-learn| after the last fits: "
              + ", ".join(f"{key} {val:.2e}" for key, val in diffs.items())
              + f"; loglik {fit.loglik:.6f} vs {ll_sk:.6f} (rel {abs(fit.loglik - ll_sk) / abs(ll_sk):.1e})")

    print(f"load average at end of timing: {_loadavg()}")
    if not args.no_gemm:
        flops = 4.0 * n * k * d * d if cov == "full" else 8.0 * n * k * d
        label = "4 N K D^2" if cov == "full" else "8 N K D"
        n_stats = d + d * (d + 1) // 2 if cov == "full" else 2 * d
        flops_t = 4.0 * n * k * n_stats
        gf, tg = gemm_gflops()
        print()
        print(f"numpy GEMM 4096x4096 float64 at the timing's thread count: {gf:.1f} GFLOP/s (best of 3: {tg:.3f} s)")
        if args.numpy_threads not in (0, _ncpu()):
            configure_threads(_ncpu(), None)
            gf_all, tg_all = gemm_gflops()
            configure_threads(args.numpy_threads, None)
            print(f"numpy GEMM 4096x4096 float64 on all {_ncpu()} cores: {gf_all:.1f} GFLOP/s "
                  f"(best of 3: {tg_all:.3f} s)")
        print(f"flops per EM iteration: nominal ({label}) {flops / 1e9:.3f} GFLOP; "
              f"exponential-family form (4 N K |T|, |T| = {n_stats}) {flops_t / 1e9:.3f} GFLOP")
        for name in libs:
            rate = flops / per_iter[name] / 1e9
            print(f"  {name:14s} in-fit iteration: {rate:6.1f} GFLOP/s nominal = {100 * rate / gf:5.1f}% of GEMM "
                  f"peak at the same thread count")
        if "declarem" in libs:
            rate_t = flops_t / per_iter["declarem"] / 1e9
            print(f"  {'declarem':14s} in its own flop count: {rate_t:6.1f} GFLOP/s = {100 * rate_t / gf:5.1f}%")
    return 0


def _git_head():
    import os
    import subprocess

    try:
        here = os.path.dirname(os.path.abspath(__file__))
        out = subprocess.run(["git", "-C", here, "log", "-1", "--format=%h %cI"], capture_output=True,
                             text=True, timeout=10)
        dirty = subprocess.run(["git", "-C", here, "status", "--porcelain", "--", "../declarem"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return out.stdout.strip() + (" (declarem/ has uncommitted changes)" if dirty else "") or "unknown"
    except Exception:  # noqa: BLE001 - informational only
        return "unknown"


if __name__ == "__main__":
    sys.exit(main())
