"""The chain engine's block routes (declarem/inference/blocks.py, recursions.py) against plain per-sequence
forward-backward: every route, block length, padding and fallback gives the same posteriors, transitions
and log-likelihood."""

import tracemalloc
from pathlib import Path

import networkx as nx
import numpy as np
import pytest
import scipy.stats

import declarem
from declarem.errors import FitError
from declarem.inference import blocks, chain, recursions, viterbi
from support import fit_with_engine, load_file

ROOT = Path(__file__).resolve().parent.parent
LENGTHS = [700, 1, 130, 64, 300, 65]
PARAMS = {"z": {"start": [0.5, 0.3, 0.2], "probs": [[0.9, 0.07, 0.03], [0.05, 0.9, 0.05], [0.1, 0.1, 0.8]]},
          "count": {"rate": [2.0, 8.0, 20.0]}}


def _reference():
    return load_file(ROOT / "models" / "poisson_hmm_reference.py")


def poisson_hmm(k=3):
    graph = nx.DiGraph()
    graph.add_node("z", family="categorical", latent=True, k=k, lagged=["z"])
    graph.add_node("count", family="poisson")
    graph.add_edge("z", "count")
    return declarem.Model(graph)


def sample_counts(params, lengths, seed):
    """Counts from the chain, drawn here in numpy (independent of declarem's sampler)."""
    rng = np.random.default_rng(seed)
    start, probs, rate = (np.asarray(params["z"]["start"]), np.asarray(params["z"]["probs"]),
                          np.asarray(params["count"]["rate"]))
    counts = []
    for length in lengths:
        state = rng.choice(len(start), p=start)
        for _ in range(length):
            counts.append(rng.poisson(rate[state]))
            state = rng.choice(len(start), p=probs[state])
    return {"count": np.array(counts)}


@pytest.fixture(scope="module")
def counts():
    return sample_counts(PARAMS, LENGTHS, seed=3)


class Routes:
    """Counts which route each forward-backward took."""

    def __init__(self, monkeypatch):
        self.taken = []
        for name in ("_by_forgetting", "_by_products"):
            original = getattr(recursions, name)

            def spy(*args, _original=original, _name=name):
                result = _original(*args)
                self.taken.append((_name, args[4], result))
                return result
            monkeypatch.setattr(recursions, name, spy)

    def filled_by(self):
        return {(name, every) for name, every, result in self.taken if result}


def force_block_length(monkeypatch, length):
    monkeypatch.setattr(chain, "choose_block_length", lambda lengths, k: min(length, int(max(lengths))))


def assert_equals_reference(data, params, lengths):
    reference = _reference()
    fit = declarem.Fit(model=poisson_hmm(len(params["z"]["start"])), params=params, loglik=0.0, history=[0.0],
                       converged=False, n_iter=0, n_observations=len(data["count"]))
    u, _, _, loglik = reference.posteriors(data, params, lengths=lengths)
    np.testing.assert_allclose(fit.posterior(data, lengths=lengths)["z"], u, rtol=1e-9, atol=1e-12)
    assert fit.score(data, lengths=lengths) == pytest.approx(loglik, rel=1e-12)
    stepped = poisson_hmm(len(params["z"]["start"])).fit(data, init=params, max_iter=1, tol=0, lengths=lengths)
    expected = reference.step(data, params, lengths=lengths)
    for node, name in (("z", "start"), ("z", "probs"), ("count", "rate")):
        np.testing.assert_allclose(stepped.params[node][name], expected[node][name], rtol=1e-9, atol=1e-13)


@pytest.mark.parametrize("length, route", [(16, "_by_products"), (64, "_by_forgetting"), (97, "_by_forgetting"),
                                           (700, None)])
def test_every_block_length_equals_the_per_sequence_reference(monkeypatch, counts, length, route):
    """16-step blocks leave too little room to forget (8 steps) and join whole-block products; 700 is one block
    per sequence."""
    force_block_length(monkeypatch, length)
    routes = Routes(monkeypatch)
    assert_equals_reference(counts, PARAMS, LENGTHS)
    assert routes.filled_by() == ({(route, chain.NORMALISE_EVERY)} if route else set())


def test_whole_block_products_when_a_block_does_not_forget(monkeypatch, counts):
    force_block_length(monkeypatch, 64)
    monkeypatch.setattr(recursions, "SETTLED", -1.0)
    routes = Routes(monkeypatch)
    assert_equals_reference(counts, PARAMS, LENGTHS)
    assert routes.filled_by() == {("_by_products", chain.NORMALISE_EVERY)}


def test_a_slowly_mixing_chain_falls_back_to_products_unforced(monkeypatch):
    sticky = {"z": {"start": [0.5, 0.5], "probs": [[0.999, 0.001], [0.001, 0.999]]}, "count": {"rate": [10.0, 10.5]}}
    data = sample_counts(sticky, [3000], seed=5)
    force_block_length(monkeypatch, 200)
    routes = Routes(monkeypatch)
    assert_equals_reference(data, sticky, [3000])
    assert ("_by_products", chain.NORMALISE_EVERY) in routes.filled_by()


def test_short_sequences_are_cut_into_joined_blocks_unforced(monkeypatch):
    """A few hundred steps in all: blocks too short to forget in (a few steps), joined by products from the
    start without trying to forget; the results are the per-sequence reference's."""
    lengths = [500, 130]
    assert blocks.choose_block_length(np.array(lengths), 3) in blocks.JOINED_BLOCKS
    data = sample_counts(PARAMS, lengths, seed=4)
    routes = Routes(monkeypatch)
    assert_equals_reference(data, PARAMS, lengths)
    assert routes.taken and {name for name, _, _ in routes.taken} == {"_by_products"}


def test_many_long_sequences_keep_blocks_that_forget():
    """Joining costs a batched product per block and round: for 100 sequences of 1,000 steps it costs more
    than refilling the first steps of blocks long enough to forget in."""
    for lengths, k in (([1000] * 100, 8), ([100000], 8), ([100000], 2)):
        assert blocks.choose_block_length(np.array(lengths), k) >= blocks.SHORTEST_BLOCK


def test_rescaling_at_every_step_then_one_block_per_sequence(monkeypatch, counts):
    """When masses fall too far between rescalings the engine retries rescaling every step, then without blocks."""
    force_block_length(monkeypatch, 64)
    monkeypatch.setattr(recursions, "TINY", 2.0)
    routes = Routes(monkeypatch)
    assert_equals_reference(counts, PARAMS, LENGTHS)
    assert ("_by_forgetting", 1) in routes.filled_by()
    monkeypatch.setattr(recursions, "SETTLED", -1.0)
    monkeypatch.setattr(recursions, "JOIN_TINY", 2.0)
    stepwise = []
    original = recursions._forward

    def whole(*args):
        stepwise.append(args[9] - args[8])
        return original(*args)
    monkeypatch.setattr(recursions, "_forward", whole)
    assert_equals_reference(counts, PARAMS, LENGTHS)
    assert max(stepwise) == max(LENGTHS)


def test_masses_near_underflow_stay_exact(monkeypatch):
    """A transition of 1e-120 taken at every step, the other state's emission nil: rescaled only every
    ``chain.NORMALISE_EVERY`` steps the mass falls below TINY, so the engine rescales at every step; the
    results stay exact."""
    params = {"z": {"start": [0.5, 0.5], "probs": [[1 - 1e-120, 1e-120], [1e-120, 1 - 1e-120]]},
              "count": {"rate": [1.0, 400.0]}}
    data = {"count": np.tile([0, 400], 200)}
    force_block_length(monkeypatch, 64)
    routes = Routes(monkeypatch)
    reference = _reference()
    fit = declarem.Fit(model=poisson_hmm(2), params=params, loglik=0.0, history=[0.0], converged=False, n_iter=0,
                       n_observations=400)
    u, _, _, loglik = reference.posteriors(data, params)
    assert fit.score(data) == pytest.approx(loglik, rel=1e-12)
    np.testing.assert_allclose(fit.posterior(data)["z"], u, rtol=1e-9, atol=1e-12)
    assert routes.filled_by() and all(every == 1 for _, every in routes.filled_by())


def test_an_impossible_row_is_named_in_row_order(monkeypatch):
    force_block_length(monkeypatch, 64)
    params = {"z": {"start": [1.0, 0.0], "probs": [[1.0, 0.0], [0.0, 1.0]]}, "count": {"rate": [3.0, 5.0]}}
    data = {"count": np.zeros(500, dtype=int)}
    params["count"]["rate"] = [0.0, 5.0]
    fit = declarem.Fit(model=poisson_hmm(2), params=params, loglik=0.0, history=[0.0], converged=False, n_iter=0,
                       n_observations=500)
    assert fit.score(data, lengths=[200, 300]) == 0.0
    data["count"][[350, 120]] = 4
    with pytest.raises(FitError, match="row 120 has zero probability"):
        fit.score(data, lengths=[200, 300])


# -- a state that emits a mixture, in blocks, against numpy on the expanded state space -------------

def mixture_chain(components):
    """A two-state chain whose states emit a mixture of ``components`` normals (z -> m -> x)."""
    graph = nx.DiGraph()
    graph.add_node("z", family="categorical", latent=True, k=2, lagged=["z"])
    graph.add_node("m", family="categorical", latent=True, k=components)
    graph.add_node("x", family="normal")
    graph.add_edges_from([("z", "m"), ("m", "x"), ("z", "x")])
    return declarem.Model(graph)


def expanded_chain(params, x):
    """The same chain on expanded states s = components * z + m: start, transition, emission densities (n, S)."""
    weights = np.asarray(params["m"]["probs"])
    components = weights.shape[1]
    start = (np.asarray(params["z"]["start"])[:, None] * weights).reshape(-1)
    transition = np.repeat(np.repeat(np.asarray(params["z"]["probs"]), components, axis=0), components, axis=1) \
        * weights.reshape(-1)
    emission = scipy.stats.norm.pdf(x[:, None], np.asarray(params["x"]["mean"]).reshape(-1),
                                    np.sqrt(np.asarray(params["x"]["var"]).reshape(-1)))
    return start, transition, emission


def test_a_state_emitting_a_mixture_in_blocks(monkeypatch):
    params = {"z": {"start": [0.3, 0.7], "probs": [[0.8, 0.2], [0.35, 0.65]]},
              "m": {"probs": [[0.6, 0.4], [0.1, 0.9]]},
              "x": {"mean": [[-1.0, 0.5], [2.0, 3.5]], "var": [[1.0, 0.5], [0.7, 2.0]]}}
    x = np.random.default_rng(8).normal(1.0, 2.0, size=500)
    lengths = [320, 180]
    force_block_length(monkeypatch, 64)
    routes = Routes(monkeypatch)
    fit = declarem.Fit(model=mixture_chain(2), params=params, loglik=0.0, history=[0.0], converged=False,
                       n_iter=0, n_observations=500)
    marginals = fit.posterior({"x": x}, lengths=lengths)
    loglik = fit.score({"x": x}, lengths=lengths)
    assert routes.filled_by()
    start, transition, emission = expanded_chain(params, x)
    total, posterior = 0.0, []
    for first, stop in ((0, 320), (320, 500)):
        alpha = np.empty((stop - first, 4))
        a = start * emission[first]
        for t in range(stop - first):
            if t:
                a = (alpha[t - 1] @ transition) * emission[first + t]
            total += np.log(a.sum())
            alpha[t] = a / a.sum()
        beta = np.ones(4)
        smoothed = np.empty_like(alpha)
        for t in range(stop - first - 1, -1, -1):
            smoothed[t] = alpha[t] * beta / (alpha[t] * beta).sum()
            beta = transition @ (emission[first + t] * beta)
            beta /= beta.sum()
        posterior.append(smoothed)
    posterior = np.concatenate(posterior).reshape(-1, 2, 2)
    assert loglik == pytest.approx(total, rel=1e-12)
    np.testing.assert_allclose(marginals["z"], posterior.sum(axis=2), rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(marginals["m"], posterior.sum(axis=1), rtol=1e-9, atol=1e-12)


# -- Viterbi over blocks ----------------------------------------------------------------------------

def plain_viterbi(log_start, log_transition, log_emission, lengths):
    """Textbook per-sequence Viterbi in log space: the path (n,) and its log-probability."""
    path, total, first = [], 0.0, 0
    for length in lengths:
        emission = log_emission[first:first + length]
        delta = log_start + emission[0]
        back = np.zeros((length, len(log_start)), dtype=int)
        for t in range(1, length):
            scores = delta[:, None] + log_transition
            back[t] = scores.argmax(axis=0)
            delta = scores.max(axis=0) + emission[t]
        states = [int(delta.argmax())]
        total += delta.max()
        for t in range(length - 1, 0, -1):
            states.append(int(back[t, states[-1]]))
        path.extend(reversed(states))
        first += length
    return np.array(path), total


@pytest.mark.parametrize("length, coalesce", [(16, True), (64, True), (97, True), (64, False), (700, True)])
def test_viterbi_in_blocks_equals_the_textbook_one(monkeypatch, counts, length, coalesce):
    force_block_length(monkeypatch, length)
    if not coalesce:
        monkeypatch.setattr(viterbi, "COALESCED", -1.0)
    coalesced = []
    original = viterbi._Products.coalesce

    def spy(self, limit):
        row = original(self, limit)
        coalesced.append(row is not None)
        return row
    monkeypatch.setattr(viterbi._Products, "coalesce", spy)
    fit = declarem.Fit(model=poisson_hmm(), params=PARAMS, loglik=0.0, history=[0.0], converged=False, n_iter=0,
                       n_observations=len(counts["count"]))
    log_emission = scipy.stats.poisson.logpmf(counts["count"][:, None], PARAMS["count"]["rate"])
    expected, best = plain_viterbi(np.log(PARAMS["z"]["start"]), np.log(PARAMS["z"]["probs"]), log_emission, LENGTHS)
    np.testing.assert_array_equal(fit.decode(counts, lengths=LENGTHS)["z"], expected)
    hard = poisson_hmm().fit(counts, init=PARAMS, max_iter=1, tol=0, hard=True, lengths=LENGTHS)
    assert hard.history[0] == pytest.approx(best, rel=1e-12)
    assert set(coalesced) == (set() if length == 700 else {coalesce})


def test_viterbi_of_a_state_emitting_a_mixture_in_blocks(monkeypatch):
    params = {"z": {"start": [0.3, 0.7], "probs": [[0.9, 0.1], [0.2, 0.8]]},
              "m": {"probs": [[0.6, 0.3, 0.1], [0.1, 0.2, 0.7]]},
              "x": {"mean": [[-3.0, 0.0, 2.0], [4.0, 6.0, 9.0]], "var": [[1.0, 0.5, 2.0], [0.7, 2.0, 1.0]]}}
    rng = np.random.default_rng(12)
    x = np.concatenate([rng.normal(0.0, 2.0, 200), rng.normal(6.0, 2.0, 150), rng.normal(1.0, 3.0, 250)])
    lengths = [420, 180]
    force_block_length(monkeypatch, 64)
    fit = declarem.Fit(model=mixture_chain(3), params=params, loglik=0.0, history=[0.0], converged=False,
                       n_iter=0, n_observations=len(x))
    decoded = fit.decode({"x": x}, lengths=lengths)
    start, transition, emission = expanded_chain(params, x)
    with np.errstate(divide="ignore"):
        expected, _ = plain_viterbi(np.log(start), np.log(transition), np.log(emission), lengths)
    np.testing.assert_array_equal(decoded["z"], expected // 3)
    np.testing.assert_array_equal(decoded["m"], expected % 3)


def test_random_chains_in_the_chosen_blocks_equal_the_textbook_recursions():
    """Seeded random chains, sequences and rates, in the blocks the cost model picks for them: posteriors and
    log-likelihood equal per-sequence Baum-Welch, and the decoded path scores as high as textbook Viterbi's
    (ties may pick another path of the same score)."""
    reference = _reference()
    rng = np.random.default_rng(123)
    chosen = set()
    for case in range(5):
        k = int(rng.integers(2, 5))
        lengths = [int(v) for v in rng.integers(1, 800, int(rng.integers(1, 5)))]
        start = rng.dirichlet(np.ones(k))
        probs = 0.6 * np.eye(k) + 0.4 * rng.dirichlet(np.ones(k), size=k)
        rates = np.sort(rng.uniform(0.5, 20.0, k))
        params = {"z": {"start": start.tolist(), "probs": probs.tolist()}, "count": {"rate": rates.tolist()}}
        data = sample_counts(params, lengths, seed=case)
        length = blocks.choose_block_length(np.array(lengths), k)
        chosen.add("one per sequence" if length >= max(lengths) else
                   "joined" if length < blocks.SHORTEST_BLOCK else "forgetting")
        fit = declarem.Fit(model=poisson_hmm(k), params=params, loglik=0.0, history=[0.0], converged=False,
                           n_iter=0, n_observations=len(data["count"]))
        u, _, _, loglik = reference.posteriors(data, params, lengths=lengths)
        np.testing.assert_allclose(fit.posterior(data, lengths=lengths)["z"], u, rtol=1e-9, atol=1e-12)
        assert fit.score(data, lengths=lengths) == pytest.approx(loglik, rel=1e-12)
        log_emission = scipy.stats.poisson.logpmf(np.asarray(data["count"])[:, None], rates)
        best, best_score = plain_viterbi(np.log(start), np.log(probs), log_emission, lengths)
        path = np.asarray(fit.decode(data, lengths=lengths)["z"])
        score, first = 0.0, 0
        for n in lengths:
            states = path[first:first + n]
            score += (np.log(start[states[0]]) + np.log(probs[states[:-1], states[1:]]).sum()
                      + log_emission[np.arange(first, first + n), states].sum())
            first += n
        assert score == pytest.approx(best_score, rel=1e-12, abs=1e-9)
    assert "joined" in chosen          # (blocks that forget pay off from about 10,000 steps; tested above)


def test_later_e_steps_of_a_long_chain_reuse_its_lattice_arrays(monkeypatch):
    """The second and later E-steps of one fit allocate nothing the size of the lattice (each such array,
    fresh at every E-step, had its pages faulted in anew), and give the same statistics and objective."""
    lengths = [30000, 20000]
    rng = np.random.default_rng(5)
    cumulative = np.cumsum(PARAMS["z"]["probs"], axis=1)
    states = np.zeros(sum(lengths), dtype=np.intp)
    for t, draw in enumerate(rng.random(len(states))[1:], start=1):
        states[t] = min(int(np.searchsorted(cumulative[states[t - 1]], draw)), 2)
    data = {"count": rng.poisson(np.asarray(PARAMS["count"]["rate"])[states])}
    engine, params, _ = fit_with_engine(poisson_hmm(), data, monkeypatch, lengths=lengths, init=PARAMS, max_iter=1)
    assert isinstance(engine, chain.ChainEngine)
    lattice_bytes = sum(lengths) * 3 * 8            # one (rows, k) array of float64
    first_stats, first_objective = engine.expected_statistics(params)
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        stats, objective = engine.expected_statistics(params)
        objective_alone = engine.objective(params)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak - before < lattice_bytes / 2
    assert objective == first_objective == objective_alone
    for name in first_stats.sums:
        np.testing.assert_array_equal(stats.sums[name], first_stats.sums[name])
