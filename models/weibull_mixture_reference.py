"""Hand-coded EM for a finite mixture of Weibull distributions with free shapes.

The reference that declarem's generalised EM (a numeric M-step for a user family whose
log-density does not split into T(x) eta(theta)) is held against, for a spec with a latent
categorical ``z`` and an observed node ``x`` of the user family

    [families.weibull]
    logpdf = "log(k) - log(lam) + (k - 1)*(log(x) - log(lam)) - (x/lam)**k"
    support = "positive"
    params = { k = "positive", lam = "positive" }

fitted to the catalog's ``models/weibull_mixture.csv``:

    declarem compare SPEC --reference models/weibull_mixture_reference.py

It imports nothing from declarem. Node names are the module constants ``LATENT`` ("z") and
``OBSERVED`` ("x"); change them to fit a spec whose nodes are named otherwise.

Model: z in 0..K-1 with P(z = k) = pi_k (z.probs, shape (K,)), and x | z = k ~ Weibull(k_k, lam_k)
with shape k = x.k (K,) and scale lam = x.lam (K,), the log-density above.

E-step: w_jk = pi_k f(x_j; k_k, lam_k) / sum_l pi_l f(x_j; k_l, lam_l), in log space.
M-step: pi_k = sum_j w_jk / n; (k_k, lam_k) maximises the weighted log-likelihood

    Q(k, lam) = sum_j w_j [log k - k log lam + (k - 1) log x_j - (x_j / lam)^k]

exactly (to rounding), as declarem's M-step does. For fixed k the maximising scale is closed
form, lam^k = M(k) = sum_j w_j x_j^k / W (W = sum_j w_j), which leaves the profile

    Q(k) = W log k - W log M(k) + (k - 1) sum_j w_j log x_j - W
    dQ/dk   = W / k - W E_k[log x] + sum_j w_j log x_j
    d2Q/dk2 = -W / k^2 - W Var_k[log x]

with E_k and Var_k the mean and variance of log x under the weights w_j x_j^k (computed in log
space, so x^k never overflows). The profile is concave in k; Newton's method runs in t = log k
(so k stays positive), started from the previous k, the step halved while it would lower Q,
stopped when the step in log k (the relative step in k) is below ``NEWTON_RTOL`` or after
``NEWTON_MAX_ITERATIONS`` steps.

Besides the ``declarem compare`` interface:

    step(data, params) -> params            one EM iteration
    loglik(data, params) -> float           the observed-data log-likelihood
    direct_maximum(data, params)            scipy.optimize on the observed-data log-likelihood,
        -> (params, loglik)                 the independent check that an EM fixed point is the MLE
"""

import numpy as np
from scipy import optimize
from scipy.special import logsumexp

LATENT = "z"
OBSERVED = "x"

NEWTON_RTOL = 1e-13
NEWTON_MAX_ITERATIONS = 200
# A trial step is taken unless it lowers the objective by more than rounding can explain:
# close to the maximum, Newton's change in Q is below the precision Q is summed to.
ROUNDING = 1e-13
# The smallest fraction of a Newton step tried before the current k is declared the maximum.
SMALLEST_STEP = 2.0 ** -40
# The longest step tried in log k, a factor of e^4 (about 55) in k: far from the maximum a
# Newton step can be thousands of units long, and k = exp(...) would overflow before the
# halving could shorten it.
LONGEST_STEP = 4.0


def _unpack(params):
    probs = np.asarray(params[LATENT]["probs"], dtype=float)
    shape = np.asarray(params[OBSERVED]["k"], dtype=float)
    scale = np.asarray(params[OBSERVED]["lam"], dtype=float)
    return probs, shape, scale


def log_density(values, shape, scale):
    """The declared log-density, log f(x; k, lam), for every row and component.

    Parameters
    ----------
    values : ndarray of shape (n,)
        Positive reals.
    shape, scale : ndarray of shape (K,)
        k > 0 and lam > 0.

    Returns
    -------
    ndarray of shape (n, K)
    """
    log_ratio = np.log(values)[:, None] - np.log(scale)                    # log(x / lam)
    return np.log(shape) - np.log(scale) + (shape - 1.0) * log_ratio - np.exp(shape * log_ratio)


def log_joint(data, params):
    """log pi_k + log f(x_j; k_k, lam_k), shape (n, K)."""
    probs, shape, scale = _unpack(params)
    values = np.asarray(data[OBSERVED], dtype=float)
    return np.log(probs) + log_density(values, shape, scale)


def responsibilities(data, params):
    """P(z = k | x_j), shape (n, K)."""
    joint = log_joint(data, params)
    joint -= joint.max(axis=1, keepdims=True)
    resp = np.exp(joint)
    return resp / resp.sum(axis=1, keepdims=True)


def weighted_objective(values, weight, shape, scale):
    """Q(k, lam) = sum_j w_j log f(x_j; k, lam), the component's M-step objective.

    Parameters
    ----------
    values : ndarray of shape (n,)
    weight : ndarray of shape (n,)
        Non-negative weights.
    shape, scale : float

    Returns
    -------
    float
    """
    return float(weight @ log_density(values, np.array([shape]), np.array([scale]))[:, 0])


def _log_scale_power(log_values, weight, shape):
    """log M(k) = log(sum_j w_j x_j^k / W), and the tilted weights w_j x_j^k / sum_l w_l x_l^k.

    Parameters
    ----------
    log_values, weight : ndarray of shape (n,)
    shape : float

    Returns
    -------
    log_power_mean : float
    tilted : ndarray of shape (n,)
        Sums to 1.
    """
    exponent = shape * log_values
    positive = weight > 0
    log_weight = np.full_like(weight, -np.inf)
    log_weight[positive] = np.log(weight[positive])
    log_total = logsumexp(exponent + log_weight)
    tilted = np.exp(exponent + log_weight - log_total)
    return float(log_total - np.log(weight.sum())), tilted


def _profile(log_values, weight, log_shape):
    """The profile objective Q(k, lam(k)) and its first two derivatives in t = log k.

    Parameters
    ----------
    log_values, weight : ndarray of shape (n,)
        log x_j and the weights.
    log_shape : float
        t = log k.

    Returns
    -------
    value, gradient, hessian : float
    """
    shape = np.exp(log_shape)
    total = weight.sum()
    sum_log = float(weight @ log_values)
    log_power_mean, tilted = _log_scale_power(log_values, weight, shape)
    tilted_mean = float(tilted @ log_values)
    tilted_var = float(tilted @ (log_values - tilted_mean) ** 2)
    value = total * np.log(shape) - total * log_power_mean + (shape - 1.0) * sum_log - total
    d_shape = total / shape - total * tilted_mean + sum_log
    d2_shape = -total / shape ** 2 - total * tilted_var
    # Chain rule to t = log k: dQ/dt = k dQ/dk, d2Q/dt2 = k^2 d2Q/dk2 + k dQ/dk.
    return float(value), float(shape * d_shape), float(shape ** 2 * d2_shape + shape * d_shape)


def maximise_component(values, weight, start_shape):
    """The (k, lam) that maximise sum_j w_j log f(x_j; k, lam), by safeguarded Newton in log k.

    Parameters
    ----------
    values : ndarray of shape (n,)
        Positive reals.
    weight : ndarray of shape (n,)
        Non-negative weights (one component's responsibilities), not all zero.
    start_shape : float
        The previous k, where Newton starts.

    Returns
    -------
    shape, scale : float
        k and lam = M(k)^(1/k).
    """
    log_values = np.log(values)
    log_shape = float(np.log(start_shape))
    current, gradient, hessian = _profile(log_values, weight, log_shape)
    for _ in range(NEWTON_MAX_ITERATIONS):
        if hessian < 0:
            direction = -gradient / hessian
        else:
            # Q is concave in k but not always in log k: where the log-k curvature is not
            # negative, move one unit of log k uphill and let the halving shorten it.
            direction = float(np.sign(gradient))
        direction = float(np.clip(direction, -LONGEST_STEP, LONGEST_STEP))
        if abs(direction) < NEWTON_RTOL:
            log_shape += direction
            break
        length = 1.0
        while length >= SMALLEST_STEP:
            trial = _profile(log_values, weight, log_shape + length * direction)
            if trial[0] >= current - ROUNDING * (abs(current) + 1.0):
                break
            length /= 2
        else:
            # No fraction of the step raises Q beyond rounding: k is its maximum.
            break
        log_shape += length * direction
        current, gradient, hessian = trial
    shape = float(np.exp(log_shape))
    log_power_mean, _ = _log_scale_power(log_values, weight, shape)
    return shape, float(np.exp(log_power_mean / shape))


def step(data, params):
    """One EM iteration.

    Parameters
    ----------
    data : mapping of str to array
        ``data[OBSERVED]`` of shape (n,), positive reals.
    params : dict
        ``{LATENT: {"probs": (K,)}, OBSERVED: {"k": (K,), "lam": (K,)}}``.

    Returns
    -------
    dict
        The updated parameters in the same form.
    """
    _, shape, _ = _unpack(params)
    values = np.asarray(data[OBSERVED], dtype=float)
    resp = responsibilities(data, params)
    new_shape = np.empty_like(shape)
    new_scale = np.empty_like(shape)
    for k in range(resp.shape[1]):
        new_shape[k], new_scale[k] = maximise_component(values, resp[:, k], shape[k])
    return {LATENT: {"probs": resp.sum(axis=0) / len(values)},
            OBSERVED: {"k": new_shape, "lam": new_scale}}


def loglik(data, params):
    """The observed-data log-likelihood, sum_j log sum_k pi_k f(x_j; k_k, lam_k)."""
    joint = log_joint(data, params)
    top = joint.max(axis=1, keepdims=True)
    return float((top[:, 0] + np.log(np.exp(joint - top).sum(axis=1))).sum())


def _to_unconstrained(params):
    """(logits of pi against the last component, log k, log lam), shape (3K - 1,)."""
    probs, shape, scale = _unpack(params)
    logits = np.log(probs[:-1]) - np.log(probs[-1])
    return np.concatenate([logits, np.log(shape), np.log(scale)])


def _from_unconstrained(theta, n_components):
    logits = np.append(theta[:n_components - 1], 0.0)
    probs = np.exp(logits - logsumexp(logits))
    shape = np.exp(theta[n_components - 1:2 * n_components - 1])
    scale = np.exp(theta[2 * n_components - 1:])
    return {LATENT: {"probs": probs}, OBSERVED: {"k": shape, "lam": scale}}


def direct_maximum(data, params, gtol=1e-11):
    """Maximise the observed-data log-likelihood directly with scipy.optimize.

    The independent check of an EM fixed point: no E-step, no M-step, only the mixture
    log-likelihood and its gradient (by the score of each component weighted by the posterior,
    Fisher's identity) in unconstrained coordinates, the logits of the mixing weights against
    the last component, log k and log lam, maximised by BFGS from ``params``.

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
    values = np.asarray(data[OBSERVED], dtype=float)
    n_rows = len(values)
    n_components = len(params[LATENT]["probs"])

    def negative_mean_loglik_and_gradient(theta):
        current = _from_unconstrained(theta, n_components)
        probs, shape, scale = _unpack(current)
        joint = np.log(probs) + log_density(values, shape, scale)              # (n, K)
        row_loglik = logsumexp(joint, axis=1)
        posterior = np.exp(joint - row_loglik[:, None])
        # Scores of log f in the unconstrained coordinates, per row and component:
        # with u = log(x / lam), log f = log k - log lam + (k - 1) u - exp(k u).
        log_ratio = np.log(values)[:, None] - np.log(scale)
        power = np.exp(shape * log_ratio)
        score_log_shape = 1.0 + shape * log_ratio * (1.0 - power)
        score_log_scale = -shape * (1.0 - power)
        gradient = np.concatenate([
            (posterior.sum(axis=0) - n_rows * probs)[:-1],
            (posterior * score_log_shape).sum(axis=0),
            (posterior * score_log_scale).sum(axis=0),
        ])
        return -float(row_loglik.sum()) / n_rows, -gradient / n_rows

    found = optimize.minimize(negative_mean_loglik_and_gradient, _to_unconstrained(params), jac=True,
                              method="BFGS", options={"gtol": gtol, "maxiter": 10000})
    best = _from_unconstrained(found.x, n_components)
    return best, loglik(data, best)
