"""Time to converge, declarem against scikit-learn, and declarem's peak memory, Gaussian mixture.

Same seeded data (N=200,000, D=16, K=16) and the same start for both. scikit-learn stops when the
change of its per-row lower bound is below ``--tol`` (absolute); declarem's tolerance is relative to
the objective, so it gets ``tol / |scikit-learn's final per-row lower bound|`` (from an untimed
scikit-learn fit first), the same stopping rule near the optimum. Both are timed in one process, alternating, 3 repeats; final per-row
log-likelihoods are compared.

Peak memory is measured in a fresh process (``--memory``): the rise of the resident set's peak
(ru_maxrss) during one declarem fit, against the bound the speed issue sets, about twice the data
plus T(X) plus the (N, K) responsibilities.

    python benchmarks/bench_gmm_converge.py [--cov full|diag] [--small] [--tol 1e-5] [--memory [--stream]]

``--small`` is the N=1,000,000, D=2, K=3 case. ``--stream`` measures the fit with ``memory_budget=0``
(T(X) formed chunk by chunk in every E-step) and its time per iteration beside the stored path.
"""

import argparse
import resource
import statistics
import subprocess
import sys
import time
import warnings

import networkx as nx
import numpy as np

N, D, K = 200_000, 16, 16


def data_and_start():
    rng = np.random.default_rng(7)
    centres = rng.normal(0.0, 2.0, (K, D))
    x = centres[rng.integers(0, K, N)] + rng.normal(size=(N, D))
    start = x[rng.choice(N, K, replace=False)]
    return x, start


def model(covariance="full"):
    import declarem
    graph = nx.DiGraph()
    graph.add_node("z", family="categorical", latent=True, k=K)
    graph.add_node("x", family="normal", dim=D, covariance=covariance)
    graph.add_edge("z", "x")
    return declarem.Model(graph)


def memory_probe(stream):
    x, start = data_and_start()
    fitted = model()
    fitted.fit({"x": x[:2000]}, max_iter=1)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    init = {"z": {"probs": np.full(K, 1 / K)}, "x": {"mean": start, "cov": np.array([np.eye(D)] * K)}}
    started = time.perf_counter()
    fitted.fit({"x": x}, init=init, max_iter=3, tol=0, memory_budget=0 if stream else None)
    elapsed = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(f"{'streamed' if stream else 'stored'} T(X): 3-iteration fit {elapsed:.2f} s")
    data = x.nbytes
    statistics_bytes = N * (D + D * (D + 1) // 2) * 8
    responsibilities = N * K * 8
    bound = 2 * data + statistics_bytes + responsibilities
    print(f"peak resident set rise during a fit: {(after - before) / 2**20:.0f} MiB")
    print(f"bound (2 x data {data / 2**20:.0f} MiB + T(X) {statistics_bytes / 2**20:.0f} MiB + responsibilities "
          f"{responsibilities / 2**20:.0f} MiB): {bound / 2**20:.0f} MiB")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tol", type=float, default=1e-5)
    parser.add_argument("--memory", action="store_true")
    parser.add_argument("--cov", choices=["full", "diag"], default="full")
    parser.add_argument("--small", action="store_true")
    parser.add_argument("--stream", action="store_true")
    args = parser.parse_args()
    if args.memory:
        subprocess.run([sys.executable, __file__, "--memory-probe"] + (["--stream"] if args.stream else []),
                       check=True)
        return
    if args.small:
        global N, D, K
        N, D, K = 1_000_000, 2, 3
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.mixture import GaussianMixture
    x, start = data_and_start()
    weights = np.full(K, 1 / K)
    if args.cov == "full":
        covariances = np.array([np.eye(D)] * K)
        spread, precisions = {"cov": covariances}, np.linalg.inv(covariances)
    else:
        covariances = np.ones((K, D))
        spread, precisions = {"var": covariances}, 1.0 / covariances
    fitted = model(args.cov)
    fitted.fit({"x": x[:2000]}, max_iter=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        untimed = GaussianMixture(K, covariance_type=args.cov, tol=args.tol, max_iter=1000, weights_init=weights,
                                  means_init=start, precisions_init=precisions, reg_covar=1e-6).fit(x)
    relative_tol = args.tol / abs(untimed.lower_bound_)
    times = {"sklearn": [], "declarem": []}
    for repeat in range(3):
        order = ("sklearn", "declarem") if repeat % 2 == 0 else ("declarem", "sklearn")
        for name in order:
            started = time.perf_counter()
            if name == "sklearn":
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", ConvergenceWarning)
                    reference = GaussianMixture(K, covariance_type=args.cov, tol=args.tol, max_iter=1000,
                                                weights_init=weights, means_init=start, precisions_init=precisions,
                                                reg_covar=1e-6).fit(x)
            else:
                fit = fitted.fit({"x": x}, init={"z": {"probs": weights}, "x": {"mean": start, **spread}},
                                 tol=relative_tol, max_iter=1000, reg_covar=1e-6)
            times[name].append(time.perf_counter() - started)
    sk, dm = statistics.median(times["sklearn"]), statistics.median(times["declarem"])
    print(f"N={N:,} D={D} K={K}, {args.cov} covariance, sklearn tol {args.tol:g} (absolute, per row), "
          f"declarem tol {relative_tol:.3g} (relative)")
    print(f"scikit-learn: {reference.n_iter_} iterations, {sk:.2f} s, per-row loglik {reference.score(x)!r}")
    print(f"declarem    : {fit.n_iter} iterations, {dm:.2f} s, per-row loglik {fit.loglik / N!r}")
    print(f"time ratio declarem / scikit-learn: {dm / sk:.3f}")


if __name__ == "__main__":
    if "--memory-probe" in sys.argv:
        memory_probe("--stream" in sys.argv)
    else:
        main()
