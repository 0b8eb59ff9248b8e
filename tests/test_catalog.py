"""The model catalog (models/*.toml): every spec loads, fits its bundled data, and recovers its truth.

The generated models' data come from models/make_data.py with fixed seeds and the true parameters in
models/true_params.json. make_data.py also holds an independent plain-numpy reference (component
log-densities, the observed-data log-likelihood and a hand-written EM), which these tests use to check
declarem's log-likelihood and to find the maximum-likelihood estimate on the bundled data.

For each generated model the fit must
  * converge, with a history that never decreases (1e-9 relative slack per step);
  * report a log-likelihood equal to the reference log-likelihood at its own parameters;
  * reach at least the log-likelihood of the true parameters and of the reference ML estimate;
  * match the reference ML estimate to 0.05 bootstrap SD, and the true parameters to 5 bootstrap SD,
    after matching components up to label switching (the best of the K! permutations).

Tolerances. BOOTSTRAP_SD below is the standard deviation of each ML estimate over 200 parametric
bootstrap replicates at the bundled sample size (`python models/make_data.py --bootstrap 200`). An
estimate more than 5 SD from the truth has probability < 1e-6 per parameter under the normal
approximation (on the bundled data the reference ML estimate is within 2.7 SD of the truth for every
parameter). EM stopped at a relative change of 1e-10 is within an objective gap d of the optimum of
order 1e-5 nats (1e-3 for slowly converging models), so its parameters are within about sqrt(2 d) SD
of the ML estimate: < 0.05 SD.
"""

from __future__ import annotations

import functools
import itertools
import json
import tomllib
from pathlib import Path

import numpy as np
import pytest

from support import load_file

declarem = pytest.importorskip("declarem")

ROOT = Path(__file__).resolve().parents[1]
MODELS_DIR = ROOT / "models"


make_data = load_file(MODELS_DIR / "make_data.py", "catalog_make_data")
TRUE_PARAMS = json.loads((MODELS_DIR / "true_params.json").read_text())

# Parametric bootstrap SDs of the ML estimates (200 replicates, make_data.py --bootstrap 200).
BOOTSTRAP_SD = {
    "gmm": {"z": {"probs": [0.0174, 0.0161, 0.014]},
            "x": {"mean": [[0.0685, 0.0448], [0.0535, 0.081], [0.0929, 0.054]],
                  "cov": [[[0.1458, 0.0703], [0.0703, 0.0659]],
                          [[0.0868, 0.0779], [0.0779, 0.1296]],
                          [[0.1448, 0.0678], [0.0678, 0.0513]]]}},
    "poisson_mixture": {"z": {"probs": [0.0115, 0.0108, 0.0089]},
                        "count": {"rate": [0.0423, 0.1292, 0.2558]}},
    "bernoulli_mixture": {"z": {"probs": [0.0159, 0.0149, 0.0197]},
                          "answers": {"p": [
                              [0.0158, 0.0193, 0.0151, 0.0182, 0.0211, 0.016, 0.0194, 0.0158],
                              [0.0219, 0.0169, 0.0217, 0.0168, 0.0154, 0.0234, 0.0186, 0.0195],
                              [0.0287, 0.0266, 0.0258, 0.0281, 0.0264, 0.028, 0.0243, 0.0268]]}},
    "exponential_mixture": {"z": {"probs": [0.0116, 0.0116]},
                            "duration": {"rate": [0.0628, 0.0031]}},
    "gamma_mixture": {"z": {"probs": [0.011, 0.011]},
                      "size": {"shape": [0.1332, 0.6439], "rate": [0.1473, 0.0803]}},
    "latent_class": {"z": {"probs": [0.0141, 0.012, 0.0113]},
                     "q1": {"probs": [[0.0107, 0.0107], [0.0194, 0.0194], [0.0244, 0.0244]]},
                     "q2": {"probs": [[0.0144, 0.0121, 0.0095], [0.0158, 0.016, 0.0203],
                                      [0.018, 0.0236, 0.0172]]},
                     "q3": {"probs": [[0.0148, 0.0113, 0.0088, 0.0105], [0.0142, 0.0127, 0.0152, 0.0186],
                                      [0.0162, 0.0247, 0.0172, 0.0153]]},
                     "q4": {"probs": [[0.0127, 0.0127], [0.0156, 0.0156], [0.0205, 0.0205]]},
                     "q5": {"probs": [[0.012, 0.0138, 0.0112], [0.0204, 0.0165, 0.0137],
                                      [0.0178, 0.0178, 0.0228]]}},
}

GENERATED = list(make_data.MODELS)          # gmm, poisson, bernoulli, exponential, gamma, latent class

# How each generated model is fitted: seeded random restarts, tight tolerance. The GMM runs with
# reg_covar=0 so that the fit is exact ML (monotone by the EM theorem, comparable to the reference).
FIT_OPTIONS = {name: dict(seed=0, restarts=4, tol=1e-10, max_iter=2000) for name in GENERATED}
FIT_OPTIONS["gmm"]["reg_covar"] = 0.0

SD_TRUTH = 5.0      # recovery tolerance, in bootstrap SDs
SD_MLE = 0.05       # agreement with the reference ML estimate, in bootstrap SDs
HISTORY_SLACK = 1e-9


# ---------------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------------

def _arrays(params):
    return {node: {p: np.asarray(v, dtype=float) for p, v in ps.items()} for node, ps in params.items()}


def _permute(params, perm):
    """Relabel the latent components: every parameter's leading axis is indexed by z."""
    perm = list(perm)
    return {node: {p: np.asarray(v)[perm] for p, v in ps.items()} for node, ps in params.items()}


def _best_permutation(fitted, reference, sd):
    """The relabelling of fitted components closest to `reference`, in SD units."""
    K = len(reference["z"]["probs"])
    best, best_cost = None, np.inf
    for perm in itertools.permutations(range(K)):
        cand = _permute(fitted, perm)
        cost = sum(float((((cand[n][p] - reference[n][p]) / sd[n][p]) ** 2).sum())
                   for n in reference for p in reference[n])
        if cost < best_cost:
            best, best_cost = perm, cost
    return _permute(fitted, best)


def _assert_history_nondecreasing(history):
    h = np.asarray(history, dtype=float)
    assert h.ndim == 1 and len(h) >= 2, f"history too short: {h!r}"
    assert np.isfinite(h).all(), "history has non-finite values"
    drops = h[:-1] - h[1:] - HISTORY_SLACK * np.abs(h[:-1])
    bad = np.flatnonzero(drops > 0)
    assert not len(bad), (f"objective fell at step {bad[0]} -> {bad[0] + 1}: "
                          f"{h[bad[0]]!r} -> {h[bad[0] + 1]!r}")


def _assert_close_in_sd(fitted, reference, sd, n_sd, what):
    for node, ps in reference.items():
        assert node in fitted, f"fit has no node {node!r}; has {sorted(fitted)}"
        for p, ref in ps.items():
            assert p in fitted[node], f"fit has no {node}.{p}; has {sorted(fitted[node])}"
            got = np.asarray(fitted[node][p], dtype=float)
            assert got.shape == ref.shape, f"{node}.{p}: shape {got.shape}, expected {ref.shape}"
            z = np.abs(got - ref) / sd[node][p]
            assert z.max() <= n_sd, (f"{node}.{p} is {z.max():.3g} SD from the {what} "
                                     f"(tolerance {n_sd} SD):\nfit {got.tolist()}\n{what} {ref.tolist()}")


@functools.lru_cache(maxsize=None)
def _parsed_columns(name):
    return make_data.read_csv(MODELS_DIR / f"{name}.csv")


def _columns(name):
    """The bundled CSV's columns, parsed once per session (genfromtxt is slow); each call gets its own copies."""
    return {column: values.copy() for column, values in _parsed_columns(name).items()}


@functools.lru_cache(maxsize=None)
def _model(name):
    return declarem.load_model(str(MODELS_DIR / f"{name}.toml"))


@functools.lru_cache(maxsize=None)
def _fit(name):
    return _model(name).fit(_columns(name), **FIT_OPTIONS[name])


@functools.lru_cache(maxsize=None)
def _reference_mle(name):
    """Reference ML estimate on the bundled data: hand-written EM started at the truth."""
    spec = make_data.MODELS[name]
    params, hist = make_data.hand_em(spec["nodes"], _columns(name), spec["true"], tol=1e-13)
    return _arrays(params), hist[-1]


def _sd(name):
    return _arrays(BOOTSTRAP_SD[name])


# ---------------------------------------------------------------------------------------------
# Every spec in the catalog
# ---------------------------------------------------------------------------------------------

ALL_SPECS = sorted(p.stem for p in MODELS_DIR.glob("*.toml"))
CATALOG_SPECS = GENERATED + ["two_coins"]


@pytest.mark.parametrize("name", ALL_SPECS)
def test_spec_has_model_metadata_and_small_data(name):
    path = MODELS_DIR / f"{name}.toml"
    with open(path, "rb") as fh:
        spec = tomllib.load(fh)
    if name in CATALOG_SPECS:         # the specs this file owns carry [model] name and description
        assert spec.get("model", {}).get("name") == name, f"{path}: [model] name should be {name!r}"
        assert spec["model"].get("description", "").strip(), f"{path}: [model] description is empty"
    if "data" in spec and "path" in spec["data"]:
        data_path = path.parent / spec["data"]["path"]
        assert data_path.is_file(), f"{path}: [data] path {data_path} does not exist"
        assert data_path.stat().st_size < 200_000, f"{data_path} is over 200 KB"
    declarem.load_model(str(path))


def test_true_params_cover_the_generated_models():
    assert set(TRUE_PARAMS) == set(GENERATED)
    for name in GENERATED:
        assert TRUE_PARAMS[name] == make_data.MODELS[name]["true"]
        probs = np.asarray(TRUE_PARAMS[name]["z"]["probs"])
        assert np.isclose(probs.sum(), 1.0)


def test_bundled_data_is_what_make_data_generates():
    """The committed CSVs are reproducible from make_data.py's seeds (up to the 6 printed digits)."""
    for name, spec in make_data.MODELS.items():
        _, cols = make_data.sample(name, spec["n"], np.random.default_rng(spec["seed"]))
        bundled = _columns(name)
        assert list(bundled) == list(cols), name
        for c in cols:
            np.testing.assert_allclose(bundled[c], cols[c], rtol=1e-5, atol=1e-12, err_msg=f"{name}.{c}")


# ---------------------------------------------------------------------------------------------
# Generated models: convergence, monotone history, correct log-likelihood, recovery
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", GENERATED)
def test_fit_converges_with_nondecreasing_history(name):
    fit = _fit(name)
    assert fit.converged, f"{name}: not converged after {fit.n_iter} iterations"
    _assert_history_nondecreasing(fit.history)
    assert np.isclose(fit.history[-1], fit.loglik, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("name", GENERATED)
def test_loglik_matches_reference_density(name):
    """fit.loglik is the full observed-data log-likelihood (normalising constants included)."""
    fit = _fit(name)
    ref = make_data.loglik(make_data.MODELS[name]["nodes"], fit.params, _columns(name))
    assert np.isclose(fit.loglik, ref, rtol=1e-9, atol=1e-8), (fit.loglik, ref)


@pytest.mark.parametrize("name", GENERATED)
def test_posterior_matches_reference_responsibilities(name):
    fit = _fit(name)
    cols = _columns(name)
    post = np.asarray(fit.posterior(cols)["z"])
    params = _arrays(fit.params)
    lp = make_data.component_logpdf(make_data.MODELS[name]["nodes"], params, cols)
    lp = lp + np.log(params["z"]["probs"])
    ref = np.exp(lp - lp.max(1, keepdims=True))
    ref /= ref.sum(1, keepdims=True)
    assert post.shape == ref.shape
    np.testing.assert_allclose(post, ref, atol=1e-9)


@pytest.mark.parametrize("name", GENERATED)
def test_fit_reaches_the_maximum_likelihood(name):
    fit = _fit(name)
    spec = make_data.MODELS[name]
    truth_ll = make_data.loglik(spec["nodes"], spec["true"], _columns(name))
    _, mle_ll = _reference_mle(name)
    assert fit.loglik >= truth_ll, (fit.loglik, truth_ll)
    assert fit.loglik >= mle_ll - 1e-7 * abs(mle_ll), (fit.loglik, mle_ll)


@pytest.mark.parametrize("name", GENERATED)
def test_fit_matches_reference_mle(name):
    mle, _ = _reference_mle(name)
    sd = _sd(name)
    fitted = _best_permutation(_arrays(_fit(name).params), mle, sd)
    _assert_close_in_sd(fitted, mle, sd, SD_MLE, "reference ML estimate")


@pytest.mark.parametrize("name", GENERATED)
def test_fit_recovers_true_parameters(name):
    truth = _arrays(TRUE_PARAMS[name])
    sd = _sd(name)
    fitted = _best_permutation(_arrays(_fit(name).params), truth, sd)
    _assert_close_in_sd(fitted, truth, sd, SD_TRUTH, "true parameters")


@pytest.mark.parametrize("name", GENERATED)
@pytest.mark.parametrize("seed", [1, 2, 3, 4, 5, 6])
def test_fit_from_other_seeds(name, seed):
    """Any seed gives a converged fit with a non-decreasing history (a local optimum is allowed)."""
    options = dict(FIT_OPTIONS[name], seed=seed, restarts=1)
    fit = _model(name).fit(_columns(name), **options)
    assert fit.converged, f"{name}, seed {seed}: not converged after {fit.n_iter} iterations"
    _assert_history_nondecreasing(fit.history)
    assert np.isfinite(fit.loglik)


@pytest.mark.parametrize("name", CATALOG_SPECS)
def test_command_line_fits_the_bundled_data(name, tmp_path, capsys):
    """`declarem fit SPEC --out FIT.json` reads the spec's [data] path and writes the fit as JSON."""
    from declarem.cli import main

    out = tmp_path / "fit.json"
    assert main(["fit", str(MODELS_DIR / f"{name}.toml"), "--out", str(out), "--seed", "0"]) == 0
    capsys.readouterr()
    result = json.loads(out.read_text())
    assert {"loglik", "n_iter", "converged", "history", "params"} <= set(result)
    assert result["converged"]
    _assert_history_nondecreasing(result["history"])
    nodes = COINS_NODES if name == "two_coins" else make_data.MODELS[name]["nodes"]
    ref = make_data.loglik(nodes, _arrays(result["params"]), _columns(name))
    assert np.isclose(result["loglik"], ref, rtol=1e-9)


# Which M-steps come out in closed form: all of them except the gamma shape (rate closes given shape).
NOT_CLOSED = {("gamma_mixture", "size")}


@pytest.mark.parametrize("name", CATALOG_SPECS)
def test_derivation_says_which_updates_are_closed_form(name):
    derivation = _model(name).derive()
    with open(MODELS_DIR / f"{name}.toml", "rb") as fh:
        declared = tomllib.load(fh)["nodes"]
    assert set(derivation.nodes) == set(declared)
    for node, info in derivation.nodes.items():
        assert info.closed_form == ((name, node) not in NOT_CLOSED), (name, node, info.status)
    assert str(derivation).strip() and derivation.to_latex().strip()


def test_gmm_parameter_shapes_follow_the_contract():
    params = _fit("gmm").params
    assert np.shape(params["z"]["probs"]) == (3,)
    assert np.shape(params["x"]["mean"]) == (3, 2)
    assert np.shape(params["x"]["cov"]) == (3, 2, 2)
    cov = np.asarray(params["x"]["cov"])
    np.testing.assert_allclose(cov, np.swapaxes(cov, 1, 2), atol=1e-12)
    assert (np.linalg.eigvalsh(cov) > 0).all()


# ---------------------------------------------------------------------------------------------
# Two coins (Do & Batzoglou 2008): the published data, no truth; check against hand-coded EM
# ---------------------------------------------------------------------------------------------

COINS_NODES = make_data.TWO_COINS["nodes"]
COINS_INIT = {"z": {"probs": [0.5, 0.5]}, "heads": {"p": [0.6, 0.5]}}


def _coins_data():
    return _columns("two_coins")


def test_two_coins_reference_reproduces_the_paper():
    """With the coin prior fixed at 1/2, ten EM iterations from (0.6, 0.5) give (0.80, 0.52)."""
    params, hist = make_data.hand_em(COINS_NODES, _coins_data(), COINS_INIT, max_iter=10, tol=0,
                                     fixed_probs=True)
    assert len(hist) == 11
    np.testing.assert_allclose(params["heads"]["p"], [0.80, 0.52], atol=0.005)


def test_two_coins_iterations_match_hand_coded_em():
    """Ten iterations from the paper's start, z.probs estimated: the same path as hand-coded EM."""
    ref, ref_hist = make_data.hand_em(COINS_NODES, _coins_data(), COINS_INIT, max_iter=10, tol=0)
    fit = _model("two_coins").fit(_coins_data(), init=COINS_INIT, max_iter=10, tol=0)
    assert fit.n_iter == 10
    np.testing.assert_allclose(fit.history, ref_hist, rtol=1e-10)
    np.testing.assert_allclose(fit.params["heads"]["p"], ref["heads"]["p"], rtol=1e-9)
    np.testing.assert_allclose(fit.params["z"]["probs"], ref["z"]["probs"], rtol=1e-9)


def test_two_coins_converges_to_the_hand_coded_fixed_point():
    ref, ref_hist = make_data.hand_em(COINS_NODES, _coins_data(), COINS_INIT, tol=1e-14)
    # The fixed point EM reaches from the paper's start (see two_coins.toml's description).
    np.testing.assert_allclose(ref["z"]["probs"], [0.523, 0.477], atol=5e-4)
    np.testing.assert_allclose(ref["heads"]["p"], [0.793, 0.514], atol=5e-4)

    fit = _model("two_coins").fit(_coins_data(), init=COINS_INIT, tol=1e-12, max_iter=5000)
    assert fit.converged
    _assert_history_nondecreasing(fit.history)
    # the converged objective is flat to ~1e-12; parameters are then within ~1e-4 of the fixed point
    np.testing.assert_allclose(fit.params["heads"]["p"], ref["heads"]["p"], atol=1e-4)
    np.testing.assert_allclose(fit.params["z"]["probs"], ref["z"]["probs"], atol=1e-4)
    assert np.isclose(fit.loglik, ref_hist[-1], rtol=1e-9)


def test_two_coins_from_random_starts():
    """Seeded restarts find an optimum at least as good as the one from the paper's start."""
    _, ref_hist = make_data.hand_em(COINS_NODES, _coins_data(), COINS_INIT, tol=1e-14)
    fit = _model("two_coins").fit(_coins_data(), seed=0, restarts=8, tol=1e-12, max_iter=5000)
    assert fit.converged
    _assert_history_nondecreasing(fit.history)
    assert fit.loglik >= ref_hist[-1] - 1e-6
    ll = make_data.loglik(COINS_NODES, fit.params, _coins_data())
    assert np.isclose(fit.loglik, ll, rtol=1e-9)
