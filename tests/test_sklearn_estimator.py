"""declarem.sklearn.DeclaremEstimator: scikit-learn's conventions around a declared model.

Each test holds the estimator to declarem's own answer (a Fit on the same data and seed) or to a
property that fails when the wrapping is wrong: probabilities that sum to 1 and equal
``fit.posterior``, a score that is ``fit.loglik / n``, per-row log-likelihoods that add up to
``fit.score`` (base measures included: Poisson counts have one), GridSearchCV choosing the true
number of components by BIC, identical predictions after pickle and joblib round trips, and
scikit-learn's own ``check_estimator``.
"""

import pickle
import subprocess
import sys
import warnings
from pathlib import Path

import networkx as nx
import numpy as np
import pytest

pytest.importorskip("sklearn")

import declarem  # noqa: E402
from declarem.sklearn import DeclaremEstimator  # noqa: E402
from sklearn.base import clone  # noqa: E402
from sklearn.exceptions import ConvergenceWarning  # noqa: E402
from sklearn.model_selection import GridSearchCV  # noqa: E402
from sklearn.pipeline import make_pipeline  # noqa: E402
from sklearn.preprocessing import StandardScaler  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
MODELS = ROOT / "models"
TRUE_MEANS = np.array([[0.0, 0.0], [8.0, 0.0], [0.0, 8.0]])

#: check_estimator's checks that cannot apply here, and why (docs/sklearn.md lists the same).
NOT_APPLICABLE = {
    "check_array_api_input": "declarem computes with numpy only (runs only with SCIPY_ARRAY_API=1)",
    "check_sample_weights_pandas_series": "needs pandas",
}
#: With two or more components: weights are row counts, but repeated rows draw another k-means start.
WEIGHT_EQUIVALENCE = {
    "check_sample_weight_equivalence_on_dense_data":
        "repeating rows changes the seeded k-means start, so EM may reach another (relabelled) optimum",
}


def blobs(n_per=150, seed=20261201):
    """Three well-separated bivariate normal clusters, rows shuffled, with their labels."""
    rng = np.random.default_rng(seed)
    X = np.vstack([rng.normal(loc=mean, scale=1.0, size=(n_per, 2)) for mean in TRUE_MEANS])
    order = rng.permutation(len(X))
    return X[order], np.repeat(np.arange(3), n_per)[order]


def columns(X, names=("x_0", "x_1")):
    return {name: X[:, j] for j, name in enumerate(names)}


def read_csv(path):
    table = np.genfromtxt(path, delimiter=",", names=True)
    return {name: np.asarray(table[name], dtype=float) for name in table.dtype.names}


def test_sklearn_stays_optional():
    """import declarem does not import scikit-learn; without it, declarem.sklearn says what to install.

    One fresh interpreter for both (each costs the import of declarem).
    """
    code = ("import sys, declarem\n"
            "assert 'sklearn' not in sys.modules, 'declarem imported sklearn'\n"
            "sys.modules['sklearn'] = None\n"
            "try:\n"
            "    import declarem.sklearn\n"
            "except ImportError as exc:\n"
            "    print(exc)\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    assert "declarem.sklearn needs scikit-learn 1.6 or later" in result.stdout


@pytest.mark.parametrize("n_components, expected_failures", [(None, {}), (2, WEIGHT_EQUIVALENCE)],
                         ids=["default", "two-components"])
def test_check_estimator(n_components, expected_failures):
    from sklearn.utils.estimator_checks import check_estimator
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        results = check_estimator(DeclaremEstimator(n_components=n_components), on_fail=None,
                                  expected_failed_checks=expected_failures)
    assert len(results) > 40
    for result in results:
        name = result["check_name"]
        if result["status"] == "skipped":
            assert name in NOT_APPLICABLE, f"{name} skipped: {result['exception']!r}"
        elif result["status"] == "xfail":
            assert name in expected_failures, name
        else:
            assert result["status"] == "passed", f"{name}: {result['exception']!r}"


def test_predict_proba_is_declarem_posterior():
    X, _ = blobs()
    X[5, 1] = np.nan                                # a missing value is integrated out
    estimator = DeclaremEstimator(n_components=3, random_state=4).fit(X)
    proba = estimator.predict_proba(X)
    assert proba.shape == (len(X), 3)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, rtol=0, atol=1e-12)
    np.testing.assert_array_equal(proba, estimator.fit_.posterior(columns(X))["z"])
    np.testing.assert_array_equal(estimator.predict(X), proba.argmax(axis=1))
    np.testing.assert_array_equal(estimator.predict(X), estimator.fit_.decode(columns(X))["z"])


def test_fit_equals_model_fit_with_the_same_seed():
    X, _ = blobs()
    estimator = DeclaremEstimator(n_components=3, random_state=11, n_init=2).fit(X)
    graph = nx.DiGraph()
    graph.add_node("z", family="categorical", latent=True, k=3)
    graph.add_node("x", family="normal", columns=["x_0", "x_1"], covariance="full")
    graph.add_edge("z", "x")
    fit = declarem.Model(graph).fit(columns(X), seed=11, restarts=2)
    assert estimator.fit_.loglik == fit.loglik
    for name in ("mean", "cov"):
        np.testing.assert_array_equal(estimator.params_["x"][name], fit.params["x"][name])
    assert estimator.n_iter_ == fit.n_iter and estimator.converged_ is True


def test_score_is_mean_loglik_per_row():
    X, _ = blobs()
    X[[3, 40], [0, 1]] = np.nan
    X[77] = np.nan                                  # a row with nothing present scores 0
    estimator = DeclaremEstimator(n_components=3, random_state=0).fit(X)
    fit = estimator.fit_
    assert estimator.score(X) == pytest.approx(fit.loglik / len(X), rel=1e-12)
    assert estimator.lower_bound_ == pytest.approx(fit.loglik / len(X), rel=1e-12)
    per_row = estimator.score_samples(X)
    assert per_row.shape == (len(X),) and per_row[77] == pytest.approx(0.0, abs=1e-12)
    assert per_row.sum() == pytest.approx(fit.score(columns(X)), rel=1e-12)
    # A held-out row's log-density, by hand: the mixture of normal densities.
    from scipy.stats import multivariate_normal
    row = np.array([[1.0, -2.0]])
    params = estimator.params_
    density = sum(params["z"]["probs"][j] * multivariate_normal(params["x"]["mean"][j], params["x"]["cov"][j])
                  .pdf(row[0]) for j in range(3))
    assert estimator.score_samples(row)[0] == pytest.approx(np.log(density), rel=1e-10)
    weights = np.arange(1.0, len(X) + 1)
    assert estimator.score(X, sample_weight=weights) == pytest.approx(np.average(per_row, weights=weights))


def test_poisson_spec_rows_include_the_base_measure():
    data = read_csv(MODELS / "poisson_mixture.csv")
    X = data["count"][:, None]
    estimator = DeclaremEstimator(str(MODELS / "poisson_mixture.toml"), random_state=0).fit(X)
    assert estimator.columns_ == ["count"] and estimator.target_ == "z" and estimator.n_components_ == 3
    fit = declarem.load_model(MODELS / "poisson_mixture.toml").fit(data, seed=0)
    assert estimator.fit_.loglik == pytest.approx(fit.loglik, rel=1e-12)
    assert estimator.score_samples(X).sum() == pytest.approx(fit.loglik, rel=1e-10)
    rates = np.sort(estimator.params_["count"]["rate"])
    np.testing.assert_allclose(rates, [1, 8, 25], rtol=0.15)


def test_bic_and_aic_on_training_data_equal_the_fit():
    X, _ = blobs()
    estimator = DeclaremEstimator(n_components=3, random_state=0).fit(X)
    assert estimator.bic(X) == pytest.approx(estimator.fit_.bic(), rel=1e-12)
    assert estimator.aic(X) == pytest.approx(estimator.fit_.aic(), rel=1e-12)
    # 2 weights + 3 x 2 means + 3 x 3 covariance entries.
    assert estimator.fit_.n_parameters == 17


def test_grid_search_chooses_the_true_number_of_components_by_bic():
    X, _ = blobs()

    def negative_bic(estimator, X, y=None):
        return -estimator.bic(X)

    search = GridSearchCV(DeclaremEstimator(random_state=0), {"n_components": [1, 2, 3, 4, 5]},
                          scoring=negative_bic, cv=3)
    search.fit(X)
    assert search.best_params_ == {"n_components": 3}
    scores = search.cv_results_["mean_test_score"]
    assert scores[2] == max(scores) and scores[0] < scores[1] < scores[2]


def test_pipeline_with_standard_scaler():
    X, labels = blobs()
    X = X * [1000.0, 0.001] + [5e4, -3.0]          # wildly different scales
    pipeline = make_pipeline(StandardScaler(), DeclaremEstimator(n_components=3, random_state=0))
    pipeline.fit(X)
    predicted = pipeline.predict(X)
    # The clusters are recovered up to relabelling: each true cluster maps to one predicted label.
    agreement = sum(np.bincount(predicted[labels == j], minlength=3).max() for j in range(3))
    assert agreement == len(X)
    assert np.isfinite(pipeline.score(X))
    assert pipeline.predict_proba(X).shape == (len(X), 3)


@pytest.mark.parametrize("how", ["pickle", "joblib"])
def test_round_trip_gives_identical_predictions(how, tmp_path):
    X, _ = blobs()
    X[9, 0] = np.nan
    model = declarem.load_model(MODELS / "gmm.toml")
    model.compiled                                  # a compiled Model as the parameter
    estimator = DeclaremEstimator(model, random_state=0).fit(X)
    if how == "pickle":
        loaded = pickle.loads(pickle.dumps(estimator))
    else:
        joblib = pytest.importorskip("joblib")
        joblib.dump(estimator, tmp_path / "estimator.joblib")
        loaded = joblib.load(tmp_path / "estimator.joblib")
    np.testing.assert_array_equal(loaded.predict_proba(X), estimator.predict_proba(X))
    np.testing.assert_array_equal(loaded.predict(X), estimator.predict(X))
    np.testing.assert_array_equal(loaded.score_samples(X), estimator.score_samples(X))
    assert loaded.fit_.model is loaded.model_ and isinstance(loaded.model, declarem.Model)
    assert loaded.bic(X) == estimator.bic(X)


def test_get_params_set_params_and_clone():
    graph = declarem.load_model(MODELS / "gmm.toml").graph
    estimator = DeclaremEstimator(graph, n_components=2, max_iter=50, tol=1e-6, random_state=3)
    params = estimator.get_params()
    assert params["model"] is graph and params["n_components"] == 2 and params["max_iter"] == 50
    assert estimator.set_params(n_components=4, warm_start=True) is estimator
    assert estimator.n_components == 4 and estimator.warm_start is True
    X, _ = blobs()
    with pytest.warns(ConvergenceWarning):
        copy = clone(estimator.fit(X))
    assert not hasattr(copy, "fit_") and copy.get_params()["n_components"] == 4
    assert estimator.params_["x"]["mean"].shape == (4, 2)


def test_n_components_rebuilds_the_target_node():
    X, _ = blobs()
    spec = str(MODELS / "gmm.toml")
    two = DeclaremEstimator(spec, n_components=2, random_state=0).fit(X)
    assert two.params_["z"]["probs"].shape == (2,) and two.params_["x"]["cov"].shape == (2, 2, 2)
    one = DeclaremEstimator(spec, n_components=1, random_state=0).fit(X)
    assert "z" not in one.params_ and one.params_["x"]["mean"].shape == (2,)
    np.testing.assert_allclose(one.params_["x"]["mean"], X.mean(axis=0), rtol=1e-10)
    np.testing.assert_array_equal(one.predict_proba(X), np.ones((len(X), 1)))
    np.testing.assert_array_equal(one.predict(X), np.zeros(len(X), dtype=int))
    assert one.n_components_ == 1 and two.n_components_ == 2
    # The Model given is left as it was: not compiled, k unchanged.
    model = declarem.load_model(spec)
    DeclaremEstimator(model, n_components=4, random_state=0).fit(X)
    assert model._compiled is None and model.nodes["z"].k == 3


def test_convergence_warning_when_max_iter_is_reached():
    X, _ = blobs()
    with pytest.warns(ConvergenceWarning, match="max_iter=2"):
        estimator = DeclaremEstimator(n_components=3, max_iter=2, tol=0.0, random_state=0).fit(X)
    assert estimator.n_iter_ == 2 and not estimator.converged_
    assert len(estimator.lower_bounds_) == 3
    assert np.all(np.diff(estimator.lower_bounds_) >= 0)
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)
        DeclaremEstimator(n_components=3, random_state=0).fit(X)


def test_warm_start_continues_from_the_previous_fit():
    X, _ = blobs()
    with pytest.warns(ConvergenceWarning):
        estimator = DeclaremEstimator(n_components=3, max_iter=3, tol=0.0, warm_start=True, random_state=0).fit(X)
    first = estimator.lower_bound_
    with pytest.warns(ConvergenceWarning):
        estimator.fit(X)
    assert estimator.lower_bounds_[0] == pytest.approx(first, rel=1e-12)
    cold = DeclaremEstimator(n_components=3, max_iter=6, tol=0.0, random_state=0)
    with pytest.warns(ConvergenceWarning):
        cold.fit(X)
    assert estimator.lower_bound_ == pytest.approx(cold.lower_bound_, rel=1e-9)
    # A changed declaration starts afresh instead of failing on the old parameters' shapes.
    estimator.set_params(n_components=2, max_iter=1000, tol=1e-8).fit(X)
    assert estimator.params_["x"]["mean"].shape == (2, 2)


def test_random_state_forms():
    X, _ = blobs()
    by_generator = [DeclaremEstimator(n_components=3, random_state=np.random.default_rng(5)).fit(X).params_
                    for _ in range(2)]
    np.testing.assert_array_equal(by_generator[0]["x"]["mean"], by_generator[1]["x"]["mean"])
    np.random.seed(0)
    DeclaremEstimator(n_components=2).fit(X)      # None: numpy's global RandomState
    by_state = DeclaremEstimator(n_components=2, random_state=np.random.RandomState(1)).fit(X)
    assert by_state.converged_
    with pytest.raises(ValueError, match="random_state"):
        DeclaremEstimator(random_state=-1).fit(X)
    with pytest.raises(ValueError, match="random_state"):
        DeclaremEstimator(random_state="seven").fit(X)


def test_sample_is_seeded_and_shaped():
    X, _ = blobs()
    estimator = DeclaremEstimator(n_components=3, random_state=2).fit(X)
    drawn, labels = estimator.sample(600)
    again, _ = estimator.sample(600)
    np.testing.assert_array_equal(drawn, again)
    assert drawn.shape == (600, 2) and labels.shape == (600,) and set(labels) <= {0, 1, 2}
    means = estimator.params_["x"]["mean"]
    for j in range(3):
        np.testing.assert_allclose(drawn[labels == j].mean(axis=0), means[j], atol=0.3)
    with pytest.raises(ValueError, match="n_samples"):
        estimator.sample(0)


def test_columns_and_targets_are_checked():
    X, _ = blobs()
    with pytest.raises(ValueError, match="X has 2 columns but 3 column names"):
        DeclaremEstimator(columns=["a", "b", "c"]).fit(X)
    with pytest.raises(ValueError, match="names 'a' twice"):
        DeclaremEstimator(columns=["a", "a"]).fit(X)
    with pytest.raises(ValueError, match="covariance_type applies to the default"):
        DeclaremEstimator(str(MODELS / "gmm.toml"), covariance_type="diag").fit(X)
    with pytest.raises(ValueError, match="n_components must be an integer >= 1"):
        DeclaremEstimator(n_components=0).fit(X)
    graph = nx.DiGraph()
    graph.add_node("a", family="categorical", latent=True, k=2)
    graph.add_node("b", family="categorical", latent=True, k=2)
    graph.add_node("y", family="normal")
    graph.add_edge("a", "y")
    graph.add_edge("b", "y")
    y = X[:, :1]
    with pytest.raises(ValueError, match="latent nodes a, b; pass target=NAME"):
        DeclaremEstimator(graph).fit(y)
    with pytest.raises(ValueError, match="target 'c' is not a latent node.*are a, b"):
        DeclaremEstimator(graph, target="c").fit(y)
    estimator = DeclaremEstimator(graph, target="b", n_components=3, max_iter=20, random_state=0)
    with pytest.warns(ConvergenceWarning):     # two latent nodes over one normal: not identifiable
        estimator.fit(y)
    assert estimator.predict_proba(y).shape == (len(y), 3)
    assert estimator.params_["y"]["mean"].shape == (2, 3)
    with pytest.raises(ValueError, match="X has 3 features"):
        estimator.predict(np.hstack([X, X[:, :1]]))


def test_default_model_options():
    X, _ = blobs()
    for covariance, shape in (("diag", (2, 2)), ("spherical", (2,)), ("tied", (2, 2))):
        estimator = DeclaremEstimator(n_components=2, covariance_type=covariance, random_state=0).fit(X)
        name = "cov" if covariance == "tied" else "var"
        assert estimator.params_["x"][name].shape == shape, covariance
    one_column = DeclaremEstimator(n_components=2, random_state=0).fit(X[:, :1])
    assert one_column.params_["x"]["mean"].shape == (2, 1)      # a vector node of one column
    # A column named like the default latent node does not become its labels.
    named = DeclaremEstimator(n_components=2, columns=["z", "w"], random_state=0).fit(X)
    assert named.target_ != "z" and named.columns_ == ["z", "w"]


def test_dataframe_columns_name_the_data():
    pandas = pytest.importorskip("pandas")
    data = read_csv(MODELS / "latent_class.csv")
    frame = pandas.DataFrame(data)[["q5", "q1", "q2", "q3", "q4"]]       # any order: names decide
    estimator = DeclaremEstimator(str(MODELS / "latent_class.toml"), random_state=0).fit(frame)
    assert estimator.columns_ == ["q5", "q1", "q2", "q3", "q4"]
    fit = declarem.load_model(MODELS / "latent_class.toml").fit(data, seed=0)
    assert estimator.fit_.loglik == pytest.approx(fit.loglik, rel=1e-12)
    np.testing.assert_array_equal(estimator.predict(frame), fit.decode(data)["z"])
    assert list(estimator.feature_names_in_) == ["q5", "q1", "q2", "q3", "q4"]


def test_chain_model():
    data = read_csv(MODELS / "earthquakes.csv")
    X = data["count"][:, None]
    estimator = DeclaremEstimator(str(MODELS / "earthquakes_hmm2.toml"), random_state=0).fit(X)
    assert estimator.fit_.loglik == pytest.approx(-341.8787, abs=1e-3)
    fit = declarem.load_model(MODELS / "earthquakes_hmm2.toml").fit(data, seed=0)
    np.testing.assert_array_equal(estimator.predict(X), fit.decode(data)["z"])
    assert estimator.score(X) == pytest.approx(fit.loglik / len(X), rel=1e-10)
    with pytest.raises(ValueError, match="has a chain"):
        estimator.score_samples(X)
    drawn, states = estimator.sample(50)
    assert drawn.shape == (50, 1) and states.shape == (50,)


def test_verbose_prints_progress(capsys):
    X, _ = blobs()
    DeclaremEstimator(n_components=3, random_state=0, verbose=2).fit(X)
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("declarem: iteration 1: objective ")
    assert lines[-1].startswith("declarem: converged after ") and len(lines) >= 3
    DeclaremEstimator(n_components=3, random_state=0).fit(X)
    assert capsys.readouterr().out == ""


def test_n_jobs_sets_the_threads_and_not_the_fit(monkeypatch):
    import declarem.em
    X = np.random.default_rng(5).normal(size=(20_000, 8)) + 4.0 * np.arange(20_000)[:, None] % 3
    seen = []
    fit_threads = declarem.em.fit_threads
    monkeypatch.setattr(declarem.em, "fit_threads", lambda threads, chunked: seen.append(threads) or
                        fit_threads(threads, chunked))
    fits = [DeclaremEstimator(n_components=3, covariance_type="full", max_iter=3, tol=0.0, random_state=0,
                              n_jobs=jobs).fit(X) for jobs in (1, 2, -1)]
    assert seen == [1, 2, declarem.threads.usable_cores()]
    for other in fits[1:]:
        np.testing.assert_array_equal(other.params_["x"]["cov"], fits[0].params_["x"]["cov"])
    for jobs in (0, -2, 1.5, "2"):
        with pytest.raises(ValueError, match="n_jobs must be a positive integer, -1"):
            DeclaremEstimator(n_components=3, n_jobs=jobs).fit(X)
