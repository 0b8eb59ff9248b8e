"""Watching an EM run: the objective and parameters per iteration, convergence, falls."""

import math
import warnings
from typing import NamedTuple

import numpy as np

from .params import params_vector

#: A fall of the objective larger than this (relative) is reported as a warning.
FALL_TOLERANCE = 1e-10

#: SQUAREM cycles whose slowest EM rate estimates the distance left.
RATE_CYCLES = 5

#: A relative parameter step this small is rounding, not movement.
ROUNDING_STEP = 64 * np.finfo(float).eps


class ConvergenceMonitor:
    """Records the objective, decides convergence, and warns when the objective falls.

    EM converges linearly, and on a flat ridge it moves by tiny steps while
    still far from the optimum; a small change of the objective alone does not
    mean it has arrived. So convergence asks for two things: the objective's
    relative change below ``tol``, and the parameters' estimated remaining
    distance to the fixed point (the last step times r / (1 - r), with r the
    ratio of the last two steps, Aitken's estimate for a linear rate) below
    sqrt(tol), the precision in the parameters that a relative tolerance of tol
    in a locally quadratic objective corresponds to. Under SQUAREM the estimate
    comes from each cycle's plain EM steps (``em_steps``), not from its jumps.

    Parameters
    ----------
    tol : float
        Tolerance on the objective's relative change; with tol = 0 never converged.
    falls : bool
        Whether a fall of the objective is a sign of trouble (not for online EM, whose
        steps are noisy by design).
    fall_tolerance : float
        A relative fall up to this is rounding (larger for an objective summed from
        float32 products, ``EnumerationEngine.fall_tolerance``).
    """

    def __init__(self, tol, falls=True, fall_tolerance=FALL_TOLERANCE):
        self.tol = tol
        self.falls = falls
        self.fall_tolerance = fall_tolerance
        self.history = []
        self._previous = None
        self._steps = []
        self._cycles = []

    def record(self, objective, params=None, em_steps=None):
        """Add the objective (and parameters) after an iteration; return the objective's change.

        ``em_steps``: the parameter vectors of two plain EM steps taken in the iteration
        (theta0, theta1, theta2), whose steps estimate the remaining distance instead of
        the step between recorded parameters (SQUAREM's jumps are not EM's linear steps).
        """
        previous = self.history[-1] if self.history else None
        self.history.append(float(objective))
        if em_steps is not None:
            self._cycles.append(tuple(relative_step(before, after) for before, after in zip(em_steps, em_steps[1:])))
        if params is not None and em_steps is None:
            vector = params_vector(params)
            if self._previous is not None and self._previous.shape == vector.shape:
                self._steps.append(relative_step(self._previous, vector))
            self._previous = vector
        if previous is None:
            return math.nan
        change = objective - previous
        if self.falls and change < -self.fall_tolerance * max(abs(previous), 1.0):
            warnings.warn(f"EM objective fell from {previous!r} to {objective!r} at iteration "
                          f"{len(self.history) - 1}: a bug or numerical inaccuracy (with reg_covar > 0 "
                          "small falls can occur)", RuntimeWarning, stacklevel=3)
        return change

    def iteration(self, n_iter, objective, progress, params=None, em_steps=None):
        """Record the state after iteration ``n_iter``, report progress; return whether converged."""
        change = self.record(objective, params, em_steps)
        if progress is not None:
            progress(n_iter, objective, change)
        return self.converged

    @property
    def remaining_distance(self):
        """Estimated distance of the parameters from the fixed point (relative, max norm); inf if unknown."""
        if self._cycles:
            return self._distance_from_cycles()
        if not self._steps:
            return math.inf
        last = self._steps[-1]
        if last <= ROUNDING_STEP:
            # The parameters moved by rounding only (an M-step solved to machine precision lands a few
            # units in the last place from where it landed before): they are at the fixed point.
            return 0.0
        if len(self._steps) < 2 or not self._steps[-2] > 0:
            return math.inf
        rate = last / self._steps[-2]
        return last * rate / (1.0 - rate) if rate < 1.0 else math.inf

    def _distance_from_cycles(self):
        """The distance left after SQUAREM cycles, from their plain EM steps.

        After each extrapolation EM's fast-decaying directions move first, so one cycle's
        two steps can shrink quickly while the slow direction has far to go: the rate
        taken is the slowest of the last ``RATE_CYCLES`` cycles'.
        """
        first, second = self._cycles[-1]
        if second <= ROUNDING_STEP:
            return 0.0
        rates = [b / a if a > 0 else math.inf for a, b in self._cycles[-RATE_CYCLES:]]
        rate = max(rates)
        return second * rate / (1.0 - rate) if rate < 1.0 else math.inf

    @property
    def converged(self):
        if len(self.history) < 2:
            return False
        change = self.history[-1] - self.history[-2]
        if not abs(change) < self.tol * abs(self.history[-1]):
            return False
        return not (self._steps or self._cycles) or self.remaining_distance < math.sqrt(self.tol)


def relative_step(before, after):
    """The largest change between two parameter vectors, relative to each value (at least 1)."""
    with np.errstate(invalid="ignore"):
        change = np.subtract(after, before)
        np.abs(change, out=change)
        change /= np.maximum(np.abs(after), 1.0)
    return float(np.maximum.reduce(change, initial=0.0))


class EMRun(NamedTuple):
    """What one run of EM from one start ends with.

    Attributes
    ----------
    params : dict
        Internal parameters after the last M-step.
    history : list of float
        The objective at the parameters after 0, 1, ..., n_iter iterations.
    converged : bool
    n_iter : int
    loglik : float or None
        The log-likelihood at ``params`` when the run's last E-step gave it (soft EM), else None.
    """

    params: dict
    history: list
    converged: bool
    n_iter: int
    loglik: object = None
