"""The hand-coded generalised-EM references in models/ (negative binomial mixture with unknown
dispersion, Weibull mixture with free shapes), held against independent computations before
declarem's numeric M-steps are held against them.

Only numpy, scipy and the reference modules themselves: nothing here imports declarem. Each
reference is checked for:
- its declared log-density equals scipy.stats' (nbinom with n = r and p = 1 - p; weibull_min);
- one component: its M-step with weights 1 equals a maximisation of the log-likelihood, written
  with scipy.stats, by scipy.optimize, to 1e-8;
- EM never lowers the log-likelihood, at any of 30 steps from a seeded start;
- its M-step is a maximiser: moving any one parameter of a component either way lowers that
  component's weighted objective written with scipy.stats, with responsibilities from scipy.stats;
- ``direct_maximum`` from an EM fixed point returns the same log-likelihood (to 1e-6), and from a
  start away from it climbs to the same maximum;
and the generator reproduces the committed Weibull data byte for byte, the committed counts hold
what their source note says, and the method of moments matches the sample's mean and variance.
"""

import importlib.util
import zipfile
from pathlib import Path

import numpy as np
import pytest
from scipy import optimize, stats
from scipy.special import logsumexp

MODELS = Path(__file__).resolve().parent.parent / "models"


def _load(name):
    spec = importlib.util.spec_from_file_location(f"reference_{name}", MODELS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


negbin = _load("negbin_mixture_reference")
weibull = _load("weibull_mixture_reference")
make_data = _load("make_gem_data")


# ---------------------------------------------------------------------------------------------
# Data, starts and scipy.stats densities, independent of the references
# ---------------------------------------------------------------------------------------------

def _read_column(name, column):
    table = np.genfromtxt(MODELS / name, delimiter=",", names=True)
    return np.asarray(table[column], dtype=float)


def _negbin_mixture_data(seed=301, n_rows=400):
    """Two well-separated negative binomials (means 2 and 20), so EM converges in few steps."""
    rng = np.random.default_rng(seed)
    component = rng.choice(2, size=n_rows, p=[0.6, 0.4])
    size = np.array([3.0, 5.0])[component]
    prob = np.array([0.4, 0.8])[component]                  # declared p: mean = r p / (1 - p)
    return {"count": rng.negative_binomial(size, 1.0 - prob).astype(float)}


def _weibull_catalog_data():
    return {"x": _read_column("weibull_mixture.csv", "x")}


def _negbin_start(seed, n_components=2):
    rng = np.random.default_rng(seed)
    # Distinct p per component: with equal components EM stays on the symmetric fixed point
    # (the one-component fit), where the two components never part.
    low, high = np.linspace(0.3, 0.95, n_components + 1)[:-1], np.linspace(0.3, 0.95, n_components + 1)[1:]
    return {"z": {"probs": rng.dirichlet(np.full(n_components, 5.0))},
            "count": {"r": rng.uniform(0.5, 2.0, n_components), "p": rng.uniform(low, high)}}


def _weibull_start(seed, n_components=2):
    rng = np.random.default_rng(seed)
    return {"z": {"probs": rng.dirichlet(np.full(n_components, 5.0))},
            "x": {"k": rng.uniform(0.7, 2.0, n_components),
                  "lam": np.sort(rng.uniform(0.5, 3.0, n_components))}}


def _cases():
    """(reference, data, seeded start, parameter names) for each reference."""
    return {
        "negbin": (negbin, _negbin_mixture_data(), _negbin_start(401), ("r", "p")),
        "weibull": (weibull, _weibull_catalog_data(), _weibull_start(402), ("k", "lam")),
    }


def _scipy_logpdf(kind, values, first, second):
    """log-density of one component by scipy.stats, shape (n,).

    The declared negative binomial NB(r, p) counts x with mass proportional to p^x (1 - p)^r,
    which is scipy's nbinom(n=r, p=1 - p); the declared Weibull is weibull_min(c=k, scale=lam).
    """
    if kind == "negbin":
        return stats.nbinom.logpmf(values, first, 1.0 - second)
    return stats.weibull_min.logpdf(values, first, scale=second)


def _component_logpdf(kind, data, params):
    """log-density of every row under every component by scipy.stats, shape (n, K)."""
    reference = negbin if kind == "negbin" else weibull
    node = params[reference.OBSERVED]
    first, second = (node["r"], node["p"]) if kind == "negbin" else (node["k"], node["lam"])
    values = np.asarray(data[reference.OBSERVED], dtype=float)
    return np.column_stack([_scipy_logpdf(kind, values, a, b) for a, b in zip(first, second)])


def _run_to_fixed_point(reference, data, params, max_steps, tolerance=1e-11):
    """EM until the log-likelihood rises by less than ``tolerance``; returns (params, steps)."""
    previous = reference.loglik(data, params)
    for steps in range(1, max_steps + 1):
        params = reference.step(data, params)
        current = reference.loglik(data, params)
        if current - previous < tolerance:
            return params, steps
        previous = current
    raise AssertionError(f"EM did not reach a fixed point in {max_steps} steps")


# ---------------------------------------------------------------------------------------------
# The declared densities against scipy.stats
# ---------------------------------------------------------------------------------------------

def test_declared_negbin_logpdf_is_scipy_nbinom():
    counts = np.array([0.0, 1.0, 2.0, 5.0, 17.0, 120.0])
    size = np.array([0.05, 0.7, 3.0, 250.0])
    prob = np.array([0.02, 0.5, 0.9, 0.999])
    declared = negbin.log_density(counts, size, prob)                     # (6, 4)
    expected = stats.nbinom.logpmf(counts[:, None], size, 1.0 - prob)
    np.testing.assert_allclose(declared, expected, rtol=1e-10, atol=1e-12)


def test_declared_weibull_logpdf_is_scipy_weibull_min():
    values = np.array([1e-3, 0.2, 1.0, 2.5, 7.0, 30.0])
    shape = np.array([0.5, 0.8, 1.0, 4.0])
    scale = np.array([0.3, 1.0, 2.0, 10.0])
    declared = weibull.log_density(values, shape, scale)
    expected = stats.weibull_min.logpdf(values[:, None], shape, scale=scale)
    np.testing.assert_allclose(declared, expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("kind", ["negbin", "weibull"])
def test_loglik_is_the_mixture_density(kind):
    reference, data, start, _ = _cases()[kind]
    expected = logsumexp(np.log(start["z"]["probs"]) + _component_logpdf(kind, data, start), axis=1).sum()
    assert reference.loglik(data, start) == pytest.approx(expected, rel=1e-12)


# ---------------------------------------------------------------------------------------------
# One component: the M-step against scipy.optimize
# ---------------------------------------------------------------------------------------------

def _central_gradient(function, theta, step=1e-5):
    """Central differences of ``function`` at ``theta``, shape (len(theta),)."""
    gradient = np.empty_like(theta)
    for index in range(len(theta)):
        shift = np.zeros_like(theta)
        shift[index] = step
        gradient[index] = (function(theta + shift) - function(theta - shift)) / (2 * step)
    return gradient


def _scipy_maximum(kind, values, start):
    """The maximum-likelihood pair by scipy.optimize on the scipy.stats log-likelihood.

    Coordinates (log r, log mean), which are orthogonal for the negative binomial, or (log k,
    log lam). Nelder-Mead finds the basin; a minimiser that only compares values stops where the
    log-likelihood's changes drown in its rounding, about 1e-7 away in r, so scipy's root finder
    then solves for a zero of the central-difference gradient, which resolves the maximum to
    about 1e-10.
    """
    def to_params(theta):
        if kind == "negbin":
            size, mean = np.exp(theta)
            return size, mean / (size + mean)
        return np.exp(theta[0]), np.exp(theta[1])

    def negative_loglik(theta):
        return -np.sum(_scipy_logpdf(kind, values, *to_params(theta)))

    if kind == "negbin":
        theta = np.log([start[0], start[0] * start[1] / (1.0 - start[1])])
    else:
        theta = np.log(start)
    rough = optimize.minimize(negative_loglik, theta, method="Nelder-Mead",
                              options={"xatol": 1e-10, "fatol": 1e-14, "maxiter": 4000})
    solved = optimize.root(lambda point: _central_gradient(negative_loglik, point), rough.x,
                           method="hybr", options={"xtol": 1e-14})
    assert solved.success, solved.message
    return np.array(to_params(solved.x))


def test_one_component_negbin_step_is_the_scipy_maximum():
    rng = np.random.default_rng(311)
    counts = rng.negative_binomial(2.5, 0.3, size=400).astype(float)   # declared r = 2.5, p = 0.7
    # r eight times too large: a full Newton step in log r from there overshoots to a lower
    # objective, so the step halving has to shorten it.
    start = {"z": {"probs": np.array([1.0])}, "count": {"r": np.array([20.0]), "p": np.array([0.2])}}
    new = negbin.step({"count": counts}, start)
    expected = _scipy_maximum("negbin", counts, (2.0, 0.6))
    np.testing.assert_allclose([new["count"]["r"][0], new["count"]["p"][0]], expected, rtol=1e-8)
    np.testing.assert_allclose(new["z"]["probs"], [1.0], rtol=1e-12)
    # For the maximising r, p is the closed form xbar / (r + xbar).
    assert new["count"]["p"][0] == pytest.approx(counts.mean() / (new["count"]["r"][0] + counts.mean()), rel=1e-14)


def test_one_component_weibull_step_is_the_scipy_maximum():
    rng = np.random.default_rng(312)
    values = 2.0 * rng.weibull(1.7, size=300)
    # A shape a third of the maximum's: a full Newton step in log k from there overshoots to a
    # lower objective, so the step halving has to shorten it.
    start = {"z": {"probs": np.array([1.0])}, "x": {"k": np.array([0.5]), "lam": np.array([0.1])}}
    new = weibull.step({"x": values}, start)
    expected = _scipy_maximum("weibull", values, (1.5, 1.8))
    np.testing.assert_allclose([new["x"]["k"][0], new["x"]["lam"][0]], expected, rtol=1e-8)
    shape = new["x"]["k"][0]
    assert new["x"]["lam"][0] == pytest.approx(np.mean(values ** shape) ** (1.0 / shape), rel=1e-13)


# ---------------------------------------------------------------------------------------------
# Mixtures: the rise at every step, the M-step as a maximiser, the direct maximisation
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["negbin", "weibull", "negbin_catalog"])
def test_em_never_lowers_the_loglik(kind):
    if kind == "negbin_catalog":
        reference, data, params = negbin, {"count": _read_column("randhie_mdvis.csv", "count")}, _negbin_start(403)
    else:
        reference, data, params, _ = _cases()[kind]
    trajectory = [reference.loglik(data, params)]
    for _ in range(30):
        params = reference.step(data, params)
        trajectory.append(reference.loglik(data, params))
    trajectory = np.array(trajectory)
    rises = np.diff(trajectory)
    # Every single step, not the sum: allow only what summing the log-likelihood rounds away.
    assert np.all(rises >= -1e-12 * np.abs(trajectory[1:])), rises.min()
    # From a seeded start away from the maximum, EM has to climb.
    assert trajectory[-1] > trajectory[0] + 1.0


def _component_objective(kind, values, weight, first, second):
    """sum_j w_j log f(x_j; first, second) for one component, written with scipy.stats."""
    return float(weight @ _scipy_logpdf(kind, values, first, second))


@pytest.mark.parametrize("kind", ["negbin", "weibull"])
def test_mstep_is_a_maximiser(kind):
    reference, data, start, names = _cases()[kind]
    values = np.asarray(data[reference.OBSERVED], dtype=float)
    joint = np.log(start["z"]["probs"]) + _component_logpdf(kind, data, start)
    resp = np.exp(joint - logsumexp(joint, axis=1, keepdims=True))          # (n, K), by scipy.stats
    new = reference.step(data, start)
    node = new[reference.OBSERVED]
    for k in range(resp.shape[1]):
        best = np.array([node[names[0]][k], node[names[1]][k]])
        at_best = _component_objective(kind, values, resp[:, k], *best)
        for index in range(2):
            for sign in (-1.0, 1.0):
                moved = best.copy()
                moved[index] *= 1.0 + sign * 1e-5
                lower = _component_objective(kind, values, resp[:, k], *moved)
                assert lower < at_best, (k, names[index], sign, lower - at_best)
    # The weights maximise sum_jk r_jk log pi_k on the simplex: moving mass either way lowers it.
    probs = new["z"]["probs"]
    np.testing.assert_allclose(probs, resp.mean(axis=0), rtol=1e-12)
    at_best = float((resp * np.log(probs)).sum())
    for sign in (-1.0, 1.0):
        moved = probs + sign * 1e-5 * np.array([1.0, -1.0])
        assert float((resp * np.log(moved)).sum()) < at_best


@pytest.mark.parametrize("kind", ["negbin", "weibull"])
def test_direct_maximum_agrees_with_the_em_fixed_point(kind):
    reference, data, start, names = _cases()[kind]
    fixed_point, _ = _run_to_fixed_point(reference, data, start, max_steps=400)
    at_fixed_point = reference.loglik(data, fixed_point)
    found, found_loglik = reference.direct_maximum(data, fixed_point)
    assert found_loglik == pytest.approx(at_fixed_point, abs=1e-6)
    assert found_loglik == pytest.approx(reference.loglik(data, found), rel=1e-14)
    node, found_node = fixed_point[reference.OBSERVED], found[reference.OBSERVED]
    for name in names:
        np.testing.assert_allclose(found_node[name], node[name], rtol=1e-4)
    # From a start away from the maximum the direct route has to do the climbing itself: it
    # reaches the same log-likelihood, so it is not merely handing back its start.
    away = {"z": {"probs": np.array([0.5, 0.5])},
            reference.OBSERVED: {name: np.asarray(node[name]) * np.array([1.3, 0.8]) for name in names}}
    if kind == "negbin":
        away["count"]["p"] = np.clip(away["count"]["p"], 0.05, 0.95)
    assert reference.loglik(data, away) < at_fixed_point - 1.0
    assert reference.direct_maximum(data, away)[1] == pytest.approx(at_fixed_point, abs=1e-6)


def test_direct_maximum_of_the_catalog_counts():
    """The two-component maximum on the RAND visits, the figure the catalog page quotes."""
    counts = _read_column("randhie_mdvis.csv", "count")
    start = {"z": {"probs": np.array([0.5, 0.5])}, "count": {"r": np.array([1.0, 1.0]), "p": np.array([0.5, 0.9])}}
    found, found_loglik = negbin.direct_maximum({"count": counts}, start)
    assert found_loglik == pytest.approx(-43966.987543, abs=1e-5)
    np.testing.assert_allclose(found["z"]["probs"], [0.830798, 0.169202], atol=2e-6)
    np.testing.assert_allclose(found["count"]["r"], [0.941147, 0.387298], atol=2e-6)
    np.testing.assert_allclose(found["count"]["p"], [0.718958, 0.929209], atol=2e-6)


# ---------------------------------------------------------------------------------------------
# The method of moments
# ---------------------------------------------------------------------------------------------

def test_moments_estimate_matches_the_sample_moments():
    counts = _read_column("randhie_mdvis.csv", "count")
    size, prob = negbin.moments_estimate(counts)
    # scipy's nbinom with the mapped parameters has the sample's mean and (divide-by-n) variance.
    mean, variance = stats.nbinom.stats(size, 1.0 - prob, moments="mv")
    assert mean == pytest.approx(counts.mean(), rel=1e-12)
    assert variance == pytest.approx(counts.var(), rel=1e-12)
    # The method of moments is not the maximum: the one-component M-step's likelihood is higher.
    data = {"count": counts}
    moments = {"z": {"probs": np.array([1.0])}, "count": {"r": np.array([size]), "p": np.array([prob])}}
    maximum = negbin.step(data, moments)
    assert negbin.loglik(data, maximum) > negbin.loglik(data, moments) + 100.0


def test_moments_estimate_refuses_underdispersed_counts():
    with pytest.raises(ValueError, match="not overdispersed"):
        negbin.moments_estimate([1, 2, 1, 2, 1, 2])


# ---------------------------------------------------------------------------------------------
# The catalog data
# ---------------------------------------------------------------------------------------------

def test_generator_reproduces_the_committed_weibull_data(tmp_path):
    written = make_data.write_weibull(tmp_path)
    assert written.read_bytes() == (MODELS / "weibull_mixture.csv").read_bytes()


def test_committed_counts_hold_what_the_source_note_says():
    counts = _read_column("randhie_mdvis.csv", "count")
    summary = make_data.RANDHIE_SUMMARY
    assert len(counts) == summary["n_rows"]
    assert counts.sum() == summary["total"]
    assert np.count_nonzero(counts == 0) == summary["n_zeros"]
    assert counts.max() == summary["max"]
    assert np.array_equal(counts, np.round(counts)) and counts.min() == 0
    source_note = (MODELS / "randhie_mdvis_SOURCE.md").read_text()
    assert make_data.RANDHIE_SHA256 in source_note


def test_generator_reads_counts_from_a_wheel_and_refuses_another_file(tmp_path):
    content = b"mdvis,lncoins\n0,4.6\n3,4.6\n12,0\n"
    wheel = tmp_path / "statsmodels-0.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.writestr(make_data.RANDHIE_MEMBER, content)
    # A file other than statsmodels 0.15.0's is refused, not silently turned into other data.
    with pytest.raises(ValueError, match="SHA-256"):
        make_data.read_randhie_source(wheel)
    np.testing.assert_array_equal(make_data.randhie_counts(content), [0, 3, 12])
    with pytest.raises(ValueError, match="non-negative integers"):
        make_data.randhie_counts(b"mdvis\n1.5\n")


def test_em_from_the_truth_stays_near_the_stated_weibull_parameters():
    data = _weibull_catalog_data()
    settings = make_data.WEIBULL_MIXTURE
    true = {node: {name: np.asarray(value, dtype=float) for name, value in values.items()}
            for node, values in settings["true"].items()}
    assert len(data["x"]) == settings["n_rows"]
    params, _ = _run_to_fixed_point(weibull, data, true, max_steps=400)
    # Sampling error at 500 rows is a few hundredths in the weights and a tenth or so in the
    # shapes; a mislabelled component or a wrong generator is off by far more.
    np.testing.assert_allclose(params["z"]["probs"], true["z"]["probs"], atol=0.05)
    np.testing.assert_allclose(params["x"]["k"], true["x"]["k"], rtol=0.1)
    np.testing.assert_allclose(params["x"]["lam"], true["x"]["lam"], rtol=0.15)
