"""A short chain as the catalog's HMMs are: soft and hard EM and decoding of one sequence, whole calls.

Usage: python benchmarks/bench_chain_small.py [--steps 10000] [--repeats 5]

Two states, four symbols (the dishonest casino of models/categorical_hmm.toml), one sequence drawn by
declarem from the true parameters with seed 1. Each line is the least and the median of ``--repeats``
calls after one warm-up: a 20-iteration fit from the true parameters (``tol=0``), the same with
``hard=True`` (Viterbi paths), ``fit.decode`` and ``fit.posterior``. Run it with another tree first on
``PYTHONPATH`` to compare commits.
"""

import argparse
import statistics
import sys
import time
import warnings

import networkx as nx

from machine import loadavg

import declarem  # noqa: E402

PARAMS = {"z": {"start": [0.5, 0.5], "probs": [[0.95, 0.05], [0.10, 0.90]]},
          "x": {"probs": [[0.25, 0.25, 0.25, 0.25], [0.10, 0.10, 0.10, 0.70]]}}


def casino():
    graph = nx.DiGraph()
    graph.add_node("z", family="categorical", latent=True, k=2, lagged=["z"])
    graph.add_node("x", family="categorical", k=4)
    graph.add_edge("z", "x")
    return declarem.Model(graph)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=10000)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    model = casino()
    data = {"x": model.sample(args.steps, PARAMS, seed=1)["x"]}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fit = model.fit(data, init=PARAMS, max_iter=20, tol=0)
        calls = {
            "fit, 20 iterations": lambda: model.fit(data, init=PARAMS, max_iter=20, tol=0),
            "hard fit, 20 iterations": lambda: model.fit(data, init=PARAMS, max_iter=20, tol=0, hard=True),
            "decode": lambda: fit.decode(data),
            "posterior": lambda: fit.posterior(data),
        }
        print(f"declarem from {declarem.__file__}; one sequence of {args.steps} steps; load average {loadavg()}")
        for name, call in calls.items():
            call()
            times = []
            for _ in range(args.repeats):
                began = time.perf_counter()
                call()
                times.append(time.perf_counter() - began)
            print(f"  {name}: least {min(times) * 1e3:.1f} ms, median {statistics.median(times) * 1e3:.1f} ms")
    print(f"load average after: {loadavg()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
