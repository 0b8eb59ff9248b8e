"""Hand-coded EM for a finite mixture of negative binomial distributions with unknown dispersion.

The reference that declarem's generalised EM (a numeric M-step for a user family whose
log-density does not split into T(x) eta(theta)) is held against, for a spec with a latent
categorical ``z`` and an observed count node ``count`` of the user family

    [families.negbin]
    logpdf = "lgamma(x + r) - lgamma(r) - lgamma(x + 1) + r*log(1 - p) + x*log(p)"
    support = "nonnegative-integer"
    params = { r = "positive", p = "unit" }

(mean r p / (1 - p), variance mean / (1 - p)), fitted to the catalog's ``models/randhie_mdvis.csv``:

    declarem compare SPEC --reference models/negbin_mixture_reference.py

It imports nothing from declarem. Node names are the module constants ``LATENT`` ("z") and
``OBSERVED`` ("count"); change them to fit a spec whose nodes are named otherwise.

Model: z in 0..K-1 with P(z = k) = pi_k (z.probs, shape (K,)), and count | z = k ~ NB(r_k, p_k)
with r = count.r (K,) and p = count.p (K,), the log-density above.

E-step: w_jk = pi_k NB(x_j; r_k, p_k) / sum_l pi_l NB(x_j; r_l, p_l), in log space.
M-step: pi_k = sum_j w_jk / n; (r_k, p_k) maximises the weighted log-likelihood

    Q_k(r, p) = sum_j w_jk [lgamma(x_j + r) - lgamma(r) + r log(1 - p) + x_j log p]

exactly (to rounding), as declarem's M-step does. For fixed r the maximising p is closed form,
p = xbar / (r + xbar) with xbar = sum_j w_jk x_j / sum_j w_jk, so Q_k is maximised over the
profile Q_k(r, p(r)) by Newton's method in t = log r, with the analytic derivatives

    dQ/dr   = sum_j w_j psi(x_j + r) - W psi(r) + W log(r / (r + xbar))
    d2Q/dr2 = sum_j w_j psi'(x_j + r) - W psi'(r) + W (1/r - 1/(r + xbar))

(W = sum_j w_j; the p-derivative vanishes on the profile, so dQ/dr is the partial derivative),
started from the previous r_k, the step halved while it would lower Q_k, stopped when the step
in log r (the relative step in r) is below ``NEWTON_RTOL`` or after ``NEWTON_MAX_ITERATIONS``
steps. Rows with equal counts are grouped (their weights summed) before the Newton loop, so a
step costs one digamma per distinct count, not per row.

A component whose weighted variance does not exceed its weighted mean has no finite maximiser:
Q_k rises towards the Poisson limit r -> infinity, and the Newton loop stops at its iteration
limit with a large r. The catalog data is overdispersed in every component.

Besides the ``declarem compare`` interface:

    step(data, params) -> params            one EM iteration
    loglik(data, params) -> float           the observed-data log-likelihood
    direct_maximum(data, params)            scipy.optimize on the observed-data log-likelihood,
        -> (params, loglik)                 the independent check that an EM fixed point is the MLE
    moments_estimate(counts) -> (r, p)      one-component method of moments (hmmlearn PR #583)
"""

import numpy as np
from scipy import optimize
from scipy.special import digamma, expit, gammaln, logsumexp, polygamma

LATENT = "z"
OBSERVED = "count"

NEWTON_RTOL = 1e-13
NEWTON_MAX_ITERATIONS = 200
# A trial step is taken unless it lowers the objective by more than rounding can explain:
# close to the maximum, Newton's change in Q_k is below the precision Q_k is summed to.
ROUNDING = 1e-13
# The smallest fraction of a Newton step tried before the current r is declared the maximum.
SMALLEST_STEP = 2.0 ** -40
# The longest step tried in log r, a factor of e^4 (about 55) in r: far from the maximum a
# Newton step can be thousands of units long, and r = exp(...) would overflow before the
# halving could shorten it.
LONGEST_STEP = 4.0


def _unpack(params):
    probs = np.asarray(params[LATENT]["probs"], dtype=float)
    size = np.asarray(params[OBSERVED]["r"], dtype=float)
    prob = np.asarray(params[OBSERVED]["p"], dtype=float)
    return probs, size, prob


def log_density(counts, size, prob):
    """The declared log-density, log NB(x; r, p), for every row and component.

    Parameters
    ----------
    counts : ndarray of shape (n,)
        Non-negative integers (as floats).
    size, prob : ndarray of shape (K,)
        r > 0 and p in (0, 1).

    Returns
    -------
    ndarray of shape (n, K)
    """
    x = counts[:, None]
    return (gammaln(x + size) - gammaln(size) - gammaln(x + 1.0)
            + size * np.log1p(-prob) + x * np.log(prob))


def log_joint(data, params):
    """log pi_k + log NB(x_j; r_k, p_k), shape (n, K)."""
    probs, size, prob = _unpack(params)
    counts = np.asarray(data[OBSERVED], dtype=float)
    return np.log(probs) + log_density(counts, size, prob)


def responsibilities(data, params):
    """P(z = k | x_j), shape (n, K)."""
    joint = log_joint(data, params)
    joint -= joint.max(axis=1, keepdims=True)
    resp = np.exp(joint)
    return resp / resp.sum(axis=1, keepdims=True)


def weighted_objective(values, weight, size, prob):
    """Q(r, p) = sum_j w_j log NB(x_j; r, p), the component's M-step objective.

    Parameters
    ----------
    values : ndarray of shape (m,)
        Counts (distinct or not).
    weight : ndarray of shape (m,)
        Non-negative weights of the counts.
    size, prob : float
        r > 0 and p in (0, 1).

    Returns
    -------
    float
    """
    return float(weight @ log_density(values, np.array([size]), np.array([prob]))[:, 0])


def _profile(values, weight, log_size):
    """The profile objective Q(r, p(r)) up to a constant, and its first two derivatives in log r.

    Parameters
    ----------
    values, weight : ndarray of shape (m,)
        Distinct counts and their summed weights.
    log_size : float
        t = log r.

    Returns
    -------
    value, gradient, hessian : float
        Q, dQ/dt and d2Q/dt2 at t, with p = xbar / (r + xbar).
    """
    size = np.exp(log_size)
    total = weight.sum()
    mean = weight @ values / total
    # log(1 - p) = log(r / (r + xbar)) and log p = log(xbar / (r + xbar)), written without p
    # so that neither rounds when p is near 0 or 1.
    log_fail = -np.log1p(mean / size)
    log_success = np.log(mean) - np.log(size + mean) if mean > 0 else -np.inf
    value = float(weight @ (gammaln(values + size) - gammaln(size)) + total * size * log_fail
                  + (total * mean * log_success if mean > 0 else 0.0))
    d_size = float(weight @ digamma(values + size) - total * digamma(size) + total * log_fail)
    d2_size = float(weight @ polygamma(1, values + size) - total * polygamma(1, size)
                    + total * (1.0 / size - 1.0 / (size + mean)))
    # Chain rule to t = log r: dQ/dt = r dQ/dr, d2Q/dt2 = r^2 d2Q/dr2 + r dQ/dr.
    return value, size * d_size, size * size * d2_size + size * d_size


def maximise_component(counts, weight, start_size):
    """The (r, p) that maximise sum_j w_j log NB(x_j; r, p), by safeguarded Newton in log r.

    Parameters
    ----------
    counts : ndarray of shape (n,)
        Non-negative integer counts.
    weight : ndarray of shape (n,)
        Non-negative weights (one component's responsibilities), not all zero.
    start_size : float
        The previous r, where Newton starts.

    Returns
    -------
    size, prob : float
        r and p = xbar / (r + xbar).
    """
    values, inverse = np.unique(counts, return_inverse=True)
    grouped = np.bincount(inverse, weights=weight, minlength=len(values))
    mean = grouped @ values / grouped.sum()
    log_size = float(np.log(start_size))
    current, gradient, hessian = _profile(values, grouped, log_size)
    for _ in range(NEWTON_MAX_ITERATIONS):
        if hessian < 0:
            direction = -gradient / hessian
        else:
            # Where the profile is not concave Newton's step points the wrong way: move one
            # unit of log r uphill instead and let the halving shorten it.
            direction = float(np.sign(gradient))
        direction = float(np.clip(direction, -LONGEST_STEP, LONGEST_STEP))
        if abs(direction) < NEWTON_RTOL:
            log_size += direction
            break
        length = 1.0
        while length >= SMALLEST_STEP:
            trial = _profile(values, grouped, log_size + length * direction)
            if trial[0] >= current - ROUNDING * (abs(current) + 1.0):
                break
            length /= 2
        else:
            # No fraction of the step raises Q beyond rounding: r is its maximum.
            break
        log_size += length * direction
        current, gradient, hessian = trial
    size = float(np.exp(log_size))
    return size, float(mean / (size + mean))


def step(data, params):
    """One EM iteration.

    Parameters
    ----------
    data : mapping of str to array
        ``data[OBSERVED]`` of shape (n,), non-negative integer counts.
    params : dict
        ``{LATENT: {"probs": (K,)}, OBSERVED: {"r": (K,), "p": (K,)}}``.

    Returns
    -------
    dict
        The updated parameters in the same form.
    """
    _, size, _ = _unpack(params)
    counts = np.asarray(data[OBSERVED], dtype=float)
    resp = responsibilities(data, params)
    new_size = np.empty_like(size)
    new_prob = np.empty_like(size)
    for k in range(resp.shape[1]):
        new_size[k], new_prob[k] = maximise_component(counts, resp[:, k], size[k])
    return {LATENT: {"probs": resp.sum(axis=0) / len(counts)},
            OBSERVED: {"r": new_size, "p": new_prob}}


def loglik(data, params):
    """The observed-data log-likelihood, sum_j log sum_k pi_k NB(x_j; r_k, p_k)."""
    joint = log_joint(data, params)
    top = joint.max(axis=1, keepdims=True)
    return float((top[:, 0] + np.log(np.exp(joint - top).sum(axis=1))).sum())


def _to_unconstrained(params):
    """(logits of pi against the last component, log r, logit p), shape (3K - 1,)."""
    probs, size, prob = _unpack(params)
    logits = np.log(probs[:-1]) - np.log(probs[-1])
    return np.concatenate([logits, np.log(size), np.log(prob) - np.log1p(-prob)])


def _from_unconstrained(theta, n_components):
    logits = np.append(theta[:n_components - 1], 0.0)
    probs = np.exp(logits - logsumexp(logits))
    size = np.exp(theta[n_components - 1:2 * n_components - 1])
    prob = expit(theta[2 * n_components - 1:])
    return {LATENT: {"probs": probs}, OBSERVED: {"r": size, "p": prob}}


def direct_maximum(data, params, gtol=1e-11):
    """Maximise the observed-data log-likelihood directly with scipy.optimize.

    The independent check of an EM fixed point: no E-step, no M-step, only the mixture
    log-likelihood and its gradient (by the score of each component weighted by the posterior,
    Fisher's identity) in unconstrained coordinates, the logits of the mixing weights against
    the last component, log r and logit p, maximised by BFGS from ``params``.

    Parameters
    ----------
    data : mapping of str to array
        ``data[OBSERVED]`` of shape (n,).
    params : dict
        The start, in ``fit.params`` form.
    gtol : float
        BFGS's tolerance on the gradient of the mean log-likelihood per row.

    Returns
    -------
    params : dict
        The maximiser found, in ``fit.params`` form.
    loglik : float
        The observed-data log-likelihood there.
    """
    counts = np.asarray(data[OBSERVED], dtype=float)
    values, multiplicity = np.unique(counts, return_counts=True)
    n_rows = len(counts)
    n_components = len(params[LATENT]["probs"])

    def negative_mean_loglik_and_gradient(theta):
        current = _from_unconstrained(theta, n_components)
        probs, size, prob = _unpack(current)
        joint = np.log(probs) + log_density(values, size, prob)              # (m, K)
        row_loglik = logsumexp(joint, axis=1)
        posterior = multiplicity[:, None] * np.exp(joint - row_loglik[:, None])   # (m, K)
        mass = posterior.sum(axis=0)
        # Scores of log NB in the unconstrained coordinates, per distinct count and component.
        score_log_size = size * (digamma(values[:, None] + size) - digamma(size) + np.log1p(-prob))
        score_logit_prob = values[:, None] * (1.0 - prob) - size * prob
        gradient = np.concatenate([
            (mass - n_rows * probs)[:-1],
            (posterior * score_log_size).sum(axis=0),
            (posterior * score_logit_prob).sum(axis=0),
        ])
        return -float(multiplicity @ row_loglik) / n_rows, -gradient / n_rows

    found = optimize.minimize(negative_mean_loglik_and_gradient, _to_unconstrained(params), jac=True,
                              method="BFGS", options={"gtol": gtol, "maxiter": 10000})
    best = _from_unconstrained(found.x, n_components)
    return best, loglik(data, best)


def moments_estimate(counts):
    """The method-of-moments (r, p) of a single negative binomial.

    Matches the mean r p / (1 - p) and variance mean / (1 - p) to the sample's: r = mean^2 /
    (var - mean) and p = 1 - mean / var, with the plain (divide-by-n) variance, as hmmlearn's
    PR #583 estimates a state's dispersion from posterior-weighted moments.

    Parameters
    ----------
    counts : array_like of shape (n,)
        Non-negative integer counts, overdispersed (variance above the mean).

    Returns
    -------
    size, prob : float
        r and p.
    """
    counts = np.asarray(counts, dtype=float)
    mean = counts.mean()
    variance = counts.var()
    if not variance > mean:
        raise ValueError(f"the counts are not overdispersed (mean {mean:.6g}, variance {variance:.6g}): "
                         "the method of moments has no negative binomial with r > 0")
    return float(mean ** 2 / (variance - mean)), float(1.0 - mean / variance)
