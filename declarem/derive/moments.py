"""Expected sufficient statistics of a scalar family at given parameters, by quadrature.

These are the checks' ground truth: at t = E_theta0[T], the M-step must return
theta0 (moment matching), whatever route solved it.
"""

import warnings

import numpy as np
import sympy

from .lambdify import to_numpy

_INTERVALS = {"real": (-np.inf, np.inf), "positive": (0.0, np.inf), "nonnegative": (0.0, np.inf),
              "unit": (0.0, 1.0)}
_FIRST_INTEGER = {"nonnegative-integer": 0, "positive-integer": 1, "binary": 0}
MAX_TERMS = 20000


def expected_statistics(form, support, values, upper=None):
    """E[T(x)] under the family at the given parameter values, and the total mass.

    Parameters
    ----------
    form : ExpFamForm
    support : str
    values : mapping of sympy.Symbol to float
        The parameter values.
    upper : int or None
        The largest value of a bounded discrete support.

    Returns
    -------
    moments : ndarray of shape (n_statistics,)
    mass : float
        The density's integral (or the mass function's sum) over the support:
        1 for a normalised declaration.
    """
    density = form.logpdf.subs(values)
    log_density = to_numpy([form.x], density)
    stats = [to_numpy([form.x], t) for t in form.statistics]
    # A declaration that is not normalised (or overflows) shows as a mass other than 1, which the
    # caller reports; the integrator's own warnings would only repeat it, less clearly.
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return _moments(log_density, stats, support, upper)


def _moments(log_density, stats, support, upper):
    import scipy.integrate  # only derivations check moments; a cached model never imports it
    if support in _INTERVALS:
        low, high = _INTERVALS[support]
        mass = scipy.integrate.quad(lambda v: np.exp(log_density(v)), low, high, limit=200)[0]
        if not (np.isfinite(mass) and mass > 0):
            return np.full(len(stats), np.nan), mass
        moments = np.array([scipy.integrate.quad(lambda v, s=s: s(v) * np.exp(log_density(v)),
                                                 low, high, limit=200)[0] / mass for s in stats])
        return moments, mass
    if support == "integer":
        grid = np.arange(-MAX_TERMS, MAX_TERMS + 1, dtype=float)
    else:
        first = _FIRST_INTEGER[support]
        last = 1 if support == "binary" else (upper if upper is not None else first + MAX_TERMS)
        grid = np.arange(first, last + 1, dtype=float)
    weights = np.exp(np.broadcast_to(log_density(grid), grid.shape))
    weights = np.where(np.isfinite(weights), weights, 0.0)
    mass = weights.sum()
    if not mass > 0:
        return np.full(len(stats), np.nan), mass
    moments = np.array([np.sum(np.broadcast_to(s(grid), grid.shape) * weights) for s in stats]) / mass
    return moments, mass


def is_positive_statistic(form, statistic):
    """Whether a statistic is positive on the whole support (so its mean is too)."""
    return bool(statistic.subs(form.x, sympy.Symbol("xpos", positive=True)).is_positive) and \
        bool(statistic.is_positive)
