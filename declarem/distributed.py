"""Fitting data held in dask partitions: each E-step runs where its partition lives.

A dask DataFrame, or a mapping of column name to dask arrays chunked alike along
rows, goes through the same EM loop as data in memory. Each partition is read and
checked once and kept where it is (persisted) as prepared rows; each E-step runs per
partition, on the current ``dask.distributed`` client or dask's default scheduler
when there is none, and only the partitions' summed statistics travel. Data larger
than a quarter of the workers' memory (or ``memory_budget``) is streamed instead: every
pass reads its partition again. The
centring shifts are the whole data set's, and the start is drawn by the same passes
over blocks of rows as in memory (``seeding``), so the fit equals the in-memory fit
of the same rows to rounding.

An all-discrete data set (a latent class model, the topic model's triples) is first
reduced, partition by partition, to its distinct rows and their total weights, as the
in-memory fit reduces it; when those number at most ``GROUPED_ROWS_LIMIT``, the fit
runs on them in this process.
"""

import contextlib
import glob
import importlib.util
import os
import sys

import numpy as np

from .data import (as_columns, grouping_layout, latent_parents, node_data, parents_as_labels, row_codes,
                   rows_from_codes, sequence_lengths)
from .errors import DataError, DeclaremError, FitError, OptionError
from .inference import engine_for, prepare_rows
from .seeding import (block_features, has_features, kmeans_centres, label_agreement, label_order, random_recipe,
                      seeded_posterior, seeded_statistics, with_labels)

#: Distinct rows of an all-discrete data set that the fit holds in this process rather than per partition.
GROUPED_ROWS_LIMIT = 2_000_000
#: Rows of streamed data sampled for the k-means seeding (about this many, drawn uniformly).
SEED_SAMPLE_ROWS = 100_000

INSTALL = "pip install 'declarem[dask]'"

#: Set in the environment of the worker processes declarem starts (``--scheduler processes``): glibc then
#: serves large arrays from its heap, reused from pass to pass, instead of fresh pages from the system for
#: every one; a streamed E-step on a million-row partition took 1.45 s without it and 0.69 s with it.
WORKER_ENVIRON = {"MALLOC_MMAP_THRESHOLD_": str(2 ** 30)}


def is_dask_data(data):
    """Whether ``data`` is a dask collection, or a mapping whose values are dask arrays."""
    if _is_dask(data):
        return True
    if hasattr(data, "keys") and not hasattr(data, "columns"):
        return any(_is_dask(data[key]) for key in data.keys())
    return False


def _is_dask(value):
    return callable(getattr(value, "__dask_graph__", None))


def _dask():
    try:
        import dask
    except ImportError:
        raise OptionError(f"fitting dask data needs dask and distributed: {INSTALL}") from None
    return dask


def prepare(model, data, weights=None, memory_budget=None):
    """Read and check every partition once, and build the engine of the fit.

    Parameters
    ----------
    model : Model
    data : dask DataFrame, or mapping of str to dask array
    weights : str or None
        The name of a column holding row weights.
    memory_budget : int or None
        Bytes each partition's statistics may take (see ``prepare_rows``).

    Returns
    -------
    compiled : CompiledModel
        Of the model the rows are fitted with (categorical parents with missing values latent).
    engine : DaskEngine or EnumerationEngine
        The latter for an all-discrete data set reduced to its distinct rows.
    n_missing, n_missing_rows : int
    """
    dask = _dask()
    if weights is not None and not isinstance(weights, str):
        raise OptionError("with dask data, give weights as the name of a column of the data (an array of "
                          f"weights cannot be matched to the partitions), found {type(weights).__name__}")
    parts = _partitions(dask, data)
    # Data within the memory budget is read and checked once and kept where it is; data over it is
    # streamed: every pass reads its partition again and forms T(X) chunk by chunk. A quarter: a
    # worker also holds its partitions' checked data while preparing them, and its own baseline,
    # and dask starts moving kept data to disk at 60% of a worker's limit.
    budget = _cluster_memory(dask) // 4 if memory_budget is None else memory_budget
    with _cluster_failures():
        stream = _row_count(data) * _bytes_per_row(model.compiled) > budget
    checked = [dask.delayed(_checked)(model, part, weights, index, len(parts)) for index, part in enumerate(parts)]
    if not stream:
        checked = list(dask.persist(*checked))
    sent = dask.delayed(model.compiled, traverse=False)
    summaries = _compute(dask, [dask.delayed(_summary)(sent, block) for block in checked])
    parents = sorted(set().union(*(s["parents"] for s in summaries)))
    fitted_model = model.with_latent(parents) if parents else model
    compiled = fitted_model.compiled
    _refuse_unsupported(compiled)
    _check_sequences_apart(summaries)
    n_missing = sum(s["n_missing"] for s in summaries)
    n_missing_rows = sum(s["n_missing_rows"] for s in summaries)
    n_rows = [s["n_rows"] for s in summaries]
    holed = sorted(set().union(*(s["missing"] for s in summaries)) - set(parents))
    groupable = fitted_model.chain is None and all(fitted_model.nodes[n].is_discrete for n in fitted_model.observed)
    grouped = _grouped(dask, fitted_model, checked, parents, holed, sum(n_rows)) if groupable else None
    if grouped is not None:
        return compiled, engine_for(compiled, prepare_rows(compiled, grouped, memory_budget)), \
            n_missing, n_missing_rows
    shifts = _shifts(summaries)
    sent = dask.delayed(compiled, traverse=False)
    if stream:
        # Each pass runs one task per partition that reads, checks and prepares it and does the pass's
        # work, so that nothing of a partition outlives the task. The model and its compiled form are
        # sent once and kept where the work runs, not sent again with every pass.
        kept_model, kept_compiled = dask.persist(dask.delayed(model, traverse=False), sent)
        sources = _StreamSources(kept_model, kept_compiled, parts, weights, parents)
        engines = None
    else:
        sources = None
        engines = list(dask.persist(*[dask.delayed(_engine)(sent, block, parents, shifts, None)
                                      for block in checked]))
    engine = DaskEngine(compiled, engines, n_rows, shifts, [s["weight"] for s in summaries],
                        _variances(summaries), sources, labelled=bool(parents) or any(s["labelled"] for s in summaries))
    return compiled, engine, n_missing, n_missing_rows


class _StreamSources:
    """Where a streamed fit reads each partition from, and how it checks it."""

    def __init__(self, model, compiled, parts, weights, parents):
        self.model = model
        self.compiled = compiled
        self.parts = parts
        self.weights = weights
        self.parents = parents


def _row_count(data):
    """The number of rows of dask data: from the arrays' shapes, or the DataFrame's length (Parquet files
    say it in their metadata; CSV files are read for it)."""
    if hasattr(data, "to_delayed") and hasattr(data, "columns"):
        return int(len(data))
    return int(next(iter(data[key] for key in data.keys())).shape[0])


def _bytes_per_row(compiled):
    """Bytes a prepared row holds: its data, its statistics T(x), its weight and indices."""
    columns = 0
    for name in compiled.model.observed:
        factor = compiled.factors[name]
        node = compiled.model.nodes[name]
        columns += (node.dim or 1) + (factor.width if factor.layout == "dense" else 1)
    return 8 * (columns + 2)


def _cluster_memory(dask):
    """Bytes of memory the fit's workers have: the distributed workers' limits, else this machine's available."""
    try:
        from distributed import default_client
        workers = default_client().scheduler_info()["workers"].values()
    except (ImportError, ValueError):
        workers = ()
    limits = [w.get("memory_limit") or 0 for w in workers]
    if limits and all(limits) and dask.config.get("scheduler", None) in (None, "dask.distributed"):
        return int(sum(limits))
    from .resources import available_memory
    return available_memory()


PARQUET_SUFFIXES = (".parquet", ".pq")


def is_parts_path(path):
    """Whether a data path names part files for dask: a glob pattern, a directory of Parquet files, or one."""
    path = os.fspath(path)
    if os.path.isdir(path):
        return any(name.lower().endswith(PARQUET_SUFFIXES) for name in os.listdir(path))
    return glob.has_magic(path) or path.lower().endswith(PARQUET_SUFFIXES)


def read_parts(path):
    """A dask DataFrame over data files, a partition (or more) per file.

    Parameters
    ----------
    path : str
        A glob pattern (``'parts/*.parquet'``), a directory of Parquet files, or one file:
        Parquet, or CSV with a header row (an empty cell is missing).

    Returns
    -------
    dask.dataframe.DataFrame
    """
    _dask()
    import dask.dataframe as dd
    if os.path.isdir(path):
        files = sorted(f for f in glob.glob(os.path.join(path, "*")) if f.lower().endswith(PARQUET_SUFFIXES))
    else:
        files = sorted(glob.glob(path)) if glob.has_magic(path) else [path]
    if not files or not all(os.path.isfile(f) for f in files):
        raise DataError(f"{path}: no data files there (give a glob pattern such as 'parts/*.parquet', a "
                        "directory of Parquet files, or a file)")
    kinds = {"parquet" if f.lower().endswith(PARQUET_SUFFIXES) else "csv" if f.lower().endswith(".csv") else f
             for f in files}
    if kinds == {"parquet"}:
        if importlib.util.find_spec("pyarrow") is None:
            # dask reads Parquet through pyarrow.
            raise OptionError(f"reading Parquet needs pyarrow: {INSTALL}")
        return dd.read_parquet(files)
    if kinds == {"csv"}:
        # Integers read as floats, so that a part with an empty cell has the others' types.
        return dd.read_csv(files, assume_missing=True)
    other = sorted(kinds - {"parquet", "csv"})
    raise DataError(f"{other[0] if other else path}: data files for dask must all be Parquet (.parquet) or all "
                    "CSV (.csv)")


@contextlib.contextmanager
def scheduler(name):
    """Run the fit's dask work on a chosen scheduler.

    Parameters
    ----------
    name : str or None
        ``"threads"`` or ``"synchronous"``: in this process. ``"processes"``: a local
        ``dask.distributed`` cluster of worker processes, started here and closed after.
        Anything else is the address of a running scheduler (``tcp://host:8786``). None:
        the current client, else dask's default.
    """
    dask = _dask()
    if name is None:
        yield
        return
    if name in ("threads", "synchronous"):
        with dask.config.set(scheduler=name):
            yield
        return
    try:
        import distributed
    except ImportError:
        raise OptionError(f"--scheduler {name} needs dask.distributed: {INSTALL}") from None
    if name == "processes":
        environ = {f"distributed.nanny.pre-spawn-environ.{key}": value for key, value in WORKER_ENVIRON.items()}
        with dask.config.set(environ), \
                distributed.LocalCluster(processes=True, threads_per_worker=1, dashboard_address=None) as cluster, \
                distributed.Client(cluster):
            yield
        return
    try:
        client = distributed.Client(name, timeout=10)
    except (OSError, TimeoutError, ValueError) as exc:
        raise OptionError(f"--scheduler {name}: cannot reach a dask scheduler there ({exc}); give 'threads', "
                          "'processes' or a running scheduler's address such as tcp://host:8786") from None
    with client:
        yield


def _partitions(dask, data):
    """One delayed mapping of column name to array per partition."""
    if hasattr(data, "to_delayed") and hasattr(data, "columns"):
        return list(data.to_delayed())
    if not hasattr(data, "keys"):
        raise OptionError(f"dask data must be a dask DataFrame or a mapping of column name to dask array, "
                          f"found {type(data).__name__}")
    names = [str(key) for key in data.keys()]
    arrays = [data[key] for key in data.keys()]
    for name, array in zip(names, arrays):
        if not _is_dask(array) or not hasattr(array, "chunks"):
            raise OptionError(f"data: column '{name}' is not a dask array; give every column as a dask array "
                              "(or the data as a dask DataFrame)")
    rows = arrays[0].chunks[0]
    blocks = []
    for name, array in zip(names, arrays):
        if array.shape[0] != arrays[0].shape[0]:
            raise OptionError(f"data: column '{name}' has {array.shape[0]} rows; column '{names[0]}' has "
                              f"{arrays[0].shape[0]}")
        whole = {axis: -1 for axis in range(1, array.ndim)}
        blocks.append(array.rechunk({0: rows, **whole}).to_delayed().reshape(-1))
    return [dask.delayed(_columns)(names, *parts) for parts in zip(*blocks)]


def _columns(names, *arrays):
    return dict(zip(names, arrays))


def _compute(dask, tasks):
    """Compute ``tasks`` (a list), saying clearly when the cluster, not the data, failed."""
    with _cluster_failures():
        return list(dask.compute(*tasks))


@contextlib.contextmanager
def _cluster_failures():
    """Turn a dead worker or a lost connection into a FitError that says so (no partial fit is returned)."""
    try:
        yield
    except DeclaremError:
        raise
    except (OSError, TimeoutError) as exc:
        raise FitError(f"the dask cluster failed during the fit ({type(exc).__name__}: {exc}); no partial "
                       "fit is returned: restart the cluster and fit again") from exc
    except Exception as exc:
        # distributed's own exception types, matched by name: distributed is an optional extra.
        if type(exc).__name__ in ("KilledWorker", "CommClosedError", "FutureCancelledError"):
            raise FitError(f"a dask worker died during the fit ({type(exc).__name__}: {exc}); no partial fit "
                           "is returned: give the workers more memory or smaller partitions, and fit again") \
                from exc
        raise


def _refuse_unsupported(compiled):
    rows_layout = [name for name, factor in compiled.factors.items() if factor.layout == "rows"]
    if rows_layout:
        raise OptionError(f"node '{rows_layout[0]}' is fitted row by row (continuous parents, or a family that "
                          "is not an exponential family), which dask data does not support yet; compute the "
                          "data into memory (a DataFrame) and fit that")


# -- per-partition steps (run where the partition lives) ----------------------------------------

def _checked(model, part, weights, index, n_parts):
    """The partition's checked data, and for a chain its sequences: (NodeData, lengths or None, sequence ids)."""
    source = f"dask partition {index} (of {n_parts})"
    checked = node_data(model, part, weights, source=source)
    if model.chain is None:
        return checked, None, None
    column = model.data_info.get("sequence")
    if column is None:
        if n_parts > 1:
            raise DataError(f"{source}: node '{model.chain}' is a chain, and the data's rows are one sequence; "
                            "they cannot be split over partitions. Give the spec a [data] sequence column, each "
                            "sequence within one partition, or compute the data into memory")
        return checked, [checked.n_rows], []
    lengths = sequence_lengths(model, part, None, checked.n_rows, source)
    ids = np.asarray(as_columns(part, source)[column])
    return checked, lengths, ids[np.concatenate([[0], np.cumsum(lengths)[:-1]])].tolist()


def _summary(compiled, block):
    """What the client needs of a partition: counts, which parents miss values, the sequences, and per
    observed node the sums behind the centring shift and the moments behind the data's variance.

    ``compiled`` is the client's, sent: a worker never derives."""
    checked, _, sequences = block
    model = compiled.model
    shift_sums, moments = {}, {}
    for name, values in checked.values.items():
        found = compiled.factors[name].shift_sums(values, checked.weights)
        shift_sums[name] = None if found is None else found + (values.shape[1:],)
        if not model.nodes[name].is_discrete:
            # The data's variance is asked of continuous nodes only (a collapsed component's warning).
            moments[name] = _moments(values.reshape(checked.n_rows, -1))
    return {"n_rows": checked.n_rows, "parents": latent_parents(model, checked), "missing": list(checked.missing),
            "n_missing": checked.n_missing, "n_missing_rows": checked.n_missing_rows,
            "weight": float(checked.weights.sum()), "sequences": sequences, "shift_sums": shift_sums,
            "moments": moments, "labelled": bool(checked.labels)}


def _moments(flat):
    """Per column: the count, mean and sum of squared deviations of the present values (Chan et al.'s form)."""
    present = ~np.isnan(flat)
    count = present.sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(present, flat, 0.0).sum(axis=0) / count
        squares = (np.where(present, flat - mean, 0.0) ** 2).sum(axis=0)
    return count, np.nan_to_num(mean), squares


def _variant(checked, parents):
    return parents_as_labels(checked, parents) if parents else checked


def _distinct_rows(model, block, parents):
    checked = _variant(block[0], parents)
    layout = grouping_layout(model, checked)
    if layout is None:
        return None
    distinct, inverse = np.unique(row_codes(checked, layout), return_inverse=True)
    return layout, distinct, np.bincount(inverse.reshape(-1), weights=checked.weights, minlength=len(distinct))


def _engine(compiled, block, parents, shifts, memory_budget):
    checked, lengths, _ = block
    return engine_for(compiled, prepare_rows(compiled, _variant(checked, parents), memory_budget, shifts), lengths)


def _streamed(function, compiled, model, part, weights, index, n_parts, parents, shifts, checked_finite, *arguments):
    """A pass's work on a partition read, checked and prepared within this one task."""
    checked, lengths, _ = _checked(model, part, weights, index, n_parts)
    rows = prepare_rows(compiled, _variant(checked, parents), 0, shifts, checked_finite)
    return function(engine_for(compiled, rows, lengths), *arguments)


def _estep(engine, params, hard):
    stats, objective = engine.expected_statistics(params, hard=hard)
    return stats, objective, peak_memory()


def _objective(engine, params, hard):
    return engine.objective(params, hard=hard)


def peak_memory():
    """This process's peak resident memory in bytes; None where the platform does not say.

    Linux's VmHWM, which starts afresh in a new program: getrusage's maxrss survives exec, so a
    worker process started by a large parent would report the parent's peak as its own.
    """
    try:
        with open("/proc/self/status") as handle:
            for line in handle:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        import resource
    except ImportError:
        return None
    kilobytes = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(kilobytes) * (1 if sys.platform == "darwin" else 1024)


def _sample(engine, share, seed, index):
    """A uniform sample of a partition's feature rows (each kept with probability ``share``) and their weights."""
    keep = np.random.default_rng([seed, index]).random(engine.rows.n_rows) < share
    return block_features(engine)[keep], engine.rows.weights[keep]


def _seed_agreement(engine, recipe):
    return label_agreement(engine, seeded_posterior(engine, recipe)) if engine.rows.labels else {}


def _seed_statistics(engine, recipe, order):
    posterior = seeded_posterior(engine, recipe)
    if order is not None:
        posterior = with_labels(engine, posterior, order)
    return engine.statistics_from_posterior(posterior)


def _seeding_step(function, engine, state, arguments):
    return function(engine, {} if state is None else state, *arguments)


# -- on the client --------------------------------------------------------------------------------

def _check_sequences_apart(summaries):
    """Refuse a chain's sequence whose rows lie in more than one partition."""
    where = {}
    for index, summary in enumerate(summaries):
        for sequence in summary["sequences"] or ():
            if sequence in where:
                raise DataError(f"sequence {sequence!r} has rows in dask partitions {where[sequence]} and {index}; "
                                "each sequence must lie within one partition (repartition the data by its "
                                "sequence column, e.g. with set_index)")
            where[sequence] = index


def _grouped(dask, model, checked, parents, holed, n_rows):
    """The distinct rows of an all-discrete data set with their weights (NodeData), when few enough; else None."""
    parts = _compute(dask, [dask.delayed(_distinct_rows)(model, block, parents) for block in checked])
    if parts[0] is None:
        return None
    codes = np.concatenate([p[1] for p in parts])
    distinct, inverse = np.unique(codes, return_inverse=True)
    if len(distinct) > GROUPED_ROWS_LIMIT or len(distinct) == n_rows:
        # Too many to hold here; or no row repeats, and the in-memory fit keeps such rows in data order.
        return None
    weights = np.bincount(inverse.reshape(-1), weights=np.concatenate([p[2] for p in parts]),
                          minlength=len(distinct))
    return rows_from_codes(parts[0][0], distinct, weights, holed)


def _shifts(summaries):
    """The whole data's centring shifts from the partitions' sums."""
    shifts = {}
    for name, first in summaries[0]["shift_sums"].items():
        if first is None:
            continue
        total = sum(s["shift_sums"][name][0] for s in summaries)
        weight = sum(s["shift_sums"][name][1] for s in summaries)
        shifts[name] = (total / weight).reshape(first[2])
    return shifts


def _variances(summaries):
    """Each observed node's per-column variance over the whole data (the partitions' moments combined)."""
    variances = {}
    for name in summaries[0]["moments"]:
        count, mean, squares = summaries[0]["moments"][name]
        for summary in summaries[1:]:
            other_count, other_mean, other_squares = summary["moments"][name]
            total = count + other_count
            with np.errstate(invalid="ignore", divide="ignore"):
                delta = other_mean - mean
                share = np.where(total > 0, other_count / np.maximum(total, 1), 0.0)
                squares = squares + other_squares + delta * delta * count * share
                mean = mean + delta * share
            count = total
        with np.errstate(invalid="ignore", divide="ignore"):
            variances[name] = squares / count
    return variances


class DaskEngine:
    """The fit's E-step over prepared partitions held by dask (see the module docstring).

    It answers what the EM loop and the seeded start ask of an engine; posteriors of
    given rows come from ``Fit.posterior`` on data in memory.

    Parameters
    ----------
    compiled : CompiledModel
    engines : list of dask.delayed.Delayed
        Each partition's persisted in-memory engine.
    n_rows : list of int
        Rows per partition.
    shifts : dict of str to ndarray
    weights : list of float
        Total row weight per partition.
    variances : dict of str to ndarray
    sources : _StreamSources or None
        For data larger than the workers' memory: where each pass reads the partitions
        from again (``engines`` is then None); None when they are kept where they are.
    labelled : bool
        Whether some latent node is given as labels (a column, or a parent with missing values).

    Attributes
    ----------
    peak_memory : int or None
        The largest peak resident memory, in bytes, that a process running the E-steps reported.
    """

    def __init__(self, compiled, engines, n_rows, shifts, weights, variances, sources=None, labelled=False):
        self.compiled = compiled
        self.engines = engines
        self.n_rows = n_rows
        self.shifts = shifts
        self.weights = weights
        self.n_observations = float(sum(weights))
        self.sources = sources
        self.labelled = labelled
        self.peak_memory = None
        self._variances = variances
        self._states = [None] * len(n_rows)
        # A streamed partition's statistics are checked for overflow on its first pass only.
        self._checked_finite = False

    def _tasks(self, function, arguments, partitions=None):
        """``function(engine, *arguments[i])`` per partition i (all, or those listed), as dask tasks."""
        dask = _dask()
        chosen = range(len(self.n_rows)) if partitions is None else partitions
        if self.sources is None:
            return [dask.delayed(function)(self.engines[i], *arguments[i]) for i in chosen]
        sources = self.sources
        tasks = [dask.delayed(_streamed)(function, sources.compiled, sources.model, sources.parts[i], sources.weights, i,
                                         len(self.n_rows), sources.parents, self.shifts, self._checked_finite,
                                         *arguments[i]) for i in chosen]
        self._checked_finite = self._checked_finite or partitions is None
        return tasks

    def batches(self, batch_size, rng):
        """Online EM's batches: the partitions, ``[(weight, expected_statistics(params, hard))]``."""
        if batch_size is not None:
            raise OptionError("with dask data each partition is a batch of online EM: leave out batch_size and "
                              "repartition the data to choose the batches' size")
        return [(weight, _PartitionStep(self, index)) for index, weight in enumerate(self.weights)]

    def column_variances(self, name):
        return self._variances.get(name)

    def expected_statistics(self, params, hard=False, partitions=None):
        """Summed over all partitions, or over the indices in ``partitions``."""
        dask = _dask()
        shared = dask.delayed(params, traverse=False)
        parts = _compute(dask, self._tasks(_estep, [(shared, hard)] * len(self.n_rows), partitions))
        stats, objective, _ = parts[0]
        for part_stats, part_objective, _ in parts[1:]:
            stats.add(part_stats)
            objective += part_objective
        peaks = [peak for _, _, peak in parts if peak is not None]
        if peaks:
            self.peak_memory = max(peaks + ([self.peak_memory] if self.peak_memory is not None else []))
        return stats, objective

    def statistics(self, params, hard=False):
        """Expected statistics at ``params`` where the objective is not needed (the workers compute it anyway)."""
        return self.expected_statistics(params, hard=hard)[0]

    def objective(self, params, hard=False):
        """The objective alone, summed over the partitions in their order (as ``expected_statistics`` sums it)."""
        dask = _dask()
        shared = dask.delayed(params, traverse=False)
        parts = _compute(dask, self._tasks(_objective, [(shared, hard)] * len(self.n_rows)))
        objective = parts[0]
        for part in parts[1:]:
            objective += part
        return objective

    def seeded_statistics(self, rng):
        """The seeded start: exactly the in-memory one when the partitions are kept; for streamed
        data, k-means on a uniform sample of about SEED_SAMPLE_ROWS rows, then one pass."""
        if self.sources is None:
            self._states = [None] * len(self.n_rows)
            return seeded_statistics(self, rng)
        dask = _dask()
        k = self.compiled.n_configurations
        n_parts = len(self.n_rows)
        n_total = sum(self.n_rows)
        recipes = [("ones",)] * n_parts if k == 1 else None
        if recipes is None and has_features(self.compiled) and k <= n_total:
            share = min(1.0, SEED_SAMPLE_ROWS / n_total)
            seed = int(rng.integers(2 ** 63))
            parts = _compute(dask, self._tasks(_sample, [(share, seed, index) for index in range(n_parts)]))
            weights = np.concatenate([p[1] for p in parts])
            if len(weights) >= k:
                recipes = [kmeans_centres(np.concatenate([p[0] for p in parts]), weights, k, rng)] * n_parts
        if recipes is None:
            recipes = random_recipe(self.n_rows, k, rng)
        order = label_order(_compute(dask, self._tasks(_seed_agreement, [(recipe,) for recipe in recipes]))) \
            if self.labelled else None
        parts = _compute(dask, self._tasks(_seed_statistics, [(recipe, order) for recipe in recipes]))
        total = parts[0]
        for part in parts[1:]:
            total.add(part)
        return total

    def run_each(self, function, arguments):
        """A seeding step per partition (``declarem.seeding``), its state kept where the partition is."""
        dask = _dask()
        chosen = [index for index, given in enumerate(arguments) if given is not None]
        steps = dask.persist(*[dask.delayed(_seeding_step, nout=2)(function, self.engines[i], self._states[i],
                                                                    arguments[i]) for i in chosen])
        results = [None] * len(arguments)
        values = _compute(dask, [step[1] for step in steps])
        for index, step, value in zip(chosen, steps, values):
            self._states[index] = step[0]
            results[index] = value
        return results


class _PartitionStep:
    """One partition's E-step, as online EM calls a batch's."""

    def __init__(self, engine, index):
        self.engine = engine
        self.index = index

    def __call__(self, params, hard=False):
        return self.engine.expected_statistics(params, hard, partitions=[self.index])
