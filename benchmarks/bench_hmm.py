"""declarem's chain engine against hmmlearn, side by side in one process: time per iteration, to convergence, memory.

Usage: python benchmarks/bench_hmm.py [--repeats 5] [--iterations 20] [--cases NAME ...] [--no-converge]
       python benchmarks/bench_hmm.py --process-peak LIBRARY CASE   (one process's peak, in MB)

Cases (issue #9): 8 states; Gaussian emissions in 4 dimensions with diagonal and with full
covariance, on 100 sequences of 1,000 steps and on one sequence of 100,000 steps; categorical
emissions over 1,000 symbols on the same two layouts. Seeded data drawn from an HMM (staying put
with probability 0.8; Gaussian means 2 apart in each dimension; each state's symbols uniform over
a window of 250 that overlaps the next state's by half). Both libraries start from the same
parameters (Gaussian means the true ones plus standard normal noise, as a k-means start would
give, and unit variances; categorical tables drawn from a flat Dirichlet, so the first iterations
see nearly uninformative emissions; both add 1e-6 to each variance, ``reg_covar`` and ``min_covar``) and hmmlearn runs
``implementation="scaling"``, its faster one, plain maximum likelihood.

- per iteration: a fit of ``--iterations`` iterations with convergence off, whole (validation and
  setup included), divided by the iterations it ran; the libraries take turns (each first in every
  other repeat); median of ``--repeats``. "ratio" divides the two medians; "pairs' ratio" is the
  median of each repeat's own ratio, whose two fits run seconds apart (steadier on a host whose
  speed moves from minute to minute).
  hmmlearn stops before ``n_iter`` even at ``tol=0`` once its log-likelihood stops rising (it tests
  ``change < tol``): in the Gaussian cases it runs 13 of 20, so dividing by 20 would flatter it.
  declarem runs one E-step more than it has iterations (the objective at the final parameters).
- to convergence: one fit each, declarem at ``tol=1e-8`` (relative objective change and parameter
  distance), hmmlearn at the same relative change turned into its absolute ``tol``, both at most
  ``CONVERGE_ITERATIONS``; iterations and time.
- memory, two ways: the peak of traced allocations during one fit (numpy reports its arrays to
  tracemalloc: the fit's working memory), each library on its own; and the peak resident set size of a
  fresh process that makes the data, imports one library and fits (``--process-peak``: what the
  machine sees, imports included), each library in its own process. Issue #9's clause "memory no
  more than hmmlearn's" is judged by the second: the memory a machine must have to run the job. The
  first is printed beside it because it differs by design: hmmlearn works on one sequence at a time,
  declarem on every step of every sequence at once (which is where its speed comes from), with each
  row's statistics computed once per data set (issue #13).
declarem's derivation is compiled before timing.
"""

import argparse
import resource
import subprocess
import sys
import time
import tracemalloc

import networkx as nx
import numpy as np
from machine import cpu_model, loadavg, ncpu

STATES, DIM, SYMBOLS = 8, 4, 1000
CONVERGE_ITERATIONS = 300
LAYOUTS = {"100 x 1,000": [1000] * 100, "1 x 100,000": [100000]}
EMISSIONS = ("diag", "full", "categorical")


class Case:
    """One emission type on one layout: data, a shared start, declarem's model and hmmlearn's."""

    def __init__(self, emission, lengths, rng):
        self.emission, self.lengths = emission, lengths
        n = sum(lengths)
        probs = np.full((STATES, STATES), 0.2 / (STATES - 1))
        np.fill_diagonal(probs, 0.8)
        states = np.concatenate([markov_states(probs, length, rng) for length in lengths])
        self.chain = {"start": np.full(STATES, 1 / STATES), "probs": probs}
        if emission == "categorical":
            self.x = ((states * SYMBOLS // STATES + rng.integers(0, 2 * SYMBOLS // STATES, size=n)) % SYMBOLS)[:, None]
            table = rng.dirichlet(np.ones(SYMBOLS), size=STATES)
            self.data = {"x": self.x[:, 0]}
            self.init = {"z": self.chain, "x": {"probs": table}}
        else:
            self.x = rng.normal(size=(n, DIM)) + 2.0 * states[:, None]
            mean = 2.0 * np.arange(STATES)[:, None] + rng.normal(size=(STATES, DIM))
            var = np.ones((STATES, DIM)) if emission == "diag" else np.tile(np.eye(DIM), (STATES, 1, 1))
            self.data = {f"x_{i}": self.x[:, i] for i in range(DIM)}
            self.init = {"z": self.chain, "x": {"mean": mean, "var" if emission == "diag" else "cov": var}}
        self._model = None

    @property
    def model(self):
        """declarem's model, made (and declarem imported) when first used."""
        if self._model is None:
            import declarem
            graph = nx.DiGraph()
            graph.add_node("z", family="categorical", latent=True, k=STATES, lagged=["z"])
            if self.emission == "categorical":
                graph.add_node("x", family="categorical", k=SYMBOLS)
            else:
                graph.add_node("x", family="normal", dim=DIM, covariance=self.emission)
            graph.add_edge("z", "x")
            self._model = declarem.Model(graph)
        return self._model

    def ours(self, iterations, tol=0.0):
        return self.model.fit(self.data, init=self.init, max_iter=iterations, tol=tol, reg_covar=1e-6,
                              lengths=self.lengths)

    def theirs(self, iterations, tol=0.0):
        from hmmlearn import hmm
        if self.emission == "categorical":
            peer = hmm.CategoricalHMM(STATES, n_features=SYMBOLS, init_params="", params="ste", n_iter=iterations,
                                      tol=tol, implementation="scaling")
            peer.emissionprob_ = self.init["x"]["probs"]
        else:
            peer = hmm.GaussianHMM(STATES, self.emission, init_params="", params="stmc", n_iter=iterations, tol=tol,
                                   implementation="scaling", covars_prior=0, min_covar=1e-6)
            peer.means_ = self.init["x"]["mean"]
            peer.covars_ = self.init["x"]["var" if self.emission == "diag" else "cov"]
        peer.startprob_, peer.transmat_ = self.chain["start"], self.chain["probs"]
        return peer.fit(self.x, self.lengths)


def markov_states(probs, length, rng):
    """A path of the chain from a uniform start, drawn through cumulative rows."""
    cumulative = np.cumsum(probs, axis=1)
    draws = rng.random(length)
    states = np.empty(length, dtype=np.intp)
    states[0] = int(draws[0] * len(probs))
    for t in range(1, length):
        states[t] = min(int(np.searchsorted(cumulative[states[t - 1]], draws[t])), len(probs) - 1)
    return states


def seconds(run):
    began = time.perf_counter()
    result = run()
    return time.perf_counter() - began, result


def peak_bytes(run):
    tracemalloc.start()
    run()
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return peak


def case_named(name):
    """The case called ``name`` ('diag 1 x 100,000'), with its seeded data."""
    emission, layout = name.split(" ", 1)
    return Case(emission, LAYOUTS[layout], np.random.default_rng(0))


def process_peak(library, name):
    """Peak resident set size, in MB, of this process after making the case's data and fitting it (2
    iterations) with one library, imported here and nowhere before: run in a fresh process."""
    case = case_named(name)
    if library == "declarem":
        case.model.compiled
        case.ours(2)
    else:
        case.theirs(2)
    return resident_peak() / 1024


def resident_peak():
    """This process's peak resident set size in kB: VmHWM, which starts afresh at exec (Linux's
    ru_maxrss keeps the forking parent's peak across exec, so a child started by a big parent
    would report the parent's)."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return float(line.split()[1])
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def fresh_process_peak(library, name):
    """``process_peak`` in a new Python process."""
    done = subprocess.run([sys.executable, __file__, "--process-peak", library, name], check=True,
                          capture_output=True, text=True)
    return float(done.stdout.split()[-1])


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--iterations", type=int, default=20)
    parser.add_argument("--cases", nargs="*", help="e.g. 'diag 1 x 100,000' (default: all six)")
    parser.add_argument("--no-converge", action="store_true")
    parser.add_argument("--process-peak", nargs=2, metavar=("LIBRARY", "CASE"),
                        help="print one fresh process's peak RSS (MB) for declarem or hmmlearn on CASE, and stop")
    args = parser.parse_args()
    if args.process_peak:
        print(f"{process_peak(*args.process_peak):.1f}")
        return
    print(f"machine: {ncpu()} CPUs ({cpu_model()}); load average before: {loadavg()}")
    print("| case | declarem ms/iter | hmmlearn ms/iter | ratio | pairs' ratio | iterations run | to convergence: "
          "declarem | hmmlearn | fit's traced peak MB: declarem | hmmlearn | process peak RSS MB: declarem | hmmlearn |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for emission in EMISSIONS:
        for layout in LAYOUTS:
            name = f"{emission} {layout}"
            if args.cases and name not in args.cases:
                continue
            case = case_named(name)
            case.ours(1)
            case.theirs(1)
            samples = []
            for repeat in range(args.repeats):
                # The order alternates, so that neither library always runs first after the other.
                for library in ("ours", "theirs") if repeat % 2 == 0 else ("theirs", "ours"):
                    if library == "ours":
                        took, timed = seconds(lambda: case.ours(args.iterations))
                    else:
                        peer_took, peer_timed = seconds(lambda: case.theirs(args.iterations))
                samples.append((took / timed.n_iter, peer_took / peer_timed.monitor_.iter))
            ours, theirs = np.median(samples, axis=0)
            paired = float(np.median([a / b for a, b in samples]))
            converge = "", ""
            if not args.no_converge:
                took, fit = seconds(lambda: case.ours(CONVERGE_ITERATIONS, tol=1e-8))
                peer_took, peer = seconds(lambda: case.theirs(CONVERGE_ITERATIONS, tol=1e-8 * abs(fit.loglik)))
                converge = (f"{took:.2f} s, {fit.n_iter} it", f"{peer_took:.2f} s, {peer.monitor_.iter} it")
            memory = peak_bytes(lambda: case.ours(2)) / 2**20, peak_bytes(lambda: case.theirs(2)) / 2**20
            resident = fresh_process_peak("declarem", name), fresh_process_peak("hmmlearn", name)
            print(f"| {name} | {ours * 1e3:.1f} | {theirs * 1e3:.1f} | **{ours / theirs:.2f}** | {paired:.2f} | "
                  f"{timed.n_iter} / {peer_timed.monitor_.iter} | {converge[0]} | "
                  f"{converge[1]} | {memory[0]:.0f} | {memory[1]:.0f} | {resident[0]:.0f} | {resident[1]:.0f} |",
                  flush=True)
    print(f"median of {args.repeats} fits of {args.iterations} iterations each; load average after: {loadavg()}")


if __name__ == "__main__":
    main()
