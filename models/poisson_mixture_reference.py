"""Hand-coded EM for a finite mixture of Poisson distributions, in plain numpy.

The reference that declarem's derived updates for ``models/poisson_mixture.toml`` are held against:

    declarem compare models/poisson_mixture.toml --reference models/poisson_mixture_reference.py

Model: z in 0..K-1 with P(z = k) = pi_k (z.probs), and count | z = k ~ Poisson(lambda_k) (count.rate).

E-step: r_jk = pi_k Pois(x_j; lambda_k) / sum_l pi_l Pois(x_j; lambda_l), in log space
        (log Pois(x; lambda) = x log lambda - lambda - log x!).
M-step: pi_k = sum_j r_jk / n,   lambda_k = sum_j r_jk x_j / sum_j r_jk.

    step(data, params) -> params          one EM iteration, the ``declarem compare`` interface
    loglik(data, params) -> float         the observed-data log-likelihood
"""

import numpy as np
from scipy.special import gammaln


def log_joint(data, params):
    """log pi_k + log Pois(x_j; lambda_k), shape (n, K)."""
    x = np.asarray(data["count"], dtype=float)
    pi = np.asarray(params["z"]["probs"], dtype=float)
    rate = np.asarray(params["count"]["rate"], dtype=float)
    return np.log(pi) + x[:, None] * np.log(rate) - rate - gammaln(x + 1.0)[:, None]


def step(data, params):
    """One EM iteration; returns new parameters in ``fit.params`` form."""
    x = np.asarray(data["count"], dtype=float)
    joint = log_joint(data, params)
    joint -= joint.max(axis=1, keepdims=True)
    resp = np.exp(joint)
    resp /= resp.sum(axis=1, keepdims=True)
    mass = resp.sum(axis=0)
    return {"z": {"probs": mass / len(x)}, "count": {"rate": resp.T @ x / mass}}


def loglik(data, params):
    joint = log_joint(data, params)
    top = joint.max(axis=1, keepdims=True)
    return float((top[:, 0] + np.log(np.exp(joint - top).sum(axis=1))).sum())
