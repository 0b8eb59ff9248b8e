"""Missing values (NaN) and partial labels against hand-written numpy EM references.

The contract (docs/spec.md, "Missing values"; DESIGN.md, "Declaring more"): a NaN in an observed node's
column means missing; the row's likelihood is marginalised over what is missing, never dropped or imputed.

- A vector normal with ``full`` or ``tied`` covariance uses, per component, the conditional mean and
  covariance of the missing coordinates given the observed ones in E[x] and E[x x^T] (Ghahramani & Jordan
  1994); the M-step is the usual one on those expected statistics, with N_k over the rows that observe some
  coordinate. A row with no coordinate observed contributes a factor 1 and no statistics to the normal's
  update (DESIGN.md, "a factor with nothing observed on a row contributes ... no statistics to its own
  update"); it still counts for the mixture weights. The reference has it as ``gj_em(..., empty_rows=False)``;
  test_gmm_all_missing_rows_in_the_normal_update holds declarem to it, and shows the data tell it apart
  from the other valid EM that gives such rows E_k[x] = m_k, E_k[x x^T] = S_k + m_k m_k^T.
- ``diag`` / ``spherical`` normals and every scalar family with ``dim > 1`` are independent columns given the
  parents: a missing cell is a factor 1 and adds nothing to its own column's update (per-column weights).
- Categorical items of a latent class model follow poLCA: a missing item is a factor 1, and
  p_kjc = sum_{n: q_nj observed} r_nk [q_nj = c] / sum_{n: q_nj observed} r_nk.
- A row with nothing observed contributes only its prior: log-likelihood 0, posterior = z.probs.
- A column named after the latent node fixes it where not NaN (partial labels): such a row has one-hot
  responsibilities and log-likelihood log p(z = label, x).
- ``fit.loglik`` and ``fit.history`` are the observed-data log-likelihood.

Every reference below is plain numpy / scipy written from those formulas, independently of declarem, and is
itself validated first (these tests need no declarem and pass before the core lands): its log-likelihood
equals a brute force row by row (scipy densities over the observed coordinates, on a few rows of every
missingness pattern; for categorical items an explicit sum over every completion of the missing items);
with no NaN it equals a plain EM; its objective never falls; and for the Gaussian case its expected
statistics satisfy Fisher's identity (the gradient of the observed-data log-likelihood, by central
differences, equals the gradient of the EM auxiliary function).
A test also shows the data discriminate: the contract's result differs from plausible wrong conventions
(conditional-mean imputation, treating a missing cell as latent) by far more than the tolerances.

declarem is then fitted from the same initialisation for exactly 10 iterations (``max_iter=10, tol=0,
reg_covar=0``) and must equal the reference.

Tolerances: parameters ``rtol=1e-8`` plus an absolute floor of ``1e-10 * max|reference|`` (as in
tests/test_sklearn_reference.py); log-likelihoods, every entry of ``history`` and scores ``rtol=1e-10``;
posteriors ``atol=1e-10``; the objective over a 200-iteration fit may fall by at most ``1e-9 * |objective|``
per step. Reference self-checks: brute force and plain EM ``rtol=1e-10`` (parameters ``rtol=1e-10`` plus
the same floor); Fisher's identity ``rtol=1e-5`` plus ``1e-6 * max|gradient|`` (central differences).
"""

from __future__ import annotations

import itertools

import networkx as nx
import numpy as np
import pytest
from support import full_covariances as support_full_covariances
from scipy import stats
from scipy.special import logsumexp

N_ITER = 10
PARAM_RTOL = 1e-8
LOGLIK_RTOL = 1e-10
POSTERIOR_ATOL = 1e-10
REF_RTOL = 1e-10
LONG_ITER = 200
MONOTONE_SLACK = 1e-9

# Gaussian mixture: N rows, D coordinates, K components.
N, D, K = 500, 4, 3
MISSING_RATE = 0.15
N_ALL_MISSING = 5


# --------------------------------------------------------------------------------------------------- helpers


def _declarem():
    # Imported lazily so that the reference self-checks run without the core.
    import declarem

    return declarem


def assert_close(got, want, rtol=PARAM_RTOL, what=""):
    got = np.asarray(got, dtype=float)
    want = np.asarray(want, dtype=float)
    assert got.shape == want.shape, f"{what}: shape {got.shape}, expected {want.shape}"
    atol = 1e-10 * float(np.max(np.abs(want))) if want.size else 0.0
    np.testing.assert_allclose(got, want, rtol=rtol, atol=atol, err_msg=what)


def assert_history(got, want, what=""):
    got = np.asarray(got, dtype=float)
    want = np.asarray(want, dtype=float)
    assert got.shape == want.shape, f"{what}: history has {got.shape} entries, expected {want.shape}"
    np.testing.assert_allclose(got, want, rtol=LOGLIK_RTOL, err_msg=f"{what}: history")


def assert_monotone(history, what=""):
    h = np.asarray(history, dtype=float)
    steps = np.diff(h)
    worst = int(np.argmin(steps / np.maximum(np.abs(h[:-1]), 1.0)))
    assert np.all(steps >= -MONOTONE_SLACK * np.abs(h[:-1])), (
        f"{what}: objective falls at step {worst} -> {worst + 1}: {h[worst]!r} -> {h[worst + 1]!r}"
    )


def with_nan(x, rate, rng, all_missing=0):
    """A copy of x with each cell missing (NaN) with probability ``rate``, and ``all_missing`` whole rows NaN.

    Returns (x with NaN, indices of the rows made entirely missing).
    """
    x = np.array(x, dtype=float)
    x[rng.random(x.shape) < rate] = np.nan
    rows = np.sort(rng.choice(len(x), size=all_missing, replace=False)) if all_missing else np.array([], int)
    x[rows] = np.nan
    return x, rows


def labels_column(z, fraction, rng, k):
    """The true classes on a random ``fraction`` of rows, NaN elsewhere (a partial-label column)."""
    lab = np.full(len(z), np.nan)
    idx = rng.random(len(z)) < fraction
    lab[idx] = z[idx]
    assert set(np.unique(lab[idx]).astype(int)) == set(range(k))
    return lab


def responsibilities(lj, labels=None):
    """(r (N, K), per-row log-likelihood (N,)) from the row-wise log joint lj[n, k] = log p(z=k, x_n obs).

    Labelled rows (labels[n] not NaN) get one-hot responsibilities and log-likelihood lj[n, label].
    """
    lse = logsumexp(lj, axis=1)
    r = np.exp(lj - lse[:, None])
    ll = lse.copy()
    if labels is not None:
        lab = ~np.isnan(labels)
        idx = labels[lab].astype(int)
        r[lab] = np.eye(lj.shape[1])[idx]
        ll[lab] = lj[np.flatnonzero(lab), idx]
    return r, ll


# ----------------------------------------------------------------------------- Gaussian mixtures: the data


def gmm_truth(seed=20261201):
    rng = np.random.default_rng(seed)
    w = np.array([0.4, 0.35, 0.25])
    m = np.array([[0.0, 0.0, 0.0, 0.0], [2.5, 1.0, -1.0, 2.0], [0.0, 2.5, 2.0, -1.0]])
    covs = np.empty((K, D, D))
    for k in range(K):
        a = rng.normal(scale=0.7, size=(D, D))
        covs[k] = a @ a.T + 0.5 * np.eye(D)  # strongly correlated: conditional means matter
    return w, m, covs


def make_gmm_data(seed=20261202):
    """(complete x (N, D), x with ~15% of cells and N_ALL_MISSING whole rows NaN, true z, all-missing rows)."""
    rng = np.random.default_rng(seed)
    w, m, covs = gmm_truth()
    z = rng.choice(K, size=N, p=w)
    x = np.empty((N, D))
    for k in range(K):
        idx = z == k
        x[idx] = rng.multivariate_normal(m[k], covs[k], size=int(idx.sum()))
    xm, all_rows = with_nan(x, MISSING_RATE, rng, N_ALL_MISSING)
    return x, xm, z, all_rows


def gmm_init(cov_type, seed=7):
    """(weights, means, covariance parameter in declarem's shape for cov_type), away from the truth."""
    rng = np.random.default_rng(seed)
    w = np.array([0.3, 0.3, 0.4])
    m = gmm_truth()[1] + rng.normal(scale=0.7, size=(K, D))
    if cov_type == "full":
        c = np.empty((K, D, D))
        for k in range(K):
            a = rng.normal(scale=0.4, size=(D, D))
            c[k] = a @ a.T + (1.0 + 0.4 * k) * np.eye(D)
    elif cov_type == "tied":
        a = rng.normal(scale=0.4, size=(D, D))
        c = a @ a.T + 1.3 * np.eye(D)
    elif cov_type == "diag":
        c = rng.uniform(0.8, 2.5, size=(K, D))
    elif cov_type == "spherical":
        c = np.array([1.0, 1.6, 2.2])
    else:  # pragma: no cover
        raise ValueError(cov_type)
    return w, m, c


def cov_key(cov_type):
    return "cov" if cov_type in ("full", "tied") else "var"


def full_covariances(c, cov_type, k=K, d=D):
    """Any covariance parameter -> (K, D, D)."""
    return support_full_covariances(c, cov_type, k, d)


def constrain(scatter, nk, cov_type):
    """M-step covariance from per-component scatter matrices scatter[k] = sum_n r_nk E[(x-mu_k)(x-mu_k)^T]."""
    if cov_type == "full":
        return scatter / nk[:, None, None]
    if cov_type == "tied":
        return scatter.sum(axis=0) / nk.sum()
    if cov_type == "diag":
        return np.diagonal(scatter, axis1=1, axis2=2) / nk[:, None]
    if cov_type == "spherical":
        return np.trace(scatter, axis1=1, axis2=2) / (scatter.shape[1] * nk)
    raise ValueError(cov_type)


# ------------------------------------------------------- Gaussian mixtures: plain EM (complete data only)


def plain_gmm_em(x, w, m, c, cov_type, n_iter):
    """The textbook GMM EM on complete data. Returns ((w, m, c), history at 0..n_iter iterations)."""
    n, d = x.shape
    w, m, c = (np.array(a, dtype=float) for a in (w, m, c))
    history = []
    for it in range(n_iter + 1):
        covs = full_covariances(c, cov_type, len(w), d)
        lj = np.stack(
            [np.log(w[k]) + stats.multivariate_normal(m[k], covs[k]).logpdf(x) for k in range(len(w))], axis=1
        )
        r, ll = responsibilities(lj)
        history.append(float(ll.sum()))
        if it == n_iter:
            break
        nk = r.sum(axis=0)
        w = nk / n
        m = (r.T @ x) / nk[:, None]
        diff = x[None] - m[:, None]
        scatter = np.einsum("nk,kni,knj->kij", r, diff, diff)
        c = constrain(scatter, nk, cov_type)
    return (w, m, c), history


# ----------------------------------------- Gaussian mixtures with missing coordinates: Ghahramani-Jordan


def mvn_logpdf(x, mean, cov):
    """log N(x_n; mean, cov) for the rows of x, by a Cholesky factor (scipy is kept for the brute force)."""
    chol = np.linalg.cholesky(cov)
    sol = np.linalg.solve(chol, (x - mean).T)
    return -0.5 * (len(mean) * np.log(2 * np.pi) + 2.0 * np.sum(np.log(np.diag(chol))) + np.sum(sol**2, axis=0))


def gj_estep(x, w, m, covs, labels=None, conditional_cov=True, statistics=True):
    """E-step of a GMM with missing coordinates, grouping rows by their pattern of observed coordinates.

    For each component k and row n with observed set o and missing set u:
      lj[n, k] = log w_k + log N(x_o; m_k[o], S_k[o, o])              (log w_k when o is empty)
      E_k[x_u] = m_k[u] + S_k[u, o] S_k[o, o]^{-1} (x_o - m_k[o])
      E_k[x x^T] = E_k[x] E_k[x]^T + C,  C[u, u] = S_k[u, u] - S_k[u, o] S_k[o, o]^{-1} S_k[o, u]
    ``conditional_cov=False`` drops C (conditional-mean imputation: a wrong EM, used only to show that the
    tests can tell the difference). Returns r (N, K), per-row loglik (N,), ex (K, N, D), exx (K, N, D, D)
    (the last two None when ``statistics`` is false).
    """
    n, d = x.shape
    kk = len(w)
    observed = ~np.isnan(x)
    patterns, inverse = np.unique(observed, axis=0, return_inverse=True)
    inverse = np.asarray(inverse).ravel()
    lj = np.empty((n, kk))
    ex = np.empty((kk, n, d))
    exx = np.empty((kk, n, d, d))
    for p, o in enumerate(patterns):
        rows = np.flatnonzero(inverse == p)
        u = ~o
        xo = x[np.ix_(rows, o)]
        for k in range(kk):
            mu, s = m[k], covs[k]
            full = np.empty((len(rows), d))
            full[:, o] = xo
            c = np.zeros((d, d))
            if o.any():
                soo = s[np.ix_(o, o)]
                lj[rows, k] = np.log(w[k]) + mvn_logpdf(xo, mu[o], soo)
            else:
                lj[rows, k] = np.log(w[k])
            if not statistics:
                continue
            if o.any():
                b = np.linalg.solve(soo, s[np.ix_(o, u)]).T  # S_uo S_oo^{-1}, shape (|u|, |o|)
                full[:, u] = mu[u] + (xo - mu[o]) @ b.T
                c[np.ix_(u, u)] = s[np.ix_(u, u)] - b @ s[np.ix_(o, u)]
            else:
                full[:] = mu
                c = s.copy()
            if not conditional_cov:
                c = np.zeros((d, d))
            ex[k, rows] = full
            exx[k, rows] = full[:, :, None] * full[:, None, :] + c
    r, ll = responsibilities(lj, labels)
    return (r, ll, ex, exx) if statistics else (r, ll, None, None)


def gj_em(x, w, m, c, cov_type, n_iter, labels=None, conditional_cov=True, empty_rows=True):
    """Ghahramani-Jordan EM for a GMM with missing coordinates.

    M-step: N_k = sum_n r_nk (all rows), w_k = N_k / N, m_k = sum_n r_nk E_k[x_n] / N_k,
    S_k = sum_n r_nk E_k[x_n x_n^T] / N_k - m_k m_k^T (tied: pooled, sum over k and n divided by N).
    ``cov_type`` diag / spherical here mean the same statistics projected (the "missing cell is latent"
    convention, not the contract's for those types; used only to show that the tests can tell).
    ``empty_rows=False`` leaves rows with no coordinate observed out of the mean and covariance updates
    (they still count for the weights): DESIGN.md's "a factor with nothing observed on a row contributes
    ... no statistics to its own update", where the brief's contract has N_k over all rows (the default).
    Returns ((w, m, c), history at 0..n_iter iterations, responsibilities at the final parameters).
    """
    n, d = x.shape
    w, m, c = (np.array(a, dtype=float) for a in (w, m, c))
    history = []
    for it in range(n_iter + 1):
        r, ll, ex, exx = gj_estep(x, w, m, full_covariances(c, cov_type, len(w), d), labels, conditional_cov)
        history.append(float(ll.sum()))
        if it == n_iter:
            break
        w = r.sum(axis=0) / n
        use = slice(None) if empty_rows else ~np.isnan(x).all(axis=1)
        ru = r[use]
        nk = ru.sum(axis=0)
        m = np.einsum("nk,knd->kd", ru, ex[:, use]) / nk[:, None]
        second = np.einsum("nk,knij->kij", ru, exx[:, use])
        scatter = second - nk[:, None, None] * m[:, :, None] * m[:, None, :]
        c = constrain(scatter, nk, cov_type)
    return (w, m, c), history, r


def brute_force_gmm_rows(x, w, m, covs, labels=None):
    """Per-row observed-data log-likelihood, one row at a time with scipy over the observed coordinates only."""
    out = np.empty(len(x))
    for n in range(len(x)):
        o = ~np.isnan(x[n])
        terms = np.log(np.asarray(w, dtype=float))
        if o.any():
            sub = [(m[k][o], covs[k][np.ix_(o, o)]) for k in range(len(w))]
            terms = terms + [stats.multivariate_normal(mu, s).logpdf(x[n, o]) for mu, s in sub]
        out[n] = terms[int(labels[n])] if labels is not None and not np.isnan(labels[n]) else logsumexp(terms)
    return out


def some_rows_of_every_pattern(x, per_pattern=8):
    """Indices of up to ``per_pattern`` rows of each missingness pattern (brute force on all rows is slow)."""
    _, inverse = np.unique(~np.isnan(x), axis=0, return_inverse=True)
    inverse = np.asarray(inverse).ravel()
    return np.sort(np.concatenate([np.flatnonzero(inverse == p)[:per_pattern] for p in range(inverse.max() + 1)]))


def gj_loglik(x, w, m, covs):
    return float(gj_estep(x, w, m, covs, statistics=False)[1].sum())


# ------------------------------------------------ independent columns (diag, spherical, scalar families)


def cell_logpdf(x, family, params, k):
    """(N, D) log-density of each cell under component k, 0 where the cell is missing (a factor 1)."""
    observed = ~np.isnan(x)
    xf = np.where(observed, x, 1.0)  # any value in the support; masked out below
    if family in ("diag", "spherical"):
        mean, var = params
        v = var[k] if family == "diag" else np.full(x.shape[1], var[k])
        out = stats.norm(mean[k], np.sqrt(v)).logpdf(xf)
    elif family == "poisson":
        out = stats.poisson(params[0][k]).logpmf(xf)
    elif family == "bernoulli":
        out = stats.bernoulli(params[0][k]).logpmf(xf)
    else:  # pragma: no cover
        raise ValueError(family)
    return np.where(observed, out, 0.0)


def columns_em(x, w, params, family, n_iter, labels=None):
    """EM with D independent columns given z; a missing cell is a factor 1 and out of its column's update.

    With W_kj = sum_{n: x_nj observed} r_nk: mean/rate/p_kj = sum_{obs} r_nk x_nj / W_kj;
    diag var_kj = sum_{obs} r_nk (x_nj - mean_kj)^2 / W_kj; spherical var_k = sum_j (numerator) / sum_j W_kj.
    Weights w_k = sum over all rows of r_nk / N. Returns ((w, *params), history at 0..n_iter, r).
    """
    n, d = x.shape
    observed = ~np.isnan(x)
    x0 = np.where(observed, x, 0.0)
    w = np.array(w, dtype=float)
    params = tuple(np.array(p, dtype=float) for p in params)
    history = []
    for it in range(n_iter + 1):
        lj = np.stack([np.log(w[k]) + cell_logpdf(x, family, params, k).sum(axis=1) for k in range(len(w))], axis=1)
        r, ll = responsibilities(lj, labels)
        history.append(float(ll.sum()))
        if it == n_iter:
            break
        w = r.sum(axis=0) / n
        wkj = r.T @ observed  # (K, D)
        mean = (r.T @ x0) / wkj
        if family in ("diag", "spherical"):
            sq = np.stack([(r[:, k : k + 1] * observed * (x0 - mean[k]) ** 2).sum(axis=0) for k in range(len(w))])
            var = sq / wkj if family == "diag" else sq.sum(axis=1) / wkj.sum(axis=1)
            params = (mean, var)
        else:
            params = (mean,)
    return (w, *params), history, r


def brute_force_columns_loglik(x, w, params, family):
    """One row at a time: log sum_k w_k prod_{j observed} f(x_nj | component k), with scipy."""
    total = 0.0
    for n in range(len(x)):
        o = np.flatnonzero(~np.isnan(x[n]))
        terms = []
        for k in range(len(w)):
            t = np.log(w[k])
            for j in o:
                if family == "diag":
                    t += stats.norm.logpdf(x[n, j], params[0][k, j], np.sqrt(params[1][k, j]))
                elif family == "spherical":
                    t += stats.norm.logpdf(x[n, j], params[0][k, j], np.sqrt(params[1][k]))
                elif family == "poisson":
                    t += stats.poisson.logpmf(x[n, j], params[0][k, j])
                else:
                    t += stats.bernoulli.logpmf(x[n, j], params[0][k, j])
            terms.append(t)
        total += logsumexp(terms)
    return total


# --------------------------------------------------------------------------------- latent class model


LCA_K = 3
LCA_ITEMS = {"q1": 2, "q2": 3, "q3": 4, "q4": 2, "q5": 3}
LCA_N = 600


def make_lca(seed=20261203):
    """(complete items {name: (N,)}, items with ~12% NaN and 2 all-missing rows, true z, truth, all-missing rows)."""
    rng = np.random.default_rng(seed)
    w = np.array([0.5, 0.3, 0.2])
    probs = {q: rng.dirichlet(np.full(c, 0.8), size=LCA_K) for q, c in LCA_ITEMS.items()}
    z = rng.choice(LCA_K, size=LCA_N, p=w)
    complete = {}
    for q, c in LCA_ITEMS.items():
        u = rng.random(LCA_N)
        complete[q] = (u[:, None] > np.cumsum(probs[q][z], axis=1)).sum(axis=1).astype(float)
    stacked, all_rows = with_nan(np.column_stack([complete[q] for q in LCA_ITEMS]), 0.12, rng, 2)
    missing = {q: stacked[:, j] for j, q in enumerate(LCA_ITEMS)}
    return complete, missing, z, (w, probs), all_rows


def lca_init(seed=11):
    rng = np.random.default_rng(seed)
    return np.array([0.35, 0.35, 0.3]), {q: rng.dirichlet(np.full(c, 3.0), size=LCA_K) for q, c in LCA_ITEMS.items()}


def lca_em(items, w, probs, n_iter, labels=None):
    """Latent class EM, poLCA's convention for missing items (factor 1; per-item observed-row weights).

    E-step: lj[n, k] = log w_k + sum_{j: q_nj observed} log p_kj[q_nj].
    M-step: w_k = sum_n r_nk / N; p_kjc = sum_{n: obs j} r_nk [q_nj = c] / sum_{n: obs j} r_nk.
    Returns ((w, probs), history at 0..n_iter, r).
    """
    names = list(items)
    n = len(items[names[0]])
    w = np.array(w, dtype=float)
    probs = {q: np.array(p, dtype=float) for q, p in probs.items()}
    onehot = {}
    for q in names:
        v = items[q]
        obs = ~np.isnan(v)
        oh = np.zeros((n, probs[q].shape[1]))
        oh[np.flatnonzero(obs), v[obs].astype(int)] = 1.0  # a missing row stays all-zero
        onehot[q] = oh
    history = []
    for it in range(n_iter + 1):
        lj = np.log(w)[None, :] + sum(onehot[q] @ np.log(probs[q]).T for q in names)
        r, ll = responsibilities(lj, labels)
        history.append(float(ll.sum()))
        if it == n_iter:
            break
        w = r.sum(axis=0) / n
        for q in names:
            counts = r.T @ onehot[q]  # (K, c)
            probs[q] = counts / counts.sum(axis=1, keepdims=True)  # row sums = sum_{n obs} r_nk
    return (w, probs), history, r


def brute_force_lca_loglik(items, w, probs):
    """log of sum over every completion of the missing items of the complete-data likelihood, row by row.

    Summing a categorical over all its values gives 1, so this is the marginal over what is missing,
    computed without the factor-1 shortcut.
    """
    names = list(items)
    n = len(items[names[0]])
    total = 0.0
    for i in range(n):
        choices = [
            range(probs[q].shape[1]) if np.isnan(items[q][i]) else [int(items[q][i])] for q in names
        ]
        like = 0.0
        for completion in itertools.product(*choices):
            for k in range(len(w)):
                like += w[k] * np.prod([probs[q][k, c] for q, c in zip(names, completion)])
        total += np.log(like)
    return total


# -------------------------------------------------------------------------------------- declarem graphs


def gmm_graph(cov_type):
    g = nx.DiGraph()
    g.add_node("z", family="categorical", latent=True, k=K)
    g.add_node("x", family="normal", dim=D, covariance=cov_type)
    g.add_edge("z", "x")
    return g


def columns_graph(family, k, d):
    g = nx.DiGraph()
    g.add_node("z", family="categorical", latent=True, k=k)
    if family in ("diag", "spherical"):
        g.add_node("x", family="normal", dim=d, covariance=family)
    else:
        g.add_node("x", family=family, dim=d)
    g.add_edge("z", "x")
    return g


def lca_graph():
    g = nx.DiGraph()
    g.add_node("z", family="categorical", latent=True, k=LCA_K)
    for q, c in LCA_ITEMS.items():
        g.add_node(q, family="categorical", k=c)
        g.add_edge("z", q)
    return g


_fits: dict = {}


def declarem_fit(key, graph, data, init, max_iter=N_ITER):
    """Fit declarem (cached per key within this module): exactly max_iter iterations, exact ML updates."""
    if key not in _fits:
        model = _declarem().Model(graph)
        _fits[key] = model.fit(data, init=init, max_iter=max_iter, tol=0.0, reg_covar=0.0)
    return _fits[key]


# ------------------------------------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def gmm_data():
    return make_gmm_data()


@pytest.fixture(scope="module")
def lca_data():
    return make_lca()


COLUMN_CASES = {
    # family: (K, D, missing rate)
    "poisson": (2, 3, 0.2),
    "bernoulli": (2, 5, 0.2),
}


def make_columns_data(family, seed=20261204):
    """(x with NaN (N, D), init (w, params)) for an independent-columns mixture of ``family``."""
    rng = np.random.default_rng(seed)
    if family in ("diag", "spherical"):
        _, xm, _, _ = make_gmm_data()
        w, m, c = gmm_init(family)
        return xm, (w, (m, c))
    k, d, rate = COLUMN_CASES[family]
    n = 400
    z = rng.choice(k, size=n, p=[0.6, 0.4])
    if family == "poisson":
        truth = np.array([[2.0, 5.0, 1.0], [7.0, 1.5, 4.0]])
        x = rng.poisson(truth[z]).astype(float)
        init = np.array([[3.0, 3.0, 2.0], [5.0, 2.5, 3.0]])
    else:
        truth = np.array([[0.8, 0.2, 0.7, 0.3, 0.6], [0.2, 0.7, 0.4, 0.8, 0.3]])
        x = (rng.random((n, d)) < truth[z]).astype(float)
        init = np.array([[0.6, 0.4, 0.5, 0.4, 0.5], [0.4, 0.6, 0.45, 0.6, 0.4]])
    xm, _ = with_nan(x, rate, rng, 3)
    return xm, (np.array([0.5, 0.5]), (init,))


def columns_param_names(family):
    return {"diag": ("mean", "var"), "spherical": ("mean", "var"), "poisson": ("rate",), "bernoulli": ("p",)}[family]


# =========================================================== 0. the data and the references (no declarem)


def test_gmm_data_has_the_intended_missingness(gmm_data):
    x, xm, _, all_rows = gmm_data
    observed = ~np.isnan(xm)
    per_row = observed.sum(axis=1)
    assert 0.12 < np.isnan(xm).mean() < 0.20
    assert (per_row == 0).sum() >= N_ALL_MISSING and not observed[all_rows].any()
    for count in (1, 2, 3, 4):
        assert (per_row == count).sum() >= 3, f"too few rows with {count} observed coordinates"
    np.testing.assert_array_equal(xm[observed], x[observed])


@pytest.mark.parametrize("cov_type", ["full", "tied"])
def test_gj_reference_loglik_is_the_brute_force_marginal(gmm_data, cov_type):
    """Row by row (a few rows of every missingness pattern), with and without partial labels."""
    _, xm, z, all_rows = gmm_data
    rows = some_rows_of_every_pattern(xm)
    assert np.isin(all_rows, rows).any() and len(rows) >= 60
    labels = labels_column(z, 0.25, np.random.default_rng(5), K)
    for lab in (None, labels):
        (w, m, c), hist, _ = gj_em(xm, *gmm_init(cov_type), cov_type, 3, labels=lab)
        covs = full_covariances(c, cov_type)
        _, ll, _, _ = gj_estep(xm, w, m, covs, lab, statistics=False)
        np.testing.assert_allclose(hist[-1], ll.sum(), rtol=REF_RTOL)
        want = brute_force_gmm_rows(xm[rows], w, m, covs, None if lab is None else lab[rows])
        np.testing.assert_allclose(ll[rows], want, rtol=REF_RTOL)
        if lab is not None:
            assert (~np.isnan(lab[rows])).sum() >= 10


@pytest.mark.parametrize("cov_type", ["full", "tied", "diag", "spherical"])
def test_references_equal_plain_em_without_missing_values(gmm_data, cov_type):
    x = gmm_data[0]
    (pw, pm, pc), phist = plain_gmm_em(x, *gmm_init(cov_type), cov_type, N_ITER)
    if cov_type in ("full", "tied"):
        (rw, rm, rc), rhist, _ = gj_em(x, *gmm_init(cov_type), cov_type, N_ITER)
    else:
        w, m, c = gmm_init(cov_type)
        (rw, rm, rc), rhist, _ = columns_em(x, w, (m, c), cov_type, N_ITER)
    for got, want, what in [(rw, pw, "weights"), (rm, pm, "means"), (rc, pc, "covariances")]:
        assert_close(got, want, rtol=REF_RTOL, what=what)
    np.testing.assert_allclose(rhist, phist, rtol=REF_RTOL)
    assert np.max(np.abs(pm - gmm_init(cov_type)[1])) > 0.1  # the fit moves


@pytest.mark.parametrize("cov_type", ["full", "tied"])
def test_gj_reference_statistics_satisfy_fishers_identity(gmm_data, cov_type):
    """d loglik / d theta = E[d log p(complete) / d theta | observed] at theta: checks E[x] and E[x x^T].

    For component k: d/d m_k = S_k^{-1} sum_n r_nk (E_k[x_n] - m_k); d/d S_k (symmetric entries) from
    G_k = 1/2 S_k^{-1} (sum_n r_nk E_k[(x_n - m_k)(x_n - m_k)^T]) S_k^{-1} - 1/2 N_k S_k^{-1}; tied sums G_k.
    The left side by central differences of the observed-data log-likelihood.
    """
    _, xm, _, _ = gmm_data
    w, m, c = gmm_init(cov_type)
    covs = full_covariances(c, cov_type)
    r, _, ex, exx = gj_estep(xm, w, m, covs)
    nk = r.sum(axis=0)
    g_mean = np.empty((K, D))
    g_cov = np.empty((K, D, D))
    for k in range(K):
        p = np.linalg.inv(covs[k])
        g_mean[k] = p @ (r[:, k] @ (ex[k] - m[k]))
        centred = (
            np.einsum("n,nij->ij", r[:, k], exx[k])
            - np.outer(r[:, k] @ ex[k], m[k])
            - np.outer(m[k], r[:, k] @ ex[k])
            + nk[k] * np.outer(m[k], m[k])
        )
        g_cov[k] = 0.5 * p @ centred @ p - 0.5 * nk[k] * p
    if cov_type == "tied":
        g_cov = g_cov.sum(axis=0)

    def loglik(m_, c_):
        return gj_loglik(xm, w, m_, full_covariances(c_, cov_type))

    h = 1e-5
    num_mean = np.empty_like(m)
    for idx in np.ndindex(m.shape):
        e = np.zeros_like(m)
        e[idx] = h
        num_mean[idx] = (loglik(m + e, c) - loglik(m - e, c)) / (2 * h)
    want_cov, num_cov = [], []
    for idx in np.ndindex(c.shape):
        i, j = idx[-2:]
        if i > j:
            continue
        e = np.zeros_like(c)
        e[idx] = h
        e[idx[:-2] + (j, i)] = h  # a symmetric perturbation
        num_cov.append((loglik(m, c + e) - loglik(m, c - e)) / (2 * h))
        want_cov.append(g_cov[idx] * (1.0 if i == j else 2.0))
    scale = max(np.max(np.abs(g_mean)), np.max(np.abs(want_cov)))
    np.testing.assert_allclose(g_mean, num_mean, rtol=1e-5, atol=1e-6 * scale)
    np.testing.assert_allclose(want_cov, num_cov, rtol=1e-5, atol=1e-6 * scale)


@pytest.mark.parametrize("cov_type", ["full", "tied"])
def test_gj_reference_objective_never_falls(gmm_data, cov_type):
    _, xm, z, _ = gmm_data
    _, hist, _ = gj_em(xm, *gmm_init(cov_type), cov_type, 15)
    assert_monotone(hist, cov_type)
    labels = labels_column(z, 0.25, np.random.default_rng(5), K)
    _, hist, _ = gj_em(xm, *gmm_init(cov_type), cov_type, 15, labels=labels)
    assert_monotone(hist, cov_type + " with labels")


@pytest.mark.parametrize("family", ["diag", "spherical", "poisson", "bernoulli"])
def test_columns_reference_loglik_and_monotone(family):
    xm, (w, params) = make_columns_data(family)
    (rw, *rp), hist, _ = columns_em(xm, w, params, family, 3)
    rows = some_rows_of_every_pattern(xm, 4)
    _, sub, _ = columns_em(xm[rows], rw, rp, family, 0)  # the reference's log-likelihood on those rows
    np.testing.assert_allclose(sub[0], brute_force_columns_loglik(xm[rows], rw, rp, family), rtol=REF_RTOL)
    if family in ("diag", "spherical"):  # and the same marginal as the Gaussian one with those covariances
        np.testing.assert_allclose(hist[-1], gj_loglik(xm, rw, rp[0], full_covariances(rp[1], family)), rtol=REF_RTOL)
    _, hist, _ = columns_em(xm, w, params, family, 25)
    assert_monotone(hist, family)


def test_lca_reference_loglik_is_the_sum_over_completions(lca_data):
    complete, items, z, _, all_rows = lca_data
    assert 0.08 < np.mean([np.isnan(v).mean() for v in items.values()]) < 0.16
    assert all(np.isnan(items[q][all_rows]).all() for q in items)
    (w, probs), hist, _ = lca_em(items, *lca_init(), 3)
    np.testing.assert_allclose(hist[-1], brute_force_lca_loglik(items, w, probs), rtol=REF_RTOL)
    _, hist, _ = lca_em(items, *lca_init(), 40)
    assert_monotone(hist, "latent class")
    labels = labels_column(z, 0.25, np.random.default_rng(6), LCA_K)
    _, hist, _ = lca_em(items, *lca_init(), 40, labels=labels)
    assert_monotone(hist, "latent class with labels")


def test_lca_reference_without_missing_values_is_plain_em(lca_data):
    """With no NaN the poLCA reference is the textbook LCA EM (written here with explicit loops)."""
    complete = lca_data[0]
    (rw, rp), rhist, _ = lca_em(complete, *lca_init(), N_ITER)
    w, probs = lca_init()
    names = list(complete)
    for _ in range(N_ITER):
        like = np.ones((LCA_N, LCA_K)) * w
        for q in names:
            like = like * probs[q][:, complete[q].astype(int)].T
        r = like / like.sum(axis=1, keepdims=True)
        w = r.mean(axis=0)
        probs = {
            q: np.stack([[r[complete[q] == c, k].sum() for c in range(LCA_ITEMS[q])] for k in range(LCA_K)])
            / r.sum(axis=0)[:, None]
            for q in names
        }
    assert_close(rw, w, rtol=REF_RTOL, what="weights")
    for q in names:
        assert_close(rp[q], probs[q], rtol=REF_RTOL, what=q)


def test_the_data_tell_the_conventions_apart(gmm_data, lca_data):
    """Plausible wrong conventions give results far outside the tolerances, so the tests below can fail."""
    _, xm, _, _ = gmm_data
    (_, m_gj, c_gj), _, r = gj_em(xm, *gmm_init("full"), "full", N_ITER)
    (_, m_imp, c_imp), _, _ = gj_em(xm, *gmm_init("full"), "full", N_ITER, conditional_cov=False)
    assert np.max(np.abs(c_gj - c_imp)) > 1e-3 * np.max(np.abs(c_gj))  # conditional covariance matters
    w, m, c = gmm_init("diag")
    (_, _, v_cols), _, _ = columns_em(xm, w, (m, c), "diag", N_ITER)
    (_, _, v_latent), _, _ = gj_em(xm, w, m, c, "diag", N_ITER)
    assert np.max(np.abs(v_cols - v_latent)) > 1e-3 * np.max(np.abs(v_cols))  # factor 1 vs latent cell
    # dropping incomplete rows is yet another answer
    keep = ~np.isnan(xm).any(axis=1)
    (_, m_drop, _), _ = plain_gmm_em(xm[keep], *gmm_init("full"), "full", N_ITER)
    assert np.max(np.abs(m_gj - m_drop)) > 1e-3
    # the posterior is not trivially one-hot
    assert np.mean(r.max(axis=1) < 0.99) > 0.05
    # latent class: poLCA's per-item weights vs a missing item treated as latent (filled in by p_kj), one step
    _, items, _, _, _ = lca_data
    w, probs = lca_init()
    (_, polca), _, r = lca_em(items, w, probs, 1)
    _, _, r0 = lca_em(items, w, probs, 0)
    for q in LCA_ITEMS:
        v = items[q]
        obs = ~np.isnan(v)
        counts = r0[obs].T @ np.eye(LCA_ITEMS[q])[v[obs].astype(int)] + r0[~obs].sum(axis=0)[:, None] * probs[q]
        latent = counts / r0.sum(axis=0)[:, None]
        assert np.max(np.abs(latent - polca[q])) > 1e-3, q


# ======================================================================== 1. full / tied GMM with missing


def check_gmm_against_gj(key, x, cov_type, labels=None):
    """declarem after N_ITER iterations from gmm_init(cov_type) equals gj_em: params, loglik, history."""
    init = gmm_init(cov_type)
    (rw, rm, rc), rhist, _ = gj_em(x, *init, cov_type, N_ITER, labels=labels, empty_rows=False)
    data = {"x": x} if labels is None else {"x": x, "z": labels}
    fit = declarem_fit(
        key, gmm_graph(cov_type), data, {"z": {"probs": init[0]}, "x": {"mean": init[1], cov_key(cov_type): init[2]}}
    )
    assert fit.n_iter == N_ITER
    p = fit.params
    # the normal node's update first: a wrong E[x] or E[x x^T] shows there, and in the weights only later
    assert_close(p["x"]["mean"], rm, what=f"{cov_type}: x.mean")
    assert_close(p["x"]["cov"], rc, what=f"{cov_type}: x.cov")
    assert_close(p["z"]["probs"], rw, what=f"{cov_type}: z.probs")
    np.testing.assert_allclose(fit.loglik, rhist[-1], rtol=LOGLIK_RTOL, err_msg=f"{cov_type}: loglik")
    assert_history(fit.history, rhist, cov_type)
    return rm


@pytest.fixture(scope="module")
def gmm_partial(gmm_data):
    """The GMM data with its all-missing rows replaced by their complete values: every row observes something."""
    x, xm, _, all_rows = gmm_data
    xp = xm.copy()
    xp[all_rows] = x[all_rows]
    assert (~np.isnan(xp)).any(axis=1).all() and np.isnan(xp).mean() > 0.12
    return xp


@pytest.mark.parametrize("cov_type", ["full", "tied"])
def test_gmm_missing_matches_ghahramani_jordan(gmm_partial, cov_type):
    """Rows with some (not all) coordinates missing: conditional means and covariances in E[x], E[x x^T]."""
    check_gmm_against_gj(("gmm-partial", cov_type), gmm_partial, cov_type)


@pytest.mark.parametrize("cov_type,labelled", [("full", False), ("tied", False), ("full", True)],
                         ids=["full", "tied", "full-labelled"])
def test_gmm_all_missing_rows_in_the_normal_update(gmm_data, cov_type, labelled):
    """A row with nothing observed gives the normal's update no statistics (DESIGN.md); it counts for the
    weights (in the labelled variant, one such row is labelled). The other valid EM, with N_k over all rows and
    E_k[x] = m_k, E_k[x x^T] = S_k + m_k m_k^T for such rows, gives other iterates: the data tell them apart."""
    _, xm, z, all_rows = gmm_data
    init = gmm_init(cov_type)
    kept, _, _ = gj_em(xm, *init, cov_type, N_ITER, empty_rows=False)
    counted, _, _ = gj_em(xm, *init, cov_type, N_ITER, empty_rows=True)
    assert np.abs(kept[1] - counted[1]).max() > 1e-4
    labels = None
    if labelled:
        labels = labels_column(z, 0.25, np.random.default_rng(5), K)
        labels[all_rows[0]] = z[all_rows[0]]  # its log-likelihood is log w_label
    key = ("gmm", cov_type) if not labelled else ("labels-empty-rows",)
    check_gmm_against_gj(key, xm, cov_type, labels)


@pytest.mark.parametrize("cov_type", ["full", "tied"])
def test_gmm_missing_posterior_and_score(gmm_data, cov_type):
    """At the fitted parameters: posterior = the reference's responsibilities; score = brute-force marginal."""
    _, xm, _, _ = gmm_data
    init = gmm_init(cov_type)
    fit = declarem_fit(
        ("gmm", cov_type),
        gmm_graph(cov_type),
        {"x": xm},
        {"z": {"probs": init[0]}, "x": {"mean": init[1], cov_key(cov_type): init[2]}},
    )
    p = fit.params
    covs = full_covariances(p["x"]["cov"], cov_type)
    r, _, _, _ = gj_estep(xm, p["z"]["probs"], p["x"]["mean"], covs)
    post = fit.posterior({"x": xm})["z"]
    np.testing.assert_allclose(post, r, atol=POSTERIOR_ATOL)
    want = gj_loglik(xm, p["z"]["probs"], p["x"]["mean"], covs)
    np.testing.assert_allclose(fit.score({"x": xm}), want, rtol=LOGLIK_RTOL)
    np.testing.assert_allclose(fit.loglik, want, rtol=LOGLIK_RTOL)


def test_gmm_missing_from_split_columns(gmm_data):
    """The columns x_0..x_3 with NaN give the same fit as the (N, D) array."""
    _, xm, _, _ = gmm_data
    init = gmm_init("full")
    init_d = {"z": {"probs": init[0]}, "x": {"mean": init[1], "cov": init[2]}}
    a = declarem_fit(("gmm", "full"), gmm_graph("full"), {"x": xm}, init_d)
    b = declarem_fit(("gmm-split", "full"), gmm_graph("full"), {f"x_{j}": xm[:, j] for j in range(D)}, init_d)
    assert_close(b.params["x"]["cov"], a.params["x"]["cov"], what="x.cov")
    np.testing.assert_allclose(b.loglik, a.loglik, rtol=LOGLIK_RTOL)


def test_gmm_missing_from_dataframe(gmm_data):
    pd = pytest.importorskip("pandas")
    _, xm, _, _ = gmm_data
    init = gmm_init("full")
    init_d = {"z": {"probs": init[0]}, "x": {"mean": init[1], "cov": init[2]}}
    (rw, rm, rc), rhist, _ = gj_em(xm, *init, "full", N_ITER, empty_rows=False)
    # pandas' nullable floats hold pd.NA where a value is missing.
    frame = pd.DataFrame({f"x_{j}": pd.array(np.where(np.isnan(xm[:, j]), None, xm[:, j]), dtype="Float64")
                          for j in range(D)})
    fit = declarem_fit(("gmm-frame", "full"), gmm_graph("full"), frame, init_d)
    assert_close(fit.params["x"]["cov"], rc, what="x.cov")
    assert_history(fit.history, rhist, "DataFrame")


def test_n_missing_counts_missing_cells(gmm_data):
    """DESIGN.md: fit.n_missing counts the missing cells."""
    _, xm, _, _ = gmm_data
    init = gmm_init("full")
    fit = declarem_fit(
        ("gmm", "full"), gmm_graph("full"), {"x": xm}, {"z": {"probs": init[0]}, "x": {"mean": init[1], "cov": init[2]}}
    )
    assert fit.n_missing == int(np.isnan(xm).sum())


# ============================================================== 2. diag / spherical: per-column convention
# ============================================================== 4. scalar families with dim > 1


@pytest.mark.parametrize("family", ["diag", "spherical", "poisson", "bernoulli"])
def test_independent_columns_missing_match_reference(family):
    xm, (w, params) = make_columns_data(family)
    (rw, *rp), rhist, r = columns_em(xm, w, params, family, N_ITER)
    names = columns_param_names(family)
    k = len(w)
    fit = declarem_fit(
        ("columns", family),
        columns_graph(family, k, xm.shape[1]),
        {"x": xm},
        {"z": {"probs": w}, "x": dict(zip(names, params))},
    )
    p = fit.params
    assert_close(p["z"]["probs"], rw, what=f"{family}: z.probs")
    for name, want in zip(names, rp):
        assert_close(p["x"][name], want, what=f"{family}: x.{name}")
    np.testing.assert_allclose(fit.loglik, rhist[-1], rtol=LOGLIK_RTOL, err_msg=f"{family}: loglik")
    assert_history(fit.history, rhist, family)


# =============================================================== 3. latent class model, poLCA convention


def lca_declarem_init(w, probs):
    return {"z": {"probs": w}, **{q: {"probs": p} for q, p in probs.items()}}


def test_lca_missing_items_match_polca_reference(lca_data):
    _, items, _, _, _ = lca_data
    (rw, rp), rhist, _ = lca_em(items, *lca_init(), N_ITER)
    fit = declarem_fit(("lca",), lca_graph(), dict(items), lca_declarem_init(*lca_init()))
    assert fit.n_iter == N_ITER
    assert_close(fit.params["z"]["probs"], rw, what="z.probs")
    for q in LCA_ITEMS:
        assert_close(fit.params[q]["probs"], rp[q], what=f"{q}.probs")
    np.testing.assert_allclose(fit.loglik, rhist[-1], rtol=LOGLIK_RTOL, err_msg="loglik")
    assert_history(fit.history, rhist, "latent class")


def test_lca_missing_posterior(lca_data):
    _, items, _, _, all_rows = lca_data
    fit = declarem_fit(("lca",), lca_graph(), dict(items), lca_declarem_init(*lca_init()))
    p = fit.params
    (_, _), _, r = lca_em(items, p["z"]["probs"], {q: p[q]["probs"] for q in LCA_ITEMS}, 0)
    post = fit.posterior(dict(items))["z"]
    np.testing.assert_allclose(post, r, atol=POSTERIOR_ATOL)
    prior = np.broadcast_to(p["z"]["probs"], (len(all_rows), LCA_K))
    np.testing.assert_allclose(post[all_rows], prior, atol=POSTERIOR_ATOL)


# ============================================================================================ 5. labels


@pytest.mark.parametrize("x_missing", [False, True], ids=["complete-x", "missing-x"])
def test_gmm_partial_labels(gmm_data, gmm_partial, x_missing):
    x, _, z, _ = gmm_data
    data_x = gmm_partial if x_missing else x
    labels = labels_column(z, 0.25, np.random.default_rng(5), K)
    rm = check_gmm_against_gj(("labels", x_missing), data_x, "full", labels)
    # the labels really change the fit (so the test can fail if the column were ignored)
    (_, m_free, _), _, _ = gj_em(data_x, *gmm_init("full"), "full", N_ITER)
    assert np.max(np.abs(m_free - rm)) > 1e-4


def test_gmm_partial_labels_posterior_is_one_hot_on_labelled_rows(gmm_data):
    x, _, z, _ = gmm_data
    labels = labels_column(z, 0.25, np.random.default_rng(5), K)
    init = gmm_init("full")
    fit = declarem_fit(
        ("labels", False),
        gmm_graph("full"),
        {"x": x, "z": labels},
        {"z": {"probs": init[0]}, "x": {"mean": init[1], "cov": init[2]}},
    )
    p = fit.params
    _, _, r = gj_em(x, p["z"]["probs"], p["x"]["mean"], p["x"]["cov"], "full", 0, labels=labels)
    post = fit.posterior({"x": x, "z": labels})["z"]
    lab = ~np.isnan(labels)
    np.testing.assert_allclose(post[lab], np.eye(K)[labels[lab].astype(int)], atol=POSTERIOR_ATOL)
    np.testing.assert_allclose(post, r, atol=POSTERIOR_ATOL)


def test_lca_partial_labels(lca_data):
    _, items, z, _, _ = lca_data
    labels = labels_column(z, 0.25, np.random.default_rng(6), LCA_K)
    (rw, rp), rhist, _ = lca_em(items, *lca_init(), N_ITER, labels=labels)
    fit = declarem_fit(("lca-labels",), lca_graph(), {**items, "z": labels}, lca_declarem_init(*lca_init()))
    assert_close(fit.params["z"]["probs"], rw, what="z.probs")
    for q in LCA_ITEMS:
        assert_close(fit.params[q]["probs"], rp[q], what=f"{q}.probs")
    np.testing.assert_allclose(fit.loglik, rhist[-1], rtol=LOGLIK_RTOL, err_msg="loglik")
    assert_history(fit.history, rhist, "latent class with labels")
    (rw_free, _), _, _ = lca_em(items, *lca_init(), N_ITER)
    assert np.max(np.abs(rw_free - rw)) > 1e-4


# ========================================================================== 6. long fits never go down


def test_long_gmm_fit_with_missing_values_never_falls(gmm_data):
    _, xm, _, _ = gmm_data
    init = gmm_init("full")
    fit = declarem_fit(
        ("long-gmm",),
        gmm_graph("full"),
        {"x": xm},
        {"z": {"probs": init[0]}, "x": {"mean": init[1], "cov": init[2]}},
        max_iter=LONG_ITER,
    )
    assert len(fit.history) == fit.n_iter + 1 and fit.n_iter == LONG_ITER
    assert_monotone(fit.history, "full GMM, 200 iterations")
    # the end point is the observed-data log-likelihood at the final parameters
    p = fit.params
    want = gj_loglik(xm, p["z"]["probs"], p["x"]["mean"], p["x"]["cov"])
    np.testing.assert_allclose(fit.history[-1], want, rtol=LOGLIK_RTOL)


def test_long_lca_fit_with_missing_values_never_falls(lca_data):
    _, items, _, _, _ = lca_data
    fit = declarem_fit(("long-lca",), lca_graph(), dict(items), lca_declarem_init(*lca_init()), max_iter=LONG_ITER)
    assert len(fit.history) == fit.n_iter + 1 and fit.n_iter == LONG_ITER
    assert_monotone(fit.history, "latent class, 200 iterations")
    p = fit.params
    (_, _), hist, _ = lca_em(items, p["z"]["probs"], {q: p[q]["probs"] for q in LCA_ITEMS}, 0)
    np.testing.assert_allclose(fit.history[-1], hist[0], rtol=LOGLIK_RTOL)


# ================================================================================= 7. all-missing rows


def test_all_missing_rows_posterior_is_the_prior_and_add_nothing(gmm_data):
    _, xm, _, all_rows = gmm_data
    init = gmm_init("full")
    fit = declarem_fit(
        ("gmm", "full"), gmm_graph("full"), {"x": xm}, {"z": {"probs": init[0]}, "x": {"mean": init[1], "cov": init[2]}}
    )
    w = fit.params["z"]["probs"]
    post = fit.posterior({"x": xm})["z"]
    np.testing.assert_allclose(post[all_rows], np.broadcast_to(w, (len(all_rows), K)), atol=POSTERIOR_ATOL)
    keep = np.setdiff1d(np.arange(N), all_rows)
    with_rows = fit.score({"x": xm})
    without = fit.score({"x": xm[keep]})
    np.testing.assert_allclose(with_rows, without, rtol=LOGLIK_RTOL)


def test_all_missing_rows_still_count_for_the_weights(gmm_data):
    """N_k sums over all rows: the weights after one step include the all-missing rows' prior."""
    _, xm, _, all_rows = gmm_data
    init = gmm_init("full")
    keep = np.setdiff1d(np.arange(N), all_rows)
    (rw, _, _), _, _ = gj_em(xm, *init, "full", 1)
    (rw_drop, _, _), _, _ = gj_em(xm[keep], *init, "full", 1)
    assert np.max(np.abs(rw - rw_drop)) > 1e-6  # the reference can tell
    model = _declarem().Model(gmm_graph("full"))
    fit = model.fit(
        {"x": xm},
        init={"z": {"probs": init[0]}, "x": {"mean": init[1], "cov": init[2]}},
        max_iter=1,
        tol=0.0,
        reg_covar=0.0,
    )
    assert_close(fit.params["z"]["probs"], rw, what="z.probs after one step")


# ================================================================================ 8. no NaN: as before


@pytest.mark.parametrize("cov_type", ["full", "diag"])
def test_without_missing_values_equals_plain_em(gmm_data, cov_type):
    x = gmm_data[0]
    init = gmm_init(cov_type)
    (pw, pm, pc), phist = plain_gmm_em(x, *init, cov_type, N_ITER)
    fit = declarem_fit(
        ("complete", cov_type),
        gmm_graph(cov_type),
        {"x": x},
        {"z": {"probs": init[0]}, "x": {"mean": init[1], cov_key(cov_type): init[2]}},
    )
    p = fit.params
    assert_close(p["z"]["probs"], pw, what="z.probs")
    assert_close(p["x"]["mean"], pm, what="x.mean")
    assert_close(p["x"][cov_key(cov_type)], pc, what=f"x.{cov_key(cov_type)}")
    assert_history(fit.history, phist, f"{cov_type}, no NaN")
    if hasattr(fit, "n_missing"):
        assert fit.n_missing == 0
