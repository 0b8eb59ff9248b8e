"""Hand-coded EM for the two-coins experiment (a two-component binomial mixture), in plain numpy.

C. B. Do and S. Batzoglou, "What is the expectation maximization algorithm?", Nature Biotechnology
26(8):897-899, 2008: five sets of ten tosses, each made with coin A or coin B (which one is latent).

    declarem compare models/two_coins.toml --reference models/two_coins_reference.py
    declarem compare models/two_coins_fixed.toml --reference models/two_coins_reference.py:step_fixed

Model: z in {0, 1} (coin A, coin B) with P(z = k) = pi_k (z.probs), and heads | z = k ~ Binomial(n, theta_k)
(heads.p), n = 10 tosses per set.

E-step: r_jk = pi_k theta_k^x_j (1 - theta_k)^(n - x_j) / sum_l pi_l theta_l^x_j (1 - theta_l)^(n - x_j)
        (the binomial coefficient cancels).
M-step: theta_k = sum_j r_jk x_j / (n sum_j r_jk)      (expected heads over expected tosses of coin k)
        pi_k    = sum_j r_jk / N                         in ``step`` (models/two_coins.toml);
        pi_k    = 1/2, kept fixed, in ``step_fixed``     (the paper's update; models/two_coins_fixed.toml).

    step(data, params) -> params, step_fixed(data, params) -> params
    loglik(data, params) -> float                        the observed-data log-likelihood
    run(data, params, n_iter, fixed=False) -> params     ``n_iter`` iterations
"""

import math
import os
import tomllib

import numpy as np

SPEC = os.path.join(os.path.dirname(os.path.abspath(__file__)), "two_coins.toml")


def spec_trials(path=SPEC):
    """The number of tosses per set, as the spec declares it."""
    with open(path, "rb") as handle:
        return int(tomllib.load(handle)["nodes"]["heads"]["trials"])


TRIALS = spec_trials()


def log_joint(data, params, trials=TRIALS):
    """log pi_k + log Binomial(x_j; n, theta_k), shape (N, 2)."""
    x = np.asarray(data["heads"], dtype=float)
    pi = np.asarray(params["z"]["probs"], dtype=float)
    theta = np.asarray(params["heads"]["p"], dtype=float)
    log_choose = np.array([math.lgamma(trials + 1) - math.lgamma(v + 1) - math.lgamma(trials - v + 1) for v in x])
    return (np.log(pi) + x[:, None] * np.log(theta) + (trials - x)[:, None] * np.log1p(-theta)
            + log_choose[:, None])


def _responsibilities(data, params, trials):
    joint = log_joint(data, params, trials)
    joint -= joint.max(axis=1, keepdims=True)
    resp = np.exp(joint)
    return resp / resp.sum(axis=1, keepdims=True)


def step(data, params, trials=TRIALS):
    """One EM iteration, coin probabilities estimated; returns new parameters in ``fit.params`` form."""
    x = np.asarray(data["heads"], dtype=float)
    resp = _responsibilities(data, params, trials)
    mass = resp.sum(axis=0)
    return {"z": {"probs": mass / len(x)}, "heads": {"p": resp.T @ x / (trials * mass)}}


def step_fixed(data, params, trials=TRIALS):
    """One EM iteration of the paper: each coin is chosen with probability 1/2, which is not estimated."""
    new = step(data, {"z": {"probs": np.array([0.5, 0.5])}, "heads": params["heads"]}, trials)
    new["z"]["probs"] = np.array([0.5, 0.5])
    return new


def loglik(data, params, trials=TRIALS):
    joint = log_joint(data, params, trials)
    top = joint.max(axis=1, keepdims=True)
    return float((top[:, 0] + np.log(np.exp(joint - top).sum(axis=1))).sum())


def run(data, params, n_iter, fixed=False, trials=TRIALS):
    """``n_iter`` iterations of ``step`` (or ``step_fixed``) from ``params``."""
    update = step_fixed if fixed else step
    for _ in range(n_iter):
        params = update(data, params, trials)
    return params
