"""Time EM iterations of the lecture's topic model: declarem against hand-written sparse numpy, side by side.

    python benchmarks/bench_topic.py [--docs 2000] [--words 5000] [--topics 20] [--length 100]
                                     [--repeats 5] [--iters 6] [--numpy-threads 1] [--profile]

The model is models/topic_model.toml's, at benchmark size: doc (D documents, observed) -> topic (K, latent,
Dirichlet(1.1) on each pi_d) -> word (V, observed, Dirichlet(1.01) on each theta_k). The corpus is drawn
once, seeded, from LDA's generative process (pi_d ~ Dir(0.1), theta_k ~ Dir(0.05), Poisson(--length)
tokens per document; default about 200,000 tokens in about 185,000 non-zero cells) and fitted from its
non-zero cells (doc, word, count) with the counts as weights. Every implementation starts from the same
seeded pi and theta and runs tol = 0.

Three implementations of the same MAP-EM iteration (E-step, M-step and the objective: log-likelihood plus
log prior, which declarem computes every iteration and any EM loop needs for its convergence test):
  * declarem:   model.fit(..., init=..., max_iter=I, tol=0, progress=callback); an iteration is the time
                between consecutive progress callbacks (M-step, E-step, log prior); iteration 1 is dropped,
                its interval includes the start.
  * hand-spmm:  the lecture's updates in the multiplicative form that sparse code uses (as for PLSA / NMF
                with the KL loss): with P_dv = sum_k pi_dk theta_kv at the non-zero cells and S = X / P
                (same sparsity as X), n_dk = pi_dk (S theta^T)_dk and n_kv = theta_kv (pi^T S)_kv: two
                gathers and two sparse-dense products of cost O(non-zeros x K); gamma is never stored.
  * hand-cells: the reference module's form (models/topic_model_reference.py), optimised: gamma for every
                cell (n_cells, K) from two gathers, n_dk by np.add.reduceat over the CSR rows, n_kv by
                np.bincount on word * K + topic.
Each hand-written iteration is timed on its own; every repeat runs the three in turn, rotating the order.
The headline ratio is declarem against the faster hand-written implementation (the bar the issue sets:
at most 1.2x). All three must agree: the script prints the largest relative difference of their
parameters and objectives after the last repeat.

--profile then runs cProfile over declarem's E-step (the engine's expected_statistics)
and prints where its time goes, by function, and by line for the E-step's own functions.

Model compilation is excluded: declarem's model is built and fitted once on the data (max_iter=1) before
any timing. Thread pools: one thread for every BLAS / OpenMP pool by default (see bench_gmm.py).
"""

from __future__ import annotations

import argparse
import gc
import os
import platform
import statistics
import sys
import time

import numpy as np
import scipy.sparse
from scipy.special import gammaln

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_gmm import _cpu_model, _git_head, _loadavg, _ncpu, configure_threads  # noqa: E402

ALPHA, BETA = 1.1, 1.01


def make_corpus(n_docs, n_words, n_topics, length, seed=20261122):
    """A seeded LDA corpus as a CSR document-term matrix (float counts, sorted indices, no empty rows)."""
    rng = np.random.default_rng(seed)
    theta = rng.dirichlet(np.full(n_words, 0.05), n_topics)
    pi = rng.dirichlet(np.full(n_topics, 0.1), n_docs)
    lengths = np.maximum(rng.poisson(length, n_docs), 1)
    doc = np.repeat(np.arange(n_docs), lengths)
    topic = (np.cumsum(pi[doc], axis=1) > rng.random(len(doc))[:, None]).argmax(axis=1)
    word = np.empty(len(doc), dtype=np.intp)
    for k in range(n_topics):
        where = np.flatnonzero(topic == k)
        word[where] = rng.choice(n_words, size=len(where), p=theta[k])
    matrix = scipy.sparse.csr_matrix((np.ones(len(doc)), (doc, word)), shape=(n_docs, n_words))
    matrix.sum_duplicates()
    matrix.sort_indices()
    return matrix


def make_init(n_docs, n_words, n_topics, seed=7):
    rng = np.random.default_rng(seed)
    return {"doc": {"probs": np.full(n_docs, 1.0 / n_docs)},
            "topic": {"probs": rng.dirichlet(np.ones(n_topics), n_docs)},
            "word": {"probs": rng.dirichlet(np.ones(n_words), n_topics)}}


class HandEM:
    """Hand-written MAP-EM for the topic model on a CSR count matrix (shared set-up, two iteration forms)."""

    def __init__(self, matrix, alpha=ALPHA, beta=BETA):
        self.x = matrix
        self.n_docs, self.n_words = matrix.shape
        self.doc = np.repeat(np.arange(self.n_docs), np.diff(matrix.indptr))
        self.word = matrix.indices.astype(np.intp)
        self.count = matrix.data
        self.alpha, self.beta = alpha, beta
        self.doc_share = np.asarray(matrix.sum(axis=1)).ravel() / matrix.sum()   # the doc factor's ML value
        self.starts = matrix.indptr[:-1]

    def doc_loglik(self, share):
        """The doc factor's part of the log-likelihood (it does not interact with pi and theta)."""
        return float(np.dot(self.count, np.log(share[self.doc])))

    def log_prior(self, pi, theta):
        (d, k), v = pi.shape, theta.shape[1]
        a, b = self.alpha, self.beta
        return (d * (gammaln(k * a) - k * gammaln(a)) + (a - 1.0) * float(np.log(pi).sum())
                + k * (gammaln(v * b) - v * gammaln(b)) + (b - 1.0) * float(np.log(theta).sum()))

    def _mstep(self, n_dk, n_kv):
        pi = n_dk + (self.alpha - 1.0)
        pi /= pi.sum(axis=1, keepdims=True)
        theta = n_kv + (self.beta - 1.0)
        theta /= theta.sum(axis=1, keepdims=True)
        return pi, theta

    def spmm_step(self, pi, theta, doc_loglik):
        """One iteration in the multiplicative sparse form; returns new (pi, theta) and the objective at the
        old parameters (which the E-step computes on the way)."""
        theta_t = np.ascontiguousarray(theta.T)
        mixture = np.einsum("nk,nk->n", pi[self.doc], theta_t[self.word])        # P_dv at the cells
        loglik = float(np.dot(self.count, np.log(mixture))) + doc_loglik
        ratio = scipy.sparse.csr_matrix((self.count / mixture, self.x.indices, self.x.indptr), shape=self.x.shape)
        n_dk = pi * (ratio @ theta_t)
        n_kv = theta * (ratio.T @ pi).T
        return self._mstep(n_dk, n_kv), loglik + self.log_prior(pi, theta)

    def cells_step(self, pi, theta, doc_loglik):
        """One iteration storing gamma per cell, accumulated with reduceat / bincount."""
        k = pi.shape[1]
        gamma = pi[self.doc]
        gamma *= np.ascontiguousarray(theta.T)[self.word]
        mixture = gamma.sum(axis=1)
        loglik = float(np.dot(self.count, np.log(mixture))) + doc_loglik
        gamma *= (self.count / mixture)[:, None]
        n_dk = np.add.reduceat(gamma, self.starts, axis=0)                       # no empty documents
        flat = (self.word[:, None] * k + np.arange(k)).ravel()
        n_kv = np.bincount(flat, weights=gamma.ravel(), minlength=self.n_words * k).reshape(self.n_words, k).T
        return self._mstep(n_dk, n_kv), loglik + self.log_prior(pi, theta)

    def run(self, form, init, n_iter):
        """n_iter iterations of one form; returns params, objective history (0..n_iter), iteration times."""
        step = getattr(self, f"{form}_step")
        pi = np.asarray(init["topic"]["probs"], dtype=float)
        theta = np.asarray(init["word"]["probs"], dtype=float)
        # The start's document shares enter the first objective only; the M-step sets them to the ML value.
        doc_loglik = self.doc_loglik(np.asarray(init["doc"]["probs"], dtype=float))
        ml_doc_loglik = self.doc_loglik(self.doc_share)
        history, times = [], []
        for _ in range(n_iter):
            started = time.perf_counter()
            (pi, theta), objective = step(pi, theta, doc_loglik)
            times.append(time.perf_counter() - started)
            history.append(objective)
            doc_loglik = ml_doc_loglik
        # The objective at the final parameters (one more E-step, as declarem's last iteration computes it).
        mixture = np.einsum("nk,nk->n", pi[self.doc], np.ascontiguousarray(theta.T)[self.word])
        history.append(float(np.dot(self.count, np.log(mixture))) + doc_loglik + self.log_prior(pi, theta))
        params = {"doc": {"probs": self.doc_share}, "topic": {"probs": pi}, "word": {"probs": theta}}
        return params, history, times


def declarem_model(n_docs, n_words, n_topics):
    import networkx as nx

    import declarem

    graph = nx.DiGraph()
    graph.add_node("doc", family="categorical", k=n_docs)
    graph.add_node("topic", family="categorical", latent=True, k=n_topics, prior={"dirichlet": ALPHA})
    graph.add_node("word", family="categorical", k=n_words, prior={"dirichlet": BETA})
    graph.add_edge("doc", "topic")
    graph.add_edge("topic", "word")
    return declarem.Model(graph)


def _relative(a, b):
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    return float(np.max(np.abs(a - b) / np.maximum(np.abs(b), 1e-300)))


def profile_estep(model, data, init, n_calls=10, top=14):
    """cProfile over declarem's E-step: by function, then by line of the E-step's own functions."""
    import cProfile
    import pstats

    from declarem.data import node_data
    from declarem.inference import engine_for, prepare_rows
    from declarem.inference import enumeration

    compiled = model.compiled
    rows = prepare_rows(compiled, node_data(model, data, "count"))
    engine = engine_for(compiled, rows)
    params = compiled.to_internal(init, rows.shifts)
    engine.expected_statistics(params)                      # warm
    started = time.perf_counter()
    for _ in range(n_calls):
        engine.expected_statistics(params)
    per_call = (time.perf_counter() - started) / n_calls
    profiler = cProfile.Profile()
    profiler.enable()
    for _ in range(n_calls):
        engine.expected_statistics(params)
    profiler.disable()
    print(f"\ndeclarem E-step (expected_statistics), {rows.n_rows:,} rows: {per_call * 1e3:.1f} ms per call "
          f"without the profiler; cProfile over {n_calls} calls, by own time:")
    stats = pstats.Stats(profiler)
    total = sum(v[2] for v in stats.stats.values())
    entries = sorted(stats.stats.items(), key=lambda item: -item[1][2])[:top]
    for (filename, line, name), (_, ncalls, tottime, cumtime, _) in entries:
        where = f"{os.path.relpath(filename) if filename.startswith('/') else filename}:{line}({name})"
        print(f"  {100 * tottime / total:5.1f}%  {tottime / n_calls * 1e3:7.2f} ms/call  "
              f"cum {cumtime / n_calls * 1e3:7.2f}  calls {ncalls // n_calls:5d}  {where}")
    _line_shares(engine, params, enumeration, n_calls)


def _line_shares(engine, params, enumeration, n_calls):
    """Per-line time of the E-step's functions by tracing (sys.setprofile is function-level; use settrace)."""
    functions = {enumeration._joint.__code__, enumeration._normalise.__code__, enumeration._accumulate.__code__,
                 enumeration.expected_statistics.__code__, enumeration.bilinear_expected_statistics.__code__}
    times = {}
    state = {"key": None, "start": 0.0}

    def tracer(frame, event, arg):
        if frame.f_code not in functions:
            return None

        def local(frame, event, arg):
            now = time.perf_counter()
            if state["key"] is not None:
                times[state["key"]] = times.get(state["key"], 0.0) + now - state["start"]
            state["key"] = None if event == "return" else (frame.f_code.co_name, frame.f_lineno)
            state["start"] = time.perf_counter()
            return local

        return local(frame, event, arg)

    sys.settrace(tracer)
    try:
        for _ in range(n_calls):
            engine.expected_statistics(params)
    finally:
        sys.settrace(None)
    total = sum(times.values())
    source = enumeration.__file__
    lines = open(source).read().splitlines()
    print(f"  by line (line tracing; the lines of {os.path.relpath(source)} that take 2% or more):")
    for (name, line), spent in sorted(times.items(), key=lambda item: -item[1]):
        if spent < 0.02 * total:
            break
        print(f"  {100 * spent / total:5.1f}%  {spent / n_calls * 1e3:7.2f} ms/call  line {line:4d} "
              f"({name}): {lines[line - 1].strip()[:90]}")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--docs", type=int, default=2000)
    ap.add_argument("--words", type=int, default=5000)
    ap.add_argument("--topics", type=int, default=20)
    ap.add_argument("--length", type=float, default=100.0, help="mean tokens per document (Poisson)")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--iters", type=int, default=6, help="EM iterations per timed fit (>= 2)")
    ap.add_argument("--numpy-threads", type=int, default=1,
                    help="threads of numpy's BLAS (default 1; 0: leave as is, i.e. one per core)")
    ap.add_argument("--other-threads", type=int, default=1)
    ap.add_argument("--profile", action="store_true", help="then profile declarem's E-step")
    args = ap.parse_args(argv)
    if args.iters < 2:
        ap.error("--iters must be at least 2")
    n_docs, n_words, k, iters = args.docs, args.words, args.topics, args.iters

    import declarem
    from declarem.data import sparse_columns

    print(f"python {platform.python_version()}, numpy {np.__version__}, scipy {scipy.__version__}")
    print(f"machine: {platform.machine()} {_cpu_model()}, cpus={_ncpu()}; declarem checkout: {_git_head()}")
    print(f"declarem imported from {os.path.dirname(declarem.__file__)}")
    print(f"thread pools: {configure_threads(args.numpy_threads, args.other_threads)}")
    matrix = make_corpus(n_docs, n_words, k, args.length)
    print(f"case: D={n_docs:,} documents, V={n_words:,} words, K={k} topics, {int(matrix.sum()):,} tokens in "
          f"{matrix.nnz:,} non-zero cells; alpha={ALPHA} beta={BETA}; tol=0, repeats={args.repeats}, "
          f"fits of {iters} iterations")
    print(f"load average at start: {_loadavg()}")

    data = sparse_columns(matrix, "doc", "word")
    init = make_init(n_docs, n_words, k)
    hand = HandEM(matrix)
    model = declarem_model(n_docs, n_words, k)
    started = time.perf_counter()
    model.fit(data, weights="count", init=init, max_iter=1, tol=0)
    print(f"declarem compile + first fit (max_iter=1): {time.perf_counter() - started:.3f} s")

    def run_declarem():
        stamps = []
        fit = model.fit(data, weights="count", init=init, max_iter=iters, tol=0,
                        progress=lambda *_: stamps.append(time.perf_counter()))
        return fit.params, fit.history, list(np.diff(stamps))

    runners = {"declarem": run_declarem,
               "hand-spmm": lambda: hand.run("spmm", init, iters),
               "hand-cells": lambda: hand.run("cells", init, iters)}
    samples = {name: [] for name in runners}
    fit_times = {name: [] for name in runners}
    last = {}
    names = list(runners)
    for r in range(args.repeats):
        order = names[r % len(names):] + names[:r % len(names)]
        for name in order:
            gc.collect()
            gc.disable()
            try:
                started = time.perf_counter()
                params, history, times = runners[name]()
                fit_times[name].append(time.perf_counter() - started)
            finally:
                gc.enable()
            samples[name].extend(times[1:] if name != "declarem" else times)   # declarem's already from 2
            last[name] = (params, history)
        print(f"  repeat {r + 1}/{args.repeats} ({' then '.join(order)}): " + "; ".join(
            f"{name} {1e3 * statistics.median(samples[name][-(iters - 1):]):.1f} ms/iter" for name in runners))

    per_iter = {name: statistics.median(samples[name]) for name in runners}
    per_fit = {name: statistics.median(fit_times[name]) for name in runners}
    best_hand = min(("hand-spmm", "hand-cells"), key=per_iter.get)
    print()
    print(f"medians over {args.repeats} repeats ({len(samples['declarem'])} iterations each):")
    print(f"{'':12s} {'per iteration':>14s} {'whole fit (' + str(iters) + ' iters)':>22s}")
    for name in runners:
        print(f"{name:12s} {1e3 * per_iter[name]:11.1f} ms {per_fit[name]:19.3f} s")
    for name in ("hand-spmm", "hand-cells"):
        print(f"ratio declarem / {name}: {per_iter['declarem'] / per_iter[name]:.2f}x per iteration")
    print(f"headline: declarem / fastest hand-written ({best_hand}) = "
          f"{per_iter['declarem'] / per_iter[best_hand]:.2f}x (target <= 1.2x)")

    dm_params, dm_history = last["declarem"]
    for name in ("hand-spmm", "hand-cells"):
        params, history = last[name]
        diffs = ", ".join(f"{node} {_relative(dm_params[node]['probs'], params[node]['probs']):.1e}"
                          for node in ("topic", "word"))
        print(f"max relative |declarem - {name}| after {iters} iterations: {diffs}; objective history "
              f"{_relative(dm_history, history):.1e}")
    print(f"load average at end: {_loadavg()}")
    if args.profile:
        profile_estep(model, data, init)
    return 0


if __name__ == "__main__":
    sys.exit(main())
