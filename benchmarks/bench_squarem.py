"""Plain EM against SQUAREM-accelerated EM, same model, data, start and tolerance, side by side.

Two slowly converging cases: Hasselblad's Poisson mixture (models/hasselblad.toml) and a
two-component bivariate GMM with heavily overlapping components (seeded). Prints, per case,
the EM steps, the median time of 5 alternating fits, and the final log-likelihoods.

    python benchmarks/bench_squarem.py
"""

import os
import statistics
import time

import networkx as nx
import numpy as np

import declarem
from declarem.data import read_csv

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def hasselblad():
    model = declarem.load_model(os.path.join(ROOT, "models", "hasselblad.toml"))
    data = read_csv(os.path.join(ROOT, "models", "hasselblad.csv"))
    init = {"z": {"probs": [0.3, 0.7]}, "deaths": {"rate": [1.0, 2.5]}}
    return "Hasselblad Poisson mixture", model, data, init, {}


def overlapping_gmm():
    rng = np.random.default_rng(4)
    x = np.concatenate([rng.normal(0, 1, (5000, 2)), rng.normal(1.2, 1, (5000, 2))])
    graph = nx.DiGraph()
    graph.add_node("z", family="categorical", latent=True, k=2)
    graph.add_node("x", family="normal", dim=2, covariance="full")
    graph.add_edge("z", "x")
    init = {"z": {"probs": [0.5, 0.5]}, "x": {"mean": [[-0.5, 0.0], [1.5, 1.0]], "cov": [np.eye(2), np.eye(2)]}}
    return "overlapping GMM, N=10,000, D=2, K=2", declarem.Model(graph), {"x": x}, init, {"reg_covar": 0.0}


def main():
    print("tol=1e-12 (relative change of the objective), max_iter=100000, 5 alternating repeats")
    for case in (hasselblad, overlapping_gmm):
        title, model, data, init, options = case()
        times = {"none": [], "squarem": []}
        fits = {}
        for _ in range(5):
            for accelerate in ("none", "squarem"):
                started = time.perf_counter()
                fits[accelerate] = model.fit(data, init=init, tol=1e-12, max_iter=100000, accelerate=accelerate,
                                             **options)
                times[accelerate].append(time.perf_counter() - started)
        plain, fast = fits["none"], fits["squarem"]
        print(f"\n{title}")
        print(f"  plain EM : {plain.n_iter:6d} EM steps, {statistics.median(times['none']):.4f} s, loglik {plain.loglik!r}")
        print(f"  SQUAREM  : {fast.n_iter:6d} EM steps, {statistics.median(times['squarem']):.4f} s, loglik {fast.loglik!r}")
        print(f"  steps ratio {fast.n_iter / plain.n_iter:.3f}, time ratio "
              f"{statistics.median(times['squarem']) / statistics.median(times['none']):.3f}")


if __name__ == "__main__":
    main()
