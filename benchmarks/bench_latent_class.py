"""Time EM iterations of a latent class model: declarem against pgmpy's ExpectationMaximization, side by side.

    python benchmarks/bench_latent_class.py [--n N] [--iters I] [--repeats R] [--converged-check]
                                            [--large-n N] [--large-iters I] [--large-repeats R] [--no-large]
                                            [--no-large-pgmpy] [--threads T]

The model is a discrete Bayesian network with one latent variable: a latent class z (K = 3) with six observed
categorical children x1..x6 (2, 3, 4, 2, 3 and 4 categories), conditionally independent given z.  Data are
simulated from seeded true parameters; every category of every child occurs in the data (pgmpy takes its state
names from the data).  Both libraries start from the same initialisation (z uniform, each child's rows drawn
from a seeded Dirichlet(10), not the truth): declarem as ``init={node: {"probs": ...}}``, pgmpy as ``init_cpds``
(one TabularCPD per node, so pgmpy neither estimates nor randomises any CPD itself).

Both run exactly I EM iterations: declarem with ``max_iter=I, tol=0``; pgmpy with ``max_iter=I, atol=-1``.
pgmpy stops when every new CPD is ``np.allclose`` to the old one, i.e. |new - old| <= atol + 1e-5 |old|
(numpy's default rtol applies: ``atol=0`` would still stop early), so a negative atol is the only way to make
it run all I iterations.  After I iterations both hold the parameters after I M-steps from the same start.

Part 1 (default N = 5,000 rows): one fit per library per repeat, in one process, in alternating order (repeat r
runs pgmpy first when r is even, declarem first when r is odd).  Reported, medians:
  * per-iter (in-fit):  the wall time of single EM iterations inside the fits, from a per-iteration hook:
                        declarem's ``fit(progress=...)`` callback; for pgmpy a subclass of
                        ExpectationMaximization whose ``_is_converged`` (called once at the end of every
                        iteration, after the E-step and the M-step) records a time stamp and defers to pgmpy's.
                        Iteration 1 is dropped (its interval includes the initialisation), so each fit gives
                        I - 1 samples; the median is over all samples of all repeats.  This is the headline.
  * per-iter (fit/I):   a whole fit divided by I: for pgmpy the ExpectationMaximization constructor (state
                        names from the data) plus ``get_parameters``; for declarem ``model.fit`` (data checks,
                        initialisation, an E-step for the objective at the start, then I iterations of
                        M-step and E-step).
  * fixed per fit:      fit time - I x (that fit's median in-fit iteration), median over repeats.
The speedup printed is pgmpy / declarem.  The issue's target is declarem at least 100x faster.

How pgmpy's time scales: its E-step loops in Python over the *unique* rows of the data, expanding each into K
rows and evaluating every CPD per expanded row through pandas (``DataFrame.apply``), then runs a pandas
weighted MLE over the expanded (unique rows x K) table.  Its cost per iteration is therefore about proportional
to (number of unique rows) x K and nearly independent of N.  declarem works on all N rows (unless given counts
as weights).  So part 1 also times declarem on the unique rows with their counts as ``weights`` (the same
likelihood, and pgmpy's own data reduction), and part 2 measures both at large N.

Part 2 (default N = 1,000,000 rows, 3 repeats, --no-large skips it): declarem on all rows, declarem on the
unique rows with counts as weights, a hand-written vectorised numpy EM (``numpy_em`` below: gather, normalise,
bincount M-step, about 20 lines) for scale, and pgmpy, alternating, I = --large-iters each.

Agreement: after the last fits of each part the script prints the largest absolute difference between the
libraries' fitted probabilities (every CPD, after mapping pgmpy's state names back to category indices) and the
observed-data log-likelihood of each parameter set, computed by this script (``loglik`` below) and, for
declarem, also its own ``fit.loglik``.  declarem's run to convergence (tol = 1e-10) from the same start is
printed too, to show how far I iterations are from the maximum; --converged-check also runs pgmpy for as many
iterations and compares the converged fits (opt-in: about 2 minutes of pgmpy).

Model compilation (declarem's sympy derivation and lambdify) is excluded: the model is built and warmed up by a
one-iteration fit on 500 rows before any timing, timed separately.  pgmpy gets the same warm-up.  Every BLAS /
OpenMP pool runs --threads threads (default 1; pgmpy's work is single-threaded Python and pandas anyway); the
load average is printed at the start and the end.
"""

from __future__ import annotations

import importlib
import argparse
import gc
import logging
import math
import os
import platform
import statistics
import sys
import time
import warnings

import numpy as np

from machine import cpu_model as _cpu_model, loadavg as _loadavg, ncpu as _ncpu

K = 3
CARDS = (2, 3, 4, 2, 3, 4)
NAMES = tuple(f"x{i + 1}" for i in range(len(CARDS)))


# ----------------------------------------------------------------------------------------------- problem

def true_params(seed=20261122):
    rng = np.random.default_rng(seed)
    pz = rng.dirichlet(np.full(K, 5.0))
    probs = {name: rng.dirichlet(np.full(k, 0.8), size=K) for name, k in zip(NAMES, CARDS)}
    return pz, probs


def initial_params(seed=7):
    """The common start: z uniform, each child's (K, k) table from a Dirichlet(10) (near uniform, asymmetric)."""
    rng = np.random.default_rng(seed)
    pz = np.full(K, 1.0 / K)
    probs = {name: rng.dirichlet(np.full(k, 10.0), size=K) for name, k in zip(NAMES, CARDS)}
    return pz, probs


def sample(n, seed, pz, probs):
    """n rows from the latent class model, as an (n, len(NAMES)) int64 array."""
    rng = np.random.default_rng(seed)
    z = rng.choice(K, size=n, p=pz)
    x = np.empty((n, len(NAMES)), dtype=np.int64)
    for c, name in enumerate(NAMES):
        cum = np.cumsum(probs[name], axis=1)[z]  # (n, k)
        cum[:, -1] = 1.0
        x[:, c] = (rng.random(n)[:, None] >= cum).sum(axis=1)
    for c, (name, k) in enumerate(zip(NAMES, CARDS)):
        missing = np.setdiff1d(np.arange(k), x[:, c])
        if missing.size:
            raise SystemExit(f"{name}: categories {missing.tolist()} do not occur in the data; pgmpy would take "
                             "a smaller state space. Use more rows or another seed.")
    return x


def unique_rows(x):
    u, counts = np.unique(x, axis=0, return_counts=True)
    return u, counts.astype(float)


def loglik(x, w, pz, probs):
    """Observed-data log-likelihood sum_i w_i log sum_z p(z) prod_c p(x_ic | z).

    Summed over the unique rows with their total weights, with math.fsum: a plain float64 dot product over a
    million rows is off by about 1e-14 relative, more than the differences being checked.
    """
    u, inverse = np.unique(x, axis=0, return_inverse=True)
    wu = np.bincount(inverse.reshape(-1), weights=w, minlength=u.shape[0])
    logp = np.broadcast_to(np.log(pz), (u.shape[0], K)).copy()
    for c, name in enumerate(NAMES):
        logp += np.log(probs[name]).T[u[:, c]]
    m = logp.max(axis=1, keepdims=True)
    return math.fsum(wu * (m[:, 0] + np.log(np.exp(logp - m).sum(axis=1))))


def numpy_em(x, w, pz, probs, iters, stamps=None):
    """Hand-written vectorised EM for this model: the 'plain numpy' reference point.

    Works in probability space (a product of six probabilities cannot underflow here), gathers each child's
    (k, K) table by np.take into a preallocated (N, K) buffer, and forms each child's expected counts with one
    bincount over the flattened (N, K) responsibilities.  A log-space version (gather logs, max-shift, exp) was
    2.4x slower at N = 1,000,000.
    """
    probs = dict(probs)
    n = x.shape[0]
    cols = [np.ascontiguousarray(x[:, c]) for c in range(x.shape[1])]
    flat = [(col[:, None] * K + np.arange(K)).ravel() for col in cols]  # once per fit
    total = w.sum()
    r = np.empty((n, K))
    tmp = np.empty((n, K))
    for _ in range(iters):
        tabs = [np.ascontiguousarray(probs[name].T) for name in NAMES]  # (k, K) each
        np.take(tabs[0], cols[0], axis=0, out=r)
        r *= pz
        for c in range(1, len(cols)):
            np.take(tabs[c], cols[c], axis=0, out=tmp)
            r *= tmp
        r *= (w / r.sum(axis=1))[:, None]  # responsibilities times row weights
        pz = r.sum(axis=0) / total
        rf = r.ravel()
        for c, (name, k) in enumerate(zip(NAMES, CARDS)):
            counts = np.bincount(flat[c], weights=rf, minlength=k * K).reshape(k, K).T
            probs[name] = counts / counts.sum(axis=1, keepdims=True)
        if stamps is not None:
            stamps.append(time.perf_counter())
    return pz, probs


# ----------------------------------------------------------------------------------------------- libraries

def make_declarem():
    import networkx as nx

    import declarem

    g = nx.DiGraph()
    g.add_node("z", family="categorical", latent=True, k=K)
    for name, k in zip(NAMES, CARDS):
        g.add_node(name, family="categorical", k=k)
        g.add_edge("z", name)
    model = declarem.Model(g)

    def fit(x, w, init, iters, tol=0.0):
        stamps = []
        data = {name: x[:, c] for c, name in enumerate(NAMES)}
        res = model.fit(data, weights=w, init=init, max_iter=iters, tol=tol,
                        progress=lambda *_: stamps.append(time.perf_counter()))
        pz = np.asarray(res.params["z"]["probs"])
        probs = {name: np.asarray(res.params[name]["probs"]) for name in NAMES}
        return (pz, probs, res), list(np.diff(stamps))  # iterations 2..iters

    return fit


def make_pgmpy():
    import pandas as pd

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # pgmpy 1.x deprecates pgmpy.estimators
        from pgmpy.estimators import ExpectationMaximization
        from pgmpy.factors.discrete import TabularCPD
        from pgmpy.models import DiscreteBayesianNetwork

    logging.getLogger("pgmpy").setLevel(logging.ERROR)

    class TimedEM(ExpectationMaximization):
        """pgmpy's EM unchanged, with a time stamp at the end of every iteration."""

        stamps: list

        def _is_converged(self, new_cpds, atol=1e-08):
            out = super()._is_converged(new_cpds, atol=atol)
            self.stamps.append(time.perf_counter())
            return out

    def init_cpds(init):
        states = {"z": list(range(K))}
        cpds = {"z": TabularCPD("z", K, np.asarray(init["z"]["probs"]).reshape(K, 1), state_names=states)}
        for name, k in zip(NAMES, CARDS):
            cpds[name] = TabularCPD(name, k, np.asarray(init[name]["probs"]).T, evidence=["z"],
                                    evidence_card=[K], state_names={name: list(range(k)), **states})
        return cpds

    def to_arrays(cpds):
        """pgmpy CPDs -> (pz, {name: (K, k)}) indexed by category value, whatever pgmpy's axis/state order."""
        by_var = {cpd.variable: cpd for cpd in cpds}
        cz = by_var["z"]
        pz = np.empty(K)
        pz[[int(s) for s in cz.state_names["z"]]] = np.asarray(cz.values).reshape(K)
        probs = {}
        for name, k in zip(NAMES, CARDS):
            cpd = by_var[name]
            vals = np.asarray(cpd.values).transpose([cpd.variables.index("z"), cpd.variables.index(name)])
            out = np.empty((K, k))
            out[np.ix_([int(s) for s in cpd.state_names["z"]], [int(s) for s in cpd.state_names[name]])] = vals
            probs[name] = out
        return pz, probs

    def fit(x, init, iters):
        frame = pd.DataFrame({name: x[:, c] for c, name in enumerate(NAMES)})
        cpds0 = init_cpds(init)
        dag = DiscreteBayesianNetwork([("z", name) for name in NAMES], latents={"z"})
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            est = TimedEM(dag, frame)
        est.stamps = []
        cpds = est.get_parameters(latent_card={"z": K}, max_iter=iters, atol=-1.0, init_cpds=cpds0,
                                  n_jobs=1, show_progress=False)
        if len(est.stamps) != iters:
            raise RuntimeError(f"pgmpy ran {len(est.stamps)} iterations, expected {iters}")
        pz, probs = to_arrays(cpds)
        return (pz, probs, None), list(np.diff(est.stamps))

    return fit


# ----------------------------------------------------------------------------------------------- timing

def timed(fn):
    gc.collect()
    gc.disable()
    try:
        t0 = time.perf_counter()
        out = fn()
        return time.perf_counter() - t0, out
    finally:
        gc.enable()


def run_alternating(libs, repeats, iters, label):
    """libs: {name: callable() -> (result, in-fit iteration times)}. Returns per-fit times, iteration times, last."""
    fit_times = {name: [] for name in libs}
    iter_times = {name: [] for name in libs}
    last = {}
    for r in range(repeats):
        order = list(libs) if r % 2 == 0 else list(reversed(list(libs)))
        for name in order:
            t, (res, its) = timed(libs[name])
            fit_times[name].append(t)
            iter_times[name].extend(its)
            last[name] = res
        print(f"  {label} repeat {r + 1}/{repeats}: " + "; ".join(
            f"{name} fit {fit_times[name][-1]:.4f}s, in-fit median "
            f"{statistics.median(iter_times[name][-(iters - 1):]):.5f}s" for name in order), flush=True)
    return fit_times, iter_times, last


def summarise(fit_times, iter_times, iters, repeats, ref="pgmpy"):
    per_fit = {name: statistics.median(np.asarray(v) / iters) for name, v in fit_times.items()}
    per_iter = {name: statistics.median(v) for name, v in iter_times.items()}
    # fixed per fit: each fit's time minus I times that fit's own median in-fit iteration (pairing each fit with its
    # own iterations keeps a repeat slowed down by another job from making the difference negative)
    fixed = {name: statistics.median(
        t - iters * statistics.median(iter_times[name][r * (iters - 1):(r + 1) * (iters - 1)])
        for r, t in enumerate(fit_times[name])) for name in fit_times}
    print(f"medians over {repeats} repeats ({repeats * (iters - 1)} in-fit iterations per library):")
    print(f"  {'':22s} {'per-iter (in-fit)':>18s} {'per-iter (fit/' + str(iters) + ')':>18s} {'fixed per fit':>14s}"
          + (f" {'speedup vs ' + ref + ' (in-fit, fit/I)':>32s}" if ref in per_iter else ""))
    for name in fit_times:
        line = f"  {name:22s} {per_iter[name]:16.6f} s {per_fit[name]:16.6f} s {fixed[name]:12.4f} s"
        if ref in per_iter and name != ref:
            line += f"   {per_iter[ref] / per_iter[name]:10.1f}x, {per_fit[ref] / per_fit[name]:8.1f}x"
        print(line)
    return per_iter, per_fit, fixed


def agreement(results, x, w, ref):
    """Largest |difference| of every other result's probabilities against results[ref]; log-likelihoods."""
    pz0, probs0, _ = results[ref]
    lines = []
    for name, (pz, probs, fit) in results.items():
        ll = loglik(x, w, pz, probs)
        line = f"  {name:22s} loglik {ll:.10f}"
        if fit is not None:
            line += f" (declarem's own fit.loglik {fit.loglik:.10f}, rel {abs(fit.loglik - ll) / abs(ll):.1e})"
        if name != ref:
            d = max([np.max(np.abs(pz - pz0))] + [np.max(np.abs(probs[n] - probs0[n])) for n in NAMES])
            ll0 = loglik(x, w, pz0, probs0)
            line += f"; max |probs - {ref}| {d:.2e}, loglik rel diff {abs(ll - ll0) / abs(ll0):.1e}"
        lines.append(line)
    print("\n".join(lines))


# ----------------------------------------------------------------------------------------------- main

def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=5000, help="rows of the side-by-side case (default 5,000)")
    ap.add_argument("--iters", type=int, default=20, help="EM iterations per timed fit (>= 2; default 20)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--large-n", type=int, default=1_000_000)
    ap.add_argument("--large-iters", type=int, default=10)
    ap.add_argument("--large-repeats", type=int, default=3)
    ap.add_argument("--no-large", action="store_true", help="skip part 2")
    ap.add_argument("--no-large-pgmpy", action="store_true", help="part 2 without pgmpy")
    ap.add_argument("--converged-check", action="store_true",
                    help="also run pgmpy for as many iterations as declarem needs to converge (tol=1e-10) on "
                         "part 1's data and compare the converged fits (about 2 minutes more)")
    ap.add_argument("--threads", type=int, default=1, help="threads of every BLAS / OpenMP pool (0: leave as is)")
    args = ap.parse_args(argv)
    if args.iters < 2 or args.large_iters < 2:
        ap.error("--iters and --large-iters must be at least 2")

    import pandas as pd

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        import pgmpy

    print(f"python {platform.python_version()}, numpy {np.__version__}, pandas {pd.__version__}, "
          f"pgmpy {pgmpy.__version__}")
    import declarem

    where = os.path.dirname(os.path.dirname(os.path.abspath(declarem.__file__)))
    print(f"machine: {platform.machine()} {_cpu_model()}, cpus={_ncpu()}")
    print(f"declarem imported from {where}: {_git_head(where)}")
    print(f"model: latent z (K={K}) -> {len(NAMES)} categorical children with k = {CARDS}")
    print(f"load average at start: {_loadavg()}")
    print(f"thread pools: {_limit_threads(args.threads)}")

    pz_true, probs_true = true_params()
    pz0, probs0 = initial_params()
    init = {"z": {"probs": pz0}, **{name: {"probs": probs0[name]} for name in NAMES}}

    dm_fit = make_declarem()
    pg_fit = make_pgmpy()

    # Warm-up (excluded from the timing): declarem derives and compiles its model here.
    xw = sample(2000, 1, pz_true, probs_true)[:500]
    t_dm_warm, _ = timed(lambda: dm_fit(xw, None, init, 1))
    t_dm_warm2, _ = timed(lambda: dm_fit(xw, None, init, 1))
    t_pg_warm, _ = timed(lambda: pg_fit(xw, init, 1))
    print(f"declarem model build + compile + warm-up (fit on 500 rows, max_iter=1): {t_dm_warm:.3f} s "
          f"(second such fit: {t_dm_warm2:.4f} s); pgmpy warm-up (same fit): {t_pg_warm:.3f} s")

    # ---- part 1: side by side at N rows
    n, iters = args.n, args.iters
    x = sample(n, 2, pz_true, probs_true)
    ones = np.ones(n)
    xu, counts = unique_rows(x)
    print()
    print(f"part 1: N={n:,} rows, {xu.shape[0]} unique rows (of {int(np.prod(CARDS))} possible); "
          f"{iters} EM iterations per fit (declarem tol=0, pgmpy atol=-1), {args.repeats} repeats")
    libs = {
        "pgmpy": lambda: pg_fit(x, init, iters),
        "declarem": lambda: dm_fit(x, None, init, iters),
        "declarem (unique+wts)": lambda: dm_fit(xu, counts, init, iters),
    }
    fit_times, iter_times, last = run_alternating(libs, args.repeats, iters, "part 1")
    print()
    per_iter, per_fit, _ = summarise(fit_times, iter_times, iters, args.repeats)
    print(f"  unique rows x K = {xu.shape[0] * K}: pgmpy {1e3 * per_iter['pgmpy'] / (xu.shape[0] * K):.3f} ms "
          f"per unique row and latent state per iteration")
    print(f"agreement after the last {iters}-iteration fits (log-likelihoods by this script, on all {n:,} rows):")
    agreement(last, x, ones, ref="pgmpy")
    (_, _, conv), _ = dm_fit(x, None, init, 5000, tol=1e-10)
    print(f"  declarem run to convergence from the same start (tol=1e-10): loglik {conv.loglik:.10f} after "
          f"{conv.n_iter} iterations (converged={conv.converged})")
    if args.converged_check:
        t_conv, ((pz_c, probs_c, _), _) = timed(lambda: pg_fit(x, init, conv.n_iter))
        print(f"  pgmpy run for the same {conv.n_iter} iterations ({t_conv:.1f} s); agreement:")
        agreement({"pgmpy": (pz_c, probs_c, None), "declarem": (np.asarray(conv.params["z"]["probs"]),
                   {name: np.asarray(conv.params[name]["probs"]) for name in NAMES}, conv)}, x, ones, ref="pgmpy")

    # ---- part 2: large N
    if not args.no_large:
        n2, iters2 = args.large_n, args.large_iters
        x2 = sample(n2, 3, pz_true, probs_true)
        ones2 = np.ones(n2)
        xu2, counts2 = unique_rows(x2)
        print()
        print(f"part 2: N={n2:,} rows, {xu2.shape[0]} unique rows; {iters2} EM iterations per fit, "
              f"{args.large_repeats} repeats")

        def np_fit():
            stamps = []
            pz, probs = numpy_em(x2, ones2, pz0, probs0, iters2, stamps)
            return (pz, probs, None), list(np.diff(stamps))

        libs2 = {}
        if not args.no_large_pgmpy:
            libs2["pgmpy"] = lambda: pg_fit(x2, init, iters2)
        libs2["declarem"] = lambda: dm_fit(x2, None, init, iters2)
        libs2["declarem (unique+wts)"] = lambda: dm_fit(xu2, counts2, init, iters2)
        libs2["numpy (hand-written)"] = np_fit
        fit_times2, iter_times2, last2 = run_alternating(libs2, args.large_repeats, iters2, "part 2")
        print()
        per_iter2, _, _ = summarise(fit_times2, iter_times2, iters2, args.large_repeats,
                                    ref="pgmpy" if "pgmpy" in libs2 else "numpy (hand-written)")
        print(f"  declarem on all rows: {1e9 * per_iter2['declarem'] / n2:.1f} ns per row per iteration; "
              f"hand-written numpy {1e9 * per_iter2['numpy (hand-written)'] / n2:.1f} ns; "
              f"declarem / numpy = {per_iter2['declarem'] / per_iter2['numpy (hand-written)']:.2f}x")
        print(f"agreement after the last {iters2}-iteration fits (on all {n2:,} rows):")
        agreement(last2, x2, ones2, ref="pgmpy" if "pgmpy" in last2 else "numpy (hand-written)")

    print()
    print(f"load average at end: {_loadavg()}")
    return 0


# ----------------------------------------------------------------------------------------------- machine notes

def _limit_threads(threads):
    try:
        from threadpoolctl import ThreadpoolController, threadpool_limits
    except ImportError:  # pragma: no cover
        return "threadpoolctl not installed: thread pools left as they are"
    importlib.import_module("scipy.linalg")  # load every BLAS pool before limiting

    if threads > 0:
        _limit_threads.keep = threadpool_limits(limits=threads)  # stays in force for the process
    import os

    return "; ".join(f"{os.path.basename(os.path.dirname(lib.filepath))}/{lib.internal_api} {lib.version} "
                     f"threads={lib.num_threads}" for lib in ThreadpoolController().lib_controllers)


def _git_head(where):
    """The commit of the checkout declarem is imported from, and whether its declarem/ has uncommitted changes."""
    import subprocess

    try:
        top = subprocess.run(["git", "-C", where, "rev-parse", "--show-toplevel"], capture_output=True, text=True,
                             timeout=10).stdout.strip()
        if os.path.realpath(top or "/nonexistent") != os.path.realpath(where):
            return "not a git checkout (e.g. a `git archive` export): say which commit in the notes"
        out = subprocess.run(["git", "-C", where, "log", "-1", "--format=%h %cI"], capture_output=True,
                             text=True, timeout=10)
        dirty = subprocess.run(["git", "-C", where, "status", "--porcelain", "--", "declarem"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return "commit " + out.stdout.strip() + (" (declarem/ has uncommitted changes)" if dirty else "")
    except Exception:  # noqa: BLE001 - informational only
        return "unknown"


if __name__ == "__main__":
    sys.exit(main())
