"""Hand-coded EM for a finite mixture of linear regressions, in plain numpy.

The reference that declarem's derived updates for a mixture of linear regressions ``z -> y <- u``
are held against (the catalog's ``models/regression_mixture.csv``, columns ``u`` and ``y``):

    declarem compare SPEC --reference models/regression_mixture_reference.py

It imports nothing from declarem. Node names are the module constants ``LATENT`` ("z", the
latent categorical), ``COVARIATE`` ("u", the continuous parent, a covariate with no distribution
of its own) and ``RESPONSE`` ("y", the normal child); change them to fit a spec whose nodes are
named otherwise.

Model: z in 0..K-1 with P(z = k) = pi_k (z.probs, shape (K,)), and

    y | z = k, u ~ Normal(b_k + c_k . u, s2_k)

with b = y.intercept (K,), c = y.coef (K, m) for m covariates, s2 = y.var (K,).

E-step: r_jk = pi_k N(y_j; b_k + c_k . u_j, s2_k) / sum_l pi_l N(y_j; b_l + c_l . u_j, s2_l),
        in log space.
M-step: pi_k = sum_j r_jk / n; (b_k, c_k) solves the weighted normal equations
        X^T R_k X beta = X^T R_k y with X = [1, u] (n, m + 1) and R_k = diag(r_.k);
        s2_k = sum_j r_jk (y_j - b_k - c_k . u_j)^2 / sum_j r_jk (the weighted mean squared
        residual). This is the exact maximum-likelihood update: ``compare`` runs the derived one
        with reg_covar = 0.

Data: ``data["y"]`` of shape (n,), and the covariates as ``data["u"]`` (shape (n,) when m = 1,
or (n, m)) or as columns ``data["u_0"] .. data["u_{m-1}"]`` (a covariate node with dim = m).
Rows must be complete (no NaN). The log-likelihood is that of y given u: a covariate has no
distribution.

    step(data, params) -> params          one EM iteration, the ``declarem compare`` interface
    loglik(data, params) -> float         the observed-data log-likelihood
"""

import numpy as np

LATENT = "z"
COVARIATE = "u"
RESPONSE = "y"


def covariates(data, n_covariates):
    """The covariates as a matrix.

    Parameters
    ----------
    data : mapping of str to array
    n_covariates : int
        m, the number of continuous parents (``coef.shape[-1]``).

    Returns
    -------
    ndarray of shape (n, m)
    """
    if COVARIATE in data:
        values = np.asarray(data[COVARIATE], dtype=float)
        return values.reshape(len(values), n_covariates)
    return np.column_stack([np.asarray(data[f"{COVARIATE}_{i}"], dtype=float) for i in range(n_covariates)])


def _unpack(params):
    probs = np.asarray(params[LATENT]["probs"], dtype=float)
    intercept = np.asarray(params[RESPONSE]["intercept"], dtype=float)
    coef = np.asarray(params[RESPONSE]["coef"], dtype=float)
    var = np.asarray(params[RESPONSE]["var"], dtype=float)
    return probs, intercept, coef.reshape(len(intercept), -1), var


def log_joint(data, params):
    """log pi_k + log N(y_j; b_k + c_k . u_j, s2_k), shape (n, K)."""
    probs, intercept, coef, var = _unpack(params)
    response = np.asarray(data[RESPONSE], dtype=float)
    mean = intercept + covariates(data, coef.shape[1]) @ coef.T             # (n, K)
    return np.log(probs) - 0.5 * np.log(2 * np.pi * var) - 0.5 * (response[:, None] - mean) ** 2 / var


def responsibilities(data, params):
    """P(z = k | y_j, u_j), shape (n, K)."""
    joint = log_joint(data, params)
    joint -= joint.max(axis=1, keepdims=True)
    resp = np.exp(joint)
    return resp / resp.sum(axis=1, keepdims=True)


def weighted_least_squares(design, response, weight):
    """Maximise sum_j w_j log N(y_j; x_j . beta, s2) over beta and s2.

    Parameters
    ----------
    design : ndarray of shape (n, p)
        Rows x_j, the first column of ones.
    response : ndarray of shape (n,)
    weight : ndarray of shape (n,)
        Non-negative, not all zero.

    Returns
    -------
    beta : ndarray of shape (p,)
    var : float
        The weighted mean squared residual.
    """
    gram = design.T @ (weight[:, None] * design)
    beta = np.linalg.solve(gram, design.T @ (weight * response))
    residual = response - design @ beta
    return beta, float(weight @ residual ** 2 / weight.sum())


def step(data, params):
    """One EM iteration; returns new parameters in ``fit.params`` form."""
    _, intercept, coef, _ = _unpack(params)
    response = np.asarray(data[RESPONSE], dtype=float)
    design = np.column_stack([np.ones(len(response)), covariates(data, coef.shape[1])])
    resp = responsibilities(data, params)
    n_components = resp.shape[1]
    new_intercept = np.empty(n_components)
    new_coef = np.empty((n_components, coef.shape[1]))
    new_var = np.empty(n_components)
    for k in range(n_components):
        beta, new_var[k] = weighted_least_squares(design, response, resp[:, k])
        new_intercept[k], new_coef[k] = beta[0], beta[1:]
    return {LATENT: {"probs": resp.sum(axis=0) / len(response)},
            RESPONSE: {"intercept": new_intercept, "coef": new_coef, "var": new_var}}


def loglik(data, params):
    """The observed-data log-likelihood, sum_j log sum_k pi_k N(y_j; b_k + c_k . u_j, s2_k)."""
    joint = log_joint(data, params)
    top = joint.max(axis=1, keepdims=True)
    return float((top[:, 0] + np.log(np.exp(joint - top).sum(axis=1))).sum())
