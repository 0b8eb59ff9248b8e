"""Generalised EM: user families that are not exponential families are fitted, not refused.

References: a direct maximisation of the (weighted) log-likelihood with scipy.optimize for one
component, and of the observed-data mixture log-likelihood for an EM fixed point; the objective
never falls; the route each parameter takes is derived and shown.
"""

import os
import subprocess
import sys
from pathlib import Path

import networkx as nx
import numpy as np
import pytest
from scipy import optimize
from scipy.special import expit, gammaln, logsumexp

import declarem
from declarem import kernels
from declarem.errors import FamilyError

ROOT = Path(__file__).resolve().parent.parent
FAMILIES = {
    "negbin": {"logpdf": "lgamma(x + r) - lgamma(r) - lgamma(x + 1) + r*log(1 - p) + x*log(p)",
               "support": "nonnegative-integer", "params": {"r": "positive", "p": "unit"}},
    "weibull": {"logpdf": "log(k) - log(lam) + (k - 1)*(log(x) - log(lam)) - (x/lam)**k", "support": "positive",
                "params": {"k": "positive", "lam": "positive"}},
    "student": {"logpdf": "lgamma((nu + 1)/2) - lgamma(nu/2) - log(pi*nu)/2 - log(s) "
                          "- (nu + 1)/2*log(1 + ((x - m)/s)**2/nu)",
                "support": "real", "params": {"m": "real", "s": "positive", "nu": "positive"}},
}


def _model(family, k=2):
    graph = nx.DiGraph()
    graph.graph["families"] = {family: FAMILIES[family]}
    if k:
        graph.add_node("z", family="categorical", latent=True, k=k)
    graph.add_node("x", family=family)
    if k:
        graph.add_edge("z", "x")
    return declarem.Model(graph)


def _negbin_loglik(x, r, p):
    return gammaln(x + r) - gammaln(r) - gammaln(x + 1) + r * np.log1p(-p) + x * np.log(p)


def _weibull_loglik(x, k, lam):
    return np.log(k) - np.log(lam) + (k - 1) * (np.log(x) - np.log(lam)) - (x / lam) ** k


def _student_loglik(x, m, s, nu):
    return gammaln((nu + 1) / 2) - gammaln(nu / 2) - 0.5 * np.log(np.pi * nu) - np.log(s) \
        - (nu + 1) / 2 * np.log1p(((x - m) / s) ** 2 / nu)


@pytest.mark.parametrize("family, draw, loglik, to_params", [
    ("negbin", lambda rng: rng.negative_binomial(3.0, 0.4, 600).astype(float), _negbin_loglik,
     lambda t: (np.exp(t[0]), expit(t[1]))),
    ("weibull", lambda rng: 2.0 * rng.weibull(1.7, 600), _weibull_loglik, lambda t: (np.exp(t[0]), np.exp(t[1]))),
    ("student", lambda rng: 1.0 + 0.5 * rng.standard_t(4.0, 600), _student_loglik,
     lambda t: (t[0], np.exp(t[1]), np.exp(t[2]))),
])
def test_one_component_is_the_weighted_maximum_likelihood(family, draw, loglik, to_params):
    rng = np.random.default_rng(1)
    x = draw(rng)
    weights = rng.integers(1, 4, len(x)).astype(float)
    fit = _model(family, k=0).fit({"x": x}, weights=weights, reg_covar=0.0)
    names = list(FAMILIES[family]["params"])
    found = np.array([float(fit.params["x"][n]) for n in names])

    def negative(t):
        return -np.sum(weights * loglik(x, *to_params(t)))

    start = np.zeros(len(names))
    best = optimize.minimize(negative, start, method="BFGS", options={"gtol": 1e-9})
    np.testing.assert_allclose(found, to_params(best.x), rtol=1e-6)
    assert fit.loglik == pytest.approx(-best.fun, rel=1e-10)


def test_negbin_mixture_fixed_point_is_the_maximum_likelihood():
    rng = np.random.default_rng(3)
    z = rng.random(1500) < 0.35
    x = np.where(z, rng.negative_binomial(2.0, 0.1, 1500), rng.negative_binomial(20.0, 0.8, 1500)).astype(float)
    fit = _model("negbin").fit({"x": x}, seed=0, tol=1e-12, max_iter=3000, accelerate="squarem")
    assert np.all(np.diff(fit.history) >= -1e-9 * np.abs(fit.history[1:]))

    def negative(t):
        probs = np.array([expit(t[0]), expit(-t[0])])
        joint = np.log(probs) + _negbin_loglik(x[:, None], np.exp(t[1:3]), expit(t[3:5]))
        return -np.sum(logsumexp(joint, axis=1))

    p = fit.params
    start = np.r_[np.log(p["z"]["probs"][0] / p["z"]["probs"][1]), np.log(p["x"]["r"]),
                  np.log(p["x"]["p"] / (1 - p["x"]["p"]))]
    direct = optimize.minimize(negative, start + 0.03, method="BFGS", options={"gtol": 1e-9})
    assert fit.loglik == pytest.approx(-direct.fun, abs=1e-6)
    np.testing.assert_allclose(start, direct.x, atol=1e-3)


def test_every_em_step_raises_the_objective_and_each_mstep_maximises_it():
    """From a poor start, each M-step ends where no single-parameter move raises the weighted objective."""
    rng = np.random.default_rng(5)
    x = np.r_[0.7 * rng.weibull(0.9, 300), 4.0 * rng.weibull(5.0, 300)]
    model = _model("weibull")
    start = {"z": {"probs": [0.5, 0.5]}, "x": {"k": [1.0, 1.0], "lam": [0.5, 2.0]}}
    fit = model.fit({"x": x}, init=start, max_iter=40, tol=0.0)
    assert np.all(np.diff(fit.history) > 0)
    one = model.fit({"x": x}, init=fit, max_iter=1, tol=0.0)
    # The E-step at fit's parameters, then the M-step's result must maximise each component's objective.
    log_joint = np.log(fit.params["z"]["probs"]) + _weibull_loglik(x[:, None], fit.params["x"]["k"],
                                                                     fit.params["x"]["lam"])
    resp = np.exp(log_joint - logsumexp(log_joint, axis=1, keepdims=True))
    for j in range(2):
        k, lam = one.params["x"]["k"][j], one.params["x"]["lam"][j]
        objective = np.sum(resp[:, j] * _weibull_loglik(x, k, lam))
        for dk, dl in [(1e-4, 0), (-1e-4, 0), (0, 1e-4), (0, -1e-4)]:
            assert np.sum(resp[:, j] * _weibull_loglik(x, k * (1 + dk), lam * (1 + dl))) < objective


def test_derive_says_which_route_each_parameter_takes():
    negbin = _model("negbin").derive()["x"]
    assert negbin.status == "partial"
    assert any(u.startswith("p = E[x]/(E[x] + r)") for u in negbin.updates)
    assert any(u.startswith("r: maximise") for u in negbin.updates)
    weibull = _model("weibull").derive()["x"]
    assert weibull.status == "numeric" and weibull.updates[0].startswith("k, lam: maximise")
    assert "not an exponential family" in " ".join(weibull.notes)


def test_missing_values_chains_and_sampling():
    model = _model("negbin")
    truth = {"z": {"probs": [0.5, 0.5]}, "x": {"r": [2.0, 40.0], "p": [0.5, 0.7]}}
    drawn = model.sample(800, truth, seed=2)
    x = drawn["x"].astype(float)
    x[::17] = np.nan
    fit = model.fit({"x": x}, seed=0)
    assert fit.n_missing == int(np.isnan(x).sum()) and np.all(np.diff(fit.history) >= -1e-9 * abs(fit.loglik))
    order = np.argsort(fit.params["x"]["r"] * fit.params["x"]["p"] / (1 - fit.params["x"]["p"]))
    np.testing.assert_allclose((fit.params["x"]["r"] * fit.params["x"]["p"] / (1 - fit.params["x"]["p"]))[order],
                               [2.0, 40.0 * 0.7 / 0.3], rtol=0.15)
    graph = nx.DiGraph(model.graph)
    graph.add_edge("z", "z", lag=1)
    chain = declarem.Model(graph).fit({"x": np.nan_to_num(x, nan=3.0)}, seed=0, lengths=[400, 400])
    assert np.all(np.diff(chain.history) >= -1e-9 * abs(chain.loglik))


def test_a_non_exponential_family_on_several_columns_is_refused():
    graph = nx.DiGraph()
    graph.graph["families"] = {"weibull": FAMILIES["weibull"]}
    graph.add_node("x", family="weibull", dim=2)
    with pytest.raises(FamilyError, match="fitted on one column per node"):
        declarem.Model(graph).compiled


def test_a_warm_process_takes_the_stored_route_without_deriving(tmp_path, monkeypatch):
    from support import run_cli
    """The route (not an exponential family) and the kernels are stored: a second process derives nothing.

    (A user family's declaration is still parsed with sympy when the spec is read, to report a bad
    expression at once; nothing is solved or differentiated.)
    """
    spec = tmp_path / "negbin.toml"
    spec.write_text('[families.negbin]\nlogpdf = "' + FAMILIES["negbin"]["logpdf"] + '"\n'
                    'support = "nonnegative-integer"\nparams = { r = "positive", p = "unit" }\n'
                    '[nodes.z]\nfamily = "categorical"\nlatent = true\nk = 2\n'
                    '[nodes.x]\nfamily = "negbin"\nparents = ["z"]\n')
    data = tmp_path / "counts.csv"
    data.write_text("x\n" + "\n".join(str(v) for v in np.random.default_rng(0).negative_binomial(3, 0.4, 200)))
    refuse = ("import sympy\n"
              "def refuse(*a, **k):\n    raise AssertionError('sympy derived on a warm start')\n"
              "sympy.solve = sympy.diff = refuse\n"
              "import sympy.solvers.solvers\nsympy.solvers.solvers.solve = refuse\n")
    arguments = ["fit", str(spec), "--data", str(data), "--quiet", "--max-iter", "40", "--out"]
    fit = f"import sys\nfrom declarem.cli import main\nassert main({arguments!r} + [sys.argv[1]]) == 0\n"
    cache = tmp_path / "cache"
    monkeypatch.setenv("DECLAREM_CACHE_DIR", str(cache))    # this process derives and stores the route
    for held in (kernels.scalar_kernels, kernels.general_kernels, kernels.simplex_kernels):
        held.cache_clear()                                  # kernels this session holds would skip the store
    deriving = tmp_path / "deriving.json"
    assert run_cli(*arguments, deriving).returncode == 0
    warm = tmp_path / "warm.json"
    done = subprocess.run([sys.executable, "-c", refuse + fit, str(warm)], cwd=ROOT, capture_output=True, text=True,
                          timeout=300, env=dict(os.environ, DECLAREM_CACHE_DIR=str(cache)))
    assert done.returncode == 0, done.stderr
    assert warm.read_bytes() == deriving.read_bytes()


def _reference(name):
    import importlib.util
    spec = importlib.util.spec_from_file_location(f"reference_{name}", ROOT / "models" / f"{name}_reference.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("name, column", [("negbin_mixture", "count"), ("weibull_mixture", "x")])
def test_catalog_fixed_points_are_the_direct_maximum_likelihood(name, column, page_generator):
    """The catalog's generalised-EM fits (their [fit] options as declared) equal scipy.optimize's maximum.

    The fit is ``declarem fit models/NAME.toml --seed 0``, the one its catalog page shows (fitted once
    per session, shared with tests/test_references.py).
    """
    model = declarem.load_model(ROOT / "models" / f"{name}.toml")
    data = {column: np.loadtxt(ROOT / "models" / model.data_info["path"], skiprows=1)}
    fit = page_generator.fit_spec(ROOT / "models" / f"{name}.toml", loaded=True)
    assert fit.converged
    direct, loglik = _reference(name).direct_maximum(data, fit.params)
    assert fit.loglik == pytest.approx(loglik, abs=1e-6)
    assert fit.loglik == pytest.approx(_reference(name).loglik(data, fit.params), rel=1e-12)


def test_negbin_maximum_likelihood_beats_the_method_of_moments():
    """One component on the real counts: the exact ML estimate against hmmlearn PR #583's moments."""
    counts = np.loadtxt(ROOT / "models" / "randhie_mdvis.csv", skiprows=1)
    fit = _model("negbin", k=0).fit({"x": counts})
    r, p = _reference("negbin_mixture").moments_estimate(counts)
    moments_loglik = np.sum(_negbin_loglik(counts, r, p))
    assert fit.loglik > moments_loglik + 300
    assert float(fit.params["x"]["r"]) == pytest.approx(0.680006, rel=1e-5)


def test_a_specs_fit_table_sets_the_models_defaults(tmp_path):
    from declarem.errors import SpecError
    from support import run_cli
    spec = ROOT / "models" / "weibull_mixture.toml"
    text = spec.read_text()
    tuned = tmp_path / "tuned.toml"
    tuned.write_text(text.replace('path = "weibull_mixture.csv"', f'path = "{ROOT / "models" / "weibull_mixture.csv"}"')
                     + '\n[fit]\nmax_iter = 7\ntol = 0\naccelerate = "squarem"\n')
    model = declarem.load_model(tuned)
    assert model.fit_options == {"max_iter": 7, "tol": 0, "accelerate": "squarem"}
    data = {"x": np.loadtxt(ROOT / "models" / "weibull_mixture.csv", skiprows=1)}
    assert model.fit(data, seed=0).n_iter == 7                              # the spec's max_iter
    plain = model.fit(data, seed=0, max_iter=3, accelerate="none")          # options given win
    assert plain.n_iter == 3 and len(plain.history) == 4
    out = tmp_path / "fit.json"
    assert run_cli("fit", tuned, "--max-iter", "2", "--quiet", "--out", out).returncode == 0
    assert declarem.Fit.load(out, model=model).n_iter == 2
    assert declarem.Fit.load(out).model.fit_options == model.fit_options    # saved with the fit
    for bad, message in (("maxiter = 3", "unknown key 'maxiter'; did you mean 'max_iter'"),
                         ('accelerate = "fast"', 'accelerate must be "squarem" or "none"'),
                         ("tol = -1", "tol must be a finite number >= 0")):
        tuned.write_text(text + f"\n[fit]\n{bad}\n")
        with pytest.raises(SpecError, match=message):
            declarem.load_model(tuned)
