"""Derived M-steps: closed forms, their numeric twins, and moment matching, for every family."""

import functools

import networkx as nx
import numpy as np
import pytest
import scipy.optimize
import sympy
from hypothesis import given, settings
from hypothesis import strategies as st

import declarem
from declarem.derive import scalar_solution, simplex_solution
from declarem.kernels import NumericSolver
from declarem.derive.moments import expected_statistics
from declarem.errors import FamilyError
from declarem.families import FamilyRegistry, family_from_table
from declarem.families import gaussian

REGISTRY = FamilyRegistry()
CUSTOM = {
    "rayleigh": {"logpdf": "log(x) - 2*log(s) - x**2/(2*s**2)", "support": "positive",
                 "params": {"s": "positive"}},
    "ztpoisson": {"logpdf": "x*log(l) - l - lgamma(x + 1) - log(1 - exp(-l))",
                  "support": "positive-integer", "params": {"l": "positive"}},
    "weibull2": {"logpdf": "log(2) - 2*log(lam) + log(x) - (x/lam)**2", "support": "positive",
                 "params": {"lam": "positive"}},
}
EXPECTED_STATUS = {
    "bernoulli": "closed", "binomial": "closed", "poisson": "closed", "exponential": "closed",
    "geometric": "closed", "normal": "closed", "gamma": "partial", "beta": "numeric",
    "rayleigh": "closed", "ztpoisson": "closed", "weibull2": "closed",
}
CONSTANTS = {"binomial": (("trials", 12),)}
UPPER = {"binomial": 12}


def family(name):
    if name in CUSTOM:
        return family_from_table(name, CUSTOM[name], "test")
    return REGISTRY.families[name]


@pytest.mark.parametrize("name", sorted(EXPECTED_STATUS))
def test_derivation_status(name):
    solution = scalar_solution(family(name), CONSTANTS.get(name, ()))
    assert solution.status == EXPECTED_STATUS[name]
    assert not [n for n in solution.notes if n.startswith("numeric check")]


def test_known_closed_forms():
    poisson = scalar_solution(family("poisson"))
    (rate,) = poisson.form.params
    assert poisson.closed[rate] == poisson.means[0]
    normal = scalar_solution(family("normal"))
    mean, var = normal.form.params
    t_x = normal.means[normal.form.statistics.index(normal.form.x)]
    t_x2 = normal.means[normal.form.statistics.index(normal.form.x ** 2)]
    assert normal.closed[mean] == t_x
    assert sympy.simplify(normal.closed[var] - (t_x2 - t_x ** 2)) == 0
    rayleigh = scalar_solution(family("rayleigh"))
    (s,) = rayleigh.form.params
    assert sympy.simplify(rayleigh.closed[s] ** 2 - rayleigh.means[0] / 2) == 0
    gamma = scalar_solution(family("gamma"))
    shape, rate = gamma.form.params
    assert set(gamma.closed) == {rate} and gamma.numeric == (shape,)


@functools.lru_cache(maxsize=None)
def solvers(name):
    """A family's derivation, its derived solver and the all-numeric twin, built once for all examples."""
    solution = scalar_solution(family(name), CONSTANTS.get(name, ()))
    return solution, NumericSolver.from_solution(solution), NumericSolver.from_solution(solution, solve_all=True)


def draw_point(solution, draw):
    point = {}
    for p in solution.form.params:
        domain = solution.domains[p]
        if domain == "real":
            point[p] = draw(st.floats(-3, 3))
        elif domain == "positive":
            point[p] = draw(st.floats(0.3, 6))
        else:
            point[p] = draw(st.floats(0.1, 0.9))
    return point


@pytest.mark.parametrize("name", sorted(EXPECTED_STATUS))
@settings(max_examples=8, deadline=None)
@given(data=st.data())
def test_moment_matching_and_numeric_twin(name, data):
    """At t = E_theta[T] both the derived M-step and the all-numeric twin return theta."""
    solution, derived_solver, twin_solver = solvers(name)
    point = draw_point(solution, data.draw)
    moments, _ = expected_statistics(solution.form, family(name).support, point, upper=UPPER.get(name))
    means = moments[None, :]
    far_start = {p.name: np.array([{"real": 0.0, "positive": 1.0, "unit": 0.5}[solution.domains[p]]])
                 for p in solution.form.params}
    derived = derived_solver.solve(means, far_start)
    twin = twin_solver.solve(means, far_start)
    for p in solution.form.params:
        truth = point[p]
        assert derived[p.name][0] == pytest.approx(truth, rel=1e-6, abs=1e-8)
        assert twin[p.name][0] == pytest.approx(derived[p.name][0], rel=1e-6, abs=1e-8)


def test_categorical_update_matches_numeric_maximum():
    rng = np.random.default_rng(3)
    counts = rng.gamma(2.0, 3.0, size=5)
    solution = simplex_solution(family("categorical"))
    numerator = sympy.lambdify(solution.count, solution.numerator)(counts)
    derived = numerator / numerator.sum()

    def negative(u):
        logp = u - scipy.special.logsumexp(u)
        return -np.dot(counts, logp)

    found = scipy.optimize.minimize(negative, np.zeros(5), method="BFGS", options={"gtol": 1e-10}).x
    numeric = np.exp(found - scipy.special.logsumexp(found))
    np.testing.assert_allclose(derived, numeric, rtol=1e-6)


def test_dirichlet_pseudo_counts_are_derived():
    from declarem.families.builtin import PRIOR_TABLE
    solution = simplex_solution(family("categorical"), PRIOR_TABLE["dirichlet"]["element_logpdf"])
    assert sympy.simplify(solution.numerator - (solution.count + solution.pseudo - 1)) == 0


@pytest.mark.parametrize("dim", [1, 2, 3])
def test_gaussian_moment_map_solves_moment_matching(dim):
    """The declared moment map equals a numeric root of grad A(eta) = E[T], found in eta."""
    rng = np.random.default_rng(dim)
    x = rng.normal(size=(50, dim)) @ (np.eye(dim) + 0.4 * rng.normal(size=(dim, dim))) + rng.normal(size=dim)
    t = gaussian.statistics(x).mean(axis=0)
    declared = gaussian.moment_map(t[None, :], dim)
    rows, cols = np.triu_indices(dim)

    def from_natural(eta):
        precision = np.zeros((dim, dim))
        precision[rows, cols] = -eta[dim:] / np.where(rows == cols, 0.5, 1.0)
        precision[cols, rows] = precision[rows, cols]
        cov = np.linalg.inv(precision)
        return cov @ eta[:dim], cov

    def log_partition(eta):
        mean, cov = from_natural(eta)
        return gaussian.natural(mean[None], cov[None])[1][0]

    def moment_gap(eta, step=1e-6):
        grad = np.array([(log_partition(eta + step * e) - log_partition(eta - step * e)) / (2 * step)
                         for e in np.eye(len(eta))])
        return grad - t

    # A is strictly convex, so the root is unique; start from a perturbed point to stay in the domain.
    start = gaussian.natural(x.mean(axis=0)[None] + 0.3, 1.3 * np.cov(x.T).reshape(1, dim, dim))[0][0]
    root = scipy.optimize.root(moment_gap, start, method="hybr", options={"xtol": 1e-12})
    assert np.max(np.abs(moment_gap(root.x))) < 1e-8
    mean, cov = from_natural(root.x)
    np.testing.assert_allclose(declared["mean"][0], mean, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(declared["cov"][0], cov, rtol=1e-6, atol=1e-7)


def test_gaussian_density_matches_scipy():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(20, 3))
    mean = rng.normal(size=3)
    a = rng.normal(size=(3, 3))
    cov = a @ a.T + np.eye(3)
    eta, log_partition = gaussian.natural(mean[None], cov[None])
    logpdf = gaussian.statistics(x) @ eta[0] - log_partition[0] + gaussian.base(3)
    np.testing.assert_allclose(logpdf, scipy.stats.multivariate_normal(mean, cov).logpdf(x), rtol=1e-12)


def test_not_an_exponential_family_is_refused():
    weibull = {"logpdf": "log(k) - k*log(lam) + (k - 1)*log(x) - (x/lam)**k", "support": "positive",
               "params": {"k": "positive", "lam": "positive"}}
    with pytest.raises(FamilyError, match="not an exponential family"):
        scalar_solution(family_from_table("weibull", weibull, "test.toml"))


def test_second_model_does_no_sympy_work(monkeypatch):
    def build():
        graph = nx.DiGraph()
        graph.add_node("z", family="categorical", latent=True, k=2)
        graph.add_node("x", family="gamma")
        graph.add_edge("z", "x")
        return declarem.Model(graph)

    rng = np.random.default_rng(0)
    data = {"x": np.concatenate([rng.gamma(2, 1, 200), rng.gamma(9, 1, 200)])}
    build().fit(data, max_iter=5)

    def no_solving(*args, **kwargs):
        raise AssertionError("sympy ran on a second compile")

    monkeypatch.setattr(sympy, "solve", no_solving)
    monkeypatch.setattr(sympy, "diff", no_solving)
    monkeypatch.setattr(sympy, "lambdify", no_solving)
    model = build()
    fit = model.fit(data, max_iter=5)
    assert np.isfinite(fit.loglik)
    fit_again = model.fit(data, max_iter=5, seed=1)
    assert np.isfinite(fit_again.loglik)


@pytest.mark.parametrize("trials", [21, 100])
def test_binomial_with_many_trials_fits(trials):
    """log(trials!) is beyond numpy's integers from 21 trials on: the derivation writes it as a float."""
    import networkx as nx
    from scipy.special import logsumexp
    from scipy.stats import binom
    rng = np.random.default_rng(trials)
    heads = np.concatenate([rng.binomial(trials, 0.2, 200), rng.binomial(trials, 0.7, 200)]).astype(float)
    g = nx.DiGraph()
    g.add_node("z", family="categorical", latent=True, k=2)
    g.add_node("h", family="binomial", trials=trials)
    g.add_edge("z", "h")
    fit = declarem.Model(g).fit({"h": heads})
    p = fit.params
    want = logsumexp(np.log(p["z"]["probs"]) + binom.logpmf(heads[:, None], trials, p["h"]["p"]), axis=1).sum()
    assert fit.loglik == pytest.approx(want, rel=1e-10)
    assert sorted(p["h"]["p"]) == pytest.approx([0.2, 0.7], abs=0.03)
