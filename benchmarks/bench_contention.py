"""declarem and its peers per EM iteration on a quiet machine and on a busy one, side by side in one run.

    python benchmarks/bench_contention.py [--repeats 3] [--iters 4] [--loads quiet,spin1,spin2,blas]
                                          [--cases gmm-full,gmm-diag,latent-class,topic]

Loads, started by this script and running through each load's whole measurement:
  * quiet:  nothing else;
  * spin1:  one single-threaded CPU-bound process (``while True: pass``);
  * spin2:  two of them;
  * blas:   one other numpy job, products of 1000 x 1000 matrices with its BLAS on every core.

Cases (seeded data; every implementation of a case starts from the same parameters and runs tol = 0):
  * gmm-full, gmm-diag: N = 200,000, D = 16, K = 16 (benchmarks/bench_gmm.py's case). scikit-learn's
    GaussianMixture with numpy's BLAS on every core (as users run it) and on one thread; the faster of the
    two in each load is the reference. Other BLAS pools (scipy's) run one thread, as in bench_gmm.py.
  * latent-class: N = 200,000 rows of 8 categorical items of 6 categories, K = 4 classes (the rows are nearly
    all distinct, so the E-step has 25 chunks to share out); the reference is hand-written numpy EM in
    probability space (gathers and bincounts, as benchmarks/bench_latent_class.py's).
  * topic: benchmarks/bench_topic.py's corpus (2,000 documents, 5,000 words, 20 topics); the reference is
    its hand-written sparse numpy (``HandEM.spmm_step``), one thread.
declarem runs as users run it: ``threads`` at its default (the usable cores, a pool over row chunks with one
BLAS thread each), and also with ``threads=1`` (one thread, one BLAS thread), the configuration it must
never be slower than.

Per iteration: declarem from its progress callback, scikit-learn from its verbose "time lapse" lines, the
hand-written loops timed per iteration; the first iteration of every fit is dropped (it includes the
start); the figure is the median over all iterations of all repeats. The implementations take turns, in an
order rotated every repeat. Model compilation is excluded (a warm-up fit before timing).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import re
import statistics
import subprocess
import sys
import time
import warnings

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_gmm import configure_threads, make_problem  # noqa: E402
from bench_topic import HandEM, declarem_model, make_corpus, make_init  # noqa: E402
from machine import cpu_model, loadavg, ncpu  # noqa: E402

LOADS = {
    "quiet": [],
    "spin1": ["spin"],
    "spin2": ["spin", "spin"],
    "blas": ["blas"],
}
LOAD_LABELS = {"quiet": "quiet", "spin1": "1 spinner", "spin2": "2 spinners", "blas": "numpy job, BLAS on all cores"}
LOAD_PROGRAMS = {
    "spin": "while True: pass",
    "blas": "import numpy as np\na = np.random.default_rng(0).random((1000, 1000))\nwhile True:\n    a @ a\n",
}
THREAD_VARIABLES = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")


@contextlib.contextmanager
def load(kind):
    """The competing processes of one load, running for the duration of the block."""
    environment = {key: value for key, value in os.environ.items() if key not in THREAD_VARIABLES}
    processes = [subprocess.Popen([sys.executable, "-c", LOAD_PROGRAMS[program]], env=environment)
                 for program in LOADS[kind]]
    try:
        time.sleep(1.0 if processes else 0.0)      # let the competitors reach full speed
        yield
    finally:
        for process in processes:
            process.kill()
            process.wait()


# --------------------------------------------------------------------------------------------- the cases

def gmm_case(cov, iters):
    import networkx as nx
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.mixture import GaussianMixture

    import declarem

    n, d, k = 200_000, 16, 16
    x, w0, m0, c0, prec0 = make_problem(n, d, k, cov)
    lapse = re.compile(r"Iteration (\d+)\s+time lapse ([0-9.eE+-]+)s")

    def sklearn_fit(blas_threads):
        def run():
            configure_threads(blas_threads, 1)
            model = GaussianMixture(n_components=k, covariance_type=cov, weights_init=w0, means_init=m0,
                                    precisions_init=prec0, max_iter=iters, tol=0.0, reg_covar=1e-6,
                                    init_params="random", random_state=0, verbose=2, verbose_interval=1)
            out = io.StringIO()
            with warnings.catch_warnings(), contextlib.redirect_stdout(out):
                warnings.simplefilter("ignore", ConvergenceWarning)
                model.fit(x)
            return [float(t) for i, t in lapse.findall(out.getvalue()) if int(i) >= 2]
        return run

    graph = nx.DiGraph()
    graph.add_node("z", family="categorical", latent=True, k=k)
    graph.add_node("x", family="normal", dim=d, covariance=cov)
    graph.add_edge("z", "x")
    model = declarem.Model(graph)
    init = {"z": {"probs": w0}, "x": {"mean": m0, "cov" if cov == "full" else "var": c0}}
    model.fit({"x": x[:2000]}, init=init, max_iter=1, tol=0)          # compile before timing
    return {
        f"scikit-learn, BLAS {ncpu()} threads": sklearn_fit(ncpu()),
        "scikit-learn, BLAS 1 thread": sklearn_fit(1),
        "declarem": declarem_fit(model, {"x": x}, init, iters, None),
        "declarem, threads=1": declarem_fit(model, {"x": x}, init, iters, 1),
    }


def declarem_fit(model, data, init, iters, threads, weights=None):
    def run():
        stamps = []
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model.fit(data, weights=weights, init=init, max_iter=iters, tol=0, threads=threads,
                      progress=lambda *_: stamps.append(time.perf_counter()))
        return list(np.diff(stamps))
    return run


def latent_class_case(iters, n=200_000, items=8, categories=6, k=4, seed=20261201):
    import networkx as nx

    import declarem

    rng = np.random.default_rng(seed)
    classes = rng.integers(0, k, n)
    tables = rng.dirichlet(np.full(categories, 0.5), size=(items, k))        # (items, k, categories)
    columns = [(rng.random(n)[:, None] > np.cumsum(tables[i][classes], axis=1)).sum(axis=1).clip(0, categories - 1)
               for i in range(items)]
    start = np.random.default_rng(7).dirichlet(np.full(categories, 10.0), size=(items, k))
    graph = nx.DiGraph()
    graph.add_node("z", family="categorical", latent=True, k=k)
    data = {}
    init = {"z": {"probs": np.full(k, 1.0 / k)}}
    for i in range(items):
        graph.add_node(f"x{i}", family="categorical", k=categories)
        graph.add_edge("z", f"x{i}")
        data[f"x{i}"] = columns[i]
        init[f"x{i}"] = {"probs": start[i]}
    model = declarem.Model(graph)
    model.fit({name: column[:2000] for name, column in data.items()}, init=init, max_iter=1, tol=0)

    def hand_written():
        flat = [(column[:, None] * k + np.arange(k)).ravel() for column in columns]
        pz, probs = np.full(k, 1.0 / k), [table.copy() for table in start]
        responsibilities, gathered = np.empty((n, k)), np.empty((n, k))
        times = []
        for _ in range(iters):
            began = time.perf_counter()
            np.take(np.ascontiguousarray(probs[0].T), columns[0], axis=0, out=responsibilities)
            responsibilities *= pz
            for i in range(1, items):
                np.take(np.ascontiguousarray(probs[i].T), columns[i], axis=0, out=gathered)
                responsibilities *= gathered
            total = responsibilities.sum(axis=1)
            _ = float(np.log(total).sum())                                     # the objective
            responsibilities /= total[:, None]
            pz = responsibilities.sum(axis=0) / n
            for i in range(items):
                counts = np.bincount(flat[i], weights=responsibilities.ravel(),
                                     minlength=categories * k).reshape(categories, k).T
                probs[i] = counts / counts.sum(axis=1, keepdims=True)
            times.append(time.perf_counter() - began)
        return times[1:]

    return {
        "hand-written numpy": hand_written,
        "declarem": declarem_fit(model, data, init, iters, None),
        "declarem, threads=1": declarem_fit(model, data, init, iters, 1),
    }


def topic_case(iters):
    matrix = make_corpus(2000, 5000, 20, 100.0)
    init = make_init(2000, 5000, 20)
    model = declarem_model(2000, 5000, 20)
    coo = matrix.tocoo()
    data = {"doc": coo.row, "word": coo.col}
    model.fit(data, weights=coo.data, init=init, max_iter=1, tol=0)
    hand = HandEM(matrix)

    def hand_written():
        return hand.run("spmm", init, iters)[2][1:]

    return {
        "hand-written sparse numpy": hand_written,
        "declarem": declarem_fit(model, data, init, iters, None, weights=coo.data),
    }


CASES = {
    "gmm-full": lambda iters: gmm_case("full", iters),
    "gmm-diag": lambda iters: gmm_case("diag", iters),
    "latent-class": latent_class_case,
    "topic": topic_case,
}


# ------------------------------------------------------------------------------------------------ running

def measure(implementations, repeats):
    """Median seconds per iteration of each implementation, taking turns in a rotated order."""
    samples = {name: [] for name in implementations}
    names = list(implementations)
    for repeat in range(repeats):
        shift = repeat % len(names)
        for name in names[shift:] + names[:shift]:
            samples[name].extend(implementations[name]())
    return {name: statistics.median(values) for name, values in samples.items()}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--iters", type=int, default=4, help="EM iterations per timed fit (>= 3)")
    parser.add_argument("--loads", default=",".join(LOADS))
    parser.add_argument("--cases", default=",".join(CASES))
    args = parser.parse_args(argv)
    loads, cases = args.loads.split(","), args.cases.split(",")
    import numpy
    import threadpoolctl
    print(f"machine: {ncpu()} CPUs ({cpu_model()}); numpy {numpy.__version__}; BLAS: "
          + "; ".join(f"{os.path.basename(info['filepath'])} {info['internal_api']} {info['version']}"
                      for info in threadpoolctl.threadpool_info() if info["user_api"] == "blas"))
    print(f"load average before: {loadavg()}; {args.repeats} repeats of {args.iters}-iteration fits")
    results = {}
    for case in cases:
        implementations = CASES[case](args.iters)
        for kind in loads:
            with load(kind):
                results[case, kind] = measure(implementations, args.repeats)
            print(f"  {case} / {LOAD_LABELS[kind]}: " + ", ".join(
                f"{name} {1e3 * value:.1f} ms" for name, value in results[case, kind].items()), flush=True)
    print()
    print("| case | implementation | " + " | ".join(LOAD_LABELS[kind] for kind in loads) + " |")
    print("|---|---|" + "---|" * len(loads))
    for case in cases:
        names = list(results[case, loads[0]])
        for name in names:
            print(f"| {case} | {name} | " + " | ".join(
                f"{1e3 * results[case, kind][name]:.1f} ms" for kind in loads) + " |")
        peers = [name for name in names if not name.startswith("declarem")]
        print(f"| {case} | **declarem / best peer** | " + " | ".join(
            f"**{results[case, kind]['declarem'] / min(results[case, kind][p] for p in peers):.2f}x**"
            for kind in loads) + " |")
        if "declarem, threads=1" in names:
            print(f"| {case} | declarem / declarem threads=1 | " + " | ".join(
                f"{results[case, kind]['declarem'] / results[case, kind]['declarem, threads=1']:.2f}x"
                for kind in loads) + " |")
        if loads[0] == "quiet":
            for name in ["declarem"] + peers:
                print(f"| {case} | growth over quiet: {name} | " + " | ".join(
                    f"{results[case, kind][name] / results[case, 'quiet'][name]:.2f}x" for kind in loads) + " |")
    print()
    print(f"load average after: {loadavg()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
