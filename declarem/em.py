"""The one EM loop: initialisation, restarts, the convergence monitor, the objective-fell warning.

Numpy only: every update the loop applies comes from the compiled model.
"""

import math
import os
import warnings

import numpy as np

from .data import (group_identical_rows, group_repeated_counts, missing_parents_as_latent, node_data, read_model_data,
                   sequence_lengths)
from . import distributed, online
from .errors import ConvergenceWarning, DataError, FitError, InitError, OptionError
from .fit import Fit
from .inference import engine_for, prepare_rows
from .monitor import FALL_TOLERANCE, ConvergenceMonitor, EMRun
from .params import check_init, seed_sequence
from .squarem import run_squarem
from .tables import FIT_DEFAULTS
from .threads import blas_held, fit_threads, resolve_threads

ACCELERATORS = (None, "squarem")
METHODS = ("batch", "online")
#: A variance this small relative to its node's data variance is a collapsed component.
COLLAPSE_RATIO = 1e-10


def _check_options(max_iter, tol, restarts, reg_covar):
    if isinstance(max_iter, bool) or not isinstance(max_iter, (int, np.integer)) or max_iter < 0:
        raise OptionError(f"max_iter must be a non-negative integer, found {max_iter!r}")
    if not isinstance(tol, (int, float)) or not math.isfinite(tol) or tol < 0:
        raise OptionError(f"tol must be a finite number >= 0, found {tol!r}")
    if isinstance(restarts, bool) or not isinstance(restarts, (int, np.integer)) or restarts < 1:
        raise OptionError(f"restarts must be a positive integer, found {restarts!r}")
    if not isinstance(reg_covar, (int, float)) or not math.isfinite(reg_covar) or reg_covar < 0:
        raise OptionError(f"reg_covar must be a finite number >= 0, found {reg_covar!r}")


def mstep(compiled, stats, old, reg_covar):
    """New internal parameters of every factor (and free parameter) from expected statistics.

    Nodes that share parameters are updated together, from their pooled statistics.
    """
    sums, set_weights = dict(stats.sums), dict(stats.set_weights)
    for name, owner in compiled.sharing.items():
        sums[owner] = sums[owner] + stats.sums[name]
        set_weights[owner] = set_weights[owner] + stats.set_weights[name]
    new = {name: factor.mstep(sums[name], set_weights[name], None if old is None else old[name], reg_covar)
           for name, factor in compiled.factors.items() if name not in compiled.sharing}
    for name, owner in compiled.sharing.items():
        new[name] = {param: np.array(value, copy=True) for param, value in new[owner].items()}
    new = {name: new[name] for name in compiled.factors}
    _check_spread(compiled, new, reg_covar)
    if compiled.block:
        previous = None if old is None else {n: old[n] for n in compiled.free_names}
        compiled.set_free(new, compiled.block.solve(stats, previous))
    return new


def _check_spread(compiled, params, reg_covar):
    """Stop with the node and set named when a variance or covariance collapses to singular."""
    for name, factor in compiled.factors.items():
        spread = factor.smallest_spread(params[name])
        if spread is None:
            continue
        bad = np.flatnonzero(~(spread > 0))
        if len(bad):
            raise FitError(f"node '{name}': the variance of {factor.describe_set(bad[0])} became singular "
                           f"(smallest variance {spread[bad[0]]:.3g}) in the M-step: the component collapsed "
                           f"onto too few distinct rows. Use reg_covar > 0 (now {reg_covar:g}), fewer "
                           "components, or another seed")


def _collapse_warning(compiled, engine, params):
    """Name the sets whose variance shrank to almost nothing relative to their node's data.

    The likelihood of a normal mixture is unbounded: a component that closes on a few
    rows raises it without limit, so such a fit is not near an optimum.

    Returns
    -------
    bool
        Whether some set collapsed.
    """
    collapsed = False
    for name, factor in compiled.factors.items():
        spread = factor.smallest_spread(params[name])
        variances = engine.column_variances(name)
        if spread is None or variances is None:
            continue
        scale = float(np.min(variances))
        tiny = np.flatnonzero(spread < COLLAPSE_RATIO * scale)
        if len(tiny) and scale > 0:
            collapsed = True
            warnings.warn(f"node '{name}': the variance of {factor.describe_set(tiny[0])} collapsed to "
                          f"{spread[tiny[0]]:.3g} (the data's variance is {scale:.3g}); the likelihood is "
                          "unbounded there, so the fit is not converged. Use reg_covar > 0 or fewer components",
                          RuntimeWarning, stacklevel=5)
    return collapsed


def initial_params(engine, rng, given, reg_covar, seeding=None):
    """Starting parameters: an M-step from a seeded posterior (``seeding``), then the user's ``init`` on top.

    When ``init`` gives every parameter, it is the start and nothing is drawn. ``seeding``: an
    engine over the same rows ungrouped, whose seeded posterior the start is drawn from.
    """
    compiled = engine.compiled
    shifts = engine.shifts
    given, free = given
    given = _shared_given_once(compiled, given)
    pairs, free_names = compiled.required()
    if all(p in given.get(node, {}) for node, p in pairs) and set(free_names) <= set(free):
        return compiled.to_internal({**given, **free}, shifts)
    params = mstep(compiled, (engine if seeding is None else seeding).seeded_statistics(rng), None, reg_covar)
    for node, values in given.items():
        factor = compiled.factors[node]
        external = factor.to_external(params[node], shifts.get(node))
        external.update(values)
        params[node] = factor.to_internal(external, shifts.get(node))
        for sharer in [n for n, owner in compiled.sharing.items() if owner == node]:
            params[sharer] = {param: np.array(value, copy=True) for param, value in params[node].items()}
    if free:
        current = {n: float(params[n]) for n in free_names}
        current.update(free)
        compiled.set_free(params, current)
    return params


def _shared_given_once(compiled, given):
    """An init's parameters of a shared set on its owner only: given on either node, equal if on both."""
    given = dict(given)
    for sharer, owner in compiled.sharing.items():
        if sharer not in given:
            continue
        values = given.pop(sharer)
        if owner not in given:
            given[owner] = values
            continue
        for param, value in values.items():
            if param in given[owner] and not np.allclose(np.asarray(value, dtype=float),
                                                         np.asarray(given[owner][param], dtype=float)):
                raise InitError(f"init: '{sharer}' shares the parameters of '{owner}', but its {param} differs from "
                                f"'{owner}'s; give the shared parameters once, on '{owner}'")
    return given


def run_em(engine, params, max_iter, tol, hard, reg_covar, progress=None, accelerate=None):
    """Iterate E- and M-steps from ``params`` (plain, or accelerated by SQUAREM).

    The objective is the log-likelihood (with ``hard``, the complete-data
    log-likelihood at each row's best configuration) plus the log prior.

    Returns
    -------
    EMRun
    """
    compiled = engine.compiled
    monitor = ConvergenceMonitor(tol, fall_tolerance=getattr(engine, "fall_tolerance", FALL_TOLERANCE))
    if accelerate == "squarem":
        def estep(current):
            stats, objective = engine.expected_statistics(current, hard=hard)
            return stats, objective + compiled.log_prior(current)

        def statistics(current):
            return engine.statistics(current, hard=hard)

        def objective_at(current):
            return engine.objective(current, hard=hard) + compiled.log_prior(current)

        def step(stats, old):
            return mstep(compiled, stats, old, reg_covar)

        return run_squarem(compiled, engine.shifts, params, max_iter, tol, hard, reg_covar, progress, estep,
                           statistics, step, monitor, objective_at)
    stats, objective = engine.expected_statistics(params, hard=hard)
    monitor.record(objective + compiled.log_prior(params), params)
    n_iter = 0
    converged = False
    while n_iter < max_iter:
        params = mstep(compiled, stats, params, reg_covar)
        n_iter += 1
        if n_iter < max_iter:
            stats, objective = engine.expected_statistics(params, hard=hard)
        else:
            objective = engine.objective(params, hard=hard)     # no M-step follows: the objective alone
        if monitor.iteration(n_iter, objective + compiled.log_prior(params), progress, params):
            converged = True
            break
    return EMRun(params, monitor.history, converged, n_iter, None if hard else objective)


def fit_model(model, data, weights=None, init=None, max_iter=None, tol=None, seed=0, restarts=None,
              reg_covar=None, hard=False, progress=None, source="data", accelerate=None, memory_budget=None,
              lengths=None, method="batch", batch_size=None, step=None, threads=None, dtype=None):
    """Fit a model by EM; see ``Model.fit``. Options left None take the spec's [fit] value, else the default."""
    given = {"max_iter": max_iter, "tol": tol, "restarts": restarts, "reg_covar": reg_covar,
             "accelerate": accelerate}
    chosen = {key: model.fit_options.get(key, FIT_DEFAULTS[key]) if value is None else value
              for key, value in given.items()}
    max_iter, tol, restarts, reg_covar = (chosen[k] for k in ("max_iter", "tol", "restarts", "reg_covar"))
    accelerate = None if chosen["accelerate"] == "none" else chosen["accelerate"]
    _check_options(max_iter, tol, restarts, reg_covar)
    seeds = seed_sequence(seed).spawn(restarts)
    if accelerate not in ACCELERATORS:
        raise OptionError(f"accelerate must be one of {', '.join(map(repr, ACCELERATORS))}, found {accelerate!r}")
    if method not in METHODS:
        raise OptionError(f"method must be one of {', '.join(map(repr, METHODS))}, found {method!r}")
    if method == "online":
        batch_size, step = online.check_online_options(batch_size, step)
        if accelerate is not None:
            raise OptionError("online EM is not accelerated: leave out accelerate (or give accelerate='none')")
    elif batch_size is not None or step is not None:
        raise OptionError("batch_size and step apply to method='online'")
    if memory_budget is not None and (isinstance(memory_budget, bool) or memory_budget < 0
                                      or not isinstance(memory_budget, (int, np.integer))):
        raise OptionError(f"memory_budget must be a number of bytes >= 0, found {memory_budget!r}")
    if distributed.is_dask_data(data):
        if lengths is not None:
            raise OptionError("lengths do not apply to dask data: give the spec a [data] sequence column, each "
                              "sequence within one partition")
        if threads is not None:
            raise OptionError("threads apply to data in memory; with dask data, the workers' threads (dask's "
                              "nthreads) run the E-steps: leave out threads")
        if dtype is not None:
            raise OptionError("dtype applies to data in memory; with dask data, leave out dtype")
        compiled, engine, n_missing, n_missing_rows = distributed.prepare(
            model, data, model.data_info.get("weights") if weights is None else weights, memory_budget)
        # The workers run the E-steps; their threads are dask's.
        return _fit_prepared(model, compiled, engine, None, init, max_iter, tol, seeds, restarts, reg_covar,
                             hard, progress, accelerate, method, batch_size, step, n_missing, n_missing_rows)
    threads = resolve_threads(threads)
    with blas_held():
        compiled, engine, seeding, n_missing, n_missing_rows = _prepared(model, data, weights, source, lengths,
                                                                          memory_budget, _check_dtype(dtype))
        with fit_threads(threads, engine.parallel_chunks and method == "batch"):
            return _fit_prepared(model, compiled, engine, seeding, init, max_iter, tol, seeds, restarts, reg_covar,
                                 hard, progress, accelerate, method, batch_size, step, n_missing, n_missing_rows)


def _fit_prepared(model, compiled, engine, seeding, init, max_iter, tol, seeds, restarts, reg_covar, hard, progress,
                  accelerate, method, batch_size, step, n_missing, n_missing_rows):
    """The fit's restarts and EM runs on a prepared engine (seeded on ``seeding`` if given), and the best's Fit."""
    if method == "online":
        online.refuse_unsupported(compiled)
    given = check_init(compiled, init)
    best = None
    best_state = state = None
    failures = []
    best_index = None
    for index, child in enumerate(seeds):
        if hasattr(progress, "restart"):
            progress.restart(index, restarts)
        rng = np.random.default_rng(child)
        try:
            start = initial_params(engine, rng, given, reg_covar, seeding)
            if method == "online":
                result, state = online.run_online(engine, start, max_iter, tol, hard, reg_covar, progress, step,
                                                  batch_size, rng, mstep)
            else:
                result = run_em(engine, start, max_iter, tol, hard, reg_covar, progress, accelerate)
        except FitError as exc:
            if restarts == 1:
                raise
            failures.append(f"restart {index}: {exc}")
            continue
        if best is None or result.history[-1] > best.history[-1]:
            best, best_index, best_state = result, index, state
    if best is None:
        raise FitError("every restart failed: " + "; ".join(failures))
    if hasattr(progress, "chosen"):
        progress.chosen(best_index, best.history[-1])
    if failures:
        warnings.warn(f"{len(failures)} of {restarts} restarts failed and were skipped: {failures[0]}",
                      RuntimeWarning, stacklevel=4)
    params, history, converged, n_iter, last_loglik = best
    if not converged and tol > 0 and n_iter == max_iter:
        warnings.warn(f"the fit stopped at max_iter={max_iter} before converging (relative change of the "
                      f"objective still above tol={tol:g}); raise max_iter, or start from this fit "
                      "(init=fit)", ConvergenceWarning, stacklevel=4)
    if _collapse_warning(compiled, engine, params):
        converged = False
    log_prior = compiled.log_prior(params)
    if last_loglik is not None:
        loglik = last_loglik
    elif hard or log_prior != 0.0:
        # Recomputed rather than taken as objective - log prior, which cancels catastrophically
        # when a strong prior dominates the objective.
        _, loglik = engine.expected_statistics(params, hard=False)
    else:
        loglik = history[-1]
    fit = Fit(model=model, params=compiled.to_external(params, engine.shifts), loglik=float(loglik),
              history=history, converged=converged, n_iter=n_iter,
              n_observations=engine.n_observations, hard=hard, log_prior=float(log_prior),
              n_missing=n_missing, n_missing_rows=n_missing_rows)
    fit.online_state = best_state
    fit.peak_memory = getattr(engine, "peak_memory", None)
    return fit


def _check_dtype(dtype):
    """The dtype of the dense statistics: float64 (None) or float32."""
    if dtype is None:
        return np.dtype(np.float64)
    try:
        chosen = np.dtype(dtype)
    except TypeError:
        chosen = None
    # (numpy compares None equal to float64.)
    if chosen is None or chosen.name not in ("float32", "float64"):
        raise OptionError(f"dtype must be 'float64' or 'float32', found {dtype!r}")
    return chosen


def _prepared(model, data, weights, source, lengths, memory_budget, dtype=np.float64):
    """The engine over data in memory, with the counts of missing cells and rows: see ``distributed.prepare``."""
    if isinstance(data, (str, os.PathLike)):
        source = os.fspath(data)
        data, implied = read_model_data(model, data)
        weights = implied if weights is None else weights
    if weights is None:
        weights = model.data_info.get("weights")
    checked = node_data(model, data, weights, source=source)
    lengths = sequence_lengths(model, data, lengths, checked.n_rows, source)
    if lengths is not None and not np.all(checked.weights == 1.0):
        raise DataError(f"{source}: row weights do not apply to a chain's rows (each row is one time step); "
                        "leave out weights")
    fitted_model, prepared = missing_parents_as_latent(model, checked)
    compiled = fitted_model.compiled
    grouped = group_identical_rows(fitted_model, prepared)
    seeding = None
    if grouped is prepared:
        grouped = group_repeated_counts(fitted_model, prepared)
        if grouped is not prepared:
            # Seeded on the rows as given: the start is the one the rows ungrouped take (and dask's).
            seeding = engine_for(compiled, prepare_rows(compiled, prepared, memory_budget, dtype=dtype))
    engine = engine_for(compiled, prepare_rows(compiled, grouped, memory_budget, dtype=dtype), lengths)
    return compiled, engine, seeding, checked.n_missing, checked.n_missing_rows
