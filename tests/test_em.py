"""The EM loop by property and against a deliberately naive EM written out row by row."""

import itertools
import json
import warnings
from pathlib import Path

import networkx as nx
import numpy as np
import pytest
import scipy.stats

import declarem
from declarem.em import ConvergenceMonitor
from declarem.inference import engine_for, prepare_rows

MODELS = Path(__file__).resolve().parents[1] / "models"
from declarem.data import node_data


def chain_model():
    """d (observed, 4 values) -> z1 (latent, 2) -> z2 (latent, 3) -> x (poisson); z1 -> y (bernoulli)."""
    graph = nx.DiGraph()
    graph.add_node("d", family="categorical", k=4)
    graph.add_node("z1", family="categorical", latent=True, k=2)
    graph.add_node("z2", family="categorical", latent=True, k=3)
    graph.add_node("x", family="poisson")
    graph.add_node("y", family="bernoulli")
    graph.add_edges_from([("d", "z1"), ("z1", "z2"), ("z2", "x"), ("z1", "y")])
    return declarem.Model(graph)


TRUE = {
    "d": {"probs": np.array([0.1, 0.2, 0.3, 0.4])},
    "z1": {"probs": np.array([[0.9, 0.1], [0.6, 0.4], [0.3, 0.7], [0.2, 0.8]])},
    "z2": {"probs": np.array([[0.7, 0.2, 0.1], [0.1, 0.3, 0.6]])},
    "x": {"rate": np.array([0.5, 4.0, 12.0])},
    "y": {"p": np.array([0.2, 0.85])},
}


def naive_em_step(data, params):
    """One EM iteration by enumerating (z1, z2) for every row in a Python loop.

    The emission log-densities come from scipy.stats, evaluated once per step for every (row, state)
    pair (one scipy call per row and state would make this loop the slowest part of the test suite).
    """
    n = len(data["x"])
    log_px = scipy.stats.poisson.logpmf(data["x"][:, None], params["x"]["rate"][None, :])    # (n, 3)
    log_py = scipy.stats.bernoulli.logpmf(data["y"][:, None], params["y"]["p"][None, :])     # (n, 2)
    counts_z1 = np.zeros((4, 2))
    counts_z2 = np.zeros((2, 3))
    sum_x = np.zeros(3)
    weight_z2 = np.zeros(3)
    sum_y = np.zeros(2)
    weight_z1 = np.zeros(2)
    counts_d = np.zeros(4)
    loglik = 0.0
    for row in range(n):
        d, x, y = int(data["d"][row]), data["x"][row], data["y"][row]
        joint = np.zeros((2, 3))
        for a, b in itertools.product(range(2), range(3)):
            joint[a, b] = (np.log(params["d"]["probs"][d]) + np.log(params["z1"]["probs"][d, a])
                           + np.log(params["z2"]["probs"][a, b])
                           + log_px[row, b] + log_py[row, a])
        total = scipy.special.logsumexp(joint)
        loglik += total
        post = np.exp(joint - total)
        counts_d[d] += 1
        counts_z1[d] += post.sum(axis=1)
        counts_z2 += post
        sum_x += post.sum(axis=0) * x
        weight_z2 += post.sum(axis=0)
        sum_y += post.sum(axis=1) * y
        weight_z1 += post.sum(axis=1)
    new = {
        "d": {"probs": counts_d / counts_d.sum()},
        "z1": {"probs": counts_z1 / counts_z1.sum(axis=1, keepdims=True)},
        "z2": {"probs": counts_z2 / counts_z2.sum(axis=1, keepdims=True)},
        "x": {"rate": sum_x / weight_z2},
        "y": {"p": sum_y / weight_z1},
    }
    return new, loglik


@pytest.fixture(scope="module")
def chain_data():
    return chain_model().sample(400, TRUE, seed=11)


def test_two_latent_nodes_and_an_observed_parent_match_naive_em(chain_data):
    model = chain_model()
    data = {k: chain_data[k] for k in ("d", "x", "y")}
    start = {
        "d": {"probs": np.full(4, 0.25)},
        "z1": {"probs": np.full((4, 2), 0.5)},
        "z2": {"probs": np.array([[0.5, 0.3, 0.2], [0.2, 0.3, 0.5]])},
        "x": {"rate": np.array([1.0, 3.0, 9.0])},
        "y": {"p": np.array([0.4, 0.6])},
    }
    expected = start
    history = []
    for _ in range(4):
        expected, loglik = naive_em_step(data, expected)
        history.append(loglik)
    fit = model.fit(data, init=start, max_iter=4, tol=0)
    np.testing.assert_allclose(fit.history[:4], history, rtol=1e-12)
    for node, params in expected.items():
        for name, value in params.items():
            np.testing.assert_allclose(fit.params[node][name], value, rtol=1e-10, err_msg=f"{node}.{name}")


def test_posterior_marginals_match_naive(chain_data):
    model = chain_model()
    data = {k: chain_data[k][:30] for k in ("d", "x", "y")}
    fit = model.fit(data, init=TRUE, max_iter=0)
    posterior = fit.posterior(data)
    for row in range(30):
        d, x, y = int(data["d"][row]), data["x"][row], data["y"][row]
        joint = np.array([[TRUE["z1"]["probs"][d, a] * TRUE["z2"]["probs"][a, b]
                           * scipy.stats.poisson.pmf(x, TRUE["x"]["rate"][b])
                           * scipy.stats.bernoulli.pmf(y, TRUE["y"]["p"][a]) for b in range(3)]
                          for a in range(2)])
        joint /= joint.sum()
        np.testing.assert_allclose(posterior["z1"][row], joint.sum(axis=1), rtol=1e-10)
        np.testing.assert_allclose(posterior["z2"][row], joint.sum(axis=0), rtol=1e-10)


def test_chain_recovers_parameters():
    """From one random start (each of seeds 1 to 5 reaches the same optimum on these rows)."""
    model = chain_model()
    data = model.sample(20000, TRUE, seed=5)
    fit = model.fit({k: data[k] for k in ("d", "x", "y")}, restarts=1, seed=1)
    order = np.argsort(fit.params["x"]["rate"])
    np.testing.assert_allclose(fit.params["x"]["rate"][order], TRUE["x"]["rate"], rtol=0.08, atol=0.05)
    z1_order = np.argsort(fit.params["y"]["p"])
    np.testing.assert_allclose(fit.params["y"]["p"][z1_order], TRUE["y"]["p"], atol=0.03)


def test_weights_equal_repeated_rows():
    rng = np.random.default_rng(2)
    graph = nx.DiGraph()
    graph.add_node("z", family="categorical", latent=True, k=2)
    graph.add_node("c", family="poisson")
    graph.add_edge("z", "c")
    model = declarem.Model(graph)
    values = rng.poisson(np.where(rng.random(50) < 0.5, 2.0, 9.0)).astype(float)
    weights = rng.integers(1, 4, size=50)
    init = {"z": {"probs": [0.5, 0.5]}, "c": {"rate": [1.0, 5.0]}}
    weighted = model.fit({"c": values}, weights=weights, init=init, max_iter=20, tol=0)
    repeated = model.fit({"c": np.repeat(values, weights)}, init=init, max_iter=20, tol=0)
    assert weighted.loglik == pytest.approx(repeated.loglik, rel=1e-12)
    np.testing.assert_allclose(weighted.params["c"]["rate"], repeated.params["c"]["rate"], rtol=1e-12)
    assert weighted.bic() == pytest.approx(repeated.bic(), rel=1e-12)


def gmm(covariance="full", k=3):
    graph = nx.DiGraph()
    graph.add_node("z", family="categorical", latent=True, k=k)
    graph.add_node("x", family="normal", dim=2, covariance=covariance)
    graph.add_edge("z", "x")
    return declarem.Model(graph)


def blobs(seed=0):
    rng = np.random.default_rng(seed)
    return {"x": np.concatenate([rng.normal(c, s, (150, 2)) for c, s in ((0, 1), (3, 0.5), (6, 1.5))])}


def test_equal_inputs_and_seed_give_equal_fits():
    a = gmm().fit(blobs(), seed=4, restarts=2)
    b = gmm().fit(blobs(), seed=4, restarts=2)
    assert a.history == b.history
    np.testing.assert_array_equal(a.params["x"]["cov"], b.params["x"]["cov"])


@pytest.mark.parametrize("covariance", ["full", "tied", "diag", "spherical"])
def test_objective_never_falls(covariance):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fit = gmm(covariance).fit(blobs(1), reg_covar=0.0, max_iter=200, tol=0, seed=2)
    steps = np.diff(fit.history)
    assert np.all(steps >= -1e-10 * np.abs(fit.history[1:])), steps.min()
    assert fit.history[-1] == fit.loglik


def test_monitor_warns_when_objective_falls():
    monitor = ConvergenceMonitor(tol=0.0)
    monitor.record(-100.0)
    with pytest.warns(RuntimeWarning, match="fell"):
        monitor.record(-100.5)


def test_max_iter_and_tol():
    fit = gmm().fit(blobs(), max_iter=0)
    assert fit.n_iter == 0 and len(fit.history) == 1 and not fit.converged
    fit = gmm().fit(blobs(), max_iter=7, tol=0)
    assert fit.n_iter == 7 and len(fit.history) == 8 and not fit.converged
    fit = gmm().fit(blobs(), max_iter=500, tol=1e-6)
    assert fit.converged and fit.n_iter < 500
    last = fit.history[-1] - fit.history[-2]
    assert abs(last) < 1e-6 * abs(fit.history[-1])


def test_partial_init_is_kept():
    means = np.array([[0.0, 0.0], [3.0, 3.0], [6.0, 6.0]])
    fit = gmm().fit(blobs(), init={"x": {"mean": means}}, max_iter=0)
    np.testing.assert_array_equal(fit.params["x"]["mean"], means)
    assert fit.params["x"]["cov"].shape == (3, 2, 2)


def test_json_round_trip_is_exact(tmp_path):
    fit = gmm().fit(blobs(), seed=1)
    path = tmp_path / "fit.json"
    fit.save(path)
    loaded = declarem.Fit.load(path)
    assert loaded.loglik == fit.loglik and loaded.history == fit.history
    assert loaded.n_iter == fit.n_iter and loaded.converged == fit.converged
    for node, params in fit.params.items():
        for name, value in params.items():
            np.testing.assert_array_equal(loaded.params[node][name], value)
    assert loaded.bic() == fit.bic()
    np.testing.assert_array_equal(loaded.posterior(blobs())["z"], fit.posterior(blobs())["z"])
    stored = json.loads(path.read_text())
    assert {"loglik", "n_iter", "converged", "history", "params"} <= set(stored)


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
def test_bic_and_aic_follow_scikit_learn():
    mixture = pytest.importorskip("sklearn.mixture")
    gaussian_mixture = pytest.importorskip("sklearn.mixture._gaussian_mixture")
    data = blobs()
    for covariance in ("full", "tied", "diag", "spherical"):
        fit = gmm(covariance).fit(data, seed=0)
        reference = mixture.GaussianMixture(3, covariance_type=covariance, max_iter=1).fit(data["x"])
        spread = fit.params["x"]["cov"] if "cov" in fit.params["x"] else fit.params["x"]["var"]
        reference.weights_ = fit.params["z"]["probs"]
        reference.means_ = fit.params["x"]["mean"]
        reference.covariances_ = spread
        reference.precisions_cholesky_ = gaussian_mixture._compute_precision_cholesky(spread, covariance)
        assert fit.n_parameters == reference._n_parameters()
        assert fit.bic() == pytest.approx(reference.bic(data["x"]), rel=1e-10)
        assert fit.aic() == pytest.approx(reference.aic(data["x"]), rel=1e-10)


def test_hard_em_matches_naive_classification_em():
    rng = np.random.default_rng(8)
    graph = nx.DiGraph()
    graph.add_node("z", family="categorical", latent=True, k=2)
    graph.add_node("c", family="poisson")
    graph.add_edge("z", "c")
    values = rng.poisson(np.where(rng.random(300) < 0.4, 2.0, 10.0)).astype(float)
    weights, rates = np.array([0.5, 0.5]), np.array([1.0, 6.0])
    objectives = []
    for _ in range(6):
        joint = np.log(weights) + scipy.stats.poisson.logpmf(values[:, None], rates)
        labels = joint.argmax(axis=1)
        objectives.append(joint.max(axis=1).sum())
        weights = np.bincount(labels, minlength=2) / len(values)
        rates = np.array([values[labels == j].mean() for j in range(2)])
    fit = declarem.Model(graph).fit({"c": values}, init={"z": {"probs": [0.5, 0.5]}, "c": {"rate": [1.0, 6.0]}},
                                    hard=True, max_iter=6, tol=0)
    np.testing.assert_allclose(fit.history[:6], objectives, rtol=1e-12)
    np.testing.assert_allclose(fit.params["c"]["rate"], rates, rtol=1e-12)
    assert np.all(np.diff(fit.history) >= 0)
    assert fit.loglik >= fit.history[-1]


def test_parameters_on_the_boundary_are_evaluated_from_the_density():
    graph = nx.DiGraph()
    graph.add_node("z", family="categorical", latent=True, k=2)
    graph.add_node("b", family="bernoulli", columns=["b1", "b2"])
    graph.add_edge("z", "b")
    model = declarem.Model(graph)
    data = {"b1": np.array([0.0, 1.0, 1.0, 0.0]), "b2": np.array([1.0, 1.0, 0.0, 0.0])}
    compiled = model.compiled
    rows = prepare_rows(compiled, node_data(model, data))
    params = {"z": {"probs": np.array([0.5, 0.5])}, "b": {"p": np.array([[0.0, 0.5], [1.0, 0.5]])}}
    internal = compiled.to_internal(params, rows.shifts)
    _, loglik = engine_for(compiled, rows).expected_statistics(internal)
    # Component 0 has p = (0, 0.5), component 1 p = (1, 0.5): each row is possible under exactly one.
    manual = 0.0
    for b1, b2 in zip(data["b1"], data["b2"]):
        comp = [0.5 * (b1 == 0) * 0.5, 0.5 * (b1 == 1) * 0.5]
        manual += np.log(sum(comp))
    assert loglik == pytest.approx(manual, rel=1e-14)


def test_custom_zero_truncated_poisson_recovers_its_rate():
    graph = nx.DiGraph()
    graph.graph["families"] = {"ztpoisson": {
        "logpdf": "x*log(l) - l - lgamma(x + 1) - log(1 - exp(-l))", "support": "positive-integer",
        "params": {"l": "positive"}}}
    graph.add_node("z", family="categorical", latent=True, k=2)
    graph.add_node("c", family="ztpoisson")
    graph.add_edge("z", "c")
    model = declarem.Model(graph)
    truth = {"z": {"probs": np.array([0.3, 0.7])}, "c": {"l": np.array([0.8, 6.0])}}
    data = model.sample(6000, truth, seed=3)
    assert data["c"].min() >= 1
    fit = model.fit({"c": data["c"]}, restarts=3)
    order = np.argsort(fit.params["c"]["l"])
    np.testing.assert_allclose(fit.params["c"]["l"][order], [0.8, 6.0], rtol=0.1)
    assert model.derive()["c"].status == "closed"


def test_fit_options_are_checked():
    with pytest.raises(declarem.DeclaremError, match="max_iter"):
        gmm().fit(blobs(), max_iter=-1)
    with pytest.raises(declarem.DeclaremError, match="reg_covar"):
        gmm().fit(blobs(), reg_covar=-1.0)
    with pytest.raises(declarem.DeclaremError, match="weights"):
        gmm().fit(blobs(), weights=-np.ones(450))


def test_decode_gives_each_rows_most_probable_joint_configuration():
    """fit.decode equals brute-force enumeration of every latent configuration per row."""
    graph = nx.DiGraph()
    graph.add_node("z1", family="categorical", latent=True, k=2)
    graph.add_node("z2", family="categorical", latent=True, k=3)
    graph.add_node("x", family="normal")
    graph.add_edge("z1", "z2")
    graph.add_edge("z2", "x")
    graph.add_edge("z1", "x")
    model = declarem.Model(graph)
    rng = np.random.default_rng(5)
    data = {"x": rng.normal(size=40) * 3}
    fit = model.fit(data, max_iter=5, tol=0)
    decoded = fit.decode(data)
    p = fit.params
    for row, x in enumerate(data["x"]):
        scores = {(a, b): np.log(p["z1"]["probs"][a]) + np.log(p["z2"]["probs"][a, b])
                  + scipy.stats.norm.logpdf(x, p["x"]["mean"][a, b], np.sqrt(p["x"]["var"][a, b]))
                  for a in range(2) for b in range(3)}
        best = max(scores, key=scores.get)
        assert (decoded["z1"][row], decoded["z2"][row]) == best
    with pytest.raises(declarem.DeclaremError, match="lengths"):
        fit.decode(data, lengths=[40])


def test_a_fit_is_taken_wherever_parameters_are_and_pickles(tmp_path):
    """init=fit warm-starts, model.sample(n, fit) and fit.sample(n) draw from the fit, Model and Fit pickle."""
    import pickle
    model = declarem.load_model(MODELS / "gmm.toml")
    first = model.fit(MODELS / "gmm.csv", max_iter=5, tol=0.0)
    warm = model.fit(MODELS / "gmm.csv", init=first, max_iter=5, tol=0.0)
    assert warm.history[0] == pytest.approx(first.history[-1], rel=1e-12)
    drawn = model.sample(50, first, seed=3)
    np.testing.assert_array_equal(drawn["x_0"], first.sample(50, seed=3)["x_0"])
    np.testing.assert_array_equal(drawn["x_0"], model.sample(50, first.params, seed=np.random.default_rng(3))["x_0"])
    restored = pickle.loads(pickle.dumps(first))
    assert restored.loglik == first.loglik
    assert restored.score(MODELS / "gmm.csv") == pytest.approx(first.score(MODELS / "gmm.csv"), rel=1e-12)
    again = pickle.loads(pickle.dumps(model)).fit(MODELS / "gmm.csv", max_iter=5, tol=0.0)
    assert again.history == first.history


@pytest.mark.parametrize("seed", [None, 7, np.random.default_rng(7)])
def test_seed_takes_none_an_integer_or_a_generator(seed):
    model = declarem.load_model(MODELS / "gmm.toml")
    fit = model.fit(MODELS / "gmm.csv", seed=seed, max_iter=3)
    assert np.isfinite(fit.loglik)


@pytest.mark.parametrize("seed", [-1, 1.5, "0", True])
def test_a_bad_seed_is_named(seed):
    model = declarem.load_model(MODELS / "gmm.toml")
    with pytest.raises(declarem.DeclaremError, match="seed must be None, an integer >= 0 or a numpy Generator"):
        model.fit(MODELS / "gmm.csv", seed=seed, max_iter=3)


def test_row_loglik_sums_to_the_score_and_refuses_a_chain():
    model = declarem.load_model(MODELS / "poisson_mixture.toml")
    fit = model.fit(MODELS / "poisson_mixture.csv", max_iter=20)
    per_row = fit.row_loglik(MODELS / "poisson_mixture.csv")
    assert per_row.shape == (fit.n_observations,)
    assert per_row.sum() == pytest.approx(fit.score(MODELS / "poisson_mixture.csv"), rel=1e-12)
    chain = declarem.load_model(MODELS / "earthquakes_hmm2.toml")
    chain_fit = chain.fit(MODELS / "earthquakes.csv", max_iter=5)
    with pytest.raises(declarem.DeclaremError, match="whole sequences"):
        chain_fit.row_loglik(MODELS / "earthquakes.csv")


def test_stopping_at_max_iter_warns_unless_tol_is_zero():
    model = declarem.load_model(MODELS / "gmm.toml")
    with pytest.warns(declarem.ConvergenceWarning, match="stopped at max_iter=2 before converging"):
        fit = model.fit(MODELS / "gmm.csv", max_iter=2)
    assert not fit.converged
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model.fit(MODELS / "gmm.csv", max_iter=2, tol=0.0)      # exactly 2 iterations, as asked
        model.fit(MODELS / "gmm.csv", max_iter=200)              # converges
