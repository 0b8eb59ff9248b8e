"""Bounded sympy work: a budget of CPU time shared by a derivation's solver attempts.

sympy has no operation counter, and a wall-clock limit makes a derivation's route
(closed form or numeric) depend on how busy the machine is. The budget here is
counted in this process's CPU time (``ITIMER_PROF``), which other processes on the
machine do not consume, and it is generous: the hardest catalog derivation uses
under 2 CPU-seconds of a 20-second budget. A derivation that runs out is marked
provisional: its numeric route serves the current process and is never stored in
the on-disk cache, so a later process derives it again rather than inheriting a
result of one bad moment.

Structural limits (``MAX_OPERATIONS``) refuse hopeless systems before any work,
the same way on every machine.
"""

import signal
import threading
import time
from contextlib import contextmanager

import sympy

CPU_SECONDS = 20.0
MAX_OPERATIONS = 400
MAX_UNKNOWNS = 8


class _OutOfBudget(Exception):
    """Raised inside a solver attempt when the budget's CPU time is spent."""


class SolveBudget:
    """CPU time that a derivation's solver attempts may spend, in total.

    Parameters
    ----------
    seconds : float, optional
        CPU seconds for all attempts together; default ``CPU_SECONDS``.

    Attributes
    ----------
    exhausted : bool
        Whether some attempt was cut short; the derivation is then provisional.
    """

    def __init__(self, seconds=None):
        self.remaining = float(CPU_SECONDS if seconds is None else seconds)
        self.exhausted = False

    def admits(self, equations, unknowns):
        """Whether a system is small enough to hand to sympy at all (a deterministic test)."""
        if len(unknowns) > MAX_UNKNOWNS:
            return False
        return sum(sympy.count_ops(e) for e in equations) <= MAX_OPERATIONS

    def run(self, attempt):
        """Call ``attempt()`` within the remaining budget.

        Returns
        -------
        (bool, object)
            ``(True, result)``, or ``(False, None)`` when the budget ran out
            (then ``exhausted`` is set and later calls return at once).
        """
        if self.exhausted or self.remaining <= 0:
            self.exhausted = True
            return False, None
        started = time.process_time()
        try:
            with _cpu_alarm(self.remaining):
                return True, attempt()
        except _OutOfBudget:
            self.exhausted = True
            return False, None
        finally:
            self.remaining -= time.process_time() - started


@contextmanager
def _cpu_alarm(seconds):
    """Raise _OutOfBudget in the block after ``seconds`` of process CPU time.

    Signals reach the main thread only; elsewhere (a worker thread) the block runs
    unbounded and the structural limits are the only bound.
    """
    if threading.current_thread() is not threading.main_thread() or not hasattr(signal, "ITIMER_PROF"):
        yield
        return

    def expire(signum, frame):
        raise _OutOfBudget

    previous = signal.signal(signal.SIGPROF, expire)
    signal.setitimer(signal.ITIMER_PROF, max(seconds, 1e-3))
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_PROF, 0)
        signal.signal(signal.SIGPROF, previous)
