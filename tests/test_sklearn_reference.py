"""declarem's Gaussian mixture against scikit-learn's GaussianMixture and a hand-written numpy EM.

The model is declared as a networkx DiGraph (z -> x); nothing in declarem is told it is a GMM. From the same
initialisation, after exactly 10 EM iterations (``max_iter=10, tol=0``), the fitted weights, means and
covariances must equal scikit-learn's for every covariance type, and the log-likelihood must equal
``GaussianMixture.score(X) * N``.

Tolerances: parameters are compared with ``rtol=1e-8`` plus an absolute floor of ``1e-10 * max|reference|``
(so that near-zero off-diagonal covariance entries are not held to a relative bound); log-likelihoods with
``rtol=1e-10``.
"""

from __future__ import annotations

import warnings

import networkx as nx
import numpy as np
import pytest
from support import full_covariances as support_full_covariances
from scipy.special import logsumexp

sklearn_mixture = pytest.importorskip("sklearn.mixture")
from sklearn.exceptions import ConvergenceWarning  # noqa: E402

GaussianMixture = sklearn_mixture.GaussianMixture

N, D, K = 600, 3, 3
N_ITER = 10
COV_TYPES = ["full", "tied", "diag", "spherical"]
PARAM_RTOL = 1e-8
LOGLIK_RTOL = 1e-10


# --------------------------------------------------------------------------------------------------- helpers


def _declarem():
    # Imported lazily so that the scikit-learn-only sanity tests below run even before the core lands.
    import declarem

    return declarem


def assert_close(got, want, rtol=PARAM_RTOL, what=""):
    got = np.asarray(got, dtype=float)
    want = np.asarray(want, dtype=float)
    assert got.shape == want.shape, f"{what}: shape {got.shape}, expected {want.shape}"
    atol = 1e-10 * float(np.max(np.abs(want))) if want.size else 0.0
    np.testing.assert_allclose(got, want, rtol=rtol, atol=atol, err_msg=what)


def make_data(seed: int = 20261122):
    """N rows from a 3-component trivariate GMM: well, but not trivially, separated."""
    rng = np.random.default_rng(seed)
    weights = np.array([0.45, 0.35, 0.20])
    means = np.array([[1.0, -2.0, 3.0], [4.5, 1.0, 3.0], [1.0, 1.0, 7.0]])
    covs = []
    for _ in range(K):
        a = rng.normal(scale=0.5, size=(D, D))
        covs.append(a @ a.T + 0.6 * np.eye(D))
    z = rng.choice(K, size=N, p=weights)
    x = np.empty((N, D))
    for k in range(K):
        idx = z == k
        x[idx] = rng.multivariate_normal(means[k], covs[k], size=int(idx.sum()))
    return x


def make_init(cov_type: str, seed: int = 7):
    """An initialisation away from the truth: perturbed means, unequal weights, non-identity covariances.

    Returns (weights (K,), means (K, D), covariance in declarem's / scikit-learn's shape for cov_type).
    """
    rng = np.random.default_rng(seed)
    w = np.array([0.3, 0.3, 0.4])
    m = np.array([[1.0, -2.0, 3.0], [4.5, 1.0, 3.0], [1.0, 1.0, 7.0]]) + rng.normal(scale=0.8, size=(K, D))
    if cov_type == "full":
        c = np.empty((K, D, D))
        for k in range(K):
            a = rng.normal(scale=0.3, size=(D, D))
            c[k] = a @ a.T + (1.0 + 0.5 * k) * np.eye(D)
    elif cov_type == "tied":
        a = rng.normal(scale=0.3, size=(D, D))
        c = a @ a.T + 1.2 * np.eye(D)
    elif cov_type == "diag":
        c = rng.uniform(0.7, 2.0, size=(K, D))
    elif cov_type == "spherical":
        c = np.array([0.9, 1.4, 1.8])
    else:  # pragma: no cover
        raise ValueError(cov_type)
    return w, m, c


def precisions_of(c, cov_type):
    """scikit-learn's precisions_init: inverse covariances in its shape for cov_type."""
    if cov_type == "full":
        return np.linalg.inv(c)
    if cov_type == "tied":
        return np.linalg.inv(c)
    return 1.0 / c  # diag (K, D), spherical (K,)


def cov_key(cov_type):
    return "cov" if cov_type in ("full", "tied") else "var"


def gmm_graph(cov_type: str, k: int = K, d: int = D) -> nx.DiGraph:
    g = nx.DiGraph()
    g.add_node("z", family="categorical", latent=True, k=k)
    g.add_node("x", family="normal", dim=d, covariance=cov_type)
    g.add_edge("z", "x")
    return g


def declarem_init(w, m, c, cov_type):
    return {"z": {"probs": w}, "x": {"mean": m, cov_key(cov_type): c}}


def sklearn_fit(x, w, m, c, cov_type, max_iter=N_ITER, reg_covar=1e-6):
    gm = GaussianMixture(
        n_components=K,
        covariance_type=cov_type,
        weights_init=w,
        means_init=m,
        precisions_init=precisions_of(c, cov_type),
        max_iter=max_iter,
        tol=0.0,
        reg_covar=reg_covar,
        n_init=1,
        init_params="random",  # overridden by the three *_init arguments; avoids running KMeans
        random_state=0,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        gm.fit(x)
    return gm


def full_covariances(c, cov_type, k=K, d=D):
    """Any covariance parameter -> (K, D, D)."""
    return support_full_covariances(c, cov_type, k, d)


def log_joint(x, w, m, covs):
    """(N, K) array of log w_k + log N(x_n | m_k, covs_k), via Cholesky factors."""
    n, d = x.shape
    out = np.empty((n, len(w)))
    for k in range(len(w)):
        chol = np.linalg.cholesky(covs[k])
        sol = np.linalg.solve(chol, (x - m[k]).T)  # (D, N)
        maha = np.sum(sol**2, axis=0)
        logdet = 2.0 * np.sum(np.log(np.diag(chol)))
        out[:, k] = np.log(w[k]) - 0.5 * (d * np.log(2 * np.pi) + logdet + maha)
    return out


def gmm_loglik(x, w, m, c, cov_type, row_weights=None):
    lj = log_joint(x, np.asarray(w), np.asarray(m), full_covariances(c, cov_type, len(w), x.shape[1]))
    ll = logsumexp(lj, axis=1)
    return float(ll.sum() if row_weights is None else (row_weights * ll).sum())


def numpy_em(x, w, m, c, cov_type, n_iter, reg_covar=0.0):
    """The recitation's GMM updates, vectorised, written independently of declarem and scikit-learn.

    E-step: responsibilities r_nk = P(z=k | x_n); M-step: pi_k = sum_n r_nk / N,
    mu_k = sum_n r_nk x_n / N_k, Sigma_k = sum_n r_nk (x_n - mu_k)(x_n - mu_k)^T / N_k, then tied / diag /
    spherical constraints (pooled over k / diagonal / mean of the diagonal). Returns (w, m, c, loglik at the
    final parameters, list of log-likelihoods at the parameters after 0..n_iter-1 iterations).
    """
    n, d = x.shape
    w = np.asarray(w, dtype=float).copy()
    m = np.asarray(m, dtype=float).copy()
    c = np.asarray(c, dtype=float).copy()
    history = []
    for _ in range(n_iter):
        lj = log_joint(x, w, m, full_covariances(c, cov_type, len(w), d))
        lse = logsumexp(lj, axis=1, keepdims=True)
        history.append(float(lse.sum()))
        r = np.exp(lj - lse)  # (N, K)
        nk = r.sum(axis=0)
        w = nk / n
        m = (r.T @ x) / nk[:, None]
        diff = x[None, :, :] - m[:, None, :]  # (K, N, D)
        s = np.einsum("nk,knd,kne->kde", r, diff, diff) / nk[:, None, None]  # (K, D, D)
        if cov_type == "full":
            c = s + reg_covar * np.eye(d)
        elif cov_type == "tied":
            c = np.einsum("k,kde->de", nk, s) / n + reg_covar * np.eye(d)
        elif cov_type == "diag":
            c = np.diagonal(s, axis1=1, axis2=2) + reg_covar
        elif cov_type == "spherical":
            c = np.diagonal(s, axis1=1, axis2=2).mean(axis=1) + reg_covar
    return w, m, c, gmm_loglik(x, w, m, c, cov_type), history


@pytest.fixture(scope="module")
def data():
    return make_data()


_fit_cache: dict = {}


def declarem_fit(x, cov_type, reg_covar=1e-6, max_iter=N_ITER, weights=None, cache_key=None):
    key = (cache_key, cov_type, reg_covar, max_iter)
    if cache_key is not None and key in _fit_cache:
        return _fit_cache[key]
    declarem = _declarem()
    w, m, c = make_init(cov_type)
    model = declarem.Model(gmm_graph(cov_type))
    fit = model.fit(
        {"x": x},
        weights=weights,
        init=declarem_init(w, m, c, cov_type),
        max_iter=max_iter,
        tol=0,
        reg_covar=reg_covar,
    )
    if cache_key is not None:
        _fit_cache[key] = fit
    return fit


# ------------------------------------------------------ sanity of the references (no declarem needed)


@pytest.mark.parametrize("cov_type", COV_TYPES)
def test_numpy_reference_matches_sklearn(data, cov_type):
    """The hand-written EM used below is itself a faithful EM: it equals scikit-learn step for step."""
    w, m, c = make_init(cov_type)
    gm = sklearn_fit(data, w, m, c, cov_type, reg_covar=1e-6)
    rw, rm, rc, rll, rhist = numpy_em(data, w, m, c, cov_type, N_ITER, reg_covar=1e-6)
    assert_close(rw, gm.weights_, what="weights")
    assert_close(rm, gm.means_, what="means")
    assert_close(rc, gm.covariances_, what="covariances")
    np.testing.assert_allclose(rll, gm.score(data) * N, rtol=LOGLIK_RTOL)
    np.testing.assert_allclose(rhist, np.asarray(gm.lower_bounds_) * N, rtol=LOGLIK_RTOL)


def test_data_is_not_trivially_separated(data):
    """The fit must actually move: responsibilities are not all 0/1 and 10 iterations change the means."""
    w, m, c = make_init("full")
    gm = sklearn_fit(data, w, m, c, "full")
    r = gm.predict_proba(data)
    ambiguous = np.mean(r.max(axis=1) < 0.99)
    assert ambiguous > 0.02, ambiguous
    assert np.max(np.abs(gm.means_ - m)) > 0.1


# ------------------------------------------------------------------------------- declarem vs scikit-learn


@pytest.mark.parametrize("cov_type", COV_TYPES)
def test_parameter_shapes(data, cov_type):
    fit = declarem_fit(data, cov_type, cache_key="main")
    p = fit.params
    assert np.shape(p["z"]["probs"]) == (K,)
    assert np.shape(p["x"]["mean"]) == (K, D)
    expected = {"full": (K, D, D), "tied": (D, D), "diag": (K, D), "spherical": (K,)}[cov_type]
    assert np.shape(p["x"][cov_key(cov_type)]) == expected
    other = "var" if cov_key(cov_type) == "cov" else "cov"
    assert other not in p["x"], f"{cov_type} normal should not report {other!r}"
    assert fit.n_iter == N_ITER


@pytest.mark.parametrize("cov_type", COV_TYPES)
def test_matches_sklearn_parameters(data, cov_type):
    w, m, c = make_init(cov_type)
    gm = sklearn_fit(data, w, m, c, cov_type)
    fit = declarem_fit(data, cov_type, cache_key="main")
    p = fit.params
    assert_close(p["z"]["probs"], gm.weights_, what=f"{cov_type}: z.probs vs weights_")
    assert_close(p["x"]["mean"], gm.means_, what=f"{cov_type}: x.mean vs means_")
    assert_close(p["x"][cov_key(cov_type)], gm.covariances_, what=f"{cov_type}: x.{cov_key(cov_type)} vs covariances_")


@pytest.mark.parametrize("cov_type", COV_TYPES)
def test_matches_sklearn_loglik(data, cov_type):
    w, m, c = make_init(cov_type)
    gm = sklearn_fit(data, w, m, c, cov_type)
    fit = declarem_fit(data, cov_type, cache_key="main")
    # scikit-learn's score at its own final parameters (which equal declarem's, see above) ...
    np.testing.assert_allclose(fit.loglik, gm.score(data) * N, rtol=LOGLIK_RTOL)
    # ... and an independent evaluation at declarem's own final parameters.
    p = fit.params
    ll = gmm_loglik(data, p["z"]["probs"], p["x"]["mean"], p["x"][cov_key(cov_type)], cov_type)
    np.testing.assert_allclose(fit.loglik, ll, rtol=LOGLIK_RTOL)


@pytest.mark.parametrize("cov_type", COV_TYPES)
def test_history_matches_sklearn_lower_bounds(data, cov_type):
    """history[i] is the log-likelihood after i iterations; scikit-learn's lower_bounds_[i] is the mean
    log-likelihood computed in the E-step of iteration i+1, i.e. at the parameters after i iterations."""
    w, m, c = make_init(cov_type)
    gm = sklearn_fit(data, w, m, c, cov_type)
    fit = declarem_fit(data, cov_type, cache_key="main")
    hist = np.asarray(fit.history, dtype=float)
    assert hist.shape == (N_ITER + 1,)
    np.testing.assert_allclose(hist[:N_ITER], np.asarray(gm.lower_bounds_) * N, rtol=LOGLIK_RTOL)
    np.testing.assert_allclose(hist[-1], fit.loglik, rtol=LOGLIK_RTOL)
    assert np.all(np.diff(hist) >= -1e-9 * np.abs(hist[:-1])), hist


@pytest.mark.parametrize("cov_type", COV_TYPES)
def test_exact_ml_matches_numpy_em(data, cov_type):
    """reg_covar=0: the exact ML updates, against the independent numpy EM (the recitation's updates)."""
    w, m, c = make_init(cov_type)
    rw, rm, rc, rll, rhist = numpy_em(data, w, m, c, cov_type, N_ITER, reg_covar=0.0)
    fit = declarem_fit(data, cov_type, reg_covar=0.0, cache_key="exact")
    p = fit.params
    assert_close(p["z"]["probs"], rw, what=f"{cov_type}: z.probs")
    assert_close(p["x"]["mean"], rm, what=f"{cov_type}: x.mean")
    assert_close(p["x"][cov_key(cov_type)], rc, what=f"{cov_type}: x.{cov_key(cov_type)}")
    np.testing.assert_allclose(fit.loglik, rll, rtol=LOGLIK_RTOL)
    np.testing.assert_allclose(np.asarray(fit.history[:N_ITER], dtype=float), rhist, rtol=LOGLIK_RTOL)


def test_reg_covar_changes_the_fit(data):
    """reg_covar is honoured: 1e-6 and 0 give different covariances (by about 1e-6 on the diagonal)."""
    fit_reg = declarem_fit(data, "full", reg_covar=1e-6, cache_key="main")
    fit_ml = declarem_fit(data, "full", reg_covar=0.0, cache_key="exact")
    diff = np.asarray(fit_reg.params["x"]["cov"]) - np.asarray(fit_ml.params["x"]["cov"])
    assert np.max(np.abs(diff)) > 1e-8


# ------------------------------------------------------------------------------------------- row weights


@pytest.mark.parametrize("cov_type", COV_TYPES)
def test_integer_weights_equal_repeated_rows(data, cov_type):
    rng = np.random.default_rng(11)
    counts = rng.integers(1, 5, size=N)  # 1..4
    repeated = np.repeat(data, counts, axis=0)
    fit_w = declarem_fit(data, cov_type, weights=counts.astype(float))
    fit_r = declarem_fit(repeated, cov_type)
    for node, name in [("z", "probs"), ("x", "mean"), ("x", cov_key(cov_type))]:
        assert_close(fit_w.params[node][name], fit_r.params[node][name], what=f"{cov_type}: {node}.{name}")
    np.testing.assert_allclose(fit_w.loglik, fit_r.loglik, rtol=LOGLIK_RTOL)
    np.testing.assert_allclose(np.asarray(fit_w.history, float), np.asarray(fit_r.history, float), rtol=LOGLIK_RTOL)
    # and both equal scikit-learn on the repeated rows (it has no sample weights)
    w, m, c = make_init(cov_type)
    gm = sklearn_fit(repeated, w, m, c, cov_type)
    assert_close(fit_w.params["x"]["mean"], gm.means_, what=f"{cov_type}: weighted x.mean vs sklearn")
    assert_close(fit_w.params["x"][cov_key(cov_type)], gm.covariances_, what=f"{cov_type}: weighted cov vs sklearn")
    np.testing.assert_allclose(fit_w.loglik, gm.score(repeated) * len(repeated), rtol=LOGLIK_RTOL)


def test_zero_weight_rows_are_dropped(data):
    """A row count of 0 removes the row (weights are row counts, as in a spec's [data] weights column)."""
    rng = np.random.default_rng(12)
    counts = rng.integers(0, 4, size=N)  # includes zeros
    assert (counts == 0).any()
    fit_w = declarem_fit(data, "full", weights=counts)
    fit_r = declarem_fit(np.repeat(data, counts, axis=0), "full")
    for node, name in [("z", "probs"), ("x", "mean"), ("x", "cov")]:
        assert_close(fit_w.params[node][name], fit_r.params[node][name], what=f"{node}.{name}")
    np.testing.assert_allclose(fit_w.loglik, fit_r.loglik, rtol=LOGLIK_RTOL)
