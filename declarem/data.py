"""Data in: CSV files, mappings and DataFrames -> checked arrays per observed node.

Every check names the column, and for values outside a family's support the
first bad row, so a user can find and fix it.
"""

import codecs
import csv
import io
import itertools
import os
import re
import stat
import warnings
import zipfile
import zlib
from dataclasses import dataclass, field

import numpy as np

from .errors import DataError, OptionError
from .resources import array_bytes


@dataclass
class NodeData:
    """The checked data of a model's observed nodes.

    Attributes
    ----------
    n_rows : int
    values : dict of str to ndarray
        Per observed node: shape (n_rows,) for a scalar node (int for a
        categorical one, with MISSING_CATEGORY where missing), (n_rows, dim)
        for a vector node (NaN where missing).
    weights : ndarray of shape (n_rows,)
    missing : dict of str to ndarray of bool
        Per observed node with missing values only: where they are, the shape of its values.
    labels : dict of str to ndarray of int
        Per latent node given as a data column (partial labels): shape (n_rows,),
        MISSING_CATEGORY where the node stays latent.
    """

    n_rows: int
    values: dict
    weights: np.ndarray
    missing: dict = field(default_factory=dict)
    labels: dict = field(default_factory=dict)

    def __sizeof__(self):
        # dask's scheduler reads it (see resources.array_bytes).
        return object.__sizeof__(self) + array_bytes(self.values, self.weights, self.missing, self.labels)

    @property
    def n_missing(self):
        """Number of missing cells over the observed nodes."""
        return int(sum(int(mask.sum()) for mask in self.missing.values()))

    @property
    def n_missing_rows(self):
        """Number of rows with at least one missing observed value."""
        if not self.missing:
            return 0
        incomplete = np.zeros(self.n_rows, dtype=bool)
        for mask in self.missing.values():
            incomplete |= mask.reshape(self.n_rows, -1).any(axis=1)
        return int(incomplete.sum())


# A missing value of a categorical node (and an unlabelled row of a partially labelled latent node).
MISSING_CATEGORY = -1


def group_identical_rows(model, checked):
    """Merge identical rows of an all-discrete data set into one row each, weights added.

    Every expected statistic is a weighted sum over rows, so a fit on the grouped
    rows equals the fit on the original ones; each E-step then costs the number of
    distinct rows instead of the number of rows. The grouped rows are in the order of
    their codes (``row_codes``), whatever the order of the data.

    Parameters
    ----------
    model : Model
    checked : NodeData

    Returns
    -------
    NodeData
        Unchanged when some observed node is not discrete, or nothing repeats.
    """
    layout = grouping_layout(model, checked)
    if layout is None:
        return checked
    distinct, inverse = np.unique(row_codes(checked, layout), return_inverse=True)
    if len(distinct) == checked.n_rows:
        return checked
    weights = np.bincount(inverse.reshape(-1), weights=checked.weights, minlength=len(distinct))
    return rows_from_codes(layout, distinct, weights, holed=list(checked.missing))


#: Supports whose values repeat so often in real data that grouping identical rows pays: 20,190
#: yearly visit counts take 59 values, so an E-step and a per-row M-step (a negative binomial's
#: Newton steps) cost 59 rows instead of 20,190, for the same fit.
COUNT_SUPPORTS = ("binary", "nonnegative-integer", "positive-integer")


def group_repeated_counts(model, checked):
    """Merge identical rows of a data set of counts (and categories), weights added.

    Rows are compared whole, a missing cell by where it is. Unchanged (the same object)
    when some column is neither a count nor a category, a latent node is given as
    labels, the model has a chain, or nothing repeats.
    """
    names = list(checked.values)
    if not names or checked.labels or model.chain is not None or not all(
            model.nodes[n].is_discrete or model.nodes[n].family.support in COUNT_SUPPORTS for n in names):
        return checked
    if grouping_layout(model, checked) is not None:
        return checked      # all categorical: group_identical_rows has grouped what repeats
    blocks = []
    for name in names:
        column = checked.values[name].reshape(checked.n_rows, -1)
        holes = checked.missing.get(name)
        if holes is not None:
            holes = holes.reshape(column.shape)
            blocks.append(holes)
            column = np.where(holes, 0, column)
        blocks.append(column)
    stacked = np.column_stack(blocks).astype(float)
    if stacked.shape[1] == 1:       # one column: numpy's unique of a vector is several times faster than of rows
        distinct, inverse = np.unique(stacked[:, 0], return_inverse=True)
        distinct = distinct[:, None]
    else:
        distinct, inverse = np.unique(stacked, axis=0, return_inverse=True)
    if len(distinct) == checked.n_rows:
        return checked
    weights = np.bincount(inverse.reshape(-1), weights=checked.weights, minlength=len(distinct))
    values, missing = {}, {}
    first = 0
    for name in names:
        original = checked.values[name]
        shape = original.shape[1:]
        width = int(np.prod(shape, dtype=int))
        if name in checked.missing:
            missing[name] = distinct[:, first:first + width].astype(bool).reshape((-1,) + shape)
            first += width
        column = distinct[:, first:first + width].astype(original.dtype).reshape((-1,) + shape)
        if name in missing and np.issubdtype(original.dtype, np.floating):
            column = np.where(missing[name], np.nan, column)
        values[name] = column
        first += width
    return NodeData(n_rows=len(distinct), values=values, weights=weights, missing=missing)


def grouping_layout(model, checked):
    """The columns that identify a row of an all-discrete data set, with their sizes; None if rows cannot be grouped.

    Returns
    -------
    (names, labelled, sizes) or None
        Observed node names, latent nodes given as label columns, and each column's
        number of values plus one (a missing value, MISSING_CATEGORY, shifted to 0).
    """
    names = list(checked.values)
    if not names or not all(model.nodes[n].is_discrete for n in names) or model.chain is not None:
        return None  # a chain's rows are time steps in order: never regrouped
    labelled = list(checked.labels)
    sizes = [model.nodes[n].k + 1 for n in names + labelled]
    if np.prod(np.array(sizes, dtype=float)) >= 2.0 ** 62:
        return None
    return names, labelled, sizes


def row_codes(checked, layout):
    """One mixed-radix integer per row, (n_rows,) int64: sorting integers is far cheaper than sorting rows."""
    names, labelled, sizes = layout
    codes = np.zeros(checked.n_rows, dtype=np.int64)
    for column, size in zip([checked.values[n] for n in names] + [checked.labels[n] for n in labelled], sizes):
        codes = codes * size + (column - MISSING_CATEGORY)
    return codes


def rows_from_codes(layout, codes, weights, holed):
    """The rows that ``codes`` stand for, as NodeData.

    Parameters
    ----------
    layout : tuple
        From ``grouping_layout``.
    codes : ndarray of int64, shape (n,)
    weights : ndarray of shape (n,)
    holed : list of str
        Observed nodes that have missing values somewhere in the data set.
    """
    names, labelled, sizes = layout
    columns = {}
    remaining = np.array(codes, dtype=np.int64)
    for name, size in reversed(list(zip(names + labelled, sizes))):
        columns[name] = (remaining % size).astype(np.intp) + MISSING_CATEGORY
        remaining //= size
    return NodeData(n_rows=len(codes), values={n: columns[n] for n in names}, weights=np.asarray(weights, dtype=float),
                    missing={n: columns[n] == MISSING_CATEGORY for n in holed},
                    labels={n: columns[n] for n in labelled})


FILE_KINDS = ((stat.S_ISDIR, "a directory"), (stat.S_ISCHR, "a character device"),
              (stat.S_ISBLK, "a block device"), (stat.S_ISFIFO, "a named pipe (FIFO)"),
              (stat.S_ISSOCK, "a socket"))


def check_regular_file(path, what, error=DataError):
    """Refuse a path that is missing or is not a regular file, from its ``os.stat`` alone.

    Reading a device (``/dev/zero``, ``/dev/urandom``) never ends and opening a
    FIFO blocks, so anything but a regular file is refused before it is opened.

    Parameters
    ----------
    path : str
    what : str
        What the file should be, for messages ("data file", "spec file").
    error : type
        The DeclaremError subclass to raise.

    Returns
    -------
    os.stat_result
    """
    try:
        info = os.stat(path)
    except FileNotFoundError:
        raise error(f"{path}: no such {what}") from None
    except ValueError:
        # os.stat refuses a path with a NUL character before asking the system.
        raise error(f"{path!r}: a path cannot contain a NUL character; give the path of a {what}") from None
    except OSError as exc:
        raise error(f"{path}: cannot read the {what}: {exc.strerror or exc}") from None
    _refuse_special(path, info.st_mode, what, error)
    return info


def _refuse_special(path, mode, what, error):
    if stat.S_ISREG(mode):
        return
    kind = next((name for test, name in FILE_KINDS if test(mode)), "not a regular file")
    raise error(f"{path}: is {kind}, not a {what}; give the path of a regular file")


def read_input(path, what, error=DataError):
    """The bytes of an input file, after refusing anything that is not a regular file.

    Parameters
    ----------
    path : str or os.PathLike
    what : str
        What the file should be, for messages ("data file", "spec file").
    error : type
        The DeclaremError subclass raised for every problem, naming the path.

    Returns
    -------
    bytes
    """
    path = os.fspath(path)
    check_regular_file(path, what, error)
    try:
        with open(path, "rb") as handle:
            # The path may have been swapped for something else since the stat.
            _refuse_special(path, os.fstat(handle.fileno()).st_mode, what, error)
            return handle.read()
    except OSError as exc:
        raise error(f"{path}: cannot read the {what}: {exc.strerror or exc}") from None


def decode_text(raw, path, what, error=DataError):
    """Decode a text input as strict UTF-8 (a leading byte-order mark is dropped).

    Raises ``error`` naming the file, line and column of the first byte that is
    not UTF-8, so a Latin-1 or binary file fails at once instead of as garbled names.
    """
    if raw.startswith(codecs.BOM_UTF8):
        raw = raw[len(codecs.BOM_UTF8):]
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        column = exc.start - (raw.rfind(b"\n", 0, exc.start) + 1) + 1
        raise error(f"{path}: line {line}, column {column}: byte 0x{raw[exc.start]:02x} is not UTF-8 text; "
                    f"declarem reads a {what} as UTF-8, so save it with that encoding") from None


def read_csv(path):
    """Read a CSV with a header row into a mapping of column name to float array.

    The file must be UTF-8 text with a header row and at least one data row.
    Raises DataError naming the file, line and column of any cell that is not a
    number, and naming the file for any other problem with it.
    """
    path = os.fspath(path)
    text = decode_text(read_input(path, "data file"), path, "data file")
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = next(reader, None)
        if header is None:
            raise DataError(f"{path}: the file is empty; expected a header row of column names")
        header = [name.strip() for name in header]
        if not any(header):
            raise DataError(f"{path}: line 1 is empty; expected a header row of column names")
        if not all(header):
            raise DataError(f"{path}: line 1, field {header.index('') + 1} of the header has no column name")
        if len(set(header)) != len(header):
            twice = next(name for name in header if header.count(name) > 1)
            raise DataError(f"{path}: the header names column '{twice}' twice")
        table = _numbers_only(text, len(header))
        if table is None:
            table = _all_numbers(reader, header)
        if table is None:
            # Something is missing or wrong: parse again line by line, to read the missing cells and
            # name the line of the first bad one.
            reader = csv.reader(io.StringIO(text, newline=""))
            next(reader)
            rows = [parsed for parsed in (_parse_row(row, header, reader.line_num, path) for row in reader)
                    if parsed is not None]
            table = np.array(rows, dtype=float).reshape(len(rows), len(header))
    except csv.Error as exc:
        raise DataError(f"{path}: line {reader.line_num}: not readable as CSV: {exc}") from None
    if not len(table):
        raise DataError(f"{path}: the header has no data rows below it; add at least one row")
    return {name: table[:, j] for j, name in enumerate(header)}


def _numbers_only(text, width):
    """The data rows below the header as a (n_rows, width) float table, parsed by numpy, when the file has no
    quotes and every cell is a number numpy reads; else None (and the csv module's parse decides).

    numpy's reader parses the decimal numbers ``float`` does to the same values, about three times as
    fast; what it refuses (empty or NA cells, digit separators, ragged or quoted rows) goes the slow way.
    """
    end = text.find("\n")
    body = text[end + 1:]
    if end < 0 or '"' in text or not body.strip():
        return None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")      # numpy warns of lines it cannot read: the slow way names them
            table = np.loadtxt(io.StringIO(body, newline=""), delimiter=",", comments=None, ndmin=2, dtype=float)
    except (ValueError, UserWarning):
        return None
    return table if table.shape[1] == width else None


def _all_numbers(reader, header):
    """The remaining records as a (n_rows, n_columns) float table, when every cell is a number and every
    record has the header's width (blank lines skipped, as ``_parse_row`` skips them); else None.

    One ``float`` per cell through ``map``: the same parse as ``_parse_row``'s, without its per-cell
    Python loop (a data file is read at every fit from a path).
    """
    records = list(reader)
    width = len(header)
    if set(map(len, records)) != {width}:
        # Blank lines (or a ragged row): the per-record test only then.
        records = [row for row in records if len(row) > 1 or "".join(row).strip()]
        if any(len(row) != width for row in records):
            return None
    try:
        cells = list(map(float, itertools.chain.from_iterable(records)))
    except ValueError:
        return None
    return np.array(cells, dtype=float).reshape(len(records), width)


def _parse_row(row, header, line_number, path):
    """One CSV record as floats, or None for a blank line.

    A line of empty fields (",,") is a row with every value missing, not a blank line.
    """
    if len(row) <= 1 and not "".join(row).strip():
        return None
    if len(row) != len(header):
        raise DataError(f"{path}: line {line_number} has {len(row)} fields; the header has {len(header)}")
    parsed = []
    for name, cell in zip(header, row):
        if cell.strip() in MISSING_CELLS:
            parsed.append(np.nan)
            continue
        try:
            parsed.append(float(cell))
        except ValueError:
            raise DataError(f"{path}: line {line_number}, column '{name}': {cell!r} is not a number "
                            "(leave the cell empty, or write NA, where the value is missing)") from None
    return parsed


# CSV cells that mean "missing": empty, and R's NA.
MISSING_CELLS = ("", "NA")


COUNT_COLUMN = "count"


def sparse_columns(matrix, rows, columns, source="matrix"):
    """The non-zero cells of a sparse count matrix as columns: row index, column index, count.

    A document-term matrix becomes (doc, word, count) triples, so a model is fitted
    from its non-zeros with the counts as row weights.

    Parameters
    ----------
    matrix : scipy.sparse matrix or array of shape (n_row_values, n_column_values)
    rows, columns : str
        Names of the columns that receive the row and column indices (node names).

    Returns
    -------
    dict with ``rows``, ``columns`` and ``"count"``, each of shape (n_nonzero,)
    """
    import scipy.sparse
    if not scipy.sparse.issparse(matrix):
        matrix = scipy.sparse.coo_matrix(np.asarray(matrix))
    coo = scipy.sparse.coo_matrix(matrix)
    coo.sum_duplicates()
    keep = coo.data != 0
    counts = coo.data[keep].astype(float)
    if np.any(counts < 0) or not np.all(np.isfinite(counts)):
        bad = np.flatnonzero((counts < 0) | ~np.isfinite(counts))[0]
        raise DataError(f"{source}: cell ({coo.row[keep][bad]}, {coo.col[keep][bad]}) holds "
                        f"{counts[bad]:g}; counts must be finite and >= 0")
    return {rows: coo.row[keep].astype(float), columns: coo.col[keep].astype(float), COUNT_COLUMN: counts}


# What a damaged or foreign .npz raises from inside zipfile, zlib and numpy's reader.
NPZ_ERRORS = (OSError, EOFError, ValueError, KeyError, IndexError, TypeError, RuntimeError, NotImplementedError,
              zipfile.BadZipFile, zlib.error, AttributeError)


def read_npz(path, rows, columns):
    """Read a scipy sparse matrix saved with ``scipy.sparse.save_npz`` as (rows, columns, count) columns."""
    import scipy.sparse
    path = os.fspath(path)
    check_regular_file(path, "data file")
    if not rows or not columns:
        raise DataError(f"{path}: a sparse matrix needs [data] rows and columns naming the nodes its "
                        "row and column indices belong to (e.g. rows = \"doc\", columns = \"word\")")
    raw = read_input(path, "data file")
    try:
        matrix = scipy.sparse.load_npz(io.BytesIO(raw))
    except NPZ_ERRORS as exc:
        # numpy names the in-memory buffer by its repr; the path is already in the message.
        reason = re.sub(r"<[^<>]* object at 0x[0-9a-fA-F]+>", "it", " ".join(str(exc).split()))
        raise DataError(f"{path}: not a scipy sparse .npz matrix (truncated or damaged?): "
                        f"{reason or type(exc).__name__}") from None
    if matrix.dtype.kind not in "biuf":
        raise DataError(f"{path}: the sparse matrix holds {matrix.dtype} values; expected counts (numbers)")
    return sparse_columns(matrix, rows, columns, source=path)


def read_data(path, rows=None, columns=None):
    """Read a data file: CSV with a header row, or a sparse count matrix (.npz) as triples."""
    path = os.fspath(path)
    if path.endswith(".npz"):
        return read_npz(path, rows, columns)
    return read_csv(path)


def read_model_data(model, source):
    """Read a model's data file; return its columns and the weights column it implies.

    A sparse matrix is read with the spec's ``[data] rows`` and ``columns``, and its
    counts are the row weights unless ``[data] weights`` names another column; a CSV
    of triples under a spec that declares ``rows`` is weighted by its ``count`` column
    the same way.
    """
    info = model.data_info
    columns = read_data(source, info.get("rows"), info.get("columns"))
    # Cells of a count matrix are weighted by their counts, whether read from .npz or as CSV triples.
    is_matrix = os.fspath(source).endswith(".npz") or (info.get("rows") and COUNT_COLUMN in columns)
    return columns, info.get("weights") or (COUNT_COLUMN if is_matrix else None)


def as_columns(data, source="data"):
    """Normalise a mapping or DataFrame to a dict of column name -> ndarray."""
    if isinstance(data, (str, os.PathLike)):
        return read_data(data)
    if hasattr(data, "columns") and hasattr(data, "to_numpy"):
        return {str(c): _as_array(data[c].to_numpy(), c, source) for c in data.columns}
    if not hasattr(data, "keys"):
        raise DataError(f"{source}: expected a mapping of column name to array, a DataFrame or a CSV "
                        f"path, found {type(data).__name__}")
    return {str(key): _as_array(data[key], key, source) for key in data.keys()}


def _as_array(values, label, source):
    try:
        return np.asarray(values)
    except (TypeError, ValueError) as exc:
        # Ragged nested lists, and objects numpy cannot take as an array.
        raise DataError(f"{source}: column '{label}' is not an array of numbers: "
                        f"{' '.join(str(exc).split())}") from None


# Beyond 2**53 - 1 neighbouring integers share one float64, so an integer-valued datum there is not
# the number in the file, and log-densities of counts (lgamma(x + 1)) lose every digit of accuracy.
MAX_EXACT_INTEGER = 2 ** 53 - 1
INTEGER_SUPPORTS = ("integer", "nonnegative-integer", "positive-integer", "binary")


def _support_violation(values, support, upper):
    """Index of the first value outside the support, and what was expected; or None."""
    checks = {
        "real": (lambda v: np.isfinite(v), "finite real numbers"),
        "positive": (lambda v: v > 0, "positive numbers"),
        "nonnegative": (lambda v: v >= 0, "non-negative numbers"),
        "unit": (lambda v: (v > 0) & (v < 1), "numbers strictly between 0 and 1"),
        "integer": (lambda v: v == np.round(v), "integers"),
        "nonnegative-integer": (lambda v: (v >= 0) & (v == np.round(v)), "non-negative integers"),
        "positive-integer": (lambda v: (v >= 1) & (v == np.round(v)), "integers 1, 2, ..."),
        "binary": (lambda v: (v == 0) | (v == 1), "0 or 1"),
    }
    test, expected = checks[support]
    ok = test(values)
    ok = ok & np.isfinite(values)
    if upper is not None:
        ok = ok & (values <= upper)
        expected += f" no larger than {upper}"
    inexact = np.zeros(values.shape, dtype=bool)
    if support in INTEGER_SUPPORTS:
        inexact = ok & (np.abs(values) > MAX_EXACT_INTEGER)
        ok = ok & ~inexact
    bad = np.flatnonzero(~ok)
    if not len(bad):
        return None
    if inexact[bad[0]]:
        expected += (f" of magnitude at most 2**53 - 1 = {MAX_EXACT_INTEGER}, the largest integer a float64 "
                     "holds exactly; rescale or shift the column")
    return bad[0], expected


def node_data(model, data, weights=None, source="data"):
    """Check the data against the model and gather each observed node's values.

    Parameters
    ----------
    model : Model
    data : mapping, DataFrame or path
    weights : array-like, str or None
        Row weights, or the name of a column holding them.
    source : str
        How to name the data in messages (a file path, or "data").

    Returns
    -------
    NodeData
    """
    columns = as_columns(data, source)
    n_rows = None
    values = {}
    missing = {}
    for name in model.observed:
        node = model.nodes[name]
        array, label = _node_array(model, name, columns, source)
        if n_rows is None:
            n_rows = len(array)
        elif len(array) != n_rows:
            raise DataError(f"{source}: column '{label}' has {len(array)} rows; other columns have {n_rows}")
        values[name], holes = _checked_values(node, array, label, source)
        if holes is not None:
            missing[name] = holes
    labels = {}
    for name in model.latent:
        if name not in columns:
            continue
        array = _numeric(columns[name], name, source)
        if n_rows is not None and array.shape != (n_rows,):
            raise DataError(f"{source}: column '{name}' (labels of latent node '{name}') has shape {array.shape}; "
                            f"expected ({n_rows},), one label or NaN per row")
        n_rows = len(array) if n_rows is None else n_rows
        labels[name] = _checked_labels(model.nodes[name], array, source)
    if n_rows == 0:
        raise DataError(f"{source}: no rows")
    weights = _weights(weights, columns, n_rows, source)
    return NodeData(n_rows=n_rows, values=values, weights=weights, missing=missing, labels=labels)


def missing_parents_as_latent(model, checked, parents=None):
    """The model to fit ``checked`` with: categorical parents with missing values made latent there.

    A missing value of an observed categorical node that has children makes the node
    latent on that row (the row sums over its declared distribution). The fit then
    treats the node as latent everywhere, its present values as labels that fix it:
    the same likelihood, and the same parameters.

    Parameters
    ----------
    model : Model
    checked : NodeData
    parents : list of str, optional
        The nodes to make latent, when ``checked`` is a block of a larger data set
        (``latent_parents`` of the whole set); by default those of ``checked``.

    Returns
    -------
    model : Model
        ``model`` itself, or its variant with those nodes latent.
    checked : NodeData
    """
    parents = latent_parents(model, checked) if parents is None else parents
    if not parents:
        return model, checked
    return model.with_latent(parents), parents_as_labels(checked, parents)


def parents_as_labels(checked, parents):
    """``checked`` with the values of the nodes ``parents`` moved to labels (see ``missing_parents_as_latent``)."""
    values = {n: v for n, v in checked.values.items() if n not in parents}
    missing = {n: m for n, m in checked.missing.items() if n not in parents}
    labels = dict(checked.labels, **{n: checked.values[n] for n in parents})
    return NodeData(n_rows=checked.n_rows, values=values, weights=checked.weights, missing=missing, labels=labels)


def latent_parents(model, checked):
    """The observed categorical nodes with children that have missing values in ``checked``: sorted names."""
    return sorted(name for name in checked.missing
                  if model.nodes[name].is_discrete and any(True for _ in model.graph.successors(name)))


def _checked_labels(node, array, source):
    """A latent node's partial labels: categories where given, MISSING_CATEGORY where NaN."""
    given = ~np.isnan(array)
    bad = np.flatnonzero(given & ((array != np.round(array)) | (array < 0) | (array >= node.k)))
    if len(bad):
        raise DataError(f"{source}: column '{node.name}', row {bad[0]}: label {array[bad[0]]:g} is not a value of "
                        f"latent node '{node.name}' (integers 0..{node.k - 1}, or empty/NaN where unknown)")
    labels = np.full(len(array), MISSING_CATEGORY, dtype=np.intp)
    labels[given] = array[given].astype(np.intp)
    return labels


def _node_array(model, name, columns, source):
    node = model.nodes[name]
    if node.columns:
        missing = [c for c in node.columns if c not in columns]
        if missing:
            raise DataError(f"{source}: column '{missing[0]}' of node '{name}' is missing; the data has "
                            f"{_listing(columns)}")
        return _stacked(columns, node.columns, source), ",".join(node.columns)
    if name in columns:
        array = _numeric(columns[name], name, source)
        if node.dim > 1:
            if array.ndim != 2 or array.shape[1] != node.dim:
                raise DataError(f"{source}: column '{name}' has shape {array.shape}; node '{name}' has "
                                f"dim {node.dim}, so expected (n_rows, {node.dim})")
        elif array.ndim != 1:
            raise DataError(f"{source}: column '{name}' has shape {array.shape}; expected one value per row")
        return array, name
    if node.dim > 1:
        names = [f"{name}_{i}" for i in range(node.dim)]
        if all(c in columns for c in names):
            return _stacked(columns, names, source), f"{name}_0.."
        raise DataError(f"{source}: node '{name}' (dim {node.dim}) needs column '{name}' or columns "
                        f"{names[0]}..{names[-1]}; the data has {_listing(columns)}")
    raise DataError(f"{source}: observed node '{name}' has no column '{name}' in the data; the data has "
                    f"{_listing(columns)}. Add the column, or declare the node latent")


def _stacked(columns, names, source):
    """The named one-dimensional columns of equal length side by side, of shape (n_rows, len(names))."""
    # No copy per column: the columns are copied once, side by side, below.
    arrays = [_numeric(columns[c], c, source, copy=False) for c in names]
    for label, array in zip(names, arrays):
        if array.ndim != 1:
            raise DataError(f"{source}: column '{label}' has shape {array.shape}; expected one value per row")
        if len(array) != len(arrays[0]):
            raise DataError(f"{source}: column '{label}' has {len(array)} rows; column '{names[0]}' has "
                            f"{len(arrays[0])}")
    # Stacked as rows, then transposed in one blocked copy: several times faster than column_stack's
    # strided writes for long columns.
    return np.ascontiguousarray(np.array(arrays).T)


def _listing(columns):
    names = list(columns)
    shown = ", ".join(names[:12]) + (", ..." if len(names) > 12 else "")
    return f"columns {shown}" if names else "no columns"


def _numeric(array, label, source, copy=True):
    array = _as_array(array, label, source)
    kind = array.dtype.kind
    if kind in "biuf":
        return array.astype(float, copy=copy)
    if kind not in "OUS":
        # Complex numbers would lose their imaginary part, dates would become day counts.
        raise DataError(f"{source}: column '{label}' holds {array.dtype} values; expected real numbers")
    if kind == "O":
        # pandas' nullable columns hold pd.NA (and object columns None) where a value is missing.
        array = np.array([np.nan if value is None or type(value).__name__ == "NAType" else value
                          for value in array.reshape(-1)], dtype=object).reshape(array.shape)
    try:
        return array.astype(float)
    except (TypeError, ValueError, OverflowError):
        raise DataError(f"{source}: column '{label}' is not numeric") from None


def _checked_values(node, array, label, source):
    """A node's values, checked against its support, and where they are missing (NaN); None if nowhere.

    A categorical node's missing values become MISSING_CATEGORY; a real node's stay NaN.
    """
    holes = np.isnan(array)
    flat_holes = holes.reshape(len(array), -1)
    empty = np.flatnonzero(flat_holes.all(axis=0)) if len(array) else []
    if len(empty):
        column = _column_name(node, label, int(empty[0]), flat_holes.shape[1])
        raise DataError(f"{source}: column '{column}' of node '{node.name}' is missing on every row; "
                        "drop the column from the model or give it values")
    holes = holes if holes.any() else None
    if node.is_discrete:
        given = array if holes is None else np.where(holes, 0.0, array)
        bad = np.flatnonzero((given != np.round(given)) | (given < 0) | (given >= node.k))
        if len(bad):
            raise DataError(f"{source}: column '{label}', row {bad[0]}: value {array[bad[0]]:g} is not a "
                            f"category of node '{node.name}' (integers 0..{node.k - 1}, or empty/NaN where "
                            "missing)")
        categories = given.astype(np.intp)
        if holes is not None:
            categories[holes] = MISSING_CATEGORY
        return categories, holes
    upper = dict(node.constants).get(node.family.upper_bound) if node.family.upper_bound else None
    flat = array.reshape(len(array), -1)
    present = flat.reshape(-1) if holes is None else flat[~flat_holes]
    if _support_violation(present, node.family.support, upper) is None:
        return array, holes
    # Some value is outside the support: find the first, column by column, to name it.
    for j in range(flat.shape[1]):
        present = ~np.isnan(flat[:, j])
        found = _support_violation(flat[present, j], node.family.support, upper)
        if found is not None:
            row, expected = found
            row = int(np.flatnonzero(present)[row])
            column = _column_name(node, label, j, flat.shape[1])
            raise DataError(f"{source}: column '{column}', row {row}: value {flat[row, j]:g} is outside the "
                            f"support of node '{node.name}' ({node.family.name}: {expected})")
    return array, holes


def _column_name(node, label, j, width):
    """The data column holding column j of a node's values, for messages."""
    if node.columns:
        return node.columns[j]
    if width == 1:
        return label
    return f"{node.name}_{j}" if label.endswith("..") else f"{label}[{j}]"


def _weights(weights, columns, n_rows, source):
    if weights is None:
        return np.ones(n_rows)
    label = "weights"
    if isinstance(weights, str):
        if weights not in columns:
            raise DataError(f"{source}: weights column '{weights}' is missing; the data has {_listing(columns)}")
        label = weights
        weights = columns[weights]
    weights = _numeric(weights, label, source)
    if weights.shape != (n_rows,):
        raise DataError(f"{source}: {label} has shape {weights.shape}; expected ({n_rows},), one per row")
    bad = np.flatnonzero(~np.isfinite(weights) | (weights < 0))
    if len(bad):
        raise DataError(f"{source}: {label}, row {bad[0]}: weight {weights[bad[0]]:g} must be finite and >= 0")
    with np.errstate(over="ignore"):
        total = weights.sum()
    if total <= 0:
        raise DataError(f"{source}: {label} sum to zero; at least one row needs positive weight")
    # Weights are row counts: a total beyond the exact float64 integers, or below the normal floats,
    # leaves the weighted statistics (and the log-likelihood) without meaningful digits.
    if not total <= MAX_EXACT_INTEGER:
        raise DataError(f"{source}: {label} sum to {total:g}, more than 2**53 - 1 = {MAX_EXACT_INTEGER} rows; "
                        "rescale them (they are row counts)")
    if total < np.finfo(float).tiny:
        raise DataError(f"{source}: {label} sum to {total:g}, too small to divide by; rescale them "
                        "(they are row counts)")
    return weights


def sequence_lengths(model, data, lengths, n_rows, source="data"):
    """The rows per sequence of a model with a chain, checked; None for a model without one.

    From ``lengths`` (as hmmlearn takes them), else from the spec's ``[data] sequence``
    column (rows with equal values form one sequence, in file order), else one sequence.

    Returns
    -------
    list of int or None
    """
    if model.chain is None:
        if lengths is not None:
            raise OptionError("lengths apply to models with a chain (a node lagged on itself); this model has none")
        return None
    if lengths is not None:
        if isinstance(lengths, (str, bytes)) or not hasattr(lengths, "__len__") or not all(
                isinstance(n, (int, np.integer)) and not isinstance(n, bool) for n in lengths):
            raise OptionError("lengths must be a list of positive integers, one per sequence")
        lengths = [int(n) for n in lengths]
        if not lengths or min(lengths) < 1:
            raise OptionError("lengths must be positive: a sequence of zero rows is not a sequence")
        if sum(lengths) != n_rows:
            raise OptionError(f"lengths sum to {sum(lengths)}, but the data has {n_rows} rows")
        return lengths
    column = model.data_info.get("sequence")
    if column is None:
        return [n_rows]
    columns = as_columns(data, source)
    if column not in columns:
        raise DataError(f"{source}: the sequence column '{column}' ([data] sequence) is missing")
    values = np.asarray(columns[column])
    if values.dtype.kind == "f" and np.isnan(values).any():
        raise DataError(f"{source}: column '{column}', row {int(np.flatnonzero(np.isnan(values))[0])}: a missing "
                        "value in the sequence column")
    change = np.flatnonzero(values[1:] != values[:-1]) + 1
    boundaries = np.concatenate([[0], change, [len(values)]])
    labels = values[boundaries[:-1]]
    seen = set()
    for label, first in zip(labels.tolist(), boundaries[:-1]):
        if label in seen:
            raise DataError(f"{source}: column '{column}', row {int(first)}: sequence {label!r} starts again after "
                            "another sequence; the rows of one sequence must be contiguous")
        seen.add(label)
    return np.diff(boundaries).astype(int).tolist()
