"""Hand-coded EM for a finite mixture of logistic regressions (logit link), in plain numpy.

The reference that declarem's derived updates for a mixture ``z -> y <- u`` with a bernoulli
child are held against:

    declarem compare SPEC --reference tests/logistic_regression_reference.py

It lives with the tests rather than in models/ because the catalog has no logistic mixture: one
0/1 outcome per row does not identify a mixture of logistic regressions.

It imports nothing from declarem. Node names are the module constants ``LATENT`` ("z", the
latent categorical), ``COVARIATE`` ("u", the continuous parent, a covariate with no distribution
of its own) and ``RESPONSE`` ("y", the bernoulli child); change them to fit a spec whose nodes
are named otherwise.

Model: z in 0..K-1 with P(z = k) = pi_k (z.probs, shape (K,)), and

    y | z = k, u ~ Bernoulli(expit(eta_k)),   eta_k = b_k + c_k . u

with b = y.intercept (K,) and c = y.coef (K, m) for m covariates.

E-step: r_jk = pi_k Bern(y_j; expit(eta_jk)) / sum_l pi_l Bern(y_j; expit(eta_jl)), in log space
        (log Bern(y; expit(eta)) = y eta - log(1 + exp(eta))).
M-step: pi_k = sum_j r_jk / n; beta_k = (b_k, c_k) maximises the weighted Bernoulli log-likelihood
        Q_k(beta) = sum_j r_jk (y_j eta_j - log(1 + exp(eta_j))),  eta = X beta,  X = [1, u],
        which is concave and has no closed form. Newton's method (for the canonical link, the
        same as IRLS): gradient X^T R_k (y - p), Hessian -X^T R_k diag(p (1 - p)) X with
        p = expit(eta), started from the previous beta_k, the step halved while it would lower
        Q_k, stopped when the step is below ``NEWTON_RTOL`` relative to max(1, |beta|) or after
        ``NEWTON_MAX_ITERATIONS`` steps. Where a component's weighted data are separable, Q_k has
        no maximum and the iteration stops at the cap with Q_k still rising.

Data: ``data["y"]`` of shape (n,) with values 0 and 1, and the covariates as ``data["u"]``
(shape (n,) when m = 1, or (n, m)) or as columns ``data["u_0"] .. data["u_{m-1}"]`` (a covariate
node with dim = m). Rows must be complete (no NaN). The log-likelihood is that of y given u.

    step(data, params) -> params          one EM iteration, the ``declarem compare`` interface
    loglik(data, params) -> float         the observed-data log-likelihood
"""

import numpy as np
from scipy.special import expit

LATENT = "z"
COVARIATE = "u"
RESPONSE = "y"

NEWTON_RTOL = 1e-12
NEWTON_MAX_ITERATIONS = 100
# A trial step is taken unless it lowers the objective by more than rounding can explain:
# close to the maximum, Newton's change in Q_k is below the precision Q_k is summed to.
ROUNDING = 1e-13


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
    return probs, intercept, coef.reshape(len(intercept), -1)


def _design(data, n_covariates):
    """[1, u], shape (n, m + 1)."""
    values = covariates(data, n_covariates)
    return np.column_stack([np.ones(len(values)), values])


def log_joint(data, params):
    """log pi_k + log Bern(y_j; expit(b_k + c_k . u_j)), shape (n, K)."""
    probs, intercept, coef = _unpack(params)
    outcome = np.asarray(data[RESPONSE], dtype=float)
    eta = intercept + covariates(data, coef.shape[1]) @ coef.T              # (n, K)
    return np.log(probs) + outcome[:, None] * eta - np.logaddexp(0.0, eta)


def responsibilities(data, params):
    """P(z = k | y_j, u_j), shape (n, K)."""
    joint = log_joint(data, params)
    joint -= joint.max(axis=1, keepdims=True)
    resp = np.exp(joint)
    return resp / resp.sum(axis=1, keepdims=True)


def weighted_objective(design, outcome, weight, beta):
    """Q(beta) = sum_j w_j (y_j eta_j - log(1 + exp(eta_j))), eta = design @ beta.

    Parameters
    ----------
    design : ndarray of shape (n, p)
    outcome : ndarray of shape (n,)
    weight : ndarray of shape (n,)
    beta : ndarray of shape (p,)

    Returns
    -------
    float
    """
    eta = design @ beta
    return float(weight @ (outcome * eta - np.logaddexp(0.0, eta)))


def maximise_component(design, outcome, weight, start):
    """Maximise the weighted Bernoulli log-likelihood by safeguarded Newton steps.

    Parameters
    ----------
    design : ndarray of shape (n, p)
        Rows x_j = (1, u_j).
    outcome : ndarray of shape (n,)
        0 or 1.
    weight : ndarray of shape (n,)
        Non-negative responsibilities of one component.
    start : ndarray of shape (p,)
        The previous (intercept, coef...).

    Returns
    -------
    ndarray of shape (p,)
    """
    beta = np.array(start, dtype=float)
    current = weighted_objective(design, outcome, weight, beta)
    for _ in range(NEWTON_MAX_ITERATIONS):
        prob = expit(design @ beta)
        gradient = design.T @ (weight * (outcome - prob))
        hessian = design.T @ ((weight * prob * (1.0 - prob))[:, None] * design)   # minus the Hessian of Q
        direction = np.linalg.solve(hessian, gradient)
        if np.max(np.abs(direction)) <= NEWTON_RTOL * max(1.0, np.max(np.abs(beta))):
            return beta + direction
        length = 1.0
        while True:
            candidate = beta + length * direction
            value = weighted_objective(design, outcome, weight, candidate)
            if value >= current - ROUNDING * (abs(current) + 1.0):
                break
            length /= 2
            if length < 2.0 ** -40:
                # No fraction of the Newton direction raises Q beyond rounding: beta is its maximum.
                return beta
        beta, current = candidate, value
    return beta


def step(data, params):
    """One EM iteration; returns new parameters in ``fit.params`` form."""
    _, intercept, coef = _unpack(params)
    outcome = np.asarray(data[RESPONSE], dtype=float)
    design = _design(data, coef.shape[1])
    resp = responsibilities(data, params)
    new_intercept = np.empty_like(intercept)
    new_coef = np.empty_like(coef)
    for k in range(resp.shape[1]):
        beta = maximise_component(design, outcome, resp[:, k], np.concatenate([[intercept[k]], coef[k]]))
        new_intercept[k], new_coef[k] = beta[0], beta[1:]
    return {LATENT: {"probs": resp.sum(axis=0) / len(outcome)},
            RESPONSE: {"intercept": new_intercept, "coef": new_coef}}


def loglik(data, params):
    """The observed-data log-likelihood, sum_j log sum_k pi_k Bern(y_j; expit(b_k + c_k . u_j))."""
    joint = log_joint(data, params)
    top = joint.max(axis=1, keepdims=True)
    return float((top[:, 0] + np.log(np.exp(joint - top).sum(axis=1))).sum())
