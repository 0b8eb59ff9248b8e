"""Per-fit row data in the form the E-step consumes: statistics computed once."""

import functools
import threading
from dataclasses import dataclass, field, replace

import numpy as np

from ..errors import DataError
from ..resources import array_bytes, available_memory, check_rows_size
from .enumeration import CHUNK_ROWS


@dataclass
class FactorRows:
    """One factor's fixed view of the rows.

    Attributes
    ----------
    statistics : ndarray or None
        (n_rows, n_statistics) for the dense layout, (n_rows,) category indices
        for the index layout, None for a latent node.
    observed_offset : ndarray of shape (n_rows,) or None
        The part of each row's parameter-set index fixed by observed parents.
    latent_axes : tuple of int
        Positions, among the model's latent nodes, of the latent parents.
    latent_set_index : ndarray of int
        Shape (sizes of the latent parents, in axis order): the parameter-set
        index contributed by each latent-parent configuration.
    shift : ndarray or None
        The centring shift of a location family's columns.
    values : ndarray or None
        The node's (centred) data, for initialisation; NaN where missing.
    missing : ndarray of bool or None
        Where the node's values are missing, (n_rows, cells) (cells: the node's
        columns; 1 for a categorical node); None when nothing is missing.
    dtype : numpy dtype
        Of the dense statistics (float32 halves the products' time and memory; the sums
        they feed stay float64).
    """

    statistics: object
    observed_offset: object
    latent_axes: tuple
    latent_set_index: np.ndarray
    shift: object
    values: object = None
    missing: object = None
    dtype: object = np.float64

    def statistics_of(self, factor, chunk):
        """The statistics of a chunk of rows: stored ones, or formed now when the fit streams them.

        Formed ones are kept until another chunk is asked for: an E-step reads each chunk's
        statistics twice (for the likelihood and for the sums).
        """
        if self.statistics is not None:
            return self.statistics[chunk]
        # One kept chunk per thread: the E-step's threads each work through their own chunks.
        formed = vars(self).setdefault("_formed", {})
        key = (chunk.start, chunk.stop)
        thread = threading.get_ident()
        if thread not in formed or formed[thread][0] != key:
            statistics = _statistics(factor, self.values[chunk], None if self.missing is None else self.missing[chunk])
            formed[thread] = (key, statistics.astype(self.dtype, copy=False))
        return formed[thread][1]

    def patterns(self, factor):
        """The factor's missing-value patterns over these rows (built on first use)."""
        if "_patterns" not in vars(self):
            # Built outside any lock; the first thread's stays, so every plan refers to one object.
            vars(self).setdefault("_patterns", factor.missing_patterns(self.missing))
        return self._patterns

    def fill_plan(self, factor, chunk):
        """A chunk's rows with some but not all values missing: their positions in the chunk and the
        factor's plan for them (built on first use, kept for the fit).

        Returns
        -------
        partial : ndarray of int
            Positions within the chunk.
        plan : object or None
            None when no row of the chunk is partly missing.
        """
        plans = vars(self).setdefault("_plans", {})
        key = (chunk.start, chunk.stop)
        if key not in plans:
            holes = self.missing[chunk]
            partial = np.flatnonzero(holes.any(axis=1) & ~holes.all(axis=1))
            plan = None
            if len(partial):
                x0 = np.where(holes[partial], 0.0, self.values[chunk][partial])
                plan = factor.missing_plan(x0, holes[partial], chunk.start + partial, self.patterns(factor))
            plans[key] = (partial, plan)
        return plans[key]

    def incomplete_in(self, chunk):
        """Positions, within the chunk, of the rows with some value of this node missing: (m,) int."""
        if self.missing is None:
            return np.empty(0, dtype=np.intp)
        if not hasattr(self, "_incomplete"):
            self._incomplete = self.missing.any(axis=1)
        return np.flatnonzero(self._incomplete[chunk])

    @functools.cached_property
    def identity_sets(self):
        """Whether latent-parent configurations map to parameter sets 0, 1, 2, ... in order (asked at every E-step)."""
        flat = self.latent_set_index.reshape(-1)
        return bool(np.array_equal(flat, np.arange(flat.size)))


@dataclass
class Rows:
    """The rows of one data set, prepared for a compiled model.

    Attributes
    ----------
    n_rows : int
    weights : ndarray of shape (n_rows,)
    factors : dict of str to FactorRows
    base_total : float
        Sum over rows of weight times the log base measures (constant in the parameters).
    labels : dict of str to ndarray of int
        Partial labels of latent nodes, (n_rows,) each: the value, or MISSING_CATEGORY
        (-1) where the node is latent.
    chunk_rows : int
        Rows the E-step takes at a time (``chunk_rows_for``).
    """

    n_rows: int
    weights: np.ndarray
    factors: dict
    base_total: float
    labels: dict = field(default_factory=dict)
    chunk_rows: int = CHUNK_ROWS

    def __sizeof__(self):
        # Each factor's arrays, and those it keeps once formed (a chunk's statistics, plans' rows).
        return object.__sizeof__(self) + array_bytes(self.weights, self.labels,
                                                     *(vars(view) for view in self.factors.values()))

    def scatter(self, name, chunk, targets, n_targets):
        """A sparse (n_targets, chunk rows) matrix with a one at (targets[row], row); built once per chunk.

        Multiplying it by a chunk's (rows, m) posterior sums the rows onto their targets, in
        O(rows x m).
        """
        scatters = vars(self).setdefault("_scatter", {})
        key = (name, chunk.start, chunk.stop)
        if key not in scatters:
            n = chunk.stop - chunk.start
            # A negative target (a missing category) takes no part.
            present = targets[chunk] >= 0
            import scipy.sparse  # imported when first needed: it is slow to import
            scatters[key] = scipy.sparse.csr_matrix(
                (np.ones(int(present.sum())), (targets[chunk][present], np.flatnonzero(present))),
                shape=(n_targets, n))
        return scatters[key]

    @property
    def unit_weights(self):
        """Whether every row has weight 1 (then the E-step skips weighting)."""
        if not hasattr(self, "_unit_weights"):
            self._unit_weights = bool(np.all(self.weights == 1.0))
        return self._unit_weights

    @property
    def shifts(self):
        return {name: f.shift for name, f in self.factors.items() if f.shift is not None}

    def streamed(self, compiled):
        """These rows without stored dense statistics: each use forms them from the data, chunk by chunk.

        For an engine that keeps its own copy in another order (a chain's block grid) and reads
        these only now and then (initialisation, hard EM).
        """
        factors = {name: replace(view, statistics=None)
                   if compiled.factors[name].layout == "dense" and view.values is not None else view
                   for name, view in self.factors.items()}
        return Rows(n_rows=self.n_rows, weights=self.weights, factors=factors, base_total=self.base_total,
                    labels=self.labels, chunk_rows=self.chunk_rows)

    def take(self, indices):
        """These rows in another order, with repeats (a chain's block grid): a new Rows.

        Parameters
        ----------
        indices : ndarray of int, shape (m,)

        Returns
        -------
        Rows
            With ``base_total`` 0: the constant belongs to the data set, not to a view of it.
        """
        def pick(array):
            return None if array is None else array[indices]

        factors = {name: replace(view, statistics=pick(view.statistics), observed_offset=pick(view.observed_offset),
                                 values=pick(view.values), missing=pick(view.missing))
                   for name, view in self.factors.items()}
        return Rows(n_rows=len(indices), weights=self.weights[indices], factors=factors, base_total=0.0,
                    labels={name: labels[indices] for name, labels in self.labels.items()},
                    chunk_rows=self.chunk_rows)


def prepare_rows(compiled, node_data, memory_budget=None, shifts=None, checked_finite=False, dtype=np.float64):
    """Compute each observed factor's statistics and each factor's parent indexing once.

    Parameters
    ----------
    compiled : CompiledModel
    node_data : NodeData
    memory_budget : int or None
        Bytes the dense statistics T(X) may take. When they would take more, they are
        not stored: each E-step forms them chunk by chunk from the data (same result,
        more time). None: half of the memory available now.
    shifts : dict of str to ndarray, optional
        The centring shift of each location family's columns, when these rows are a
        block of a larger data set (the whole set's shifts); by default these rows' own.
    checked_finite : bool
        Whether these very rows were prepared before and their statistics found finite
        (a streamed partition read again): the check, a pass forming T(X), is skipped.
    dtype : numpy dtype
        Of the dense statistics T(X): float64, or float32 (``Model.fit(dtype=...)``).

    Returns
    -------
    Rows
    """
    chunk_rows = chunk_rows_for(compiled, node_data.missing)
    check_rows_size(compiled, node_data.n_rows, chunk_rows)
    budget = available_memory() // 2 if memory_budget is None else memory_budget
    dtype = np.dtype(dtype)
    dense_bytes = sum(dtype.itemsize * node_data.n_rows * factor.width for name, factor in compiled.factors.items()
                      if factor.layout == "dense" and name in node_data.values)
    stream = dense_bytes > budget
    model = compiled.model
    axis_of = {name: i for i, name in enumerate(compiled.latent)}
    factors = {}
    base_total = 0.0
    weights = node_data.weights
    for name, factor in compiled.factors.items():
        node = model.nodes[name]
        strides = _strides(factor.parent_sizes)
        latent_parents = [(axis_of[p], p, s) for p, s in zip(node.parents, strides) if p in axis_of]
        latent_parents.sort()
        sizes = [model.nodes[p].k for _, p, _ in latent_parents]
        latent_set_index = np.zeros(sizes, dtype=np.intp) if sizes else np.zeros((), dtype=np.intp)
        for position, (_, _, stride) in enumerate(latent_parents):
            shape = [1] * len(sizes)
            shape[position] = sizes[position]
            latent_set_index = latent_set_index + (np.arange(sizes[position]) * stride).reshape(shape)
        observed_offset = None
        observed_parents = [(p, s) for p, s in zip(node.parents, strides) if p not in axis_of]
        if observed_parents:
            observed_offset = np.zeros(node_data.n_rows, dtype=np.intp)
            for parent, stride in observed_parents:
                observed_offset += node_data.values[parent] * stride
        statistics = shift = centred = missing = None
        if not node.latent:
            # A regression's rows carry its covariates' columns beside its own value.
            values = factor.row_data(node_data) if factor.layout == "rows" else node_data.values[name]
            missing = node_data.missing.get(name)
            if missing is not None:
                missing = missing.reshape(node_data.n_rows, -1)
            with np.errstate(over="ignore", invalid="ignore"):
                shift = factor.shift_for(values, weights) if shifts is None else shifts.get(name)
                centred = values - shift if shift is not None else values
                if factor.layout == "dense" and stream:
                    statistics = None
                    for first in range(0, 0 if checked_finite else node_data.n_rows, BASE_CHUNK):
                        block = slice(first, first + BASE_CHUNK)
                        _check_finite(name, factor, centred[block], values[block], first,
                                      holes=None if missing is None else missing[block], dtype=dtype)
                else:
                    statistics = _statistics(factor, centred, missing)
                    if factor.layout == "dense":
                        statistics = statistics.astype(dtype, copy=False)
                        _check_finite(name, factor, centred, values, 0, statistics, missing, dtype)
                for first in range(0, node_data.n_rows, BASE_CHUNK):
                    block = slice(first, first + BASE_CHUNK)
                    holes = None if missing is None else missing[block]
                    base_total += float(np.dot(weights[block], factor.base(centred[block], holes)))
            if shift is not None and not np.all(np.isfinite(shift)):
                raise DataError(f"node '{name}': the data's mean overflows float64; its values are too large "
                                "to fit (rescale the column)")
        factors[name] = FactorRows(statistics=statistics, observed_offset=observed_offset,
                                   latent_axes=tuple(a for a, _, _ in latent_parents),
                                   latent_set_index=latent_set_index, shift=shift, values=centred,
                                   missing=missing, dtype=dtype)
    return Rows(n_rows=node_data.n_rows, weights=weights, factors=factors, base_total=base_total,
                labels=dict(node_data.labels), chunk_rows=chunk_rows)


BASE_CHUNK = 65536

# Cells (rows x latent configurations) of a chunk of rows whose missing coordinates are integrated
# out jointly: their work per chunk is many small numpy calls per group of rows, which larger chunks
# amortise (a GMM with 16 components and 10% of cells missing: 12% less time per iteration).
CONDITIONAL_CHUNK_CELLS = 1 << 19


def chunk_rows_for(compiled, missing):
    """Rows per E-step chunk: ``CHUNK_ROWS``, or up to four times as many when some factor integrates
    missing coordinates out jointly (as many as keep a chunk within ``CONDITIONAL_CHUNK_CELLS``).

    ``missing`` maps the observed nodes with missing values to where they are (``NodeData.missing``)."""
    conditional = any(compiled.factors[name].missing_rule == "conditional" for name in missing)
    if not conditional:
        return CHUNK_ROWS
    return int(min(4 * CHUNK_ROWS, max(CHUNK_ROWS, CONDITIONAL_CHUNK_CELLS // compiled.n_configurations)))


def _statistics(factor, values, holes):
    """T(X) of rows whose missing cells (``holes``, or None) the factor fills and then zeroes or corrects."""
    if holes is None or factor.layout not in ("dense", "rows"):
        return factor.statistics(values)
    return factor.statistics_with_holes(values, holes)


def _check_finite(name, factor, centred, values, first, statistics=None, holes=None, dtype=np.dtype(np.float64)):
    """Refuse rows whose sufficient statistics overflow their dtype (float64: 1e200 squared), naming the row.

    The row is found in the uncentred data: one huge value moves the centring shift and so
    every centred row.
    """
    with np.errstate(over="ignore"):
        if statistics is None:
            statistics = _statistics(factor, centred, holes).astype(dtype, copy=False)
        if np.isfinite(statistics).all():
            return
        raw = _statistics(factor, values, holes).astype(dtype, copy=False)
    finite = np.isfinite(raw).reshape(len(raw), -1).all(axis=1)
    row = first + int(np.flatnonzero(~finite)[0]) if not finite.all() else first
    advice = "rescale the column" if dtype == np.float64 else "rescale the column, or fit with dtype float64"
    raise DataError(f"node '{name}', row {row}: the value is too large; its sufficient statistics "
                    f"overflow {dtype.name} ({advice})")
def _strides(sizes):
    """Row-major strides of a parameter-set index over parents of the given sizes."""
    strides = []
    running = 1
    for size in reversed(sizes):
        strides.append(running)
        running *= size
    return list(reversed(strides))
