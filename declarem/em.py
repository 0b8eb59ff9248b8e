"""The one EM loop: initialisation, restarts, the convergence monitor, the objective-fell warning.

Numpy only: every update the loop applies comes from the compiled model.
"""

import math
import os
import warnings

import numpy as np

from .data import group_identical_rows, node_data, read_model_data
from .errors import FitError, InitError, OptionError
from .fit import Fit
from .inference import expected_statistics, prepare_rows, statistics_from_posterior
from .squarem import run_squarem

KMEANS_ITERATIONS = 10
ACCELERATORS = (None, "squarem")
INITIAL_SOFTENING = 0.1
FALL_TOLERANCE = 1e-10


class ConvergenceMonitor:
    """Records the objective, decides convergence, and warns when the objective falls.

    Parameters
    ----------
    tol : float
        Converged when |change| < tol * |objective|; with tol = 0 never.
    """

    def __init__(self, tol):
        self.tol = tol
        self.history = []

    def record(self, objective):
        """Add the objective after an iteration; return its change from the previous one."""
        previous = self.history[-1] if self.history else None
        self.history.append(float(objective))
        if previous is None:
            return math.nan
        change = objective - previous
        if change < -FALL_TOLERANCE * max(abs(previous), 1.0):
            warnings.warn(f"EM objective fell from {previous!r} to {objective!r} at iteration "
                          f"{len(self.history) - 1}: a bug or numerical inaccuracy (with reg_covar > 0 "
                          "small falls can occur)", RuntimeWarning, stacklevel=3)
        return change

    def iteration(self, n_iter, objective, progress):
        """Record the objective after iteration ``n_iter``, report progress; return whether converged."""
        change = self.record(objective)
        if progress is not None:
            progress(n_iter, objective, change)
        return self.converged

    @property
    def converged(self):
        if len(self.history) < 2:
            return False
        change = self.history[-1] - self.history[-2]
        return abs(change) < self.tol * abs(self.history[-1])


def _check_options(max_iter, tol, restarts, reg_covar, seed):
    if isinstance(max_iter, bool) or not isinstance(max_iter, (int, np.integer)) or max_iter < 0:
        raise OptionError(f"max_iter must be a non-negative integer, found {max_iter!r}")
    if not isinstance(tol, (int, float)) or not math.isfinite(tol) or tol < 0:
        raise OptionError(f"tol must be a finite number >= 0, found {tol!r}")
    if isinstance(restarts, bool) or not isinstance(restarts, (int, np.integer)) or restarts < 1:
        raise OptionError(f"restarts must be a positive integer, found {restarts!r}")
    if not isinstance(reg_covar, (int, float)) or not math.isfinite(reg_covar) or reg_covar < 0:
        raise OptionError(f"reg_covar must be a finite number >= 0, found {reg_covar!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise OptionError(f"seed must be a non-negative integer, found {seed!r}")


def check_init(compiled, init, where="init"):
    """Validate a user ``init`` mapping.

    Returns
    -------
    nodes : dict
        ``{node: {param: array}}`` in the user's shapes.
    free : dict
        ``{free parameter: float}``.
    """
    if init is None:
        return {}, {}
    if not hasattr(init, "items"):
        raise InitError(f"{where}: expected a mapping of node to parameters, found {type(init).__name__}")
    checked, free, implied = {}, {}, {}
    for node, params in init.items():
        if node in compiled.free_names:
            free[node] = params
            continue
        if getattr(compiled.factors.get(node), "expressed", False):
            implied[node] = params
            continue
        if node not in compiled.factors:
            known = list(compiled.factors) + compiled.free_names
            raise InitError(f"{where}: '{node}' is not a node or free parameter of the model; known: "
                            f"{', '.join(known)}")
        if not hasattr(params, "items"):
            raise InitError(f"{where}: '{node}' must map parameter names to arrays")
        factor = compiled.factors[node]
        checked[node] = {name: factor.check_param(name, value, where) for name, value in params.items()}
    if free:
        free = compiled.block.check(free, where)
    _check_implied(compiled, implied, free, where)
    return checked, free


def _check_implied(compiled, implied, free, where):
    """Probabilities written in free parameters may be given (a saved fit has them) if they agree."""
    if not implied:
        return
    if compiled.free_names and set(compiled.free_names) - set(free):
        node = next(iter(implied))
        raise InitError(f"{where}: the probs of node '{node}' are expressions in free parameters; "
                        "give those parameters (top-level entries of init) instead")
    computed = compiled.block.probs(free)
    for node, params in implied.items():
        given = np.asarray(params.get("probs") if hasattr(params, "get") else params, dtype=float)
        if set(params) - {"probs"} or given.shape != computed[node][0].shape or \
                not np.allclose(given, computed[node][0], rtol=1e-9, atol=1e-12):
            raise InitError(f"{where}: the probs of node '{node}' disagree with the free parameters given; "
                            "give only the free parameters")


def mstep(compiled, stats, old, reg_covar):
    """New internal parameters of every factor (and free parameter) from expected statistics."""
    new = {name: factor.mstep(stats.sums[name], stats.set_weights[name],
                              None if old is None else old[name], reg_covar)
           for name, factor in compiled.factors.items()}
    if compiled.block:
        previous = None if old is None else {n: old[n] for n in compiled.free_names}
        compiled.set_free(new, compiled.block.solve(stats, previous))
    return new


def initial_params(compiled, rows, rng, given, reg_covar):
    """Starting parameters: an M-step from a seeded posterior, then the user's ``init`` on top.

    When ``init`` gives every parameter, it is the start and nothing is drawn.

    The seeded posterior is k-means++ seeding refined by a few Lloyd steps on the
    dense observed children when there is one latent node, and random
    responsibilities otherwise.
    """
    given, free = given
    pairs, free_names = compiled.required()
    if all(p in given.get(node, {}) for node, p in pairs) and set(free_names) <= set(free):
        return compiled.to_internal({**given, **free}, rows.shifts)
    posterior = _initial_posterior(compiled, rows, rng)
    params = mstep(compiled, statistics_from_posterior(compiled, rows, posterior), None, reg_covar)
    for node, values in given.items():
        factor = compiled.factors[node]
        shift = rows.factors[node].shift
        external = factor.to_external(params[node], shift)
        external.update(values)
        params[node] = factor.to_internal(external, shift)
    if free:
        current = {n: float(params[n]) for n in free_names}
        current.update(free)
        compiled.set_free(params, current)
    return params


def _initial_posterior(compiled, rows, rng):
    n_configurations = compiled.n_configurations
    if n_configurations == 1:
        return np.ones((rows.n_rows, 1))
    features = _clustering_features(compiled, rows)
    if features is not None:
        labels = _kmeans(features, rows.weights, n_configurations, rng)
        # Softened, so that no parameter starts on its domain's boundary (a Bernoulli p of 0 or 1
        # can never leave it).
        posterior = np.full((rows.n_rows, n_configurations), INITIAL_SOFTENING / n_configurations)
        posterior[np.arange(rows.n_rows), labels] += 1.0 - INITIAL_SOFTENING
        return posterior
    posterior = rng.random((rows.n_rows, n_configurations))
    return posterior / posterior.sum(axis=1, keepdims=True)


def _clustering_features(compiled, rows):
    """Standardised columns of the dense observed children of a single latent node, if any."""
    if len(compiled.latent) != 1:
        return None
    columns = []
    for name, factor in compiled.factors.items():
        view = rows.factors[name]
        if factor.layout != "dense" or view.observed_offset is not None or not view.latent_axes:
            continue
        columns.append(view.values.reshape(rows.n_rows, -1))
    if not columns:
        return None
    features = np.column_stack(columns)
    scale = features.std(axis=0)
    return (features - features.mean(axis=0)) / np.where(scale > 0, scale, 1.0)


def _kmeans(features, weights, k, rng):
    """k-means++ seeding and a few weighted Lloyd steps; returns labels of shape (n_rows,)."""
    n_rows = len(features)
    squared = np.einsum("ij,ij->i", features, features)
    probabilities = weights / weights.sum()
    centres = [features[rng.choice(n_rows, p=probabilities)]]
    closest = np.full(n_rows, np.inf)
    for _ in range(1, k):
        centre = centres[-1]
        distance = squared - 2.0 * features @ centre + centre @ centre
        np.minimum(closest, np.maximum(distance, 0.0), out=closest)
        mass = closest * weights
        total = mass.sum()
        index = rng.choice(n_rows, p=mass / total) if total > 0 else rng.choice(n_rows, p=probabilities)
        centres.append(features[index])
    centres = np.array(centres)
    labels = np.zeros(n_rows, dtype=np.intp)
    for _ in range(KMEANS_ITERATIONS):
        distance = features @ centres.T
        distance *= -2.0
        distance += np.einsum("ij,ij->i", centres, centres)
        labels = np.argmin(distance, axis=1)
        mass = np.bincount(labels, weights=weights, minlength=k)
        totals = np.column_stack([np.bincount(labels, weights=weights * column, minlength=k)
                                  for column in features.T])
        filled = mass > 0
        centres[filled] = totals[filled] / mass[filled, None]
    return labels


def run_em(compiled, rows, params, max_iter, tol, hard, reg_covar, progress=None, accelerate=None):
    """Iterate E- and M-steps from ``params`` (plain, or accelerated by SQUAREM).

    The objective is the log-likelihood (with ``hard``, the complete-data
    log-likelihood at each row's best configuration) plus the log prior.

    Returns
    -------
    params : dict
        Internal parameters after the last M-step.
    history : list of float
        The objective at the parameters after 0, 1, ..., n_iter iterations.
    converged : bool
    n_iter : int
    """
    monitor = ConvergenceMonitor(tol)
    if accelerate == "squarem":
        def estep(current):
            stats, objective = expected_statistics(compiled, rows, current, hard=hard)
            return stats, objective + compiled.log_prior(current)

        def step(stats, old):
            return mstep(compiled, stats, old, reg_covar)

        return run_squarem(compiled, rows, params, max_iter, tol, hard, reg_covar, progress, estep, step, monitor)
    stats, objective = expected_statistics(compiled, rows, params, hard=hard)
    monitor.record(objective + compiled.log_prior(params))
    n_iter = 0
    converged = False
    while n_iter < max_iter:
        params = mstep(compiled, stats, params, reg_covar)
        n_iter += 1
        stats, objective = expected_statistics(compiled, rows, params, hard=hard)
        if monitor.iteration(n_iter, objective + compiled.log_prior(params), progress):
            converged = True
            break
    return params, monitor.history, converged, n_iter


def fit_model(model, data, weights=None, init=None, max_iter=1000, tol=1e-8, seed=0, restarts=1,
              reg_covar=1e-6, hard=False, progress=None, source="data", accelerate=None, memory_budget=None):
    """Fit a model by EM; see ``Model.fit``."""
    _check_options(max_iter, tol, restarts, reg_covar, seed)
    if accelerate not in ACCELERATORS:
        raise OptionError(f"accelerate must be one of {', '.join(map(repr, ACCELERATORS))}, found {accelerate!r}")
    compiled = model.compiled
    if isinstance(data, (str, os.PathLike)):
        source = os.fspath(data)
        data, implied = read_model_data(model, data)
        weights = implied if weights is None else weights
    if weights is None:
        weights = model.data_info.get("weights")
    prepared = group_identical_rows(model, node_data(model, data, weights, source=source))
    if memory_budget is not None and (isinstance(memory_budget, bool) or memory_budget < 0
                                      or not isinstance(memory_budget, (int, np.integer))):
        raise OptionError(f"memory_budget must be a number of bytes >= 0, found {memory_budget!r}")
    rows = prepare_rows(compiled, prepared, memory_budget)
    given = check_init(compiled, init)
    best = None
    failures = []
    for index, child in enumerate(np.random.SeedSequence(int(seed)).spawn(restarts)):
        rng = np.random.default_rng(child)
        try:
            start = initial_params(compiled, rows, rng, given, reg_covar)
            result = run_em(compiled, rows, start, max_iter, tol, hard, reg_covar, progress, accelerate)
        except FitError as exc:
            if restarts == 1:
                raise
            failures.append(f"restart {index}: {exc}")
            continue
        if best is None or result[1][-1] > best[1][-1]:
            best = result
    if best is None:
        raise FitError("every restart failed: " + "; ".join(failures))
    if failures:
        warnings.warn(f"{len(failures)} of {restarts} restarts failed and were skipped: {failures[0]}",
                      RuntimeWarning, stacklevel=3)
    params, history, converged, n_iter = best
    log_prior = compiled.log_prior(params)
    if hard:
        _, loglik = expected_statistics(compiled, rows, params, hard=False)
    else:
        loglik = history[-1] - log_prior
    return Fit(model=model, params=compiled.to_external(params, rows.shifts), loglik=float(loglik),
               history=history, converged=converged, n_iter=n_iter,
               n_observations=float(rows.weights.sum()), hard=hard, log_prior=float(log_prior))
