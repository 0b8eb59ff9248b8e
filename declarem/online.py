"""Online (stepwise) EM: the expected statistics updated batch by batch with a decaying step.

After each batch B_t of rows, the running statistics become

    s_t = (1 - rho_t) s_(t-1) + rho_t (N / w(B_t)) S(B_t),    rho_t = (t + 1) ** -step,  t = 1, 2, ...

with S(B_t) the batch's expected statistics at the current parameters, w(B_t) its
total weight and N the data's, and the M-step runs on s_t (Cappé and Moulines 2009;
Liang and Klein 2009). The running statistics start as all the rows' at the starting
parameters, s_0 (the E-step that gives the starting objective), so that what the first
batches happen not to show (a word, a category) keeps its weight. With ``step`` in
(0.5, 1] the steps sum to infinity and their squares do not, so the parameters settle
where the expected statistics are matched on average: a fixed point of batch EM.
Smaller ``step`` forgets the start sooner and is noisier; 1 weighs every batch seen
equally.

An epoch is a pass over every batch, in a fresh random order. After each epoch the
objective recorded in ``history`` is the observed-data log-likelihood of all the rows
at the current parameters (plus the log prior): one more E-step pass. It need not rise
every epoch; the fit stops when its relative change falls below ``tol``.

In memory, the batches are a seeded random partition of the (prepared) rows into
``batch_size`` rows each; for dask data, each partition is a batch.
"""

from dataclasses import dataclass

import numpy as np

from .errors import OptionError
from .monitor import ConvergenceMonitor, EMRun

#: The default decay exponent of the step size (Liang and Klein 2009 found 0.5-0.7 works well).
DEFAULT_STEP = 0.6
#: Rows per batch in memory when not given.
DEFAULT_BATCH_SIZE = 1024


@dataclass
class OnlineState:
    """Where an online fit left off, for ``Fit.partial_fit``.

    Attributes
    ----------
    stats : ExpectedStatistics
        The running statistics, scaled to ``n_observations`` rows of weight.
    n_steps : int
        Batches taken so far (the next one enters with weight ``(n_steps + 2) ** -step``).
    step : float
    n_observations : float
    shifts : dict of str to ndarray
        The centring the statistics are in.
    reg_covar : float
    """

    stats: object
    n_steps: int
    step: float
    n_observations: float
    shifts: dict
    reg_covar: float


def check_online_options(batch_size, step):
    """Validate the online options; return them with defaults filled in."""
    step = DEFAULT_STEP if step is None else step
    if isinstance(step, bool) or not isinstance(step, (int, float)) or not 0.5 < step <= 1.0:
        raise OptionError(f"step must be a number in (0.5, 1] (the decay exponent of online EM's step size), "
                          f"found {step!r}")
    if batch_size is not None and (isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer))
                                   or batch_size < 1):
        raise OptionError(f"batch_size must be a positive integer, found {batch_size!r}")
    return batch_size, float(step)


def refuse_unsupported(compiled):
    """Online EM blends statistics that add over rows: refuse what it cannot run."""
    if compiled.model.chain is not None:
        raise OptionError(f"node '{compiled.model.chain}' is a chain: online EM over sequences is not supported; "
                          "use method='batch'")
    rows_layout = [name for name, factor in compiled.factors.items() if factor.layout == "rows"]
    if rows_layout:
        raise OptionError(f"node '{rows_layout[0]}' is fitted row by row (continuous parents, or a family that is "
                          "not an exponential family): its statistics do not blend over batches; use "
                          "method='batch'")


def run_online(engine, params, max_iter, tol, hard, reg_covar, progress, step, batch_size, rng, mstep):
    """Online EM from ``params``: ``max_iter`` epochs at most.

    Parameters
    ----------
    engine : EnumerationEngine or DaskEngine
        Over all the rows; its ``batches`` cut them.
    mstep : callable
        ``mstep(compiled, stats, old, reg_covar) -> params``.

    Returns
    -------
    run : EMRun
        ``n_iter`` counts epochs.
    state : OnlineState
    """
    compiled = engine.compiled
    batches = engine.batches(batch_size, rng)
    n_observations = engine.n_observations
    monitor = ConvergenceMonitor(tol, falls=False)
    running, objective = engine.expected_statistics(params, hard=hard)
    monitor.record(objective + compiled.log_prior(params))
    n_steps = 0
    converged = False
    epoch = 0
    while epoch < max_iter:
        for index in rng.permutation(len(batches)):
            weight, estep = batches[index]
            stats, _ = estep(params, hard)
            running, n_steps = _blended(running, stats, n_steps, step, n_observations / weight)
            params = mstep(compiled, running, params, reg_covar)
        epoch += 1
        _, objective = engine.expected_statistics(params, hard=hard)
        if monitor.iteration(epoch, objective + compiled.log_prior(params), progress):
            converged = True
            break
    state = OnlineState(stats=running, n_steps=n_steps, step=step, n_observations=n_observations,
                        shifts=engine.shifts, reg_covar=reg_covar)
    return EMRun(params, monitor.history, converged, epoch), state


def _blended(running, stats, n_steps, step, scale):
    """The running statistics after one more batch (the (n_steps + 1)-th), and the number of batches taken."""
    running.blend(stats, (n_steps + 2) ** -step, scale)
    return running, n_steps + 1


def partial_step(state, engine, params, hard, mstep):
    """One online step on a new batch (``Fit.partial_fit``): new parameters and state.

    The batch stands for a data set of the state's ``n_observations``, as the batches
    of the online fit that made the state did.
    """
    stats, _ = engine.expected_statistics(params, hard=hard)
    running, n_steps = _blended(state.stats.copy(), stats, state.n_steps, state.step,
                                state.n_observations / engine.n_observations)
    new = mstep(engine.compiled, running, params, state.reg_covar)
    return new, OnlineState(stats=running, n_steps=n_steps, step=state.step, n_observations=state.n_observations,
                            shifts=state.shifts, reg_covar=state.reg_covar)
