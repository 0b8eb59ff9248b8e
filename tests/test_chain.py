"""Hidden Markov chains from lag edges: forward-backward and Viterbi against brute force, the hand-coded
Baum-Welch reference and Zucchini & MacDonald's published fit; declarations and bad input."""

import itertools
import json
from pathlib import Path

import networkx as nx
import numpy as np
import pytest
import scipy.stats

import declarem
from declarem.compare import compare
from declarem.data import read_csv
from support import load_file, run_cli

ROOT = Path(__file__).resolve().parent.parent
BOOK_START = {"z": {"start": [0.5, 0.5], "probs": [[0.9, 0.1], [0.1, 0.9]]}, "count": {"rate": [10.0, 30.0]}}


def _reference():
    return load_file(ROOT / "models" / "poisson_hmm_reference.py")


def poisson_hmm(k=2, prior=None):
    graph = nx.DiGraph()
    graph.add_node("z", family="categorical", latent=True, k=k, **({"prior": prior} if prior else {}))
    graph.add_edge("z", "z", lag=1)
    graph.add_node("count", family="poisson")
    graph.add_edge("z", "count")
    return declarem.Model(graph)


@pytest.fixture(scope="module")
def quakes():
    return {"count": read_csv(ROOT / "models" / "earthquakes.csv")["count"]}


@pytest.mark.parametrize("lengths", [None, [40, 30, 37], [1, 50, 56]])
def test_ten_iterations_equal_the_hand_coded_baum_welch(quakes, lengths):
    reference = _reference()
    fit = poisson_hmm().fit(quakes, init=BOOK_START, max_iter=10, tol=0, lengths=lengths)
    params = BOOK_START
    for _ in range(10):
        params = reference.step(quakes, params, lengths=lengths)
    np.testing.assert_allclose(fit.params["z"]["start"], params["z"]["start"], rtol=1e-10, atol=1e-300)
    np.testing.assert_allclose(fit.params["z"]["probs"], params["z"]["probs"], rtol=1e-10)
    np.testing.assert_allclose(fit.params["count"]["rate"], params["count"]["rate"], rtol=1e-10)
    assert fit.loglik == pytest.approx(reference.loglik(quakes, params, lengths=lengths), rel=1e-12)
    assert np.all(np.diff(fit.history) >= -1e-9)


def test_the_published_two_state_fit(quakes):
    """Zucchini & MacDonald (2009), Table 4.1: EM from their start converges to these figures."""
    fit = poisson_hmm().fit(quakes, init=BOOK_START, tol=1e-12, max_iter=2000)
    assert fit.converged
    assert -fit.loglik == pytest.approx(341.87870, abs=5e-6)
    np.testing.assert_allclose(fit.params["count"]["rate"], [15.421, 26.018], atol=5e-4)
    np.testing.assert_allclose(fit.params["z"]["probs"][[0, 1], [1, 0]], [0.071626, 0.11903], atol=5e-6)
    np.testing.assert_allclose(fit.params["z"]["start"], [1.0, 0.0], atol=1e-6)


def test_seeded_start_needs_no_init(quakes):
    fit = poisson_hmm().fit(quakes, seed=0, restarts=2)
    assert fit.converged and -fit.loglik == pytest.approx(341.8787, abs=1e-3)


# -- brute force over every path, with a state that emits a mixture (z_t -> m_t -> x_t) -------------

def mixture_chain():
    graph = nx.DiGraph()
    graph.add_node("z", family="categorical", latent=True, k=2, lagged=["z"])
    graph.add_node("m", family="categorical", latent=True, k=2)
    graph.add_node("x", family="normal")
    graph.add_edges_from([("z", "m"), ("m", "x"), ("z", "x")])
    return declarem.Model(graph)


MIXTURE_PARAMS = {"z": {"start": [0.3, 0.7], "probs": [[0.8, 0.2], [0.35, 0.65]]},
                  "m": {"probs": [[0.6, 0.4], [0.1, 0.9]]},
                  "x": {"mean": [[-1.0, 0.5], [2.0, 3.5]], "var": [[1.0, 0.5], [0.7, 2.0]]}}


def _path_probabilities(x, params):
    """Every joint path of (z, m) over the steps with its joint probability with x."""
    p = {n: {a: np.asarray(v) for a, v in d.items()} for n, d in params.items()}
    paths = {}
    for zs in itertools.product(range(2), repeat=len(x)):
        for ms in itertools.product(range(2), repeat=len(x)):
            prob = p["z"]["start"][zs[0]]
            for t in range(len(x)):
                if t:
                    prob *= p["z"]["probs"][zs[t - 1], zs[t]]
                prob *= p["m"]["probs"][zs[t], ms[t]] * scipy.stats.norm.pdf(
                    x[t], p["x"]["mean"][zs[t], ms[t]], np.sqrt(p["x"]["var"][zs[t], ms[t]]))
            paths[(zs, ms)] = prob
    return paths


def test_posterior_and_viterbi_equal_brute_force_over_all_paths():
    x = np.array([0.2, 2.5, -1.1, 3.9])
    model = mixture_chain()
    fit = declarem.Fit(model=model, params=MIXTURE_PARAMS, loglik=0.0, history=[0.0], converged=False,
                       n_iter=0, n_observations=4)
    paths = _path_probabilities(x, MIXTURE_PARAMS)
    total = sum(paths.values())
    assert fit.score({"x": x}) == pytest.approx(np.log(total), rel=1e-12)
    marginals = fit.posterior({"x": x})
    for t in range(4):
        for node, index in (("z", 0), ("m", 1)):
            for value in range(2):
                expected = sum(q for path, q in paths.items() if path[index][t] == value) / total
                assert marginals[node][t, value] == pytest.approx(expected, rel=1e-10)
    best = max(paths, key=paths.get)
    decoded = fit.decode({"x": x})
    assert tuple(decoded["z"]) == best[0] and tuple(decoded["m"]) == best[1]


def test_expected_transitions_equal_brute_force():
    """One EM step's transition rows are the brute-force expected transition counts, normalised."""
    x = np.array([0.2, 2.5, -1.1, 3.9, 0.4])
    fit = mixture_chain().fit({"x": x}, init=MIXTURE_PARAMS, max_iter=1, tol=0, reg_covar=0)
    paths = _path_probabilities(x, MIXTURE_PARAMS)
    counts = np.zeros((2, 2))
    for (zs, _), q in paths.items():
        for a, b in zip(zs[:-1], zs[1:]):
            counts[a, b] += q
    np.testing.assert_allclose(fit.params["z"]["probs"], counts / counts.sum(axis=1, keepdims=True), rtol=1e-10)


def test_hard_em_and_squarem_on_a_chain(quakes):
    hard = poisson_hmm().fit(quakes, init=BOOK_START, hard=True)
    assert hard.converged and np.all(np.diff(hard.history) >= -1e-9)
    fast = poisson_hmm().fit(quakes, init=BOOK_START, tol=1e-12, accelerate="squarem")
    assert fast.converged and -fast.loglik == pytest.approx(341.87870, abs=5e-6)


def test_dirichlet_prior_on_start_and_rows(quakes):
    fit = poisson_hmm(prior={"dirichlet": 3.0}).fit(quakes, init=BOOK_START, tol=1e-10)
    assert np.all(fit.params["z"]["start"] > 0.01)
    assert fit.log_prior != 0.0 and np.all(np.diff(fit.history) >= -1e-9)


# -- declarations, sequences, bad input -----------------------------------------------------------------

SPEC = """
[data]
path = "quakes.csv"
sequence = "run"

[nodes.z]
family = "categorical"
latent = true
k = 2
lagged = ["z"]

[nodes.count]
family = "poisson"
parents = ["z"]
"""


def test_spec_with_lagged_and_a_sequence_column(tmp_path, quakes):
    runs = np.repeat([7, 3, 9], [40, 30, 37])
    (tmp_path / "quakes.csv").write_text("run,count\n" + "\n".join(f"{r},{int(c)}" for r, c in
                                                                   zip(runs, quakes["count"])) + "\n")
    (tmp_path / "spec.toml").write_text(SPEC)
    model = declarem.load_model(tmp_path / "spec.toml")
    from_spec = model.fit(tmp_path / "quakes.csv", init=BOOK_START, max_iter=5, tol=0)
    from_lengths = poisson_hmm().fit(quakes, init=BOOK_START, max_iter=5, tol=0, lengths=[40, 30, 37])
    np.testing.assert_allclose(from_spec.params["z"]["probs"], from_lengths.params["z"]["probs"], rtol=1e-12)
    assert model.to_spec()["nodes"]["z"]["lagged"] == ["z"]
    runs[45] = 7
    (tmp_path / "quakes.csv").write_text("run,count\n" + "\n".join(f"{r},{int(c)}" for r, c in
                                                                   zip(runs, quakes["count"])) + "\n")
    with pytest.raises(declarem.DeclaremError, match="column 'run', row 45: .*contiguous"):
        model.fit(tmp_path / "quakes.csv")


def test_compare_passes_the_sequences_to_the_reference(tmp_path, quakes):
    """The spec's sequence column splits the data for the derived update and reaches the reference as lengths."""
    runs = np.repeat([7, 3, 9], [40, 30, 37])
    (tmp_path / "quakes.csv").write_text("run,count\n" + "\n".join(f"{r},{int(c)}" for r, c in
                                                                   zip(runs, quakes["count"])) + "\n")
    (tmp_path / "spec.toml").write_text(SPEC)
    (tmp_path / "init.json").write_text(json.dumps(BOOK_START))
    reference = ROOT / "models" / "poisson_hmm_reference.py"
    result = run_cli("compare", tmp_path / "spec.toml", "--reference", reference, "--init", tmp_path / "init.json",
                     "--data", tmp_path / "quakes.csv")
    assert result.returncode == 0, result.stdout + result.stderr
    model = poisson_hmm()
    seen = []

    def one_sequence(data, params):
        seen.append(len(data["count"]))
        return _reference().step(data, params)
    assert compare(model, quakes, one_sequence, init=BOOK_START, iterations=2).agree and seen == [107, 107]
    split = compare(model, quakes, _reference().step, init=BOOK_START, iterations=3, lengths=[40, 30, 37])
    assert split.agree
    with pytest.raises(declarem.DeclaremError, match="reference raised TypeError"):
        compare(model, quakes, one_sequence, init=BOOK_START, lengths=[40, 67])


@pytest.mark.parametrize("lengths, fragment", [
    ([50, 50], "sum to 100, but the data has 107 rows"),
    ([107, 0], "positive"),
    ("107", "list of positive integers"),
])
def test_bad_lengths(quakes, lengths, fragment):
    with pytest.raises(declarem.DeclaremError, match=fragment):
        poisson_hmm().fit(quakes, lengths=lengths, max_iter=1)


def test_bad_chain_declarations():
    graph = nx.DiGraph()
    graph.add_node("z", family="categorical", latent=True, k=2)
    graph.add_node("count", family="poisson")
    graph.add_edge("z", "count")
    graph.add_edge("z", "z", lag=2)
    with pytest.raises(declarem.DeclaremError, match="lag 2 is not supported"):
        declarem.Model(graph)
    graph.remove_edge("z", "z")
    graph.add_edge("count", "z", lag=1)
    with pytest.raises(declarem.DeclaremError, match="lag edge from 'count' to another node is not supported"):
        declarem.Model(graph)
    observed = nx.DiGraph()
    observed.add_node("c", family="poisson", lagged=["c"])
    with pytest.raises(declarem.DeclaremError, match="only a latent categorical node can be a chain"):
        declarem.Model(observed)
    plain = nx.DiGraph()
    plain.add_node("c", family="poisson")
    with pytest.raises(declarem.DeclaremError, match="lengths apply to models with a chain"):
        declarem.Model(plain).fit({"c": np.arange(5)}, lengths=[5])


def test_a_transition_row_that_does_not_sum_to_one_is_refused(quakes):
    init = {"z": {"start": [0.5, 0.5], "probs": [[0.9, 0.2], [0.1, 0.9]]}}
    with pytest.raises(declarem.DeclaremError, match="'z.probs' rows must be probabilities summing to 1"):
        poisson_hmm().fit(quakes, init=init)


def test_sampled_sequences_recover_the_transitions():
    """Sequences drawn from a chain are refitted close to the parameters that drew them."""
    model = mixture_chain()
    lengths = [1500, 1000, 500]
    data = model.sample(3000, MIXTURE_PARAMS, seed=3, lengths=lengths)
    assert np.array_equal(model.sample(3000, MIXTURE_PARAMS, seed=3, lengths=lengths)["z"], data["z"])
    z = data["z"]
    starts = np.cumsum([0] + lengths[:-1])
    following = np.setdiff1d(np.arange(3000), starts)
    counts = np.zeros((2, 2))
    np.add.at(counts, (z[following - 1], z[following]), 1)
    np.testing.assert_allclose(counts / counts.sum(axis=1, keepdims=True), MIXTURE_PARAMS["z"]["probs"], atol=0.04)
    fit = model.fit({"x": data["x"]}, init=MIXTURE_PARAMS, lengths=lengths, max_iter=40, tol=0)
    np.testing.assert_allclose(fit.params["z"]["probs"], MIXTURE_PARAMS["z"]["probs"], atol=0.1)


def test_command_line_decode_and_sample_sequences(tmp_path, quakes):
    from support import run_cli
    spec = ROOT / "models" / "earthquakes_hmm2.toml"
    fitted = tmp_path / "fit.json"
    assert run_cli("fit", spec, "--out", fitted, "--quiet").returncode == 0
    out = tmp_path / "path.csv"
    result = run_cli("decode", spec, "--fit", fitted, "--out", out)
    assert result.returncode == 0, result.stderr
    lines = out.read_text().splitlines()
    fit = declarem.Fit.load(fitted)
    assert lines[0] == "z" and [int(v) for v in lines[1:]] == list(fit.decode(quakes)["z"])
    sampled = run_cli("sample", spec, "--params", fitted, "--n", "10", "--lengths", "4,6")
    assert sampled.returncode == 0 and sampled.stdout.splitlines()[0] == "z,count"
    bad = run_cli("sample", spec, "--params", fitted, "--n", "10", "--lengths", "4,5")
    assert bad.returncode == 2 and "lengths sum to 9, but the data has 10 rows" in bad.stderr
