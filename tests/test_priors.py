"""Priors and constants as declarations (#11 item 3).

A node's prior = { logpdf = "..." } in its own parameter names makes its M-step MAP: derived in closed
form where it closes (a gamma prior on a Poisson rate: (sum w x + a - 1) / (sum w + b)), numerically
otherwise, and counted in history and fit.log_prior. A family table's constants = ["r"] are given on
each node. References: hand-computed MAP updates from the same responsibilities, scipy.optimize on each
set's penalised objective.
"""

import networkx as nx
import numpy as np
import pytest
from scipy import optimize, stats
from scipy.special import gammaln, logsumexp

import declarem
from declarem.errors import ExpressionError, FamilyError, SpecError

NEGBIN_FIXED_R = {"logpdf": "lgamma(x + r) - lgamma(r) - lgamma(x + 1) + r*log(1 - p) + x*log(p)",
                  "support": "nonnegative-integer", "params": {"p": "unit"}, "constants": ["r"]}


def _mixture(family, prior=None, latent_k=2, families=None, **attrs):
    graph = nx.DiGraph()
    if families:
        graph.graph["families"] = families
    graph.add_node("z", family="categorical", latent=True, k=latent_k)
    if prior is not None:
        attrs["prior"] = {"logpdf": prior}
    graph.add_node("x", family=family, **attrs)
    graph.add_edge("z", "x")
    return declarem.Model(graph)


def _responsibilities(log_joint):
    return np.exp(log_joint - logsumexp(log_joint, axis=1, keepdims=True))


def test_gamma_prior_on_a_poisson_rate_is_the_closed_form_map():
    rng = np.random.default_rng(0)
    x = np.r_[rng.poisson(2.0, 30), rng.poisson(9.0, 20)].astype(float)
    a, b = 3.0, 0.5
    model = _mixture("poisson", f"({a} - 1)*log(rate) - {b}*rate")
    derived = model.derive()["x"]
    assert derived.status == "closed" and "W" in derived.updates[0]
    start = {"z": {"probs": [0.5, 0.5]}, "x": {"rate": [1.0, 5.0]}}
    fit = model.fit({"x": x}, init=start, max_iter=3, tol=0.0)
    probs, rate = np.array([0.5, 0.5]), np.array([1.0, 5.0])
    for _ in range(3):
        resp = _responsibilities(np.log(probs) + stats.poisson.logpmf(x[:, None], rate))
        probs = resp.sum(axis=0) / len(x)
        rate = (resp.T @ x + a - 1) / (resp.sum(axis=0) + b)
    np.testing.assert_allclose(fit.params["x"]["rate"], rate, rtol=1e-12)
    np.testing.assert_allclose(fit.params["z"]["probs"], probs, rtol=1e-12)
    log_prior = np.sum((a - 1) * np.log(rate) - b * rate)
    assert fit.log_prior == pytest.approx(log_prior, rel=1e-12)
    loglik = logsumexp(np.log(probs) + stats.poisson.logpmf(x[:, None], rate), axis=1).sum()
    assert fit.loglik == pytest.approx(loglik, rel=1e-12)       # at the final parameters, not the ones before
    assert fit.history[-1] == pytest.approx(fit.loglik + fit.log_prior, rel=1e-12)
    long = model.fit({"x": x}, seed=0)
    assert np.all(np.diff(long.history) >= -1e-10 * np.abs(long.history[1:]))


def test_priors_on_a_normals_mean_and_variance_are_the_map():
    """Per set the M-step maximises sum w log N(x; mean, var) + prior; held to scipy.optimize on that."""
    rng = np.random.default_rng(1)
    x = np.r_[rng.normal(-1.0, 0.5, 40), rng.normal(3.0, 1.5, 25)]
    # Normal-inverse-gamma (conjugate): closes for the mean; the variance is solved numerically given it.
    prior = "-(mean - 1)**2/(2*4*var) - log(var)/2 - 3*log(var) - 0.5/var"
    model = _mixture("normal", prior)
    start = {"z": {"probs": [0.5, 0.5]}, "x": {"mean": [0.0, 1.0], "var": [1.0, 1.0]}}
    fit = model.fit({"x": x}, init=start, max_iter=1, tol=0.0, reg_covar=0.0)
    resp = _responsibilities(np.log([0.5, 0.5]) + stats.norm.logpdf(x[:, None], [0.0, 1.0], 1.0))
    for j in range(2):
        def negative(theta):
            mean, var = theta[0], np.exp(theta[1])
            return -(np.sum(resp[:, j] * stats.norm.logpdf(x, mean, np.sqrt(var)))
                     - (mean - 1) ** 2 / (8 * var) - 3.5 * np.log(var) - 0.5 / var)
        best = optimize.minimize(negative, [0.0, 0.0], method="BFGS", options={"gtol": 1e-10}).x
        assert fit.params["x"]["mean"][j] == pytest.approx(best[0], rel=1e-6)
        assert fit.params["x"]["var"][j] == pytest.approx(np.exp(best[1]), rel=1e-6)


def test_a_prior_without_closed_form_is_maximised_numerically():
    """A gamma family's shape under a prior: the numeric route, with the set's weight W in its objective."""
    rng = np.random.default_rng(2)
    x = rng.gamma(3.0, 2.0, 80)
    model = _mixture("gamma", "-2*shape + log(shape)")
    derived = model.derive()["x"]
    assert derived.status in ("partial", "numeric")
    start = {"z": {"probs": [0.3, 0.7]}, "x": {"shape": [1.0, 2.0], "rate": [1.0, 0.5]}}
    fit = model.fit({"x": x}, init=start, max_iter=1, tol=0.0)
    resp = _responsibilities(np.log([0.3, 0.7]) + stats.gamma.logpdf(x[:, None], [1.0, 2.0],
                                                                        scale=1 / np.array([1.0, 0.5])))
    for j in range(2):
        def negative(theta):
            shape, rate = np.exp(theta)
            return -(np.sum(resp[:, j] * stats.gamma.logpdf(x, shape, scale=1 / rate)) - 2 * shape + np.log(shape))
        best = np.exp(optimize.minimize(negative, [0.0, 0.0], method="BFGS", options={"gtol": 1e-10}).x)
        np.testing.assert_allclose([fit.params["x"]["shape"][j], fit.params["x"]["rate"][j]], best, rtol=1e-5)


def test_a_family_constant_is_given_on_the_node():
    rng = np.random.default_rng(3)
    x = np.r_[rng.negative_binomial(3, 0.7, 400), rng.negative_binomial(3, 0.1, 400)].astype(float)
    model = _mixture("nbr", families={"nbr": NEGBIN_FIXED_R}, r=3)
    assert model.derive()["x"].updates == ["p = E[x]/(E[x] + 3)"]
    fit = model.fit({"x": x}, seed=0)
    np.testing.assert_allclose(np.sort(fit.params["x"]["p"]), [0.3, 0.9], atol=0.03)
    loglik = logsumexp(np.log(fit.params["z"]["probs"]) + gammaln(x[:, None] + 3) - gammaln(3) - gammaln(x + 1)[:, None]
                       + 3 * np.log1p(-fit.params["x"]["p"]) + x[:, None] * np.log(fit.params["x"]["p"]), axis=1)
    assert fit.loglik == pytest.approx(loglik.sum(), rel=1e-10)
    drawn = model.sample(4, fit, seed=1)
    assert drawn["x"].shape == (4,) and np.all(drawn["x"] >= 0)


@pytest.mark.parametrize("attrs, error, message", [
    ({}, SpecError, "a nbr node needs 'r'"),
    ({"r": -2}, SpecError, "constant 'r' of 'nbr' must be a number above 0"),
    ({"r": 3, "s": 1}, SpecError, "unknown attribute 's'"),
])
def test_constants_missing_or_wrong_on_the_node_are_refused(attrs, error, message):
    with pytest.raises(error, match=message):
        _mixture("nbr", families={"nbr": NEGBIN_FIXED_R}, **attrs)


def test_a_constant_cannot_take_a_parameters_or_an_attributes_name():
    for name in ("p", "k", "x"):
        table = dict(NEGBIN_FIXED_R, constants=[name])
        with pytest.raises(DeclarationError, match="cannot name a constant"):
            _mixture("nbr", families={"nbr": table}, **{name: 3} if name != "x" else {})


DeclarationError = declarem.DeclaremError


@pytest.mark.parametrize("family, prior, attrs, error, message", [
    ("poisson", "log(lam)", {}, ExpressionError, "unknown name 'lam'"),
    ("poisson", "log(rate - 1)", {}, FamilyError, "must be finite there"),
    ("categorical", "log(probs)", {"k": 3}, SpecError, "applies to scalar families"),
    ("normal", "-mean**2", {"dim": 2, "covariance": "full"}, FamilyError, "multivariate normal"),
    ("normal", "-log(var)", {"dim": 2, "covariance": "spherical"}, FamilyError, "a prior is declared on the node"),
])
def test_priors_that_cannot_apply_are_refused_naming_the_node(family, prior, attrs, error, message):
    with pytest.raises(error, match=message) as raised:
        _mixture(family, prior, **attrs).compiled
    assert "node 'x'" in str(raised.value)


def test_a_prior_on_a_family_fitted_by_generalised_em_is_refused():
    families = {"negbin": dict(NEGBIN_FIXED_R, params={"r": "positive", "p": "unit"}, constants=[])}
    with pytest.raises(FamilyError, match="generalised EM"):
        _mixture("negbin", "-r", families=families).compiled


def test_a_numeric_map_fixed_point_maximises_the_posterior():
    """EM under a prior with a numeric route ends where the observed-data log posterior is maximal."""
    rng = np.random.default_rng(4)
    x = np.r_[rng.gamma(2.0, 1.0, 60), rng.gamma(9.0, 1.5, 40)]
    model = _mixture("gamma", "-2*shape + log(shape)")     # the prior above: derived once per session
    fit = model.fit({"x": x}, seed=0, tol=1e-13, max_iter=5000, accelerate="squarem")

    def negative_posterior(theta):
        w = 1 / (1 + np.exp(-theta[0]))
        shape, rate = np.exp(theta[1:3]), np.exp(theta[3:5])
        joint = np.log([w, 1 - w]) + stats.gamma.logpdf(x[:, None], shape, scale=1 / rate)
        return -(np.sum(logsumexp(joint, axis=1)) + np.sum(-2 * shape + np.log(shape)))

    p = fit.params
    start = np.r_[np.log(p["z"]["probs"][0] / p["z"]["probs"][1]), np.log(p["x"]["shape"]), np.log(p["x"]["rate"])]
    direct = optimize.minimize(negative_posterior, start, method="BFGS", options={"gtol": 1e-9})
    assert fit.history[-1] == pytest.approx(-direct.fun, abs=1e-6)
    assert fit.history[-1] == pytest.approx(fit.loglik + fit.log_prior, rel=1e-12)
