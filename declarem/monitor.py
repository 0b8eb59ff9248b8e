"""Watching an EM run: the objective and parameters per iteration, convergence, falls."""

import math
import warnings
from typing import NamedTuple

import numpy as np

from .params import flatten_params

#: A fall of the objective larger than this (relative) is reported as a warning.
FALL_TOLERANCE = 1e-10

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
    in a locally quadratic objective corresponds to.

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

    def record(self, objective, params=None):
        """Add the objective (and parameters) after an iteration; return the objective's change."""
        previous = self.history[-1] if self.history else None
        self.history.append(float(objective))
        if params is not None:
            vector = flatten_params(params)[0]
            if self._previous is not None and self._previous.shape == vector.shape:
                scale = np.maximum(np.abs(vector), 1.0)
                with np.errstate(invalid="ignore"):
                    self._steps.append(float(np.max(np.abs(vector - self._previous) / scale, initial=0.0)))
            self._previous = vector
        if previous is None:
            return math.nan
        change = objective - previous
        if self.falls and change < -self.fall_tolerance * max(abs(previous), 1.0):
            warnings.warn(f"EM objective fell from {previous!r} to {objective!r} at iteration "
                          f"{len(self.history) - 1}: a bug or numerical inaccuracy (with reg_covar > 0 "
                          "small falls can occur)", RuntimeWarning, stacklevel=3)
        return change

    def iteration(self, n_iter, objective, progress, params=None):
        """Record the state after iteration ``n_iter``, report progress; return whether converged."""
        change = self.record(objective, params)
        if progress is not None:
            progress(n_iter, objective, change)
        return self.converged

    @property
    def remaining_distance(self):
        """Estimated distance of the parameters from the fixed point (relative, max norm); inf if unknown."""
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

    @property
    def converged(self):
        if len(self.history) < 2:
            return False
        change = self.history[-1] - self.history[-2]
        if not abs(change) < self.tol * abs(self.history[-1]):
            return False
        return not self._steps or self.remaining_distance < math.sqrt(self.tol)


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
