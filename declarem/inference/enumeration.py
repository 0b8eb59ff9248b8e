"""Exact E-step by enumerating the joint configurations of the latent nodes, per row.

The joint log-probability of a row and a latent configuration is the sum of
every factor's log-density, each factor touching only the latent axes in its
scope. For an observed node with dense statistics the log-densities of all
parameter sets are one matrix product, T(X) @ eta^T - A; its expected
statistics are one product the other way, R^T @ T(X). Rows are processed in
chunks, so each chunk's posterior is normalised and consumed while in cache,
and nothing of size (n_rows, configurations) outlives its chunk.
"""

import functools
from typing import NamedTuple

import numpy as np

from ..errors import FitError
from ..threads import map_in_order
from .bilinear import bilinear_mixture, bilinear_statistics

CHUNK_ROWS = 8192
UNDERFLOW = 1e-280
#: Vectors of ones up to this length are made once and shared (read-only): small fits make them
#: at every E-step, where making one costs as much as the product it serves.
SHARED_ONES = CHUNK_ROWS


CATEGORICAL_LAYOUTS = ("index", "latent")


class RowWeights:
    """The posterior weight of each row on each parameter set, with the rows' data.

    The statistics of a factor with no finite sufficient statistic (the "rows"
    layout: a regression with a log or logit link), whose M-step iterates over
    the rows. Allocated for the rows it is first given (a chain's block order,
    say) and only added to for those.

    Attributes
    ----------
    weights : ndarray of shape (n_sets, n_rows), or None before any row
    data : ndarray of shape (n_rows, n_columns), or None
    """

    def __init__(self, n_sets):
        self.n_sets = n_sets
        self.weights = None
        self.data = None

    def bind(self, data):
        """The weights array for rows with this data (allocated on first use)."""
        if self.weights is None:
            self.data = data
            self.weights = np.zeros((self.n_sets, len(data)))
        elif self.data is not data:
            raise ValueError("row weights of one E-step come from two different sets of rows")
        return self.weights

    def __iadd__(self, other):
        if other.weights is not None:
            if self.weights is None:
                self.data, self.weights = other.data, other.weights.copy()
            else:
                self.bind(other.data)
                self.weights += other.weights
        return self


class ExpectedStatistics:
    """Weighted sums of sufficient statistics per factor: a pure value keyed by node.

    Attributes
    ----------
    sums : dict of str to ndarray or RowWeights
        (n_sets, n_statistics) per factor (for categorical factors, expected counts (n_sets, k);
        for the "rows" layout, each row's weight per set).
    set_weights : dict of str to ndarray
        Total posterior weight per parameter set, ``factor.weight_shape``: (n_sets,), or
        (n_sets, columns) for independent columns (rows missing a column do not count there).
    """

    def __init__(self, compiled):
        self.sums = {}
        self.set_weights = {}
        for name, factor in compiled.factors.items():
            self.sums[name] = RowWeights(factor.n_sets) if factor.layout == "rows" else \
                np.zeros((factor.n_sets, factor.width))
            self.set_weights[name] = np.zeros(factor.weight_shape)

    def add(self, other):
        """Add another set of statistics (of other factors) to these."""
        for name in self.sums:
            self.sums[name] += other.sums[name]
            self.set_weights[name] += other.set_weights[name]

    def copy(self):
        """An independent copy (of statistics that add over rows)."""
        copied = object.__new__(ExpectedStatistics)
        copied.sums = {name: np.array(value, copy=True) for name, value in self.sums.items()}
        copied.set_weights = {name: np.array(value, copy=True) for name, value in self.set_weights.items()}
        return copied

    def blend(self, other, step, scale):
        """These statistics moved towards ``scale`` times ``other`` by ``step`` (online EM), in place:
        ``self = (1 - step) self + step scale other``. Only for statistics that add over rows."""
        for name in self.sums:
            self.sums[name] = (1.0 - step) * self.sums[name] + (step * scale) * other.sums[name]
            self.set_weights[name] = (1.0 - step) * self.set_weights[name] + (step * scale) * other.set_weights[name]

    def finish(self, compiled):
        """A categorical factor's weight per set is its total expected count."""
        for name, factor in compiled.factors.items():
            if factor.layout in CATEGORICAL_LAYOUTS:
                self.set_weights[name] = self.sums[name].sum(axis=1)


def expected_statistics(compiled, rows, params, hard=False, chunk_rows=None, statistics=True):
    """One E-step: expected statistics at ``params`` and the objective there.

    Parameters
    ----------
    compiled : CompiledModel
    rows : Rows
    params : dict
        Internal parameters, ``{node: {param: (n_sets, *own)}}``.
    hard : bool
        Classification EM: the posterior puts all mass on each row's best configuration.
    chunk_rows : int, optional
        Rows per chunk; by default the rows' own (``Rows.chunk_rows``).
    statistics : bool
        With False only the objective is computed (the same number), and ``stats`` is None.

    Returns
    -------
    stats : ExpectedStatistics or None
    objective : float
        The observed-data log-likelihood (sum of row weight times log p(row)),
        or with ``hard`` the complete-data log-likelihood at the chosen configurations.
    """
    tables = _natural_tables(compiled, params)
    plan = _plan(compiled, rows)
    varying = plan.varying
    if plan.missing:
        _prepare_missing(compiled, rows, tables)
    probability_space = not hard and plan.categorical_only
    chunk_rows = rows.chunk_rows if chunk_rows is None else chunk_rows
    # Per-row weights ("rows" layout) are one (n_sets, n_rows) array that every chunk adds
    # its columns to: those chunks share it and run in turn.
    shared = ExpectedStatistics(compiled) if statistics and plan.row_weights else None

    def chunk_statistics(start):
        chunk = slice(start, min(start + chunk_rows, rows.n_rows))
        stats = None if not statistics else ExpectedStatistics(compiled) if shared is None else shared
        weights = rows.weights[chunk]
        constant = _constant_loglik(compiled, rows, tables, varying, chunk)
        joint = None
        if probability_space:
            joint, row_loglik = _posterior_from_probabilities(compiled, rows, tables, varying, chunk, statistics)
        if joint is None:
            joint = _joint(compiled, rows, tables, chunk, varying)
            if hard:
                best = np.argmax(joint, axis=1)
                row_loglik = joint[np.arange(len(joint)), best]
                joint.fill(0.0)
                joint[np.arange(len(joint)), best] = 1.0
            else:
                joint, row_loglik = _normalise(joint, start, posterior_wanted=statistics)
        row_loglik = row_loglik + constant
        _check_rows(row_loglik, start)
        if statistics:
            if not rows.unit_weights:
                joint *= weights[:, None]
            _accumulate(compiled, rows, joint, chunk, stats, varying, tables)
        return stats, float(np.dot(weights, row_loglik))

    # Each chunk's statistics are summed alone and added in chunk order (threads or not), so
    # the result does not depend on the thread count.
    starts = range(0, rows.n_rows, chunk_rows)
    objective = rows.base_total
    if len(starts) == 1:
        stats, chunk_objective = chunk_statistics(0)       # one chunk: its statistics are the E-step's
        objective += chunk_objective
    else:
        stats = None if not statistics else ExpectedStatistics(compiled) if shared is None else shared
        for chunk_stats, chunk_objective in (map(chunk_statistics, starts) if shared is not None
                                             else map_in_order(chunk_statistics, starts)):
            if chunk_stats is not stats:
                stats.add(chunk_stats)
            objective += chunk_objective
    if not statistics:
        return None, objective
    if plan.fixed:
        stats.add(_fixed_statistics(compiled, rows, varying, tables))
    stats.finish(compiled)
    return stats, objective


class _Plan(NamedTuple):
    """What an E-step over given rows needs to know of them beyond the parameters: worked out once."""

    varying: list           # the factors in the posterior (``varying_factors``)
    categorical_only: bool  # every one of them categorical (``categorical_only``)
    missing: bool           # some factor integrates partly missing values out jointly (``_prepare_missing``)
    row_weights: bool       # some factor keeps each row's weight (the "rows" layout)
    fixed: bool             # some factor has no latent node in scope (``_fixed_statistics``)
    summed_axes: dict       # per factor, the axes of a (rows, *latent sizes) posterior outside its scope


def _plan(compiled, rows):
    """The E-step's plan for these rows (kept with them: rows serve one compiled model)."""
    plan = vars(rows).get("_estep_plan")
    if plan is None:
        varying = varying_factors(compiled, rows)
        plan = rows._estep_plan = _Plan(
            varying, categorical_only(compiled, varying),
            any(_conditional_missing(compiled, rows, name) for name in compiled.factors),
            any(factor.layout == "rows" for factor in compiled.factors.values()),
            any(name not in varying for name in compiled.factors),
            {name: _summed_axes(compiled, rows.factors[name], name) for name in compiled.factors})
    return plan


def _summed_axes(compiled, view, name):
    """The axes of a (rows, *latent sizes) posterior that a factor's marginal sums out: those of the latent
    nodes outside its scope (its latent parents and, if latent, itself)."""
    own = (compiled.latent.index(name),) if name in compiled.latent else ()
    scope = set(view.latent_axes + own)
    return tuple(axis + 1 for axis in range(len(compiled.latent)) if axis not in scope)


def _prepare_missing(compiled, rows, tables):
    """What the E-step's partly missing rows share, worked out once before its chunks (on its threads)."""
    for name in compiled.factors:
        factor, view = compiled.factors[name], rows.factors[name]
        if view.missing is not None and factor.missing_rule == "conditional":
            factor.prepare_missing(tables[name].params, view.patterns(factor), tables[name].scratch)


def bilinear_expected_statistics(compiled, rows, params, plan, chunk_rows=None, objective=True, statistics=True):
    """The E-step by the bilinear plan (see ``bilinear.py``), or (None, None) when a row underflows.

    With ``objective=False`` the objective is not computed (returned as None): its per-row
    logarithms are a good part of this E-step's time. With ``statistics=False`` only the
    objective is (the same number), and the statistics returned are None.
    """
    varying = _plan(compiled, rows).varying
    # The statistics alone read only the categorical factors' probabilities: no logarithms then.
    tables = _natural_tables(compiled, params, logs=objective or not statistics)
    if statistics:
        stats = ExpectedStatistics(compiled)
        mixture = bilinear_statistics(plan, tables, rows, stats)
    else:
        stats, mixture = None, bilinear_mixture(plan, tables, rows)
    if mixture is None:
        return None, None
    fixed = _fixed_statistics(compiled, rows, varying, tables)
    if not objective:
        stats.add(fixed)
        stats.finish(compiled)
        return stats, None
    row_loglik = np.log(mixture)
    constant = _constant_total(compiled, rows, tables, varying, fixed)
    if constant is None:
        # Some row has probability 0 under a factor outside the posterior: find and name it.
        chunk_rows = rows.chunk_rows if chunk_rows is None else chunk_rows
        for start in range(0, rows.n_rows, chunk_rows):
            chunk = slice(start, min(start + chunk_rows, rows.n_rows))
            row_loglik[chunk] += _constant_loglik(compiled, rows, tables, varying, chunk)
        _check_rows(row_loglik, 0)
        constant = 0.0
    if stats is not None:
        stats.add(fixed)
        stats.finish(compiled)
    return stats, rows.base_total + float(np.dot(rows.weights, row_loglik)) + constant


def _constant_total(compiled, rows, tables, varying, fixed):
    """The rows' weighted log-density under the factors with no latent node in scope; None if some row's is -inf.

    An observed categorical factor's is its expected counts (fixed, ``fixed``) times its log
    probabilities, summed: no per-row work. Other factors are summed row by row.
    """
    total = 0.0
    for name in compiled.factors:
        if name in varying:
            continue
        factor, view = compiled.factors[name], rows.factors[name]
        if factor.layout == "index" and view.missing is None:
            counts, log_probs = fixed.sums[name], tables[name].eta
            if np.any((counts > 0) & ~np.isfinite(log_probs)):
                return None
            with np.errstate(invalid="ignore"):         # 0 * log 0: categories no row takes
                total += float(np.sum(np.where(counts > 0, counts * log_probs, 0.0)))
            continue
        for start in range(0, rows.n_rows, rows.chunk_rows):
            chunk = slice(start, min(start + rows.chunk_rows, rows.n_rows))
            n = chunk.stop - chunk.start
            part = _contribution(compiled, rows, tables, name, chunk, n).reshape(n)
            if not np.all(np.isfinite(part)):
                return None
            total += float(np.dot(rows.weights[chunk], part))
    return total


def most_probable(compiled, rows, params, chunk_rows=None):
    """Each row's most probable joint configuration of the latent nodes, read off per node.

    Returns
    -------
    dict of str to ndarray of int, shape (n_rows,)
    """
    tables = _natural_tables(compiled, params)
    varying = varying_factors(compiled, rows)
    best = np.empty(rows.n_rows, dtype=np.intp)
    chunk_rows = rows.chunk_rows if chunk_rows is None else chunk_rows
    for start in range(0, rows.n_rows, chunk_rows):
        chunk = slice(start, min(start + chunk_rows, rows.n_rows))
        joint = _joint(compiled, rows, tables, chunk, varying)
        _check_rows(joint.max(axis=1), start)
        best[chunk] = np.argmax(joint, axis=1)
    if not compiled.latent:
        return {}
    per_node = np.unravel_index(best, compiled.latent_sizes)
    return {name: values.astype(np.intp) for name, values in zip(compiled.latent, per_node)}


def varying_factors(compiled, rows):
    """Factors whose scope holds a latent node: only they enter the posterior."""
    return [name for name, view in rows.factors.items()
            if view.latent_axes or name in compiled.latent]


def categorical_only(compiled, varying):
    """Whether every factor in the posterior is categorical (so it can be formed from probabilities)."""
    return bool(varying) and all(compiled.factors[name].layout in CATEGORICAL_LAYOUTS for name in varying)


def _constant_loglik(compiled, rows, tables, varying, chunk):
    """Each row's log-density under the factors with no latent node in scope: (n,) or 0."""
    constant = [name for name in compiled.factors if name not in varying]
    if not constant:
        return 0.0
    n = chunk.stop - chunk.start
    total = np.zeros(n)
    for name in constant:
        total += _contribution(compiled, rows, tables, name, chunk, n).reshape(n)
    return total


def _fixed_statistics(compiled, rows, varying, tables):
    """Statistics of the factors with no latent node in scope.

    The data's own, computed once per fit; except where missing coordinates are
    integrated out under the current parameters, which is done at each E-step.
    """
    fixed = [name for name in compiled.factors if name not in varying]
    moving = [name for name in fixed if _conditional_missing(compiled, rows, name)]
    if not hasattr(rows, "_fixed_statistics"):
        rows._fixed_statistics = _weighted_by_rows(compiled, rows, [n for n in fixed if n not in moving], None)
    if not moving:
        return rows._fixed_statistics
    stats = _weighted_by_rows(compiled, rows, moving, tables)
    stats.add(rows._fixed_statistics)
    return stats


def _weighted_by_rows(compiled, rows, names, tables):
    """Statistics of the named factors with each row's weight spread evenly over the configurations."""
    stats = ExpectedStatistics(compiled)
    for start in range(0, rows.n_rows, rows.chunk_rows):
        chunk = slice(start, min(start + rows.chunk_rows, rows.n_rows))
        weighted = np.repeat(rows.weights[chunk][:, None] / compiled.n_configurations,
                             compiled.n_configurations, axis=1)
        _accumulate(compiled, rows, weighted, chunk, stats, names, tables)
    return stats


def _conditional_missing(compiled, rows, name):
    """Whether the factor's statistics depend on the parameters: missing coordinates integrated out jointly."""
    return compiled.factors[name].missing_rule == "conditional" and rows.factors[name].missing is not None


def _posterior_from_probabilities(compiled, rows, tables, varying, chunk, posterior_wanted=True):
    """The posterior as a product of probability rows, when every varying factor is categorical.

    No exponentials or row maxima: the gathered probabilities are multiplied, summed
    once per row, and divided (not with ``posterior_wanted=False``: see ``_normalise``).
    Returns (None, None) when a row's total underflows, and the caller then works in log space.
    """
    joint = joint_probabilities(compiled, rows, tables, chunk, varying)
    total = joint @ ones(compiled.n_configurations)
    if not np.all(total > UNDERFLOW):
        return None, None
    if posterior_wanted:
        joint /= total[:, None]
    return joint, np.log(total)


def joint_probabilities(compiled, rows, tables, chunk, varying):
    """Product of the (all categorical) varying factors' probabilities per row and configuration: (n, C)."""
    n = chunk.stop - chunk.start
    joint = np.empty((n, compiled.n_configurations))
    shaped = joint.reshape((n,) + compiled.latent_sizes)
    if not varying:
        joint.fill(1.0)
    for position, name in enumerate(varying):
        contribution = _contribution(compiled, rows, tables, name, chunk, n, probabilities=True)
        if len(varying) == 1 and not rows.labels and contribution.shape == joint.shape and \
                contribution.flags.c_contiguous:
            # One factor whose scope is every latent node (a chain's emissions): the fresh array
            # it gives is the product already, in the configurations' order.
            return contribution
        view = rows.factors[name]
        own_axis = compiled.latent.index(name) if name in compiled.latent else None
        shape = (contribution.shape[0],) + tuple(_scope_shape(compiled, view.latent_axes, own_axis))
        if position == 0:
            shaped[...] = contribution.reshape(shape)
        else:
            shaped *= contribution.reshape(shape)
    apply_labels(compiled, rows, shaped, chunk, probabilities=True)
    return joint


def apply_labels(compiled, rows, shaped, chunk, probabilities):
    """Keep, on labelled rows, only the configurations that agree with the labels (partial labels).

    Parameters
    ----------
    shaped : ndarray of shape (n, *latent_sizes)
        The chunk's joint, log-probabilities or probabilities; changed in place.
    """
    for name, labels in rows.labels.items():
        axis = compiled.latent.index(name)
        k = compiled.latent_sizes[axis]
        given = labels[chunk]
        disagree = (given[:, None] >= 0) & (given[:, None] != np.arange(k))
        if not disagree.any():
            continue
        shape = [len(given)] + [1] * len(compiled.latent)
        shape[axis + 1] = k
        disagree = np.broadcast_to(disagree.reshape(shape), shaped.shape)
        shaped[disagree] = 0.0 if probabilities else -np.inf


def statistics_from_posterior(compiled, rows, posterior, chunk_rows=None):
    """Expected statistics for a given posterior over latent configurations (initialisation).

    Parameters
    ----------
    posterior : ndarray of shape (n_rows, n_configurations)
        Rows sum to one.
    """
    stats = ExpectedStatistics(compiled)
    chunk_rows = rows.chunk_rows if chunk_rows is None else chunk_rows
    for start in range(0, rows.n_rows, chunk_rows):
        chunk = slice(start, min(start + chunk_rows, rows.n_rows))
        weighted = posterior[chunk] * rows.weights[chunk][:, None]
        _accumulate(compiled, rows, weighted, chunk, stats, list(compiled.factors))
    stats.finish(compiled)
    return stats


def posterior_marginals(compiled, rows, params, chunk_rows=None):
    """Posterior marginal of every latent node, and each row's log-likelihood.

    Returns
    -------
    marginals : dict of str to ndarray of shape (n_rows, k)
    row_loglik : ndarray of shape (n_rows,)
        Excluding the weights and the log base measure (constant in the parameters).
    """
    tables = _natural_tables(compiled, params)
    marginals = {name: np.empty((rows.n_rows, k)) for name, k in zip(compiled.latent, compiled.latent_sizes)}
    row_loglik = np.empty(rows.n_rows)
    varying = varying_factors(compiled, rows)
    chunk_rows = rows.chunk_rows if chunk_rows is None else chunk_rows
    for start in range(0, rows.n_rows, chunk_rows):
        chunk = slice(start, min(start + chunk_rows, rows.n_rows))
        joint = _joint(compiled, rows, tables, chunk, varying)
        joint, chunk_loglik = _normalise(joint, start)
        row_loglik[chunk] = chunk_loglik + _constant_loglik(compiled, rows, tables, varying, chunk)
        shaped = joint.reshape((len(joint),) + compiled.latent_sizes)
        for axis, name in enumerate(compiled.latent):
            others = tuple(a + 1 for a in range(len(compiled.latent)) if a != axis)
            marginals[name][chunk] = shaped.sum(axis=others)
    return marginals, row_loglik


class _Table(NamedTuple):
    """A factor's parameters as the E-step reads them."""

    eta: np.ndarray                 # (n_sets, n_statistics); log-probabilities (n_sets, k) if categorical
    log_partition: np.ndarray       # (n_sets,), or None for categorical factors
    transposed: np.ndarray          # (k, n_sets) contiguous, for observed categories; else None
    boundary: np.ndarray            # (n_sets,) bool, sets whose natural parameters are infinite; or None
    params: dict
    probabilities: np.ndarray = None             # the probability rows of categorical factors
    transposed_probabilities: np.ndarray = None  # exp(transposed)
    scratch: dict = None                         # per E-step values a factor computes on first need


def _natural_tables(compiled, params, logs=True):
    """Each factor's ``_Table`` at ``params``. With ``logs=False`` a categorical factor's table holds its
    probabilities alone (eta and transposed None): all that the bilinear E-step's statistics read."""
    tables = {}
    for name, factor in compiled.factors.items():
        if not logs and factor.layout in CATEGORICAL_LAYOUTS:
            probabilities = np.asarray(factor.probabilities(params[name]), dtype=float)
            transposed_probabilities = np.ascontiguousarray(probabilities.T) if factor.layout == "index" else None
            tables[name] = _Table(None, None, None, None, params[name], probabilities, transposed_probabilities, {})
            continue
        eta, log_partition = factor.natural(params[name])
        boundary = transposed = None
        if factor.layout == "index":
            transposed = np.ascontiguousarray(eta.T)
        if factor.layout == "dense" and not np.isfinite(eta.sum() + log_partition.sum()):
            # (A finite total shows every entry finite; an infinite one may also be finite entries overflowing.)
            boundary = ~(np.isfinite(eta).all(axis=1) & np.isfinite(log_partition))
            if not boundary.any():
                boundary = None
        probabilities = transposed_probabilities = None
        if factor.layout in CATEGORICAL_LAYOUTS:
            probabilities = np.asarray(factor.probabilities(params[name]), dtype=float)
            transposed_probabilities = None if transposed is None else np.ascontiguousarray(probabilities.T)
        tables[name] = _Table(eta, log_partition, transposed, boundary, params[name], probabilities,
                              transposed_probabilities, {})
    return tables


def _scope_shape(compiled, axes, own_axis=None):
    shape = [1] * len(compiled.latent)
    for axis in axes:
        shape[axis] = compiled.latent_sizes[axis]
    if own_axis is not None:
        shape[own_axis] = compiled.latent_sizes[own_axis]
    return shape


def _joint(compiled, rows, tables, chunk, varying):
    """Joint log-probability of each row in the chunk and each latent configuration.

    Only the factors with a latent node in scope enter; the others add the same
    amount to every configuration of a row and are accounted for separately.

    Returns
    -------
    ndarray of shape (chunk rows, n_configurations)
    """
    n = chunk.stop - chunk.start
    joint = np.empty((n, compiled.n_configurations))
    shaped = joint.reshape((n,) + compiled.latent_sizes)
    if not varying:
        joint.fill(0.0)
    for position, name in enumerate(varying):
        view = rows.factors[name]
        own_axis = compiled.latent.index(name) if name in compiled.latent else None
        contribution = _contribution(compiled, rows, tables, name, chunk, n)
        shape = _scope_shape(compiled, view.latent_axes, own_axis)
        contribution = contribution.reshape((contribution.shape[0],) + tuple(shape))
        if len(varying) == 1 and contribution.shape == shaped.shape and contribution.flags.c_contiguous:
            # Contributions are fresh arrays: a single full-shaped one is the joint itself.
            joint, shaped = contribution.reshape(n, compiled.n_configurations), contribution
            break
        if position == 0:
            shaped[...] = contribution
        else:
            shaped += contribution
    if rows.labels:
        apply_labels(compiled, rows, shaped, chunk, probabilities=False)
    return joint


def _contribution(compiled, rows, tables, name, chunk, n, probabilities=False):
    """One factor's log-density (or, for categorical factors, probability) per row and latent-scope value.

    A row's missing values are integrated out: a missing category or column
    contributes a factor 1, missing coordinates of a multivariate factor leave the
    marginal density of the present ones.

    Returns
    -------
    ndarray of shape (n or 1, latent-parent sizes..., [k if the node is latent])
    """
    factor = compiled.factors[name]
    view = rows.factors[name]
    eta, log_partition, transposed, boundary, factor_params = tables[name][:5]
    if probabilities:
        eta, transposed = tables[name].probabilities, tables[name].transposed_probabilities
    set_index = view.latent_set_index
    if view.observed_offset is not None:
        set_index = view.observed_offset[chunk].reshape((n,) + (1,) * set_index.ndim) + set_index
    positions = view.incomplete_in(chunk)
    if factor.layout == "rows":
        sets = set_index.reshape(-1) if view.observed_offset is None else set_index.reshape(n, -1)
        contribution = factor.row_log_density(view.statistics[chunk], sets, factor_params)
        if len(positions):
            contribution[positions] = 0.0        # a missing value: a factor 1
        return contribution.reshape((n,) + view.latent_set_index.shape)
    if factor.layout == "dense":
        statistics = view.statistics_of(factor, chunk)
        correction = _missing_correction(factor, view, tables[name], chunk, positions) if len(positions) else None
        if view.observed_offset is None:
            flat = None         # every row's sets are set_index: broadcast only if a boundary needs it
            with np.errstate(invalid="ignore"):
                per_set = _narrow_product(statistics, eta.T)
                per_set -= log_partition
            if correction is not None:
                per_set[positions] += correction
            contribution = per_set if view.identity_sets else per_set[:, set_index.reshape(-1)]
        else:
            flat = set_index.reshape(n, -1)
            with np.errstate(invalid="ignore"):
                contribution = np.einsum("ns,nls->nl", statistics, eta[flat]) - log_partition[flat]
            if correction is not None:
                contribution[positions] += np.take_along_axis(correction, flat[positions], axis=1)
        if boundary is not None:
            if flat is None:
                flat = np.broadcast_to(set_index.reshape(-1), (n, set_index.size))
            at_boundary = boundary[flat]
            if at_boundary.any():
                row, column = np.nonzero(at_boundary)
                contribution[row, column] = factor.boundary_log_density(
                    view.values[chunk][row], flat[row, column], factor_params)
        return contribution.reshape((n,) + view.latent_set_index.shape)
    if factor.layout == "index":
        categories = view.statistics[chunk]
        unit = 1.0 if probabilities else 0.0
        if view.observed_offset is None:
            contribution = np.take(transposed, categories, axis=0)      # faster than fancy indexing
            if not view.identity_sets:
                contribution = contribution[:, set_index.reshape(-1)]
            if len(positions):
                contribution[positions] = unit        # a missing category: probability 1
            return contribution.reshape((n,) + set_index.shape)
        flat = set_index.reshape(n, -1)
        contribution = eta[flat, categories[:, None]]
        if len(positions):
            contribution[positions] = unit
        return contribution.reshape(set_index.shape)
    contribution = eta[set_index]
    return contribution[None] if view.observed_offset is None else contribution


def _missing_correction(factor, view, table, chunk, positions):
    """What turns T(x) . eta - A of the chunk's partly missing rows into their marginal log-density.

    Returns
    -------
    ndarray of shape (len(positions), n_sets)
    """
    holes = view.missing[chunk][positions]
    if factor.missing_rule == "columns":
        return factor.missing_correction(table.params, holes, table.scratch)
    # Rows with nothing present contribute 0: their T(x) is 0, so add back A.
    empty = holes.all(axis=1)
    correction = np.empty((len(positions), factor.n_sets))
    correction[empty] = table.log_partition
    _, plan = view.fill_plan(factor, chunk)
    if plan is not None:
        correction[~empty] = factor.missing_correction(table.params, plan, view.patterns(factor), table.scratch)
    return correction


def _normalise(joint, start, posterior_wanted=True):
    """Turn each row's joint log-probabilities into its posterior; return it and log p(row).

    The exponentials are taken unshifted first: when every row's total is finite and
    above underflow (nearly always), no row maximum is needed, and the row sums are a
    matrix-vector product (sums along short rows are slow). Otherwise each row is
    shifted by its maximum. With ``posterior_wanted=False`` (an E-step for its objective
    alone) the rows are not divided by their totals, and the first value returned holds
    unnormalised probabilities.

    Returns
    -------
    posterior : ndarray of shape (n, n_configurations)
    row_loglik : ndarray of shape (n,)
    """
    unit = ones(joint.shape[1])
    with np.errstate(over="ignore", under="ignore"):
        posterior = np.exp(joint)
    total = posterior @ unit
    # Every total finite and above underflow (a NaN fails the first test: min propagates it).
    if np.minimum.reduce(total, initial=np.inf) > UNDERFLOW and np.maximum.reduce(total, initial=0.0) < np.inf:
        if posterior_wanted:
            posterior *= (1.0 / total)[:, None]
        return posterior, np.log(total)
    peak = joint.max(axis=1, keepdims=True)
    _check_rows(peak[:, 0], start)
    np.subtract(joint, peak, out=joint)
    np.exp(joint, out=joint)
    total = joint @ unit
    if posterior_wanted:
        joint /= total[:, None]
    return joint, np.log(total) + peak[:, 0]


def _check_rows(peak, start):
    bad = np.flatnonzero(~np.isfinite(peak))
    if len(bad):
        row = start + int(bad[0])
        raise FitError(f"row {row} has zero probability under the current parameters (every latent "
                       "configuration is impossible); check the data row or the initial parameters")


def _accumulate(compiled, rows, weighted, chunk, stats, names, tables=None):
    """Add a chunk's expected statistics of the named factors, given its weighted posterior (n, n_configurations).

    ``tables`` (the current parameters) are needed where missing coordinates are integrated
    out jointly; without them (at initialisation) those rows' statistics are those of the
    rows with the missing coordinates at the data's mean.
    """
    n = chunk.stop - chunk.start
    shaped = weighted.reshape((n,) + compiled.latent_sizes)
    summed_axes = _plan(compiled, rows).summed_axes
    for name in names:
        factor = compiled.factors[name]
        view = rows.factors[name]
        others = summed_axes[name]
        marginal = shaped.sum(axis=others) if others else shaped
        sums = stats.sums[name]
        set_weights = stats.set_weights[name]
        set_index = view.latent_set_index.reshape(-1)
        n_latent = set_index.size
        if factor.layout == "latent":
            marginal = marginal.reshape(n, n_latent, factor.k)
            if view.observed_offset is None:
                _add_to_sets(sums, set_index, _column_sums(marginal.reshape(n, -1)).reshape(n_latent, factor.k),
                             view.identity_sets)
            elif n_latent == 1:
                # Only observed parents: scatter rows onto their parameter sets in one sparse product.
                sums += rows.scatter(name, chunk, view.observed_offset, factor.n_sets) @ marginal[:, 0, :]
            else:
                sets = view.observed_offset[chunk][:, None] + set_index[None, :]
                flat = (sets[:, :, None] * factor.k + np.arange(factor.k)).reshape(-1)
                sums += np.bincount(flat, weights=marginal.reshape(-1),
                                    minlength=sums.size).reshape(sums.shape)
            continue
        marginal = marginal.reshape(n, n_latent)
        positions = view.incomplete_in(chunk)
        if factor.layout == "index" and view.observed_offset is None:
            # Expected counts per (set, category): the category indicator's sparse transpose times R
            # (a missing category has no indicator).
            counts = rows.scatter(name, chunk, view.statistics, factor.k) @ marginal
            _add_to_sets(sums, set_index, counts.T, view.identity_sets)
            continue
        if view.observed_offset is None:
            # The same sets on every row: only partly missing rows need them per row (the rows layout
            # reads their first row).
            sets = set_index[None, :] if factor.layout == "rows" else \
                None if factor.layout == "dense" and not len(positions) else np.broadcast_to(set_index, (n, n_latent))
        else:
            sets = view.observed_offset[chunk][:, None] + set_index[None, :]
        if factor.layout == "rows":
            _accumulate_row_weights(sums, set_weights, view, marginal, sets, positions, chunk)
            continue
        if factor.layout == "index":
            categories = view.statistics[chunk]
            if len(positions):
                marginal = marginal.copy()
                marginal[positions] = 0.0
                categories = np.where(categories < 0, 0, categories)
            flat = (sets * factor.k + categories[:, None]).reshape(-1)
            sums += np.bincount(flat, weights=marginal.reshape(-1), minlength=sums.size).reshape(sums.shape)
            continue
        if len(positions) and factor.missing_rule == "conditional":
            marginal = _add_conditional_sums(factor, view, marginal, sets, positions, chunk, stats, name,
                                             None if tables is None else tables[name])
        if view.observed_offset is None:
            # A contiguous (sets, rows) operand: OpenBLAS is several times slower on the transposed view.
            # In the statistics' dtype; the sums over chunks stay float64.
            statistics = view.statistics_of(factor, chunk)
            _add_to_sets(sums, set_index, np.ascontiguousarray(marginal.T, dtype=statistics.dtype) @ statistics,
                         view.identity_sets)
            row_weights = _column_sums(marginal)
            _add_to_sets(set_weights, set_index, row_weights if set_weights.ndim == 1 else row_weights[:, None],
                         view.identity_sets)
        else:
            rows_of = np.repeat(np.arange(n), n_latent)
            import scipy.sparse  # imported when first needed: it is slow to import
            scatter = scipy.sparse.csr_matrix((marginal.reshape(-1), (sets.reshape(-1), rows_of)),
                                              shape=(factor.n_sets, n))
            sums += scatter @ view.statistics_of(factor, chunk)
            row_weights = np.bincount(sets.reshape(-1), weights=marginal.reshape(-1), minlength=factor.n_sets)
            set_weights += row_weights if set_weights.ndim == 1 else row_weights[:, None]
        if len(positions) and factor.missing_rule == "columns":
            # A missing column's rows do not count towards that column's weight.
            holes = view.missing[chunk][positions].astype(float)
            if view.observed_offset is None:
                set_weights[set_index] -= marginal[positions].T @ holes
            else:
                set_weights -= _per_set(marginal[positions], sets[positions], factor.n_sets).T @ holes


def _add_to_sets(target, set_index, values, identity):
    """``target[set_index] += values``; on the whole array in place when ``set_index`` is 0, 1, 2, ... over
    all of it (``identity``), which adds the same numbers without a gather and a scatter."""
    if identity and len(set_index) == len(target):
        target += values
    else:
        target[set_index] += values


def _accumulate_row_weights(row_weights, set_weights, view, marginal, sets, positions, chunk):
    """Add a chunk's posterior weight of each row on each set (rows missing the node's value get none).

    ``sets``: each row's parameter sets, (n, n_latent); without observed parents every row has the
    same and only the first row is read.
    """
    weights = row_weights.bind(view.statistics)
    if len(positions):
        marginal = marginal.copy()
        marginal[positions] = 0.0
    n, n_latent = marginal.shape
    rows = np.arange(chunk.start, chunk.stop)
    if view.observed_offset is None:
        if view.identity_sets:
            weights[:, chunk] += marginal.T
        else:
            weights[np.ix_(sets[0], rows)] += marginal.T
        set_weights[sets[0]] += _column_sums(marginal)
    else:
        np.add.at(weights, (sets.reshape(-1), np.repeat(rows, n_latent)), marginal.reshape(-1))
        set_weights += np.bincount(sets.reshape(-1), weights=marginal.reshape(-1), minlength=len(set_weights))


def _per_set(marginal, sets, n_sets):
    """Rows' weights spread over all parameter sets: (m, n_sets) from (m, n_latent) weights on given sets."""
    out = np.zeros((len(marginal), n_sets))
    if len(sets) and (sets == sets[0]).all() and len(np.unique(sets[0])) == sets.shape[1]:
        out[:, sets[0]] = marginal          # every row on the same distinct sets (no observed parents)
        return out
    np.add.at(out, (np.arange(len(marginal))[:, None], sets), marginal)
    return out


def _add_conditional_sums(factor, view, marginal, sets, positions, chunk, stats, name, table):
    """Add what integrating out partly missing rows' missing coordinates adds to their T(x0) statistics.

    Returns the marginal with the rows that have nothing present zeroed (they contribute no
    statistics), for the ordinary product, which gives every other row's T(x0).
    """
    holes = view.missing[chunk][positions]
    empty = holes.all(axis=1)
    remaining = marginal
    if empty.any():
        remaining = marginal.copy()
        remaining[positions[empty]] = 0.0
    partial, plan = view.fill_plan(factor, chunk)
    if table is not None and plan is not None:
        if view.observed_offset is None and view.identity_sets:
            weights = np.take(marginal, partial, axis=0)           # already one column per set, in order
        else:
            weights = _per_set(marginal[partial], sets[partial], factor.n_sets)
        stats.sums[name] += factor.conditional_sums(table.params, plan, view.patterns(factor), weights,
                                                    table.scratch)
    return remaining


def _column_sums(array):
    """Column sums of a tall (n, m) array as one matrix-vector product (numpy's axis-0 sum is several times slower)."""
    return ones(len(array)) @ array


def ones(n):
    """A vector of n ones, for sums as products; shared and read-only up to ``SHARED_ONES``."""
    return _shared_ones(n) if n <= SHARED_ONES else np.ones(n)


@functools.lru_cache(maxsize=64)
def _shared_ones(n):
    vector = np.ones(n)
    vector.flags.writeable = False
    return vector


# A product of a tall array with a narrow one (few statistics times few parameter sets) is
# cut into row blocks of at most this many multiply-adds: OpenBLAS runs larger ones on
# several threads, which for these shapes is 3-4x slower than one thread on a quiet machine
# and stalls on a busy one.
NARROW_BLOCK = 1 << 17


def _narrow_product(tall, narrow):
    """``tall @ narrow`` for tall (n, s) and narrow (s, m), in float64; in row blocks when s * m is small.

    float32 statistics are multiplied in float32 (half the time) and the product widened.
    """
    narrow = narrow.astype(tall.dtype, copy=False)
    width = tall.shape[1] * narrow.shape[1]
    if width > 256 or len(tall) * width <= NARROW_BLOCK:
        return (tall @ narrow).astype(np.float64, copy=False)
    out = np.empty((len(tall), narrow.shape[1]), dtype=tall.dtype)
    step = max(1, NARROW_BLOCK // width)
    for first in range(0, len(tall), step):
        np.matmul(tall[first:first + step], narrow, out=out[first:first + step])
    return out.astype(np.float64, copy=False)
