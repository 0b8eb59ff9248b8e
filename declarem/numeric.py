"""Small numeric routines shared by the derivation's checks and the EM loop (numpy only)."""

import numpy as np

#: Maps from an unconstrained value u to a parameter in each domain, and back.
TO_DOMAIN = {
    "real": lambda u: u,
    "positive": np.exp,
    "unit": lambda u: 1.0 / (1.0 + np.exp(-u)),
}
FROM_DOMAIN = {
    "real": lambda v: v,
    "positive": np.log,
    "unit": lambda v: np.log(v) - np.log1p(-v),
}


#: The longest step, in each unconstrained variable, that one Newton (or gradient) iteration takes. Far
#: from its optimum an objective's gradient can be large, and a full step would land where the
#: objective's floating-point value is no longer meaningful (log-gammas of 1e70 cancel to noise); a
#: factor of e**4 per iteration on a log scale still crosses any range in a few steps.
MAX_STEP = 4.0


def maximize_rows(objective, gradient, hessian, start, max_iter=100, tol=1e-12):
    """Maximise many independent smooth objectives at once by damped Newton steps.

    Each row is its own problem in a few unconstrained variables. A Newton step
    is taken where the Hessian is negative definite, a gradient step otherwise,
    no longer than ``MAX_STEP`` in any variable, and each step is halved until
    the objective does not fall, so every row ends at least as high as it
    started (EM stays monotone).

    Parameters
    ----------
    objective : callable
        ``objective(u, rows)`` with ``u`` of shape (m, n_vars), the values of
        the rows whose indices are ``rows`` (shape (m,)), returns (m,).
    gradient : callable
        ``gradient(u, rows)`` returns (m, n_vars).
    hessian : callable
        ``hessian(u, rows)`` returns (m, n_vars, n_vars).
    start : ndarray of shape (n_rows, n_vars)
    max_iter : int
    tol : float
        Stop when every row's step is below ``tol`` times (1 + |u|).

    Returns
    -------
    u : ndarray of shape (n_rows, n_vars)
    converged : ndarray of bool, shape (n_rows,)
    """
    u = np.array(start, dtype=float, copy=True)
    n_rows = u.shape[0]
    value = objective(u, np.arange(n_rows))
    active = np.isfinite(value)
    converged = np.zeros(n_rows, dtype=bool)
    for _ in range(max_iter):
        if not active.any():
            break
        rows = np.flatnonzero(active)
        g = gradient(u[rows], rows)
        h = hessian(u[rows], rows)
        step = _ascent_direction(g, h)
        longest = np.max(np.abs(step), axis=1, initial=0.0)
        step *= np.minimum(1.0, MAX_STEP / np.where(longest > 0, longest, 1.0))[:, None]
        current = value[rows]
        scale = np.ones(len(rows))
        accepted = np.zeros(len(rows), dtype=bool)
        for _ in range(60):
            trial = u[rows] + scale[:, None] * step
            trial_value = objective(trial, rows)
            ok = np.isfinite(trial_value) & (trial_value >= current - 1e-13 * np.abs(current)) & ~accepted
            u[rows[ok]] = trial[ok]
            value[rows[ok]] = trial_value[ok]
            accepted |= ok
            if accepted.all():
                break
            scale = np.where(accepted, scale, scale * 0.5)
        size = np.max(np.abs(scale[:, None] * step), axis=1)
        done = (size <= tol * (1.0 + np.max(np.abs(u[rows]), axis=1))) | ~accepted
        converged[rows[done & accepted]] = True
        converged[rows[~accepted]] = np.max(np.abs(g[~accepted]), axis=1) < 1e-8
        active[rows[done]] = False
    return u, converged


def _ascent_direction(gradient, hessian):
    """Newton direction where -H is positive definite, else the gradient."""
    n_rows = gradient.shape[0]
    direction = gradient.copy()
    try:
        chol = np.linalg.cholesky(-hessian)
    except np.linalg.LinAlgError:
        chol = None
    if chol is not None:
        try:
            return np.linalg.solve(-hessian, gradient[..., None])[..., 0]
        except np.linalg.LinAlgError:
            pass        # positive definite to Cholesky, singular to LU: go row by row
    for row in range(n_rows):
        try:
            np.linalg.cholesky(-hessian[row])
            direction[row] = np.linalg.solve(-hessian[row], gradient[row])
        except np.linalg.LinAlgError:
            continue    # not safely invertible: the gradient direction
    return direction


class NewtonProblem:
    """Independent maximisations, one per parameter set, in unconstrained coordinates.

    Every numeric M-step is one of these: a scalar family's parameters given the
    weighted means of its statistics, the free parameters given expected counts,
    a regression's coefficients and a non-exponential family's parameters given
    each row's posterior weight. What they share is here: the maps between
    parameters and unconstrained variables, starting points, ``maximize_rows``
    (damped Newton steps, none that lowers the objective) and the mapping back.

    Parameters
    ----------
    domains : sequence of str
        The domain each variable maps to (``real``, ``positive``, ``unit``).
    objective : callable
        ``objective(u, sets)`` with ``u`` of shape (m, n_vars) for the parameter
        sets ``sets`` (shape (m,)), returns (m,).
    gradient, hessian : callable
        Same arguments; return (m, n_vars) and (m, n_vars, n_vars).
    """

    def __init__(self, domains, objective, gradient, hessian):
        self.domains = list(domains)
        self.objective, self.gradient, self.hessian = objective, gradient, hessian

    def unconstrained(self, values):
        """Parameters (n_sets, n_vars) in their domains as unconstrained variables; non-finite ones at 0."""
        values = np.asarray(values, dtype=float).reshape(-1, len(self.domains))
        with np.errstate(all="ignore"):
            u = np.column_stack([FROM_DOMAIN[d](values[:, i]) for i, d in enumerate(self.domains)]) \
                if self.domains else np.zeros((len(values), 0))
        return np.where(np.isfinite(u), u, 0.0)

    def solve(self, start):
        """The maximising parameters (n_sets, n_vars), from ``start`` (parameters in their domains)."""
        u, _ = maximize_rows(self._quiet(self.objective), self._quiet(self.gradient), self._quiet(self.hessian),
                             self.unconstrained(start))
        return np.column_stack([TO_DOMAIN[d](u[:, i]) for i, d in enumerate(self.domains)]) \
            if self.domains else u

    @staticmethod
    def _quiet(function):
        # Trial points far from the optimum overflow; maximize_rows refuses their non-finite values.
        def call(u, sets):
            with np.errstate(all="ignore"):
                return function(u, sets)
        return call


def weighted_sum(weights, terms):
    """sum_r w_r t_r over the last axis, where rows without weight add nothing (not 0 * inf).

    Parameters
    ----------
    weights : ndarray of shape (m, n_rows)
    terms : ndarray broadcastable to (m, n_rows, ...) with the rows on axis 1

    Returns
    -------
    ndarray of shape (m, ...)
    """
    terms = np.asarray(terms)
    shaped = weights.reshape(weights.shape + (1,) * (terms.ndim - 2))
    with np.errstate(invalid="ignore"):
        return np.where(shaped > 0, shaped * terms, 0.0).sum(axis=1)
