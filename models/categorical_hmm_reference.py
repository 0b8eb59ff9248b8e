"""Hand-coded Baum-Welch (EM) for a hidden Markov model with categorical emissions, in plain numpy.

The reference that declarem's derived updates for ``models/categorical_hmm.toml`` are held against:

    declarem compare models/categorical_hmm.toml --reference models/categorical_hmm_reference.py

It imports nothing from declarem (the scaled forward-backward is written out again here, after
models/poisson_hmm_reference.py). Model: a chain z_1, ..., z_T in 0..K-1 per sequence, with
    P(z_1 = i) = delta_i                          (z.start, shape (K,))
    P(z_t = j | z_{t-1} = i) = Gamma_ij           (z.probs, shape (K, K))
    P(x_t = m | z_t = i) = B_im                   (x.probs, shape (K, M); symbols 0..M-1)
Data column x; rows are time steps in order; ``lengths`` splits them into sequences.

E-step: scaled forward-backward, giving u_t(i) = P(z_t = i | x) and the summed pair marginals
V_ij = sum_t P(z_{t-1} = i, z_t = j | x). M-step (plain ML, no priors):
    delta_i = mean over sequences of u_1(i),   Gamma_ij = V_ij / sum_j' V_ij'
    B_im = sum_{t: x_t = m} u_t(i) / sum_t u_t(i)
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


def _forward_backward(p, start, probs):
    """One sequence with emission probabilities p (T, K): u (T, K), summed v (K, K), log L."""
    n_steps, n_states = p.shape
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
    return alpha * beta, v, float(np.log(scale).sum())


def posteriors(data, params, lengths=None):
    """u (T, K), summed v (K, K), first-step marginals (S, K), log L."""
    start = np.asarray(params["z"]["start"], dtype=float)
    probs = np.asarray(params["z"]["probs"], dtype=float)
    emit = np.asarray(params["x"]["probs"], dtype=float)
    x = np.asarray(data["x"], dtype=float).astype(int)
    p = emit[:, x].T                                   # (T, K): B_{i, x_t}
    k = len(start)
    u, v, first, total = np.empty((len(x), k)), np.zeros((k, k)), [], 0.0
    for begin, end in _bounds(len(x), lengths):
        u_s, v_s, log_l = _forward_backward(p[begin:end], start, probs)
        u[begin:end] = u_s
        v += v_s
        first.append(u_s[0])
        total += log_l
    return u, v, np.array(first), total


def step(data, params, lengths=None):
    """One Baum-Welch iteration; returns new parameters in ``fit.params`` form."""
    emit = np.asarray(params["x"]["probs"], dtype=float)
    x = np.asarray(data["x"], dtype=float).astype(int)
    u, v, first, _ = posteriors(data, params, lengths)
    counts = u.T @ np.eye(emit.shape[1])[x]            # (K, M): sum_{t: x_t = m} u_t(i)
    return {
        "z": {"start": first.mean(axis=0), "probs": v / v.sum(axis=1, keepdims=True)},
        "x": {"probs": counts / counts.sum(axis=1, keepdims=True)},
    }


def loglik(data, params, lengths=None):
    return posteriors(data, params, lengths)[3]
