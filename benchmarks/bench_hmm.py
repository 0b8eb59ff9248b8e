"""declarem's chain engine against hmmlearn's GaussianHMM, per EM iteration, side by side in one process.

Usage: python benchmarks/bench_hmm.py [--repeats 3] [--iterations 5]

Gaussian emissions, 8 states, 4 dimensions, diagonal covariance, seeded data: 100 sequences of 1,000
steps, and one sequence of 100,000 steps. Both libraries start from the same parameters and run
``--iterations`` EM iterations (hmmlearn: ``implementation="scaling"``, plain maximum likelihood);
a fit's time divided by its iterations is one sample, the two libraries take turns, and the median of
``--repeats`` samples is reported with their ratio. declarem's derivation is compiled before timing.
"""

import argparse
import time

import networkx as nx
import numpy as np
from hmmlearn import hmm
from machine import cpu_model, loadavg, ncpu

import declarem

STATES, DIM = 8, 4
CASES = {"100 x 1,000 steps": [1000] * 100, "1 x 100,000 steps": [100000]}


def setup(lengths, rng):
    n = sum(lengths)
    x = rng.normal(size=(n, DIM)) + rng.integers(0, STATES, size=n)[:, None]
    probs = np.full((STATES, STATES), 0.2 / (STATES - 1))
    np.fill_diagonal(probs, 0.8)
    start = {"start": np.full(STATES, 1 / STATES), "probs": probs,
             "mean": rng.normal(size=(STATES, DIM)) * 2, "var": np.ones((STATES, DIM))}
    graph = nx.DiGraph()
    graph.add_node("z", family="categorical", latent=True, k=STATES, lagged=["z"])
    graph.add_node("x", family="normal", dim=DIM, covariance="diag")
    graph.add_edge("z", "x")
    return x, start, declarem.Model(graph)


def per_iteration(x, start, model, lengths, iterations):
    data = {f"x_{i}": x[:, i] for i in range(DIM)}
    init = {"z": {"start": start["start"], "probs": start["probs"]},
            "x": {"mean": start["mean"], "var": start["var"]}}
    began = time.perf_counter()
    model.fit(data, init=init, max_iter=iterations, tol=0, reg_covar=0, lengths=lengths)
    ours = (time.perf_counter() - began) / iterations
    peer = hmm.GaussianHMM(STATES, "diag", init_params="", params="stmc", n_iter=iterations, tol=0,
                           implementation="scaling", covars_prior=0, min_covar=0)
    peer.startprob_, peer.transmat_, peer.means_, peer.covars_ = (start["start"], start["probs"], start["mean"],
                                                                  start["var"])
    began = time.perf_counter()
    peer.fit(x, lengths)
    return ours, (time.perf_counter() - began) / iterations


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--iterations", type=int, default=5)
    args = parser.parse_args()
    print(f"machine: {ncpu()} CPUs ({cpu_model()}); load average before: {loadavg()}")
    rng = np.random.default_rng(0)
    for name, lengths in CASES.items():
        x, start, model = setup(lengths, rng)
        per_iteration(x, start, model, lengths, 1)  # compile the derivation, warm both
        samples = [per_iteration(x, start, model, lengths, args.iterations) for _ in range(args.repeats)]
        ours, theirs = np.median(samples, axis=0)
        print(f"{name}: declarem {ours * 1e3:.0f} ms/iter, hmmlearn {theirs * 1e3:.0f} ms/iter, "
              f"ratio {ours / theirs:.2f} (median of {args.repeats}; load average after: {loadavg()})")


if __name__ == "__main__":
    main()
