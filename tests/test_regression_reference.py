"""The hand-coded regression-mixture references in models/ (linear, Poisson and logistic), held
against independent computations before declarem's derived updates are held against them.

Only numpy, scipy and the reference modules themselves: nothing here imports declarem. Each
reference is checked for:
- one component: its M-step equals ordinary least squares from numpy's lstsq (linear) or a direct
  scipy.optimize maximisation of the log-likelihood (Poisson, logistic), to 1e-8;
- its log-likelihood equals the mixture density written with scipy.stats;
- EM never lowers the log-likelihood over 50 steps from a seeded start;
- its M-step is a maximiser: moving any one parameter of a component either way lowers that
  component's weighted objective, with responsibilities computed with scipy.stats;
and the generator of the catalog data reproduces the committed CSV files byte for byte, from
which EM recovers the stated true parameters.
"""

import importlib.util
from pathlib import Path

import numpy as np
import pytest
from scipy import optimize, stats
from scipy.special import expit, logsumexp

MODELS = Path(__file__).resolve().parent.parent / "models"


def _load(name, folder=MODELS):
    spec = importlib.util.spec_from_file_location(f"reference_{name}", folder / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


linear = _load("regression_mixture_reference")
poisson = _load("poisson_regression_reference")
logistic = _load("logistic_regression_reference", Path(__file__).resolve().parent)
make_data = _load("make_regression_data")


# ---------------------------------------------------------------------------------------------
# Seeded data and starts
# ---------------------------------------------------------------------------------------------

def _read_csv(name):
    table = np.genfromtxt(MODELS / name, delimiter=",", names=True)
    return {column: np.asarray(table[column], dtype=float) for column in table.dtype.names}


def _two_covariates(rng, n_rows):
    """Covariates as the columns u_0, u_1 of a covariate node with dim = 2, shape (n_rows, 2)."""
    return np.column_stack([rng.uniform(-1.0, 1.0, n_rows), rng.normal(0.0, 0.5, n_rows)])


def _linear_data_two_covariates(seed=101, n_rows=200):
    rng = np.random.default_rng(seed)
    values = _two_covariates(rng, n_rows)
    response = 0.7 + values @ np.array([1.5, -2.0]) + 0.3 * rng.standard_normal(n_rows)
    return {"u_0": values[:, 0], "u_1": values[:, 1], "y": response}, values


def _poisson_data_two_covariates(seed=102, n_rows=300):
    rng = np.random.default_rng(seed)
    values = _two_covariates(rng, n_rows)
    counts = rng.poisson(np.exp(0.3 + values @ np.array([0.8, -0.5]))).astype(float)
    return {"u_0": values[:, 0], "u_1": values[:, 1], "count": counts}, values


def _logistic_data_two_covariates(seed=103, n_rows=400):
    rng = np.random.default_rng(seed)
    values = _two_covariates(rng, n_rows)
    outcome = (rng.uniform(size=n_rows) < expit(-0.4 + values @ np.array([2.0, 1.0]))).astype(float)
    return {"u_0": values[:, 0], "u_1": values[:, 1], "y": outcome}, values


def _logistic_mixture_data(seed=104, n_rows=600):
    """Two components with opposite slopes, one covariate u."""
    rng = np.random.default_rng(seed)
    component = rng.choice(2, size=n_rows, p=[0.6, 0.4])
    covariate = rng.uniform(-2.0, 2.0, n_rows)
    eta = np.array([-0.5, 1.0])[component] + np.array([2.5, -2.0])[component] * covariate
    return {"u": covariate, "y": (rng.uniform(size=n_rows) < expit(eta)).astype(float)}


def _start(seed, response, n_components=2, with_var=False):
    """A seeded start in fit.params form: Dirichlet weights, normal intercepts and slopes."""
    rng = np.random.default_rng(seed)
    params = {"z": {"probs": rng.dirichlet(np.full(n_components, 5.0))},
              response: {"intercept": rng.normal(1.0, 0.5, n_components),
                         "coef": rng.normal(0.0, 0.5, (n_components, 1))}}
    if with_var:
        params[response]["var"] = rng.uniform(0.05, 0.2, n_components)
    return params


def _cases():
    """(reference, data, start) for each reference on data it is meant for."""
    return {
        "linear": (linear, _read_csv("regression_mixture.csv"), _start(201, "y", with_var=True)),
        "poisson": (poisson, _read_csv("poisson_regression.csv"), _start(202, "count")),
        "logistic": (logistic, _logistic_mixture_data(), _start(203, "y")),
    }


# ---------------------------------------------------------------------------------------------
# Per-row log-densities written with scipy.stats, independent of the references
# ---------------------------------------------------------------------------------------------

def _row_logpdf(kind, data, response, intercept, coef, var=None):
    """log p(response_j | u_j) for one component, shape (n,)."""
    if "u" in data:
        values = np.asarray(data["u"], dtype=float).reshape(-1, 1)
    else:
        values = np.column_stack([data["u_0"], data["u_1"]])
    eta = intercept + values @ np.atleast_1d(coef)
    observed = data[response]
    if kind == "linear":
        return stats.norm.logpdf(observed, loc=eta, scale=np.sqrt(var))
    if kind == "poisson":
        return stats.poisson.logpmf(observed, np.exp(eta))
    return stats.bernoulli.logpmf(observed, expit(eta))


def _component_logpdf(kind, data, params):
    """log p(response_j | u_j, z = k), shape (n, K)."""
    response = "count" if kind == "poisson" else "y"
    node = params[response]
    columns = []
    for k in range(len(node["intercept"])):
        var = node["var"][k] if kind == "linear" else None
        columns.append(_row_logpdf(kind, data, response, node["intercept"][k], node["coef"][k], var))
    return np.column_stack(columns)


# ---------------------------------------------------------------------------------------------
# One component: the M-step against least squares and scipy.optimize
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("layout", ["columns", "matrix"])
def test_one_component_linear_step_is_ordinary_least_squares(layout):
    data, values = _linear_data_two_covariates()
    if layout == "matrix":
        # A covariate may also come as one (n, m) array under the node's name.
        data = {"u": values, "y": data["y"]}
    start = {"z": {"probs": np.array([1.0])},
             "y": {"intercept": np.array([-3.0]), "coef": np.array([[4.0, 4.0]]), "var": np.array([7.0])}}
    new = linear.step(data, start)
    design = np.column_stack([np.ones(len(values)), values])
    beta, *_ = np.linalg.lstsq(design, data["y"], rcond=None)
    residual = data["y"] - design @ beta
    np.testing.assert_allclose(new["y"]["intercept"], beta[:1], rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(new["y"]["coef"], beta[None, 1:], rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(new["y"]["var"], [np.mean(residual ** 2)], rtol=1e-8)
    np.testing.assert_allclose(new["z"]["probs"], [1.0], rtol=1e-12)


def _direct_maximum(kind, data, values, response):
    """The maximum-likelihood (intercept, coef...) by scipy.optimize on the full log-likelihood."""
    design = np.column_stack([np.ones(len(values)), values])
    observed = data[response]
    n_rows = len(observed)

    def negative_mean_loglik(beta):
        eta = design @ beta
        if kind == "poisson":
            return -np.mean(stats.poisson.logpmf(observed, np.exp(eta)))
        return -np.mean(stats.bernoulli.logpmf(observed, expit(eta)))

    def gradient(beta):
        eta = design @ beta
        mean = np.exp(eta) if kind == "poisson" else expit(eta)
        return -design.T @ (observed - mean) / n_rows

    found = optimize.minimize(negative_mean_loglik, np.zeros(design.shape[1]), jac=gradient,
                              method="BFGS", options={"gtol": 1e-13, "maxiter": 1000})
    assert np.max(np.abs(gradient(found.x))) < 1e-10, found.message
    return found.x


@pytest.mark.parametrize("kind", ["poisson", "logistic"])
def test_one_component_glm_step_is_the_direct_maximum(kind):
    if kind == "poisson":
        reference, response = poisson, "count"
        data, values = _poisson_data_two_covariates()
        # Rates far below the data's: Newton's first full step overshoots by a factor near
        # e^57, so the result depends on the step halving.
        start_intercept, start_coef = -3.0, [-2.0, 2.0]
    else:
        reference, response = logistic, "y"
        data, values = _logistic_data_two_covariates()
        # Far from the maximum: here too the first full Newton steps would lower the objective.
        start_intercept, start_coef = 3.0, [-4.0, 5.0]
    start = {"z": {"probs": np.array([1.0])},
             response: {"intercept": np.array([start_intercept]), "coef": np.array([start_coef])}}
    new = reference.step(data, start)
    expected = _direct_maximum(kind, data, values, response)
    np.testing.assert_allclose(new[response]["intercept"], expected[:1], rtol=1e-8, atol=1e-8)
    np.testing.assert_allclose(new[response]["coef"], expected[None, 1:], rtol=1e-8, atol=1e-8)
    np.testing.assert_allclose(new["z"]["probs"], [1.0], rtol=1e-12)


# ---------------------------------------------------------------------------------------------
# Mixtures: the log-likelihood, its rise at every step, and the M-step as a maximiser
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["linear", "poisson", "logistic"])
def test_loglik_is_the_mixture_density(kind):
    reference, data, start = _cases()[kind]
    expected = logsumexp(np.log(start["z"]["probs"]) + _component_logpdf(kind, data, start), axis=1).sum()
    assert reference.loglik(data, start) == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("kind", ["linear", "poisson", "logistic"])
def test_em_never_lowers_the_loglik(kind):
    reference, data, params = _cases()[kind]
    trajectory = [reference.loglik(data, params)]
    for _ in range(50):
        params = reference.step(data, params)
        trajectory.append(reference.loglik(data, params))
    trajectory = np.array(trajectory)
    rises = np.diff(trajectory)
    # Every single step, not the sum: allow only what summing the log-likelihood rounds away.
    assert np.all(rises >= -1e-12 * np.abs(trajectory[1:])), rises.min()
    # From a seeded start away from the maximum, EM has to climb.
    assert trajectory[-1] > trajectory[0] + 1.0


def _component_objective(kind, data, weight, intercept, coef, var=None):
    """sum_j w_j log p(response_j | u_j) for one component, written with scipy.stats."""
    response = "count" if kind == "poisson" else "y"
    return float(weight @ _row_logpdf(kind, data, response, intercept, coef, var))


@pytest.mark.parametrize("kind", ["linear", "poisson", "logistic"])
def test_mstep_is_a_maximiser(kind):
    reference, data, start = _cases()[kind]
    response = "count" if kind == "poisson" else "y"
    joint = np.log(start["z"]["probs"]) + _component_logpdf(kind, data, start)
    resp = np.exp(joint - logsumexp(joint, axis=1, keepdims=True))          # (n, K), by scipy.stats
    new = reference.step(data, start)
    node = new[response]
    names = ["intercept", "coef"] + (["var"] if kind == "linear" else [])
    for k in range(resp.shape[1]):
        best = {name: np.array(node[name][k], dtype=float) for name in names}
        at_best = _component_objective(kind, data, resp[:, k], **best)
        for name in names:
            for index in np.ndindex(best[name].shape):
                for sign in (-1.0, 1.0):
                    moved = {key: value.copy() for key, value in best.items()}
                    moved[name][index] += sign * 1e-5 * max(1.0, abs(float(best[name][index])))
                    lower = _component_objective(kind, data, resp[:, k], **moved)
                    assert lower < at_best, (k, name, index, sign, lower - at_best)
    # The weights maximise sum_jk r_jk log pi_k on the simplex: moving mass either way lowers it.
    probs = new["z"]["probs"]
    at_best = float((resp * np.log(probs)).sum())
    for sign in (-1.0, 1.0):
        moved = probs + sign * 1e-5 * np.array([1.0, -1.0])
        assert float((resp * np.log(moved)).sum()) < at_best


# ---------------------------------------------------------------------------------------------
# The catalog data
# ---------------------------------------------------------------------------------------------

def test_generator_reproduces_the_committed_data(tmp_path):
    for written in make_data.generate(tmp_path):
        assert written.read_bytes() == (MODELS / written.name).read_bytes(), written.name


@pytest.mark.parametrize("kind", ["linear", "poisson"])
def test_em_from_the_truth_stays_near_the_stated_parameters(kind):
    if kind == "linear":
        reference, data, settings, response = linear, _read_csv("regression_mixture.csv"), \
            make_data.REGRESSION_MIXTURE, "y"
    else:
        reference, data, settings, response = poisson, _read_csv("poisson_regression.csv"), \
            make_data.POISSON_REGRESSION, "count"
    true = {node: {name: np.asarray(value, dtype=float) for name, value in values.items()}
            for node, values in settings["true"].items()}
    assert len(data[response]) == settings["n_rows"]
    params = true
    for _ in range(100):
        params = reference.step(data, params)
    # Sampling error at these sizes is a few hundredths (the bootstrap spread of the fit); a
    # mislabelled component or a wrong generator is off by far more.
    np.testing.assert_allclose(params["z"]["probs"], true["z"]["probs"], atol=0.1)
    np.testing.assert_allclose(params[response]["intercept"], true[response]["intercept"], atol=0.15)
    np.testing.assert_allclose(params[response]["coef"], true[response]["coef"], atol=0.15)
    if kind == "linear":
        np.testing.assert_allclose(params["y"]["var"], true["y"]["var"], rtol=0.3)
