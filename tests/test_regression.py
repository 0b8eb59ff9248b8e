"""Continuous parents: mixtures of linear, Poisson and logistic regressions, derived, against references.

References: numpy's lstsq and scipy.optimize for one component; the hand-coded EM updates in models/
(themselves held to lstsq, scipy.optimize and scipy.stats by tests/test_regression_reference.py) for
mixtures, iteration by iteration from the same start; a plain numpy forward-backward for a
Markov-switching regression; a direct maximisation of the observed-data log-likelihood for the EM
fixed point.
"""

import importlib.util
from pathlib import Path

import networkx as nx
import numpy as np
import pytest
from scipy import optimize
from scipy.special import expit, gammaln, logsumexp

import declarem
from declarem.errors import DataError, DeclaremError, SpecError
from support import forward_backward, run_cli

ROOT = Path(__file__).resolve().parent.parent
MODELS = ROOT / "models"


def _reference(name, folder=MODELS):
    spec = importlib.util.spec_from_file_location(f"reference_{name}", folder / f"{name}_reference.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _graph(child_family, k=2, covariate_family="covariate", child="y", dim=1, chain=False):
    graph = nx.DiGraph()
    if k:
        graph.add_node("z", family="categorical", latent=True, k=k)
        if chain:
            graph.add_edge("z", "z", lag=1)
    graph.add_node("u", family=covariate_family, **({"dim": dim} if dim > 1 else {}))
    graph.add_node(child, family=child_family)
    if k:
        graph.add_edge("z", child)
    graph.add_edge("u", child)
    return graph


def _logistic_data(n=500, seed=4):
    rng = np.random.default_rng(seed)
    u = rng.normal(0.0, 1.0, n)
    z = rng.random(n) < 0.4
    y = (rng.random(n) < expit(np.where(z, -1.0 + 3.0 * u, 1.5 - 2.0 * u))).astype(float)
    return {"u": u, "y": y}


def _start(model, data, seed=3):
    """A seeded start from declarem's own initialisation (a zero-iteration fit), as fit.params."""
    with pytest.warns(declarem.ConvergenceWarning):
        return model.fit(data, max_iter=0, seed=seed, reg_covar=0.0).params


def _held_against(reference, model, data, iterations=10):
    params = _start(model, data)
    expected = params
    for _ in range(iterations):
        expected = reference.step(data, expected)
    fit = model.fit(data, init=params, max_iter=iterations, tol=0.0, reg_covar=0.0)
    for node, values in expected.items():
        for name, value in values.items():
            np.testing.assert_allclose(fit.params[node][name], value, rtol=1e-8, atol=1e-10,
                                       err_msg=f"{node}.{name}")
    assert fit.loglik == pytest.approx(reference.loglik(data, fit.params), rel=1e-10)
    assert np.all(np.diff(fit.history) >= -1e-10 * np.abs(fit.history[1:]))
    return fit


def test_one_normal_component_is_ordinary_least_squares():
    rng = np.random.default_rng(0)
    u = rng.normal(size=(200, 2))
    y = 0.5 + u @ [1.5, -2.0] + rng.normal(0.0, 0.3, 200)
    weights = rng.integers(1, 4, 200).astype(float)
    fit = declarem.Model(_graph("normal", k=0, dim=2)).fit({"u_0": u[:, 0], "u_1": u[:, 1], "y": y},
                                                          weights=weights, reg_covar=0.0)
    design = np.column_stack([np.ones(200), u])
    root = np.sqrt(weights)[:, None]
    beta = np.linalg.lstsq(design * root, y * root[:, 0], rcond=None)[0]
    residual = y - design @ beta
    assert fit.params["y"]["intercept"] == pytest.approx(beta[0], rel=1e-12)
    np.testing.assert_allclose(fit.params["y"]["coef"], beta[1:], rtol=1e-12)
    assert fit.params["y"]["var"] == pytest.approx(np.sum(weights * residual ** 2) / weights.sum(), rel=1e-12)
    assert fit.n_iter <= 2


@pytest.mark.parametrize("family, link, draw", [
    ("poisson", np.exp, lambda rng, mean: rng.poisson(mean).astype(float)),
    ("bernoulli", expit, lambda rng, mean: (rng.random(len(mean)) < mean).astype(float)),
])
def test_one_component_glm_is_the_maximum_likelihood(family, link, draw):
    rng = np.random.default_rng(1)
    u = rng.normal(size=300)
    y = draw(rng, link(0.3 + 0.8 * u))
    fit = declarem.Model(_graph(family, k=0)).fit({"u": u, "y": y})
    design = np.column_stack([np.ones(300), u])

    def negative_loglik(beta):
        eta = design @ beta
        return -np.sum(y * eta - np.exp(eta)) if family == "poisson" else -np.sum(y * eta - np.logaddexp(0, eta))

    best = optimize.minimize(negative_loglik, np.zeros(2), method="BFGS", options={"gtol": 1e-10}).x
    np.testing.assert_allclose([fit.params["y"]["intercept"], fit.params["y"]["coef"][0]], best, rtol=1e-6)


def test_linear_mixture_equals_the_hand_coded_update():
    model = declarem.load_model(MODELS / "regression_mixture.toml")
    data = {"u": np.loadtxt(MODELS / "regression_mixture.csv", delimiter=",", skiprows=1, usecols=0),
            "y": np.loadtxt(MODELS / "regression_mixture.csv", delimiter=",", skiprows=1, usecols=1)}
    _held_against(_reference("regression_mixture"), model, data)


def test_poisson_mixture_equals_the_hand_coded_update():
    model = declarem.load_model(MODELS / "poisson_regression.toml")
    table = np.loadtxt(MODELS / "poisson_regression.csv", delimiter=",", skiprows=1)
    _held_against(_reference("poisson_regression"), model, {"u": table[:, 0], "count": table[:, 1]})


def test_logistic_mixture_equals_the_hand_coded_update():
    reference = _reference("logistic_regression", Path(__file__).resolve().parent)
    _held_against(reference, declarem.Model(_graph("bernoulli")), _logistic_data())


def test_poisson_mixture_fixed_point_maximises_the_observed_likelihood():
    table = np.loadtxt(MODELS / "poisson_regression.csv", delimiter=",", skiprows=1)
    u, count = table[:, 0], table[:, 1]
    fit = declarem.load_model(MODELS / "poisson_regression.toml").fit({"u": u, "count": count}, tol=1e-12,
                                                                      max_iter=5000)

    def negative_loglik(theta):
        logit, intercepts, slopes = theta[0], theta[1:3], theta[3:5]
        log_probs = np.array([-np.logaddexp(0, -logit), -np.logaddexp(0, logit)])
        eta = intercepts + np.outer(u, slopes)
        joint = log_probs + count[:, None] * eta - np.exp(eta) - gammaln(count + 1)[:, None]
        return -np.sum(logsumexp(joint, axis=1))

    p = fit.params
    start = np.concatenate([[np.log(p["z"]["probs"][0] / p["z"]["probs"][1])], p["count"]["intercept"],
                            p["count"]["coef"][:, 0]])
    direct = optimize.minimize(negative_loglik, start + 0.05, method="BFGS", options={"gtol": 1e-9})
    assert -direct.fun == pytest.approx(fit.loglik, abs=1e-6)
    np.testing.assert_allclose(direct.x, start, atol=1e-4)


def _switching_reference(u, y, lengths, params, iterations):
    """Baum-Welch for a two-state Markov-switching regression, plain numpy (scaled forward-backward)."""
    start, transition = np.array(params["z"]["start"]), np.array(params["z"]["probs"])
    intercept, coef, var = (np.array(params["y"][n], dtype=float) for n in ("intercept", "coef", "var"))
    design = np.column_stack([np.ones(len(y)), u])
    for _ in range(iterations):
        mean = intercept + np.outer(u, coef[:, 0])
        emission = np.exp(-(y[:, None] - mean) ** 2 / (2 * var)) / np.sqrt(2 * np.pi * var)
        gamma, pair_counts, _ = forward_backward(start, transition, emission, lengths)
        first = gamma[np.cumsum([0] + list(lengths[:-1]))].sum(axis=0)
        start = first / first.sum()
        transition = pair_counts / pair_counts.sum(axis=1, keepdims=True)
        for s in range(2):
            w = gamma[:, s]
            beta_s = np.linalg.solve(design.T @ (w[:, None] * design), design.T @ (w * y))
            intercept[s], coef[s, 0] = beta_s
            var[s] = np.sum(w * (y - design @ beta_s) ** 2) / w.sum()
    return {"start": start, "probs": transition, "intercept": intercept, "coef": coef, "var": var}


def test_markov_switching_regression_equals_numpy_baum_welch():
    rng = np.random.default_rng(2)
    states = np.zeros(400, dtype=int)
    for t in range(1, 400):
        states[t] = states[t - 1] if rng.random() < 0.95 else 1 - states[t - 1]
    u = rng.normal(size=400)
    y = np.where(states == 0, 1.0 + 2.0 * u, -1.0 - u) + rng.normal(0.0, 0.3, 400)
    model = declarem.Model(_graph("normal", chain=True))
    data, lengths = {"u": u, "y": y}, [250, 150]
    with pytest.warns(declarem.ConvergenceWarning):
        params = model.fit(data, lengths=lengths, max_iter=0, seed=1, reg_covar=0.0).params
    fit = model.fit(data, lengths=lengths, init=params, max_iter=8, tol=0.0, reg_covar=0.0)
    expected = _switching_reference(u, y, lengths, params, 8)
    for name in ("start", "probs"):
        np.testing.assert_allclose(fit.params["z"][name], expected[name], rtol=1e-8, atol=1e-12)
    for name in ("intercept", "coef", "var"):
        np.testing.assert_allclose(fit.params["y"][name], expected[name], rtol=1e-8)
    path = fit.decode(data, lengths=lengths)["z"]
    assert max(np.mean(path == states), np.mean(path != states)) > 0.97


def test_discrete_parent_and_missing_responses():
    """An observed categorical parent indexes the lines; a row missing y keeps only its prior over z."""
    rng = np.random.default_rng(6)
    n = 400
    u, group, z = rng.uniform(0, 4, n), rng.integers(0, 2, n), rng.integers(0, 2, n)
    y = np.where(z == 0, 1.0 + u, 5.0 - u) + 2.0 * group + rng.normal(0.0, 0.2, n)
    y[rng.choice(n, 30, replace=False)] = np.nan
    graph = _graph("normal")
    graph.add_node("g", family="categorical", k=2)
    graph.add_edge("g", "y")
    graph.nodes["y"]["parents"] = ["z", "g", "u"]
    model = declarem.Model(graph)
    data = {"u": u, "g": group, "y": y}
    with pytest.warns(declarem.ConvergenceWarning):
        params = model.fit(data, max_iter=0, seed=2, reg_covar=0.0).params
    fit = model.fit(data, init=params, max_iter=5, tol=0.0, reg_covar=0.0)
    assert fit.params["y"]["intercept"].shape == (2, 2) and fit.params["y"]["coef"].shape == (2, 2, 1)
    # The same five iterations in numpy: sets (z, g); rows missing y have responsibilities = probs.
    probs = np.array(params["z"]["probs"])
    intercept = np.array(params["y"]["intercept"], dtype=float)
    coef = np.array(params["y"]["coef"], dtype=float)[..., 0]
    var = np.array(params["y"]["var"], dtype=float)
    present = ~np.isnan(y)
    for _ in range(5):
        mean = intercept[:, group].T + coef[:, group].T * u[:, None]
        log_joint = np.log(probs) - 0.5 * np.log(2 * np.pi * var[:, group].T) - \
            (np.where(present, y, 0.0)[:, None] - mean) ** 2 / (2 * var[:, group].T)
        log_joint[~present] = np.log(probs)
        resp = np.exp(log_joint - logsumexp(log_joint, axis=1, keepdims=True))
        probs = resp.sum(axis=0) / n
        for k in range(2):
            for level in range(2):
                w = resp[:, k] * present * (group == level)
                design = np.column_stack([np.ones(n), u])
                target = np.where(present, y, 0.0)
                beta = np.linalg.solve(design.T @ (w[:, None] * design), design.T @ (w * target))
                intercept[k, level], coef[k, level] = beta
                var[k, level] = np.sum(w * (target - design @ beta) ** 2) / w.sum()
    np.testing.assert_allclose(fit.params["z"]["probs"], probs, rtol=1e-9)
    np.testing.assert_allclose(fit.params["y"]["intercept"], intercept, rtol=1e-8)
    np.testing.assert_allclose(fit.params["y"]["coef"][..., 0], coef, rtol=1e-8)
    np.testing.assert_allclose(fit.params["y"]["var"], var, rtol=1e-8)
    assert fit.n_missing == 30


def test_a_user_family_declaring_its_linear_parameter_fits_as_the_builtin():
    table = np.loadtxt(MODELS / "poisson_regression.csv", delimiter=",", skiprows=1)
    data = {"u": table[:, 0], "y": table[:, 1]}
    builtin = declarem.Model(_graph("poisson")).fit(data, seed=0)
    graph = _graph("counts")
    graph.graph["families"] = {"counts": {"logpdf": "x*log(mu) - mu - lgamma(x + 1)", "support":
                                          "nonnegative-integer", "params": {"mu": "positive"}, "linear": "mu"}}
    declared = declarem.Model(graph).fit(data, seed=0)
    for name in ("intercept", "coef"):
        np.testing.assert_allclose(declared.params["y"][name], builtin.params["y"][name], rtol=1e-10)
    assert declared.loglik == pytest.approx(builtin.loglik, rel=1e-12)


def test_sampled_regressions_are_recovered():
    """A normal parent is drawn, then the child from its linear predictor; the fit finds the truth again.

    (Poisson: a mixture of logistic regressions on one 0/1 outcome per row is not identifiable.)
    """
    model = declarem.Model(_graph("poisson", covariate_family="normal"))
    truth = {"z": {"probs": [0.4, 0.6]}, "u": {"mean": 0.0, "var": 1.0},
             "y": {"intercept": [0.2, 2.0], "coef": [[1.0], [-0.5]]}}
    drawn = model.sample(4000, truth, seed=5)
    fit = model.fit({"u": drawn["u"], "y": drawn["y"]}, seed=0)
    order = np.argsort(fit.params["y"]["intercept"])
    np.testing.assert_allclose(fit.params["y"]["intercept"][order], [0.2, 2.0], atol=0.1)
    np.testing.assert_allclose(fit.params["y"]["coef"][order, 0], [1.0, -0.5], atol=0.1)
    assert fit.params["u"]["mean"] == pytest.approx(np.mean(drawn["u"]))
    with pytest.raises(DeclaremError, match="node 'u' is a covariate, with no distribution"):
        declarem.Model(_graph("poisson")).sample(10, {k: v for k, v in truth.items() if k != "u"}, seed=0)


def test_parameter_count_and_derivation_routes():
    normal = declarem.load_model(MODELS / "regression_mixture.toml")
    fit = normal.fit({"u": np.linspace(1, 3, 50), "y": np.r_[np.linspace(1.9, 2.0, 25), np.linspace(1, 3, 25)]},
                     seed=0)
    assert fit.n_parameters == 1 + 2 * 3
    text = str(normal.derive())
    assert "weighted least squares, in closed form" in text and "var = sum_r w_r ((-lambda + x)**2)" in text
    poisson = str(declarem.load_model(MODELS / "poisson_regression.toml").derive())
    assert "Newton's method" in poisson and "x - exp(lambda)" in poisson
    assert normal.derive()["y"].status == "closed"


@pytest.mark.parametrize("change, error, message", [
    (lambda g: g.nodes["y"].update(family="exponential"), SpecError,
     "'exponential' has no linear parameter for it to enter"),
    (lambda g: g.nodes["u"].update(latent=True), SpecError, "latent nodes must be categorical"),
    (lambda g: (g.add_node("w", family="covariate")), SpecError, "covariate 'w' is no node's parent"),
    (lambda g: (g.add_edge("z", "u")), SpecError, "a covariate has no parents"),
    (lambda g: g.nodes["y"].update(dim=2), SpecError, "continuous parents need a scalar child"),
])
def test_declarations_that_cannot_be_regressions_are_refused(change, error, message):
    graph = _graph("normal")
    change(graph)
    with pytest.raises(error, match=message):
        declarem.Model(graph).compiled


def test_a_user_family_naming_an_unknown_linear_parameter_is_refused():
    graph = _graph("counts")
    graph.graph["families"] = {"counts": {"logpdf": "x*log(mu) - mu - lgamma(x + 1)", "support":
                                          "nonnegative-integer", "params": {"mu": "positive"}, "linear": "rate"}}
    with pytest.raises(DeclaremError, match="'linear' must name one of its parameters"):
        declarem.Model(graph)


def test_a_missing_covariate_is_refused_naming_the_row():
    u = np.array([0.1, np.nan, 0.3, 0.5])
    with pytest.raises(DataError, match="covariate 'u' is missing on row 2"):
        declarem.Model(_graph("normal", k=0)).fit({"u": u, "y": np.array([1.0, 2.0, 3.0, 4.0])})


def test_command_line_fits_and_checks_the_catalog_regressions(tmp_path):
    for name in ("regression_mixture", "poisson_regression"):
        out = tmp_path / f"{name}.json"
        result = run_cli("fit", MODELS / f"{name}.toml", "--out", out, "--quiet", cwd=ROOT)
        assert result.returncode == 0, result.stderr
        checked = run_cli("check", MODELS / f"{name}.toml", cwd=ROOT)
        assert checked.returncode == 0 and "coef (2, 1)" in checked.stdout, checked.stdout
        compared = run_cli("compare", MODELS / f"{name}.toml", "--reference", MODELS / f"{name}_reference.py",
                           cwd=ROOT)
        assert compared.returncode == 0 and "agree within" in compared.stdout, compared.stdout

