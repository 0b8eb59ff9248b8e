"""Hand-coded EM for the Gaussian mixture of the recitation (Ni Lao, 10-701 recitation, Feb 18 2010).

The reference that declarem's derived updates for ``models/gmm.toml`` are held against:

    declarem compare models/gmm.toml --reference models/gmm_reference.py

It imports nothing from declarem; every line is the recitation's formulas, in plain numpy.

Model: a latent component y in 1..K with P(y = i) = pi_i, and x | y = i ~ N(mu_i, Sigma_i) in D dimensions
(z.probs = pi, x.mean = mu (K, D), x.cov = Sigma (K, D, D)).

E-step: the responsibilities, P(y = i | x_j, lambda_t) = pi_i N(x_j; mu_i, Sigma_i) / sum_k pi_k N(x_j; mu_k, Sigma_k).

M-step (the recitation's closed forms, m rows):
    pi_i^(t+1)    = sum_j P(y=i | x_j, lambda_t) / m
    mu_i^(t+1)    = sum_j P(y=i | x_j, lambda_t) x_j / sum_j P(y=i | x_j, lambda_t)
    Sigma_i^(t+1) = sum_j P(y=i | x_j, lambda_t) (x_j - mu_i^(t+1)) (x_j - mu_i^(t+1))^T / sum_j P(y=i | x_j, lambda_t)
This is the exact maximum-likelihood update: ``compare`` runs the derived one with reg_covar = 0.

Data: ``data["x_0"] .. data["x_{D-1}"]`` (the CSV's columns), or ``data["x"]`` as an (m, D) array.

    step(data, params) -> params          one EM iteration, the ``declarem compare`` interface
    loglik(data, params) -> float         the observed-data log-likelihood
"""

import numpy as np


def _points(data, dim):
    if "x" in data:
        return np.asarray(data["x"], dtype=float).reshape(-1, dim)
    return np.column_stack([np.asarray(data[f"x_{d}"], dtype=float) for d in range(dim)])


def log_joint(data, params):
    """log pi_i + log N(x_j; mu_i, Sigma_i), shape (m, K)."""
    pi = np.asarray(params["z"]["probs"], dtype=float)
    mu = np.asarray(params["x"]["mean"], dtype=float)
    sigma = np.asarray(params["x"]["cov"], dtype=float)
    n_components, dim = mu.shape
    x = _points(data, dim)
    out = np.empty((len(x), n_components))
    for i in range(n_components):
        chol = np.linalg.cholesky(sigma[i])
        solved = np.linalg.solve(chol, (x - mu[i]).T)               # L^-1 (x - mu)
        mahalanobis = (solved ** 2).sum(axis=0)
        log_det = 2.0 * np.log(np.diag(chol)).sum()
        out[:, i] = np.log(pi[i]) - 0.5 * (dim * np.log(2 * np.pi) + log_det + mahalanobis)
    return out


def responsibilities(data, params):
    """P(y = i | x_j, lambda_t), shape (m, K)."""
    joint = log_joint(data, params)
    joint -= joint.max(axis=1, keepdims=True)
    resp = np.exp(joint)
    return resp / resp.sum(axis=1, keepdims=True)


def step(data, params):
    """One EM iteration of the recitation's updates; returns new parameters in ``fit.params`` form."""
    mu_old = np.asarray(params["x"]["mean"], dtype=float)
    x = _points(data, mu_old.shape[1])
    resp = responsibilities(data, params)                  # (m, K)
    m = len(x)
    mass = resp.sum(axis=0)                                 # sum_j P(y=i | x_j)
    pi = mass / m
    mu = (resp.T @ x) / mass[:, None]
    sigma = np.empty((len(mass), x.shape[1], x.shape[1]))
    for i in range(len(mass)):
        centred = x - mu[i]                                 # about the NEW mean mu_i^(t+1)
        sigma[i] = (resp[:, i, None] * centred).T @ centred / mass[i]
    return {"z": {"probs": pi}, "x": {"mean": mu, "cov": sigma}}


def loglik(data, params):
    """sum_j log sum_i pi_i N(x_j; mu_i, Sigma_i)."""
    joint = log_joint(data, params)
    top = joint.max(axis=1, keepdims=True)
    return float((top[:, 0] + np.log(np.exp(joint - top).sum(axis=1))).sum())
