"""CompiledModel: each node's derivation turned into numpy callables, built once per model.

Every factor offers the same few operations to the E-step and the EM loop:
statistics of the data (computed once per fit), natural parameters and
log-partition of the current parameters, and the M-step from weighted sums of
statistics. There are three statistic layouts, and they are the only thing
the E-step distinguishes:

``"dense"``   T(x) is a (n_rows, n_statistics) array (scalar families, the normal);
``"index"``   T(x) is the indicator of an observed category, kept as its index;
``"latent"``  the indicator of a latent category, which the posterior itself supplies.

Parameters are held internally as arrays of shape (n_sets, *own), one row per
configuration of the node's parents (flattened in ``parents`` order), with tied
parameters repeated; the user sees (K1, ..., Km, *own), tied ones as (*own).
"""

import math
import threading
import weakref
import warnings
from dataclasses import dataclass

import numpy as np

from .errors import DataError, FamilyError, FitError, InitError, NotExponentialFamily
from .kernels import general_kernels, regression_kernels, scalar_kernels, simplex_kernels
from .numeric import NewtonProblem, weighted_sum
from .params import as_float_array

DEFAULT_START = {"real": 0.0, "positive": 1.0, "unit": 0.5}


@dataclass(frozen=True)
class ParamSpec:
    """A parameter of a factor: its own shape, domain and roles."""

    name: str
    own_shape: tuple
    domain: str
    tied_across_parents: bool = False
    symmetric: bool = False
    simplex: bool = False


def _domain_problem(spec, array, closed):
    """What puts a parameter's values outside its domain (closed: the boundary allowed), or None.

    Parameters
    ----------
    spec : ParamSpec
    array : ndarray of float
        The values in the user's shape.
    closed : bool

    Returns
    -------
    str or None
        The problem, worded to follow the parameter's name.
    """
    # SQUAREM checks each extrapolated point here: each test reads the least and greatest value (a nan
    # carries through both) instead of building a mask of the array.
    if not array.size:
        return None
    low, high = array.min(), array.max()
    if not (np.isfinite(low) and np.isfinite(high)):
        return "has non-finite values"
    if spec.domain == "positive" and not spec.symmetric and (low < 0 if closed else low <= 0):
        return f"must be {'>= 0' if closed else 'positive'}"
    if spec.domain == "unit" and not spec.simplex and (low < 0 or high > 1 if closed else low <= 0 or high >= 1):
        return f"must lie {'between 0 and 1' if closed else 'strictly between 0 and 1'}"
    # The tolerances are np.allclose's (rtol 1e-5, atol 1e-8), written out: allclose is slow on small arrays.
    if spec.simplex and (low < 0 or (np.abs(array.sum(axis=-1) - 1.0) > 1e-8 + 1e-5).any()):
        return "rows must be probabilities summing to 1"
    if spec.symmetric:
        transposed = np.swapaxes(array, -1, -2)
        if np.any(np.abs(array - transposed) > 1e-8 + 1e-5 * np.abs(transposed)):
            return "must be symmetric"
        if np.any(np.linalg.eigvalsh(array) <= 0):
            return "must be positive definite"
    return None


class Factor:
    """What every compiled factor shares: parents, parameter shapes and conversions."""

    layout = "dense"
    # How a row with some of the node's values missing enters: each missing column drops out
    # ("columns": independent columns, categories), or the missing coordinates are integrated
    # out jointly, their statistics replaced by conditional moments ("conditional").
    missing_rule = "columns"

    def __init__(self, model, node):
        self.node = node
        self.name = node.name
        self.parents = node.parents
        self.parent_sizes = tuple(model.nodes[p].k for p in node.parents)
        self.n_sets = int(np.prod(self.parent_sizes, dtype=int)) if self.parent_sizes else 1
        self.location = None
        self.regularized = ()
        self.params = {}

    # -- shapes ---------------------------------------------------------------------------
    def external_shape(self, spec):
        return spec.own_shape if spec.tied_across_parents else self.parent_sizes + spec.own_shape

    def to_external(self, internal, shift=None):
        """Internal (n_sets, *own) arrays -> the user's shapes, in the data's coordinates."""
        out = {}
        for name, spec in self.params.items():
            value = np.array(internal[name], dtype=float)
            if name == self.location and shift is not None:
                value = value + shift
            if spec.tied_across_parents:
                value = value[0]
            out[name] = value.reshape(self.external_shape(spec))
        return out

    def to_internal(self, external, shift=None):
        """The user's shapes -> internal (n_sets, *own) arrays, in centred coordinates."""
        out = {}
        for name, spec in self.params.items():
            value = np.asarray(external[name], dtype=float)
            if spec.tied_across_parents:
                value = np.broadcast_to(value, (self.n_sets,) + spec.own_shape)
            value = np.array(value.reshape((self.n_sets,) + spec.own_shape))
            if name == self.location and shift is not None:
                value = value - shift
            out[name] = value
        return out

    def check_param(self, name, value, where, closed=False):
        """Validate a user-given parameter's shape and domain (closed: boundary allowed); return floats."""
        spec = self.params.get(name)
        if spec is None:
            raise InitError(f"{where}: node '{self.name}' has no parameter '{name}'; "
                            f"its parameters are {', '.join(self.params)}")
        array = as_float_array(value, f"{self.name}.{name}", where)
        expected = self.external_shape(spec)
        if array.shape != expected:
            raise InitError(f"{where}: '{self.name}.{name}' has shape {array.shape}; expected {expected}"
                            f" ({self._shape_story(spec)})")
        problem = _domain_problem(spec, array, closed)
        if problem is not None:
            raise InitError(f"{where}: '{self.name}.{name}' {problem}")
        return array

    def in_domain(self, internal, shift=None):
        """Whether internal parameters (``{param: (n_sets, *own)}``) lie inside their open domains, as
        ``check_param`` would accept them from a user (SQUAREM's extrapolated points are checked so)."""
        return all(_domain_problem(self.params[name], value, closed=False) is None
                   for name, value in self.to_external(internal, shift).items())

    def _shape_story(self, spec):
        parts = [f"{p} has {k} values" for p, k in zip(self.parents, self.parent_sizes)]
        lead = "one set per parent value: " + ", ".join(parts) if parts and not spec.tied_across_parents \
            else "shared by all parent values" if spec.tied_across_parents else "no parents"
        return f"{lead}; own shape {spec.own_shape}"

    @property
    def width(self):
        """Number of columns of the statistics array (categories for a categorical factor)."""
        return self.statistic_count

    def n_free(self):
        """Number of free parameters, for BIC and AIC."""
        total = 0
        for spec in self.params.values():
            size = math.prod(spec.own_shape)
            if spec.symmetric:
                d = spec.own_shape[-1]
                size = d * (d + 1) // 2
            if spec.simplex:
                size -= 1
            total += size * (1 if spec.tied_across_parents else self.n_sets)
        return total

    # -- data -----------------------------------------------------------------------------
    @property
    def weight_shape(self):
        """Shape of the E-step's weight per parameter set: (n_sets,), or (n_sets, columns) for independent columns."""
        return (self.n_sets,)

    def shift_for(self, values, weights):
        """The centring shift of a location family's data (weighted means of the present values), else None."""
        sums = self.shift_sums(values, weights)
        return None if sums is None else (sums[0] / sums[1]).reshape(values.shape[1:])

    def shift_sums(self, values, weights):
        """The weighted sums behind the shift, (total, weight) per column, which add over blocks of rows; or None."""
        if self.location is None:
            return None
        flat = values.reshape(len(values), -1)
        present = ~np.isnan(flat)
        mass = weights[:, None] * present
        return (mass * np.where(present, flat, 0.0)).sum(axis=0), mass.sum(axis=0)

    def base(self, values, holes=None):
        """Log base measure of each row, (n_rows,); 0 for factors without one."""
        return np.zeros(len(values))

    def statistics_with_holes(self, values, holes):
        """T(X) of rows with missing cells: the missing ones filled with 0 (a factor may do otherwise)."""
        return self.statistics(np.where(holes.reshape(values.shape), 0.0, values))

    def _keep_empty_sets(self, new, old, set_weights):
        """Sets that received no weight keep their previous parameters (reported, never guessed)."""
        empty = set_weights <= 0
        if not empty.any():
            return new
        if old is None:
            warnings.warn(f"node '{self.name}': {int(empty.sum())} parameter set(s) received no weight "
                          "at initialisation; they start at default values", RuntimeWarning, stacklevel=4)
            for name, spec in self.params.items():
                new[name][empty] = self.default_value(spec)
            return new
        for name in self.params:
            new[name][empty] = old[name][empty]
        return new

    def log_prior(self, params):
        """The log prior density at the parameters; factors without a prior contribute 0."""
        return 0.0

    def default_value(self, spec):
        if spec.simplex:
            return np.full(spec.own_shape, 1.0 / spec.own_shape[-1])
        if spec.symmetric:
            return np.eye(spec.own_shape[-1])
        return np.full(spec.own_shape, DEFAULT_START[spec.domain])

    def describe_set(self, index):
        """Which parent values a parameter set serves, for messages: ``z = 1`` (or ``the only set``)."""
        if not self.parents:
            return "its only parameter set"
        values = np.unravel_index(int(index), self.parent_sizes)
        return "the set " + ", ".join(f"{p} = {v}" for p, v in zip(self.parents, values))

    def smallest_spread(self, params):
        """Per parameter set, the smallest variance (or covariance eigenvalue) of the regularised parameters.

        Returns
        -------
        ndarray of shape (n_sets,), or None when the factor has no such parameter
        """
        smallest = None
        for name in self.regularized:
            value = np.asarray(params[name], dtype=float).reshape((self.n_sets,) + self.params[name].own_shape)
            if self.params[name].symmetric:
                finite = np.isfinite(value).all(axis=(-2, -1))
                spread = np.full(self.n_sets, np.nan)
                spread[finite] = np.linalg.eigvalsh(value[finite]).min(axis=-1)
            else:
                spread = value.reshape(self.n_sets, -1).min(axis=1)
            smallest = spread if smallest is None else np.fmin(smallest, spread)
        return smallest

    def _regularize(self, params, reg_covar):
        for name in self.regularized:
            value = params[name]
            if self.params[name].symmetric:
                d = value.shape[-1]
                value[..., np.arange(d), np.arange(d)] += reg_covar
            else:
                value += reg_covar
        return params


def _with_shape(array, shape):
    """``array`` broadcast to ``shape`` (read-only), or itself when it has that shape (np.broadcast_to
    costs more than the small arrays of a factor's parameters)."""
    return array if array.shape == shape else np.broadcast_to(array, shape)


class ScalarFactor(Factor):
    """A scalar family on one or more independent columns, from its derived solution."""

    def __init__(self, model, node, form):
        super().__init__(model, node)
        family = node.family
        prior = node.prior[1] if node.prior and node.prior[0] == "logpdf" else None
        try:
            kernels = scalar_kernels(family, node.constants, prior)
        except FamilyError as exc:
            raise type(exc)(f"{model.source}: node '{node.name}': {exc}") from None
        self.kernels = kernels
        self.dim = node.dim
        self.vector = node.columns is not None or node.dim > 1
        # The data are centred for accuracy, which shifts a location parameter; a prior is declared on the
        # parameter itself, and nodes sharing parameters pool statistics of their own data, so such nodes
        # are not centred.
        self.location = family.location if prior is None and not model.in_shared_set(node.name) else None
        self.regularized = family.regularized
        self.param_names = list(kernels.param_names)
        tie_columns = set(form.tie_across_columns) if form else set()
        tie_parents = set(form.tie_across_parents) if form else set()
        for name in tie_columns | tie_parents:
            if name not in kernels.poolable:
                reason = "a prior is declared on the node" if prior else "its update is not a weighted mean"
                raise FamilyError(f"{model.source}: node '{node.name}': parameter '{name}' of "
                                  f"'{family.name}' cannot be tied ({reason})")
        self.tie_columns = tie_columns
        for name in self.param_names:
            own = () if (not self.vector or name in tie_columns) else (self.dim,)
            self.params[name] = ParamSpec(name, own, family.domains[name],
                                          tied_across_parents=name in tie_parents)
        self.statistic_count = kernels.statistic_count
        self._statistics = kernels.statistics
        self._base = kernels.base
        self._natural_and_log_partition = kernels.natural_and_log_partition
        self._log_partition = kernels.log_partition
        self._solver = kernels.solver
        self._pooled = kernels.pooled

    @property
    def width(self):
        return self.dim * self.statistic_count

    @property
    def weight_shape(self):
        return (self.n_sets, self.dim)

    def _columns(self, params):
        """Parameters as (n_sets, dim) arrays, tied ones broadcast."""
        return [_with_shape(params[name].reshape(self.n_sets, -1), (self.n_sets, self.dim))
                for name in self.param_names]

    def statistics(self, values):
        """T of each column: (n_rows, dim * n_statistics), column-major in (column, statistic)."""
        values = values.reshape(len(values), self.dim)
        stacked = np.stack([t(values) for t in self._statistics], axis=-1)
        return stacked.reshape(len(values), self.dim * self.statistic_count)

    def base(self, values, holes=None):
        """Log base measure of each row, summed over its present columns: (n_rows,)."""
        values = values.reshape(len(values), self.dim)
        with np.errstate(all="ignore"):
            per_column = np.broadcast_to(self._base(values), values.shape)
        if holes is not None:
            per_column = np.where(holes.reshape(values.shape), 0.0, per_column)
        return per_column.sum(axis=1)

    def statistics_with_holes(self, values, holes):
        """T of each column, zero in the missing cells (they contribute no statistics)."""
        values = values.reshape(len(values), self.dim)
        holes = holes.reshape(values.shape)
        # Any value in the support serves as the filler: its statistics are zeroed next.
        filler = np.array([values[~holes[:, j], j][0] if (~holes[:, j]).any() else 0.0 for j in range(self.dim)])
        statistics = self.statistics(np.where(holes, filler, values))
        statistics[np.repeat(holes, self.statistic_count, axis=1)] = 0.0
        return statistics

    def natural(self, params):
        """eta of shape (n_sets, dim * n_statistics) and A of shape (n_sets,)."""
        columns = self._columns(params)
        with np.errstate(all="ignore"):
            *natural, log_partition = self._natural_and_log_partition(*columns)
            # (np.stack of a single array costs more than the small arrays it is called on)
            eta = natural[0][..., None] if len(natural) == 1 else np.stack(natural, axis=-1)
            log_partition = log_partition.sum(axis=1)
        return eta.reshape(self.n_sets, -1), log_partition

    def missing_correction(self, params, holes, context):
        """What a row's missing cells take off T . eta - A: their columns' log-partitions, (m, n_sets).

        Parameters
        ----------
        holes : ndarray of bool, shape (m, dim)
        context : dict
            Per E-step scratch space (holds the per-column log-partitions).
        """
        if "column_log_partition" not in context:
            with np.errstate(all="ignore"):
                per_column = self._log_partition(*self._columns(params))
            context["column_log_partition"] = np.broadcast_to(per_column, (self.n_sets, self.dim))
        return holes @ context["column_log_partition"].T

    def boundary_log_density(self, values, sets, params):
        """log p(x) - h(x) evaluated directly, for parameters on the boundary of their domain.

        There the natural parameters are infinite (Bernoulli p = 0: eta = -inf)
        and T . eta - A is undefined; the declared log-density with
        0 * log(0) = 0 is not.

        Parameters
        ----------
        values : ndarray of shape (m, dim)
        sets : ndarray of int, shape (m,)
        params : dict
            Internal parameters.

        Returns
        -------
        ndarray of shape (m,)
        """
        columns = [c[sets] for c in self._columns(params)]
        values = values.reshape(len(values), self.dim)
        with np.errstate(all="ignore"):
            density = self.kernels.boundary_log_density(values, *columns)
        # A missing cell contributes a factor 1.
        return np.where(np.isnan(values), 0.0, np.broadcast_to(density, values.shape)).sum(axis=1)

    def mstep(self, sums, set_weights, old, reg_covar):
        """New parameters from weighted sums of the statistics.

        Parameters
        ----------
        sums : ndarray of shape (n_sets, dim * n_statistics)
        set_weights : ndarray of shape (n_sets, dim)
            The weight of each set on each column (rows where the column is missing do not count).
        old : dict or None
            The previous internal parameters (start of any numeric search).
        reg_covar : float
        """
        set_weights = _with_shape(set_weights.reshape(self.n_sets, -1), (self.n_sets, self.dim))
        with np.errstate(invalid="ignore", divide="ignore"):
            means = sums.reshape(self.n_sets, self.dim, self.statistic_count) / set_weights[:, :, None]
        flat = means.reshape(-1, self.statistic_count)
        if old is None:
            start = {n: np.full(len(flat), DEFAULT_START[s.domain]) for n, s in self.params.items()}
        else:
            start = {n: _with_shape(old[n].reshape(self.n_sets, -1), (self.n_sets, self.dim)).ravel()
                     for n in self.param_names}
        # Only (set, column) pairs with weight have mean statistics; the others keep their values below
        # (their placeholder means need not be attainable, and a numeric solve would find no optimum).
        weighted = set_weights.reshape(-1) > 0
        # Every pair weighted, with finite means (a finite total shows every entry finite): none is set
        # aside, and the solve's results are the new values themselves.
        every_pair = bool(weighted.all() and np.isfinite(flat.sum()))
        if every_pair:
            solved = self._solver.solve(flat, start, set_weights.reshape(-1))
        else:
            used = weighted & np.isfinite(flat).all(axis=1)
            solved = {n: np.array(start[n], dtype=float) for n in self.param_names}
            if used.any():
                part = self._solver.solve(flat[used], {n: np.asarray(start[n])[used] for n in self.param_names},
                                          set_weights.reshape(-1)[used])
                for name in self.param_names:
                    solved[name][used] = part[name]
        new = {}
        for name, spec in self.params.items():
            value = np.asarray(solved[name], dtype=float).reshape(self.n_sets, self.dim)
            if name in self._pooled and (name in self.tie_columns or spec.tied_across_parents):
                value = self._pool(name, means, set_weights, spec)
            new[name] = value.reshape((self.n_sets,) + spec.own_shape).copy()
        if not every_pair:
            new = self._keep_empty_columns(new, old, set_weights)
        return self._regularize(new, reg_covar)

    def log_prior(self, params):
        """The declared log prior density summed over the parameter sets and columns (0 without one)."""
        if self.kernels.log_prior is None:
            return 0.0
        with np.errstate(all="ignore"):
            return float(np.sum(self.kernels.log_prior(*self._columns(params))))

    def _keep_empty_columns(self, new, old, set_weights):
        """A set's column that received no weight (all its rows missing there) keeps its previous value."""
        weighted = set_weights > 0
        if weighted.all():
            return new
        empty_sets = ~weighted.any(axis=1)
        new = self._keep_empty_sets(new, old, np.where(empty_sets, 0.0, 1.0))
        empty = (set_weights <= 0) & ~empty_sets[:, None]
        if not empty.any():
            return new
        for name, spec in self.params.items():
            if spec.own_shape != (self.dim,):
                continue
            fallback = np.broadcast_to(self.default_value(spec), new[name].shape) if old is None else old[name]
            new[name][empty] = fallback[empty]
        return new

    def _pool(self, name, means, set_weights, spec):
        with np.errstate(invalid="ignore"):
            phi = self._pooled[name](*[means[..., j] for j in range(self.statistic_count)])
        if name in self.tie_columns:
            # Each column weighs by its set's weight on it (they differ where values are missing).
            column_weights = set_weights.sum(axis=1, keepdims=True)
            with np.errstate(invalid="ignore", divide="ignore"):
                phi = (np.where(set_weights > 0, phi, 0.0) * set_weights).sum(axis=1, keepdims=True) / column_weights
        if spec.tied_across_parents:
            totals = set_weights.sum(axis=1)
            used = totals > 0
            phi = np.broadcast_to(np.average(phi[used], axis=0, weights=totals[used]), phi.shape)
        return np.broadcast_to(phi, (self.n_sets, phi.shape[1]))


class GaussianFactor(Factor):
    """A multivariate normal (full or tied covariance), from its declared parts."""

    def __init__(self, model, node, form):
        super().__init__(model, node)
        family = model.registry.internal(form.family)
        self.parts = family.parts
        self.dim = node.dim
        # Nodes sharing parameters pool statistics of their own data: not centred (see ScalarFactor).
        self.location = None if model.in_shared_set(node.name) else family.location
        self.regularized = family.regularized
        tie_parents = set(form.tie_across_parents)
        self.params["mean"] = ParamSpec("mean", (self.dim,), "real", "mean" in tie_parents)
        self.params["cov"] = ParamSpec("cov", (self.dim, self.dim), "positive", "cov" in tie_parents,
                                       symmetric=True)
        self.statistic_count = self.parts.statistic_size(self.dim)

    missing_rule = "conditional"

    def statistics(self, values):
        return self.parts.statistics(values.reshape(len(values), self.dim))

    def base(self, values, holes=None):
        """-dim/2 log(2 pi) per row, 0 on rows with nothing present.

        A partly missing row's missing coordinates give their share back in ``missing_correction``.
        """
        base = np.full(len(values), self.parts.base(self.dim))
        if holes is not None:
            base[holes.reshape(len(values), -1).all(axis=1)] = 0.0
        return base

    def natural(self, params):
        return self.parts.natural(params["mean"], params["cov"])

    def _conditionals(self, params, patterns, context):
        """Precision, P mu and the patterns' conditional covariances at ``params``: once per E-step."""
        key = ("conditionals", id(patterns))
        # Worked out before the E-step's chunks (``prepare_missing``), so its threads only read them.
        if key not in context:
            if "precision" not in context:
                context["precision"] = self.parts.precision_and_shift(params["mean"], params["cov"])
            precision, _ = context["precision"]
            context[key] = self.parts.pattern_conditionals(precision, patterns)
        return context["precision"] + (context[key],)

    def prepare_missing(self, params, patterns, context):
        """Work out, before the E-step's chunks, what all its partly missing rows share (per pattern)."""
        self._conditionals(params, patterns, context)

    def missing_patterns(self, holes):
        """The distinct missing-coordinate patterns of a data set's rows (built once per data set)."""
        return self.parts.missing_patterns(holes)

    def missing_plan(self, x0, missing, positions, patterns):
        """The index work for a chunk's partly missing rows (built once per data set).

        Parameters
        ----------
        x0 : ndarray of shape (m, dim)
            The rows, zero where missing; each has some coordinate present and some missing.
        missing : ndarray of bool, shape (m, dim)
        positions : ndarray of int, shape (m,)
            The rows' indices in the data set ``patterns`` describes.
        """
        return patterns.plan(x0, missing, positions)

    def missing_correction(self, params, plan, patterns, context):
        """The marginal log-density of partly missing rows minus their joint one at x0, (m, n_sets)."""
        return self._fill(params, plan, patterns, context)[0]

    def _fill(self, params, plan, patterns, context):
        """Corrections and conditional means of a plan's rows; kept for the plan last asked.

        The E-step asks for the same chunk's rows twice (densities, then statistics): the
        second time costs nothing. One plan is kept per thread, as each of the E-step's
        threads works through its own chunks.
        """
        slot = ("filled", threading.get_ident())
        if slot not in context or context[slot][0] is not plan:
            precision, shifted, conditionals = self._conditionals(params, patterns, context)
            context[slot] = (plan, self.parts.conditional_fill(plan, precision, shifted, conditionals))
        return context[slot][1]

    def conditional_sums(self, params, plan, patterns, weights, context):
        """What integrating out the missing coordinates adds to the weighted sums of T(x0).

        Parameters
        ----------
        weights : ndarray of shape (m, n_sets)

        Returns
        -------
        ndarray of shape (n_sets, statistic_count)
        """
        _, fills = self._fill(params, plan, patterns, context)
        conditionals = self._conditionals(params, patterns, context)[2]
        return self.parts.conditional_moments(plan, weights, conditionals, fills)

    def mstep(self, sums, set_weights, old, reg_covar):
        with np.errstate(invalid="ignore", divide="ignore"):
            means = sums / set_weights[:, None]
        means = np.where(np.isfinite(means), means, 0.0)
        new = self.parts.moment_map(means, self.dim)
        for name, spec in self.params.items():
            if spec.tied_across_parents:
                used = set_weights > 0
                pooled = np.average(new[name][used], axis=0, weights=set_weights[used])
                new[name] = np.broadcast_to(pooled, new[name].shape).copy()
        new = self._keep_empty_sets(new, old, set_weights)
        return self._regularize(new, reg_covar)


class CategoricalFactor(Factor):
    """A categorical node, observed (index layout) or latent, from its derived simplex update."""

    def __init__(self, model, node):
        super().__init__(model, node)
        self.layout = "latent" if node.latent else "index"
        self.k = node.k
        prior_name = node.prior[0] if node.prior else None
        self.kernels = simplex_kernels(node.family, prior_name)
        self.params["probs"] = ParamSpec("probs", (self.k,), "unit", simplex=True)
        self.statistic_count = self.k
        # Probabilities written in free parameters are set by the model's FreeBlock, not here.
        self.expressed = node.probs is not None
        self.concentration = self._concentration(node)

    def _concentration(self, node):
        """The prior's concentration per set and category, (n_sets, k), as a read-only broadcast view.

        A view, so that a node with many categories allocates nothing here.
        """
        shape = (self.n_sets, self.k)
        if not node.prior:
            return np.broadcast_to(1.0, shape)
        return np.broadcast_to(node.prior[1].reshape((-1, self.k) if node.prior[1].ndim else ()), shape)

    def statistics(self, values):
        return values

    def natural(self, params):
        with np.errstate(divide="ignore"):
            return np.log(params["probs"]), None

    def probabilities(self, params):
        """The probability rows themselves, shape (n_sets, k), for E-steps that multiply them."""
        return params["probs"]

    def log_prior(self, params):
        """The prior's log-density at the parameters (0 without a prior)."""
        if self.kernels.prior is None:
            return 0.0
        with np.errstate(divide="ignore", invalid="ignore"):
            elements = self.kernels.prior_element(params["probs"], self.concentration)
        if not hasattr(self, "_prior_normaliser"):
            self._prior_normaliser = float(np.sum(self.kernels.prior_normaliser(self.concentration)))
        return float(np.sum(elements)) + self._prior_normaliser

    def n_free(self):
        return 0 if self.expressed else super().n_free()

    def check_param(self, name, value, where, closed=False):
        if self.expressed:
            raise InitError(f"{where}: the probs of node '{self.name}' are expressions in free parameters; "
                            "give those parameters (top-level entries of init) instead")
        return super().check_param(name, value, where, closed)

    def mstep(self, sums, set_weights, old, reg_covar):
        if self.expressed:
            return {"probs": np.full((self.n_sets, self.k), 1.0 / self.k) if old is None else old["probs"]}
        numerator = self.kernels.numerator(sums, self.concentration)
        total = numerator.sum(axis=1, keepdims=True)
        with np.errstate(invalid="ignore", divide="ignore"):
            probs = numerator / total
        return self._keep_empty_sets({"probs": probs}, old, total[:, 0])


class ChainFactor(CategoricalFactor):
    """A hidden Markov chain's node: its distribution at a sequence's first step and after each state.

    Internally one categorical factor whose parent is the previous state, with one
    more parent value, "no previous step": set 0 holds ``start`` (k,) and sets
    1..k the rows of ``probs`` (k, k). So the derived simplex update, and any
    Dirichlet prior, serve both unchanged; the chain engine supplies the counts
    (first-step posteriors and expected transitions).
    """

    def __init__(self, model, node):
        super().__init__(model, node)
        self.n_sets = self.k + 1
        self.parent_sizes = ()
        self.concentration = self._concentration(node)
        self.params = {"start": ParamSpec("start", (self.k,), "unit", simplex=True),
                       "probs": ParamSpec("probs", (self.k, self.k), "unit", simplex=True)}

    def external_shape(self, spec):
        return spec.own_shape

    def to_external(self, internal, shift=None):
        rows = np.array(internal["probs"], dtype=float)
        return {"start": rows[0].copy(), "probs": rows[1:].copy()}

    def to_internal(self, external, shift=None):
        start = np.asarray(external["start"], dtype=float).reshape(1, self.k)
        probs = np.asarray(external["probs"], dtype=float).reshape(self.k, self.k)
        return {"probs": np.vstack([start, probs])}

    def n_free(self):
        return (self.k - 1) * (self.k + 1)

    def describe_set(self, index):
        return "the start" if index == 0 else f"the row after state {index - 1}"

    def mstep(self, sums, set_weights, old, reg_covar):
        """Each row (start, then after each state) from its expected counts; a row never reached keeps its values."""
        numerator = self.kernels.numerator(sums, self.concentration)
        total = numerator.sum(axis=1, keepdims=True)
        with np.errstate(invalid="ignore", divide="ignore"):
            probs = numerator / total
        empty = ~(total[:, 0] > 0)
        if empty.any():
            probs[empty] = 1.0 / self.k if old is None else old["probs"][empty]
        return {"probs": probs}


class DeterministicFactor(Factor):
    """An observed category that is a fixed function (``table``) of its parent's: no parameters.

    In the E-step it is a categorical factor whose probability rows are indicators,
    so it keeps only the parent values that map to the observed category.
    """

    layout = "index"

    def __init__(self, model, node):
        super().__init__(model, node)
        self.k = node.k
        self.statistic_count = self.k
        indicator = np.zeros((self.n_sets, self.k))
        indicator[np.arange(self.n_sets), np.asarray(node.table)] = 1.0
        self._indicator = indicator
        with np.errstate(divide="ignore"):
            self._log_table = np.log(indicator)

    def statistics(self, values):
        return values

    def natural(self, params):
        return self._log_table, None

    def probabilities(self, params):
        return self._indicator

    def mstep(self, sums, set_weights, old, reg_covar):
        return {}


class CovariateFactor(Factor):
    """An observed column that is only a covariate: no parameters and no term in the likelihood.

    Its values reach the nodes it is a continuous parent of (``RegressionFactor``).
    """

    statistic_count = 0

    def statistics(self, values):
        return np.zeros((len(values), 0))

    def natural(self, params):
        return np.zeros((self.n_sets, 0)), np.zeros(self.n_sets)

    def mstep(self, sums, set_weights, old, reg_covar):
        return {}


class RowsFactor(Factor):
    """A factor with no finite sufficient statistics: the E-step evaluates its log-density per row and set.

    Its statistics are each row's posterior weight on each set (``RowWeights``, the
    "rows" layout), and its M-step iterates over the rows. The row data are the
    node's value, then any further columns the factor needs (covariates).
    """

    layout = "rows"

    def row_data(self, node_data):
        """The node's values as one column, (n_rows, 1)."""
        return np.asarray(node_data.values[self.name], dtype=float).reshape(node_data.n_rows, 1)

    def statistics(self, values):
        """The row data itself: (n_rows, statistic_count)."""
        return np.asarray(values, dtype=float).reshape(len(values), self.statistic_count)

    def statistics_with_holes(self, values, holes):
        """The row data with a missing value of the node set to 0 (its rows get no weight)."""
        data = self.statistics(values).copy()
        data[holes.reshape(len(data), -1)[:, 0], 0] = 0.0
        return data

    def natural(self, params):
        """No per-set natural parameters: the log-density is evaluated per row."""
        return None, None

    def _defaults(self):
        return {name: np.broadcast_to(self.default_value(spec), (self.n_sets,) + spec.own_shape).copy()
                for name, spec in self.params.items()}


#: Rows below which a non-exponential family's density is evaluated row by row without looking for
#: repeated values (grouped counts arrive distinct; sorting a few rows costs more than evaluating them).
DISTINCT_WORTH_FINDING = 1024


class GeneralFactor(RowsFactor):
    """A scalar family that is not an exponential family, fitted by generalised EM.

    The M-step maximises each set's posterior-weighted log-likelihood: Newton's
    method on the numeric parameters (in unconstrained coordinates) with the
    closed ones profiled out, then the closed ones (``GeneralKernels``). Rows with
    equal values are evaluated once.
    """

    def __init__(self, model, node):
        super().__init__(model, node)
        family = node.family
        if node.dim > 1 or node.columns:
            raise FamilyError(f"{model.source}: node '{node.name}': '{family.name}' is not an exponential family, "
                              "and such a family is fitted on one column per node; declare one node per column")
        try:
            self.kernels = general_kernels(family, node.constants)
        except FamilyError as exc:
            raise FamilyError(f"{model.source}: node '{node.name}': {exc}") from None
        for name in self.kernels.params:
            self.params[name] = ParamSpec(name, (), family.domains[name])
        self.param_names = list(self.kernels.params)
        self.regularized = tuple(n for n in family.regularized if n in self.params)
        self.statistic_count = 1

    def row_log_density(self, data, sets, params):
        """log p(x | set) of each row on each of its sets, (n, L); ``sets`` (L,) or (n, L)."""
        values = [np.asarray(params[name], dtype=float).reshape(self.n_sets)[sets] for name in self.param_names]
        x = data[:, 0]
        if sets.ndim == 1 and len(x) >= DISTINCT_WORTH_FINDING:
            # The same sets for every row: the density of each distinct value once (counts repeat a lot).
            distinct, inverse = np.unique(x, return_inverse=True)
            if len(distinct) < len(x) // 2:
                with np.errstate(all="ignore"):
                    density = self.kernels.log_density(distinct[:, None], *values)
                return np.broadcast_to(density, (len(distinct), len(sets)))[inverse.reshape(-1)]
        with np.errstate(all="ignore"):
            density = self.kernels.log_density(x[:, None], *values)
        shape = (len(data), sets.shape[-1])
        # The kernel returns a fresh array: the caller may change it when it already has every entry.
        return density if density.shape == shape else np.broadcast_to(density, shape).copy()

    def __getstate__(self):
        state = dict(self.__dict__)
        state.pop("_distinct", None)     # a weak reference, and only a cache
        return state

    def _distinct_values(self, data):
        """The rows' distinct values, each row's index among them (None when the rows are those values
        in order, as grouped counts are), and the functions of the means at the values: rows with equal
        values are one term with their summed weight (counts repeat a lot). Kept for the rows of the last
        call (the same data at every M-step of a fit), by a weak reference that does not keep the data alive."""
        cached = getattr(self, "_distinct", None)
        if cached is not None and cached[0]() is data:
            return cached[1:]
        values, inverse = np.unique(data[:, 0], return_inverse=True)
        inverse = inverse.reshape(-1)
        if len(values) == len(inverse) and np.array_equal(inverse, np.arange(len(inverse))):
            inverse = None      # distinct and in order already
        with np.errstate(all="ignore"):
            functions = np.stack([np.broadcast_to(f(values), values.shape) for f in self.kernels.functions]) \
                if self.kernels.functions else np.zeros((0, len(values)))
        self._distinct = (weakref.ref(data), values, inverse, functions)
        return values, inverse, functions

    def mstep(self, sums, set_weights, old, reg_covar):
        """New parameters from each row's posterior weight on each set (``RowWeights``)."""
        kernels = self.kernels
        used = np.flatnonzero(set_weights > 0)
        start = self._defaults() if old is None else old
        new = {name: np.array(start[name], dtype=float).reshape(self.n_sets) for name in self.param_names}
        if sums.weights is None or not len(used):
            return self._keep_empty_sets(new, old, set_weights)
        values, inverse, functions = self._distinct_values(sums.data)
        weights = sums.weights[used] if inverse is None else \
            np.stack([np.bincount(inverse, weights=sums.weights[s], minlength=len(values)) for s in used])

        everywhere = bool((weights > 0).all())      # no row without weight: the sums need no guard

        def of_sets(array, sets):
            # Every set, in order, when there are as many (maximize_rows' rows increase): no copy.
            return array if len(sets) == len(array) else array[sets]

        def arguments(u, sets):
            return [values] + [u[:, i, None] for i in range(u.shape[1])] + [of_sets(m, sets)[:, None] for m in means]

        with np.errstate(all="ignore"):
            means = list(functions @ weights.T / weights.sum(axis=1))
            if kernels.numeric:
                derivatives = kernels.derivatives
                problem = NewtonProblem(
                    [kernels.domains[name] for name in kernels.numeric],
                    lambda u, sets: weighted_sum(of_sets(weights, sets), kernels.profile(*arguments(u, sets)),
                                                 all_positive=everywhere),
                    # The values on the last axis: each sum runs over contiguous memory, in numpy's pairwise order.
                    lambda u, sets: derivatives.split(weighted_sum(of_sets(weights, sets)[:, None, :],
                                                                   derivatives(*arguments(u, sets), axis=1), axis=-1,
                                                                   all_positive=everywhere)))
                solved = problem.solve(np.column_stack([new[name][used] for name in kernels.numeric]))
                for i, name in enumerate(kernels.numeric):
                    new[name][used] = solved[:, i]
            numeric_values = [new[name][used] for name in kernels.numeric]
            for name, closed in kernels.closed.items():
                new[name][used] = closed(*means, *numeric_values)
        if len(used) < self.n_sets:
            new = self._keep_empty_sets(new, old, set_weights)
        return self._regularize(new, reg_covar)


class RegressionFactor(RowsFactor):
    """A scalar family whose linear parameter is set by continuous parents: a regression per parameter set.

    Per set s (a configuration of the discrete parents) and row with covariates u,
    the linear predictor is ``lambda = intercept[s] + coef[s] . u`` and the family's
    linear parameter is its inverse link (``RegressionKernels``). The E-step needs
    the log-density per row and set, and the M-step the posterior weight of each
    row on each set (the "rows" layout: no finite statistics exist for log and
    logit links). The M-step is Newton's method in (intercept, coef) on the
    weighted log-likelihood, in closed form when it is quadratic (weighted least
    squares), then each other parameter's weighted-mean update given the new
    predictor.
    """

    def __init__(self, model, node):
        super().__init__(model, node)
        family = node.family
        try:
            self.kernels = regression_kernels(family, node.constants)
        except FamilyError as exc:
            raise FamilyError(f"{model.source}: node '{node.name}': {exc}") from None
        self.covariates = node.covariates
        self.n_covariates = sum(model.nodes[c].dim for c in node.covariates)
        self.params["intercept"] = ParamSpec("intercept", (), "real")
        self.params["coef"] = ParamSpec("coef", (self.n_covariates,), "real")
        for name in self.kernels.others:
            self.params[name] = ParamSpec(name, (), family.domains[name])
        self.regularized = tuple(n for n in family.regularized if n in self.params)
        # The row data: the node's value, then its covariates' columns.
        self.statistic_count = 1 + self.n_covariates

    def row_data(self, node_data):
        """The node's values and its covariates' columns, (n_rows, 1 + n_covariates)."""
        n = node_data.n_rows
        columns = [np.asarray(node_data.values[self.name], dtype=float).reshape(n, 1)]
        for covariate in self.covariates:
            values = np.asarray(node_data.values[covariate], dtype=float).reshape(n, -1)
            holes = node_data.missing.get(covariate)
            if holes is not None and holes.any():
                row = int(np.flatnonzero(holes.reshape(n, -1).any(axis=1))[0])
                raise DataError(f"node '{self.name}': its covariate '{covariate}' is missing on row {row + 1}; a "
                                "covariate has no distribution to integrate a missing value out over, so fill "
                                "or remove the rows where it is missing")
            columns.append(values)
        return np.column_stack(columns)

    def base(self, values, holes=None):
        """log h(x) of each row's own value, 0 where it is missing: (n_rows,)."""
        x = np.asarray(values, dtype=float).reshape(len(values), -1)[:, 0]
        with np.errstate(all="ignore"):
            base = np.broadcast_to(self.kernels.base(x), x.shape)
        return base if holes is None else np.where(holes.reshape(len(x), -1)[:, 0], 0.0, base)

    def _per_set(self, params):
        return (np.asarray(params["intercept"], dtype=float).reshape(self.n_sets),
                np.asarray(params["coef"], dtype=float).reshape(self.n_sets, self.n_covariates),
                [np.asarray(params[o], dtype=float).reshape(self.n_sets) for o in self.kernels.others])

    def row_log_density(self, data, sets, params):
        """log p(x | u, set) - log h(x) of each row on each of its sets.

        Parameters
        ----------
        data : ndarray of shape (n, 1 + n_covariates)
        sets : ndarray of int, shape (L,) (the same sets for every row) or (n, L)
        params : dict
            Internal parameters.

        Returns
        -------
        ndarray of shape (n, L)
        """
        intercept, coef, others = self._per_set(params)
        u = data[:, 1:]
        if sets.ndim == 1:
            predictor = u @ coef[sets].T + intercept[sets]
        else:
            predictor = np.einsum("nm,nlm->nl", u, coef[sets]) + intercept[sets]
        with np.errstate(all="ignore"):
            return self.kernels.log_density(data[:, :1], predictor, *(o[sets] for o in others))

    def mstep(self, sums, set_weights, old, reg_covar):
        """New parameters from each row's posterior weight on each set.

        Parameters
        ----------
        sums : RowWeights
            ``weights`` (n_sets, n_rows) and the rows' ``data`` (n_rows, 1 + n_covariates).
        set_weights : ndarray of shape (n_sets,)
        old : dict or None
        """
        if sums.weights is None:
            return self._keep_empty_sets(self._defaults(), old, np.zeros(self.n_sets))
        weights, data = sums.weights, sums.data
        x = data[:, 0]
        design = np.column_stack([np.ones(len(data)), data[:, 1:]])
        if old is None:
            start = self._defaults()
        else:
            start = {name: np.array(value, dtype=float) for name, value in old.items()}
        _, _, others = self._per_set(start)
        others = [o[:, None] for o in others]
        used = np.flatnonzero(set_weights > 0)
        beta = np.column_stack([start["intercept"].reshape(self.n_sets),
                                start["coef"].reshape(self.n_sets, self.n_covariates)])
        if len(used):
            beta[used] = self._solve_predictor(x, design, weights[used], [o[used] for o in others], beta[used])
        new = {"intercept": beta[:, 0].copy(), "coef": beta[:, 1:].copy()}
        predictor = beta @ design.T
        for name, phi in self.kernels.weighted_means.items():
            with np.errstate(all="ignore"):
                values = np.broadcast_to(phi(x, predictor, *others), weights.shape)
            total = np.where(weights > 0, weights * values, 0.0).sum(axis=1)
            with np.errstate(invalid="ignore", divide="ignore"):
                new[name] = total / set_weights
        new = self._keep_empty_sets(new, old, set_weights)
        return self._regularize(new, reg_covar)

    def _solve_predictor(self, x, design, weights, others, start):
        """(intercept, coef) of each set maximising sum_rows w log p: (m, 1 + n_covariates).

        Parameters
        ----------
        x : ndarray of shape (n_rows,)
        design : ndarray of shape (n_rows, 1 + n_covariates)
            A column of ones, then the covariates.
        weights : ndarray of shape (m, n_rows)
        others : list of ndarray of shape (m, 1)
        start : ndarray of shape (m, 1 + n_covariates)
        """
        kernels = self.kernels

        def derivatives(beta, sets):
            # Chain rule through lambda = design . beta: X^T (w l') and X^T diag(w l'') X.
            predictor = beta @ design.T
            with np.errstate(all="ignore"):
                first = np.broadcast_to(kernels.first(x, predictor, *(o[sets] for o in others)), predictor.shape)
                second = np.broadcast_to(kernels.second(x, predictor, *(o[sets] for o in others)),
                                         predictor.shape)
            w = weights[sets]
            gradient = np.where(w > 0, w * first, 0.0) @ design
            hessian = np.einsum("sn,ni,nj->sij", np.where(w > 0, w * second, 0.0), design, design)
            return gradient, hessian

        if kernels.quadratic:
            # The objective is quadratic in the predictor: one Newton step from zero is its maximiser
            # (for a normal mean, the weighted least-squares solution).
            gradient, hessian = derivatives(np.zeros_like(start), np.arange(len(start)))
            try:
                return np.linalg.solve(-hessian, gradient[..., None])[..., 0]
            except np.linalg.LinAlgError:
                raise FitError(f"node '{self.name}': the weighted covariates of some parameter set are collinear "
                               "(or the set has fewer rows than coefficients), so its coefficients are not "
                               "determined; use fewer covariates or components") from None

        def objective(beta, sets):
            density = kernels.log_density(x, beta @ design.T, *(o[sets] for o in others))
            return weighted_sum(weights[sets], density)

        problem = NewtonProblem(["real"] * start.shape[1], objective,
                                lambda b, s: (objective(b, s), *derivatives(b, s)))
        return problem.solve(start)


def _check_log_prior_applies(model, node):
    """A declared log prior enters the M-step of scalar exponential families on independent columns."""
    where = f"{model.source}: node '{node.name}'"
    form = node.family.covariance_form(node.covariance) if node.covariance else None
    if form is not None and model.registry.internal(form.family).kind == "gaussian":
        raise FamilyError(f"{where}: a prior = {{ logpdf = ... }} on a multivariate normal ({node.covariance} "
                          "covariance) is not supported; declare the node with covariance = \"diag\" (a prior "
                          "on each column's mean and var) or leave out the prior")
    if node.covariates:
        raise FamilyError(f"{where}: a prior = {{ logpdf = ... }} on a node with continuous parents is not "
                          "supported yet; leave out the prior")


def _free_block(model):
    """The model's free-parameter block (sympy: only models with free parameters import it)."""
    from .freeblock import FreeBlock
    return FreeBlock(model)


def build_factor(model, node):
    """The compiled factor for a node, chosen by its family's kind and covariance form."""
    family = node.family
    if node.prior and node.prior[0] == "logpdf":
        _check_log_prior_applies(model, node)
    if node.chain:
        return ChainFactor(model, node)
    if family.kind == "table":
        return DeterministicFactor(model, node)
    if family.kind == "indicator":
        return CategoricalFactor(model, node)
    if family.kind == "covariate":
        return CovariateFactor(model, node)
    if node.covariates:
        return RegressionFactor(model, node)
    form = family.covariance_form(node.covariance) if node.covariance else None
    if form is not None and model.registry.internal(form.family).kind == "gaussian":
        return GaussianFactor(model, node, form)
    try:
        return ScalarFactor(model, node, form)
    except NotExponentialFamily:
        if node.prior:
            raise FamilyError(f"{model.source}: node '{node.name}': '{family.name}' is not an exponential family "
                              "(fitted by generalised EM), and a prior = { logpdf = ... } on such a family is not "
                              "supported yet; leave out the prior") from None
        return GeneralFactor(model, node)


class CompiledModel:
    """The model's factors, ready for the E-step and the EM loop.

    Attributes
    ----------
    factors : dict of str to Factor
        In topological order.
    latent : list of str
        Latent nodes in topological order: the axes of the joint posterior.
    latent_sizes : tuple of int
    """

    def __init__(self, model):
        self.model = model
        self.factors = {name: build_factor(model, node) for name, node in model.nodes.items()}
        # Nodes that use another's parameters (shares = "OTHER"): {node: owner}.
        self.sharing = dict(model.sharing)
        for name in self.sharing:
            if self.factors[name].layout == "rows":
                raise FamilyError(f"{model.source}: node '{name}': a node fitted row by row (continuous parents, "
                                  "a family that is not an exponential family) does not share parameters")
        expressed = any(node.probs is not None for node in model.nodes.values())
        self.block = _free_block(model) if expressed else None
        self.latent = list(model.latent)
        self.latent_sizes = tuple(model.nodes[name].k for name in self.latent)
        self.n_configurations = int(np.prod(self.latent_sizes, dtype=int)) if self.latent else 1

    def __setstate__(self, state):
        # A loaded compiled model is its model's compiled form: the model does not derive again.
        self.__dict__.update(state)
        if self.model._compiled is None:
            self.model._compiled = self

    @property
    def free_names(self):
        return self.block.names if self.block else []

    def n_free(self):
        """Free parameters for BIC and AIC: a set of shared parameters counts once."""
        return sum(f.n_free() for name, f in self.factors.items() if name not in self.sharing) + \
            (self.block.n_free() if self.block else 0)

    def log_prior(self, params):
        """Sum of every factor's log prior at internal parameters (0 for maximum likelihood); once per shared set."""
        return sum(f.log_prior(params[name]) for name, f in self.factors.items() if name not in self.sharing)

    def required(self):
        """The parameters a complete ``init`` gives: (node, param) pairs and free-parameter names."""
        pairs = [(name, p) for name, f in self.factors.items()
                 if not getattr(f, "expressed", False) and name not in self.sharing for p in f.params]
        return pairs, list(self.free_names)

    def to_external(self, params, shifts):
        external = {name: f.to_external(params[name], shifts.get(name)) for name, f in self.factors.items()}
        for name in self.free_names:
            external[name] = float(params[name])
        return external

    def to_internal(self, params, shifts):
        """The user's parameters (complete) -> internal; probs in free parameters are recomputed."""
        internal = {}
        for name, factor in self.factors.items():
            if getattr(factor, "expressed", False):
                continue
            # A node sharing another's parameters takes them from that node.
            internal[name] = factor.to_internal(params.get(self.sharing.get(name, name), {}), shifts.get(name))
        self.set_free(internal, {n: params[n] for n in self.free_names})
        return internal

    def set_free(self, internal, values):
        """Store free-parameter values and the probabilities of the nodes written in them."""
        if not self.block:
            return
        for name in self.free_names:
            internal[name] = np.asarray(float(values[name]))
        for node, probs in self.block.probs(values).items():
            internal[node] = {"probs": probs}
