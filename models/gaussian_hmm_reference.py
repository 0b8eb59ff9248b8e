"""Hand-coded Baum-Welch (EM) for a hidden Markov model with diagonal-covariance normal emissions, in numpy.

The reference that declarem's derived updates for ``models/gaussian_hmm.toml`` are held against:

    declarem compare models/gaussian_hmm.toml --reference models/gaussian_hmm_reference.py

It imports nothing from declarem (the scaled forward-backward is written out again here, after
models/poisson_hmm_reference.py). Model: a chain z_1, ..., z_T in 0..K-1 per sequence, with
    P(z_1 = i) = delta_i                          (z.start, shape (K,))
    P(z_t = j | z_{t-1} = i) = Gamma_ij           (z.probs, shape (K, K))
    x_td | z_t = i ~ N(mu_id, sigma2_id), d = 0..D-1 independently   (x.mean, x.var, shape (K, D))
Data columns x_0, ..., x_{D-1}; rows are time steps in order; ``lengths`` splits them into sequences.

E-step: scaled forward-backward as in the Poisson reference, giving u_t(i) = P(z_t = i | x) and the
summed pair marginals V_ij = sum_t P(z_{t-1} = i, z_t = j | x). M-step (exact ML, no regulariser):
    delta_i = mean over sequences of u_1(i),   Gamma_ij = V_ij / sum_j' V_ij'
    mu_id = sum_t u_t(i) x_td / sum_t u_t(i),  sigma2_id = sum_t u_t(i) (x_td - mu_id)^2 / sum_t u_t(i)
"""

import numpy as np


def _bounds(n_rows, lengths):
    if lengths is None:
        return [(0, n_rows)]
    lengths = [int(length) for length in lengths]
    if any(length < 1 for length in lengths) or sum(lengths) != n_rows:
        raise ValueError(f"lengths {lengths} must be positive and sum to the {n_rows} rows")
    stops = np.cumsum(lengths)
    return list(zip(stops - lengths, stops))


def _points(data, dim):
    return np.column_stack([np.asarray(data[f"x_{d}"], dtype=float) for d in range(dim)])


def log_emission(x, mean, var):
    """sum_d log N(x_td; mu_id, sigma2_id), shape (T, K)."""
    diff = x[:, None, :] - mean[None, :, :]
    return -0.5 * (np.log(2 * np.pi * var)[None] + diff ** 2 / var[None]).sum(axis=2)


def _forward_backward(log_p, start, probs):
    """One sequence: u (T, K), summed v (K, K), log L."""
    n_steps, n_states = log_p.shape
    shift = log_p.max(axis=1, keepdims=True)
    p = np.exp(log_p - shift)
    alpha = np.empty((n_steps, n_states))
    scale = np.empty(n_steps)
    a = start * p[0]
    scale[0] = a.sum()
    alpha[0] = a / scale[0]
    for t in range(1, n_steps):
        a = (alpha[t - 1] @ probs) * p[t]
        scale[t] = a.sum()
        alpha[t] = a / scale[t]
    beta = np.empty((n_steps, n_states))
    beta[-1] = 1.0
    for t in range(n_steps - 2, -1, -1):
        beta[t] = probs @ (p[t + 1] * beta[t + 1]) / scale[t + 1]
    v = probs * (alpha[:-1].T @ (p[1:] * beta[1:] / scale[1:, None]))
    return alpha * beta, v, float(np.log(scale).sum() + shift.sum())


def posteriors(data, params, lengths=None):
    """u (T, K), summed v (K, K), first-step marginals (S, K), log L."""
    start = np.asarray(params["z"]["start"], dtype=float)
    probs = np.asarray(params["z"]["probs"], dtype=float)
    mean = np.asarray(params["x"]["mean"], dtype=float)
    var = np.asarray(params["x"]["var"], dtype=float)
    x = _points(data, mean.shape[1])
    log_p = log_emission(x, mean, var)
    k = len(start)
    u, v, first, total = np.empty((len(x), k)), np.zeros((k, k)), [], 0.0
    for begin, end in _bounds(len(x), lengths):
        u_s, v_s, log_l = _forward_backward(log_p[begin:end], start, probs)
        u[begin:end] = u_s
        v += v_s
        first.append(u_s[0])
        total += log_l
    return u, v, np.array(first), total


def step(data, params, lengths=None):
    """One Baum-Welch iteration; returns new parameters in ``fit.params`` form."""
    dim = np.shape(params["x"]["mean"])[1]
    x = _points(data, dim)
    u, v, first, _ = posteriors(data, params, lengths)
    mass = u.sum(axis=0)
    mean = u.T @ x / mass[:, None]
    var = np.stack([u[:, i] @ (x - mean[i]) ** 2 / mass[i] for i in range(len(mass))])
    return {
        "z": {"start": first.mean(axis=0), "probs": v / v.sum(axis=1, keepdims=True)},
        "x": {"mean": mean, "var": var},
    }


def loglik(data, params, lengths=None):
    return posteriors(data, params, lengths)[3]
