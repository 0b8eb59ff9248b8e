"""Hand-coded Baum-Welch (EM) for a hidden Markov model with Poisson emissions, in plain numpy.

The reference that declarem's derived updates for a Poisson HMM (``models/earthquakes_hmm2.toml`` once
chains land, issue #9) are to be held against:

    declarem compare models/earthquakes_hmm2.toml --reference models/poisson_hmm_reference.py

It imports nothing from declarem. The notation is Zucchini & MacDonald's ("Hidden Markov Models for Time
Series", 2009, section 4.2), in declarem's parameter names.

Model: a chain z_1, ..., z_T in 0..K-1 per sequence, with
    P(z_1 = i) = delta_i                          (z.start, shape (K,))
    P(z_t = j | z_{t-1} = i) = Gamma_ij           (z.probs, shape (K, K); row i is the law after state i)
    count_t | z_t = i ~ Poisson(lambda_i)         (count.rate, shape (K,))
Rows are time steps in order; ``lengths`` splits them into independent sequences (as hmmlearn; the
lengths sum to the number of rows), one sequence when omitted.

E-step (scaled forward-backward, per sequence; p_i(x) = Pois(x; lambda_i)):
    alpha_1(i) = delta_i p_i(x_1) / c_1,   alpha_t(j) = sum_i alpha_{t-1}(i) Gamma_ij p_j(x_t) / c_t,
        with c_t chosen so that sum_j alpha_t(j) = 1; then log L = sum_t log c_t
    beta_T(i) = 1,   beta_t(i) = sum_j Gamma_ij p_j(x_{t+1}) beta_{t+1}(j) / c_{t+1}
    u_t(i)    = P(z_t = i | x) = alpha_t(i) beta_t(i)
    v_t(i, j) = P(z_{t-1} = i, z_t = j | x) = alpha_{t-1}(i) Gamma_ij p_j(x_t) beta_t(j) / c_t   (t >= 2)
    (each row of p is divided by its largest entry before use and the factor put back into log L, so
    that large counts do not underflow.)
M-step (sums over the sequences s and their steps t):
    delta_i    = sum_s u_1^s(i) / S                          (S sequences)
    Gamma_ij   = sum_s sum_{t>=2} v_t^s(i, j) / sum_j' sum_s sum_{t>=2} v_t^s(i, j')
    lambda_i   = sum_s sum_t u_t^s(i) x_t^s / sum_s sum_t u_t^s(i)
This is the plain maximum-likelihood update (no priors): the start is estimated, not tied to the
stationary law, so it goes to a vertex of the simplex on a single sequence (Zucchini & MacDonald's
Tables 4.1-4.2: delta = (1, 0) and (1, 0, 0) for the earthquake series).

    step(data, params, lengths=None) -> params      one EM iteration, the ``declarem compare`` interface
    loglik(data, params, lengths=None) -> float     the observed-data log-likelihood
    posteriors(data, params, lengths=None)          u (T, K), summed v (K, K), u_1 per sequence, log L
"""

import numpy as np
from scipy.special import gammaln


def _bounds(n_rows, lengths):
    """(start, stop) row indices of each sequence."""
    if lengths is None:
        return [(0, n_rows)]
    lengths = [int(length) for length in lengths]
    if any(length < 1 for length in lengths) or sum(lengths) != n_rows:
        raise ValueError(f"lengths {lengths} must be positive and sum to the {n_rows} rows")
    stops = np.cumsum(lengths)
    return list(zip(stops - lengths, stops))


def _unpack(params):
    start = np.asarray(params["z"]["start"], dtype=float)
    probs = np.asarray(params["z"]["probs"], dtype=float)
    rate = np.asarray(params["count"]["rate"], dtype=float)
    return start, probs, rate


def log_emission(x, rate):
    """log Pois(x_t; lambda_i) = x_t log lambda_i - lambda_i - log x_t!, shape (T, K)."""
    return x[:, None] * np.log(rate) - rate - gammaln(x + 1.0)[:, None]


def _forward_backward(log_p, start, probs):
    """Scaled forward-backward on one sequence.

    log_p: log emission densities of shape (T, K). Returns u (T, K), the summed v (K, K) and log L.
    """
    n_steps, n_states = log_p.shape
    shift = log_p.max(axis=1, keepdims=True)
    p = np.exp(log_p - shift)                          # (T, K), each row's largest entry is 1
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
    u = alpha * beta
    # sum_t v_t(i, j) = Gamma_ij sum_t alpha_{t-1}(i) [p_j(x_t) beta_t(j) / c_t]
    weighted = p[1:] * beta[1:] / scale[1:, None]      # (T-1, K)
    v = probs * (alpha[:-1].T @ weighted)
    log_l = float(np.log(scale).sum() + shift.sum())
    return u, v, log_l


def posteriors(data, params, lengths=None):
    """Smoothed marginals u of shape (T, K), summed pair marginals v (K, K), the first-step marginals
    (S, K) of the S sequences, and the log-likelihood."""
    x = np.asarray(data["count"], dtype=float)
    start, probs, rate = _unpack(params)
    log_p = log_emission(x, rate)
    u = np.empty((len(x), len(rate)))
    v = np.zeros((len(rate), len(rate)))
    first = []
    total = 0.0
    for begin, end in _bounds(len(x), lengths):
        u_s, v_s, log_l = _forward_backward(log_p[begin:end], start, probs)
        u[begin:end] = u_s
        v += v_s
        first.append(u_s[0])
        total += log_l
    return u, v, np.array(first), total


def step(data, params, lengths=None):
    """One Baum-Welch iteration; returns new parameters in ``fit.params`` form."""
    x = np.asarray(data["count"], dtype=float)
    u, v, first, _ = posteriors(data, params, lengths)
    mass = u.sum(axis=0)
    return {
        "z": {"start": first.mean(axis=0), "probs": v / v.sum(axis=1, keepdims=True)},
        "count": {"rate": u.T @ x / mass},
    }


def loglik(data, params, lengths=None):
    """log P(x) = sum over sequences of log sum_paths delta_{z_1} p_{z_1}(x_1) prod_t Gamma p."""
    return posteriors(data, params, lengths)[3]
