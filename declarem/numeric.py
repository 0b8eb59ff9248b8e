"""Small numeric routines shared by the derivation's checks and the EM loop (numpy only)."""

import math

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


def maximize_rows(objective, derivatives, start, max_iter=100, tol=1e-12):
    """Maximise many independent smooth objectives at once by damped Newton steps.

    Each row is its own problem in a few unconstrained variables. A Newton step
    is taken where the Hessian is negative definite, a gradient step otherwise,
    no longer than ``MAX_STEP`` in any variable, and each step is halved until
    the objective does not fall, so every row ends at least as high as it
    started (EM stays monotone). A full step's trial point is evaluated with its
    derivatives, which the next iteration uses when the step is taken: one
    evaluation per iteration unless a step is halved. A row's last step, a
    Newton step below sqrt(tol) or any step below tol, is taken unevaluated
    (``_newton_step`` says why that is safe): a warm-started row near its
    optimum costs one evaluation in all.

    Parameters
    ----------
    objective : callable
        ``objective(u, rows)`` with ``u`` of shape (m, n_vars), the values of
        the rows whose indices are ``rows`` (shape (m,), increasing: all m
        rows in order when m is n_rows), returns (m,).
    derivatives : callable
        ``derivatives(u, rows)`` returns the objective (m,), its gradient
        (m, n_vars) and Hessian (m, n_vars, n_vars).
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
    # The whole-array steps below only read the derivatives; the per-row loop writes into its own copies.
    value, gradient, hessian = (np.asarray(a, dtype=float) for a in derivatives(u, np.arange(n_rows)))
    converged = np.zeros(n_rows, dtype=bool)
    rows = np.flatnonzero(np.isfinite(value))               # the rows still moving
    first = pending = None
    iterations = 0
    while len(rows) == n_rows and iterations < max_iter:
        # Every row still moving (a warm start, as at every M-step after the first): whole-array Newton
        # steps while each row takes its full step, without the per-row bookkeeping below. The same
        # arithmetic as the loop below, so the same result to the bit.
        first = _newton_step(u, gradient, hessian, tol)
        step, settled = first
        if settled.all():
            return u + step, settled
        if settled.any():
            break
        trial = u + step
        pending = derivatives(trial, rows)
        trial_value = pending[0]
        if not (np.isfinite(trial_value) & (trial_value >= value - 1e-13 * np.abs(value))).all():
            break               # a step to halve: the loop below takes it from the evaluation done here
        iterations += 1
        u = trial
        value, gradient, hessian = (np.asarray(a, dtype=float) for a in pending)
        first = pending = None
        done = np.abs(step).max(axis=1) <= tol * (1.0 + np.abs(u).max(axis=1))
        if done.any():
            converged[done] = True
            rows = rows[~done]
    value, gradient, hessian = (np.array(a, dtype=float) for a in (value, gradient, hessian))
    current_derivatives = np.ones(n_rows, dtype=bool)      # gradient and hessian are at u
    for _ in range(iterations, max_iter):
        if not len(rows):
            break
        g = gradient[rows]
        if first is None:
            step, settled = _newton_step(u[rows], g, hessian[rows], tol)
        else:
            (step, settled), first = first, None       # every row's, worked out above
        if settled.all():
            u[rows] += step
            converged[rows] = True
            break
        if settled.any():
            u[rows[settled]] += step[settled]
            converged[rows[settled]] = True
            rows, g, step = rows[~settled], g[~settled], step[~settled]
        current = value[rows]
        scale = np.ones(len(rows))
        accepted = np.zeros(len(rows), dtype=bool)
        for halving in range(60):
            trial = u[rows] + scale[:, None] * step
            if halving == 0:
                trial_value, trial_gradient, trial_hessian = derivatives(trial, rows) if pending is None else pending
                pending = None
            else:
                trial_value = objective(trial, rows)
            ok = np.isfinite(trial_value) & (trial_value >= current - 1e-13 * np.abs(current)) & ~accepted
            u[rows[ok]] = trial[ok]
            value[rows[ok]] = trial_value[ok]
            if halving == 0:
                gradient[rows[ok]], hessian[rows[ok]] = trial_gradient[ok], trial_hessian[ok]
            else:
                current_derivatives[rows[ok]] = False
            accepted |= ok
            if accepted.all():
                break
            scale = np.where(accepted, scale, scale * 0.5)
        size = np.abs(scale[:, None] * step).max(axis=1)
        done = (size <= tol * (1.0 + np.abs(u[rows]).max(axis=1))) | ~accepted
        converged[rows[done & accepted]] = True
        if not accepted.all():
            converged[rows[~accepted]] = np.abs(g[~accepted]).max(axis=1) < 1e-8
        rows = rows[~done]
        stale = rows[~current_derivatives[rows]]
        if len(stale):
            _, gradient[stale], hessian[stale] = derivatives(u[stale], stale)
            current_derivatives[stale] = True
    return u, converged


def _newton_step(u, gradient, hessian, tol):
    """Each row's step from ``u`` (m, n_vars), and whether taking it unevaluated settles the row.

    The step is Newton's where -H is positive definite, else the gradient, no longer than
    ``MAX_STEP`` in any variable. A step below tol changes nothing that matters. Newton
    converges quadratically: after a full Newton step of size s the error is of order s**2,
    so a step below sqrt(tol) leaves the row within about tol, and on a concave objective so short
    a step raises it (its quadratic model's rise dwarfs the cubic rest). Such steps are taken
    without evaluating the objective where they land, and the row is done.

    Returns
    -------
    step : ndarray of shape (m, n_vars)
    settled : ndarray of bool, shape (m,)
    """
    step, newton = _ascent_direction(gradient, hessian)
    if step.shape[1] == 1:
        # One variable (a scalar family's numeric parameter): the same values without the reductions.
        longest, scale = np.abs(step[:, 0]), 1.0 + np.abs(u[:, 0])
    else:
        longest = np.maximum.reduce(np.abs(step), axis=1, initial=0.0)
        scale = 1.0 + np.maximum.reduce(np.abs(u), axis=1, initial=0.0)
    limited = longest > MAX_STEP
    threshold = math.sqrt(tol) if newton is True else np.where(newton, math.sqrt(tol), tol)
    if not limited.any():
        return step, longest <= threshold * scale
    step[limited] *= (MAX_STEP / longest[limited])[:, None]
    return step, ~limited & (longest <= threshold * scale)


def _ascent_direction(gradient, hessian):
    """Newton direction where -H is positive definite, else the gradient.

    Returns
    -------
    direction : ndarray of shape (m, n_vars)
    newton : ndarray of bool, shape (m,), or True
        Whether each row's direction is Newton's; True when every row's is.
    """
    n_rows = gradient.shape[0]
    if gradient.shape[1] == 1:
        # One variable: -H is positive definite where H < 0, and the Newton step is -g / H.
        curvature = hessian[:, 0, :]
        newton = curvature[:, 0] < 0
        if newton.all():
            return gradient / -curvature, True
        direction = gradient.copy()
        np.divide(gradient, -curvature, out=direction, where=newton[:, None])
        return direction, newton
    direction = gradient.copy()
    try:
        chol = np.linalg.cholesky(-hessian)
    except np.linalg.LinAlgError:
        chol = None
    if chol is not None:
        try:
            return np.linalg.solve(-hessian, gradient[..., None])[..., 0], True
        except np.linalg.LinAlgError:
            pass        # positive definite to Cholesky, singular to LU: go row by row
    newton = np.zeros(n_rows, dtype=bool)
    for row in range(n_rows):
        try:
            np.linalg.cholesky(-hessian[row])
            direction[row] = np.linalg.solve(-hessian[row], gradient[row])
            newton[row] = True
        except np.linalg.LinAlgError:
            continue    # not safely invertible: the gradient direction
    return direction, newton


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
    derivatives : callable
        Same arguments; returns the objective (m,), its gradient (m, n_vars) and
        its Hessian (m, n_vars, n_vars), computed together (they share most of
        their work).
    """

    def __init__(self, domains, objective, derivatives):
        self.domains = list(domains)
        self.objective, self.derivatives = objective, derivatives

    def unconstrained(self, values):
        """Parameters (n_sets, n_vars) in their domains as unconstrained variables; non-finite ones at 0."""
        values = np.asarray(values, dtype=float).reshape(-1, len(self.domains))
        with np.errstate(all="ignore"):
            u = _columns([FROM_DOMAIN[d](values[:, i]) for i, d in enumerate(self.domains)], len(values))
        return np.where(np.isfinite(u), u, 0.0)

    def solve(self, start):
        """The maximising parameters (n_sets, n_vars), from ``start`` (parameters in their domains)."""
        # Trial points far from the optimum overflow; maximize_rows refuses their non-finite values.
        with np.errstate(all="ignore"):
            u, _ = maximize_rows(self.objective, self.derivatives, self.unconstrained(start))
        return _columns([TO_DOMAIN[d](u[:, i]) for i, d in enumerate(self.domains)], len(u)) if self.domains else u


def _columns(arrays, n_rows):
    """Columns (n_rows,) side by side, (n_rows, len(arrays)) (one column without column_stack's overhead)."""
    if len(arrays) == 1:
        return np.asarray(arrays[0], dtype=float).reshape(n_rows, 1)
    return np.column_stack(arrays) if arrays else np.zeros((n_rows, 0))


def weighted_sum(weights, terms, axis=1, all_positive=False):
    """sum_r w_r t_r over the rows, where rows without weight add nothing (not 0 * inf).

    Parameters
    ----------
    weights : ndarray of shape (m, n_rows)
        Or any shape that broadcasts against ``terms`` with the rows on ``axis``.
    terms : ndarray broadcastable to (m, n_rows, ...) with the rows on ``axis``
    axis : int
        The rows' axis of ``terms``; with the default 1, ``weights`` (m, n_rows) is
        extended over the trailing axes.
    all_positive : bool
        The caller knows every weight is positive: no row needs the guard (the same sums).

    Returns
    -------
    ndarray: ``terms``' shape without ``axis``
    """
    terms = np.asarray(terms)
    shaped = weights.reshape(weights.shape + (1,) * (terms.ndim - 2)) if axis == 1 else weights
    if all_positive:
        return (shaped * terms).sum(axis=axis)
    with np.errstate(invalid="ignore"):
        return np.where(shaped > 0, shaped * terms, 0.0).sum(axis=axis)
