"""Data in: CSV files, mappings and DataFrames -> checked arrays per observed node.

Every check names the column, and for values outside a family's support the
first bad row, so a user can find and fix it.
"""

import csv
import os
from dataclasses import dataclass

import numpy as np

from .errors import DataError


@dataclass
class NodeData:
    """The checked data of a model's observed nodes.

    Attributes
    ----------
    n_rows : int
    values : dict of str to ndarray
        Per observed node: shape (n_rows,) for a scalar node (int for a
        categorical one), (n_rows, dim) for a vector node.
    weights : ndarray of shape (n_rows,)
    """

    n_rows: int
    values: dict
    weights: np.ndarray


def group_identical_rows(model, checked):
    """Merge identical rows of an all-discrete data set into one row each, weights added.

    Every expected statistic is a weighted sum over rows, so a fit on the grouped
    rows equals the fit on the original ones; each E-step then costs the number of
    distinct rows instead of the number of rows.

    Parameters
    ----------
    model : Model
    checked : NodeData

    Returns
    -------
    NodeData
        Unchanged when some observed node is not discrete, or nothing repeats.
    """
    names = list(checked.values)
    if not names or not all(model.nodes[n].is_discrete for n in names):
        return checked
    sizes = [model.nodes[n].k for n in names]
    if np.prod(np.array(sizes, dtype=float)) >= 2.0 ** 62:
        return checked
    # One mixed-radix integer per row: sorting integers is far cheaper than sorting rows.
    codes = np.zeros(checked.n_rows, dtype=np.int64)
    for name, size in zip(names, sizes):
        codes = codes * size + checked.values[name]
    distinct, first, inverse = np.unique(codes, return_index=True, return_inverse=True)
    if len(distinct) == checked.n_rows:
        return checked
    weights = np.bincount(inverse.reshape(-1), weights=checked.weights, minlength=len(distinct))
    return NodeData(n_rows=len(distinct), values={n: checked.values[n][first] for n in names}, weights=weights)


def read_csv(path):
    """Read a CSV with a header row into a mapping of column name to float array.

    Raises DataError naming the file, row and column of any cell that is not a number.
    """
    if not os.path.exists(path):
        raise DataError(f"{path}: no such data file")
    with open(path, newline="") as handle:
        reader = csv.reader(handle)
        try:
            header = next(reader)
        except StopIteration:
            raise DataError(f"{path}: the file is empty; expected a header row of column names") from None
        header = [name.strip() for name in header]
        if len(set(header)) != len(header):
            raise DataError(f"{path}: the header names a column twice")
        rows = []
        for line_number, row in enumerate(reader, start=2):
            if not row or all(not cell.strip() for cell in row):
                continue
            if len(row) != len(header):
                raise DataError(f"{path}: line {line_number} has {len(row)} fields; the header has "
                                f"{len(header)}")
            parsed = []
            for name, cell in zip(header, row):
                try:
                    parsed.append(float(cell))
                except ValueError:
                    raise DataError(f"{path}: line {line_number}, column '{name}': {cell!r} is not a "
                                    "number") from None
            rows.append(parsed)
    table = np.array(rows, dtype=float).reshape(len(rows), len(header))
    return {name: table[:, j] for j, name in enumerate(header)}


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


def read_npz(path, rows, columns):
    """Read a scipy sparse matrix saved with ``scipy.sparse.save_npz`` as (rows, columns, count) columns."""
    import scipy.sparse
    if not os.path.exists(path):
        raise DataError(f"{path}: no such data file")
    if not rows or not columns:
        raise DataError(f"{path}: a sparse matrix needs [data] rows and columns naming the nodes its "
                        "row and column indices belong to (e.g. rows = \"doc\", columns = \"word\")")
    try:
        matrix = scipy.sparse.load_npz(path)
    except (OSError, ValueError, KeyError) as exc:
        raise DataError(f"{path}: not a scipy sparse .npz matrix: {exc}") from None
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
        return {str(c): np.asarray(data[c].to_numpy()) for c in data.columns}
    if not hasattr(data, "keys"):
        raise DataError(f"{source}: expected a mapping of column name to array, a DataFrame or a CSV "
                        f"path, found {type(data).__name__}")
    return {str(key): np.asarray(data[key]) for key in data.keys()}


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
    bad = np.flatnonzero(~ok)
    return (bad[0], expected) if len(bad) else None


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
    for name in model.observed:
        node = model.nodes[name]
        array, label = _node_array(model, name, columns, source)
        if n_rows is None:
            n_rows = len(array)
        elif len(array) != n_rows:
            raise DataError(f"{source}: column '{label}' has {len(array)} rows; other columns have {n_rows}")
        values[name] = _checked_values(node, array, label, source)
    if n_rows == 0:
        raise DataError(f"{source}: no rows")
    weights = _weights(weights, columns, n_rows, source)
    return NodeData(n_rows=n_rows, values=values, weights=weights)


def _node_array(model, name, columns, source):
    node = model.nodes[name]
    if node.columns:
        missing = [c for c in node.columns if c not in columns]
        if missing:
            raise DataError(f"{source}: column '{missing[0]}' of node '{name}' is missing; the data has "
                            f"{_listing(columns)}")
        return np.column_stack([_numeric(columns[c], c, source) for c in node.columns]), ",".join(node.columns)
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
            return np.column_stack([_numeric(columns[c], c, source) for c in names]), f"{name}_0.."
        raise DataError(f"{source}: node '{name}' (dim {node.dim}) needs column '{name}' or columns "
                        f"{names[0]}..{names[-1]}; the data has {_listing(columns)}")
    raise DataError(f"{source}: observed node '{name}' has no column '{name}' in the data; the data has "
                    f"{_listing(columns)}. Add the column, or declare the node latent")


def _listing(columns):
    names = list(columns)
    shown = ", ".join(names[:12]) + (", ..." if len(names) > 12 else "")
    return f"columns {shown}" if names else "no columns"


def _numeric(array, label, source):
    array = np.asarray(array)
    if array.dtype == object or array.dtype.kind not in "biuf":
        try:
            array = array.astype(float)
        except (TypeError, ValueError):
            raise DataError(f"{source}: column '{label}' is not numeric") from None
    return array.astype(float)


def _checked_values(node, array, label, source):
    if np.isnan(array).any():
        row = int(np.flatnonzero(np.isnan(array).reshape(len(array), -1).any(axis=1))[0])
        raise DataError(f"{source}: column '{label}', row {row}: missing value (NaN); declarem does not "
                        "drop rows, so remove or fill it")
    if node.is_discrete:
        bad = np.flatnonzero((array != np.round(array)) | (array < 0) | (array >= node.k))
        if len(bad):
            raise DataError(f"{source}: column '{label}', row {bad[0]}: value {array[bad[0]]:g} is not a "
                            f"category of node '{node.name}' (integers 0..{node.k - 1})")
        return array.astype(np.intp)
    upper = dict(node.constants).get(node.family.upper_bound) if node.family.upper_bound else None
    flat = array.reshape(len(array), -1)
    for j in range(flat.shape[1]):
        found = _support_violation(flat[:, j], node.family.support, upper)
        if found is not None:
            row, expected = found
            column = node.columns[j] if node.columns else (label if flat.shape[1] == 1 else f"{label}[{j}]")
            raise DataError(f"{source}: column '{column}', row {row}: value {flat[row, j]:g} is outside the "
                            f"support of node '{node.name}' ({node.family.name}: {expected})")
    return array


def _weights(weights, columns, n_rows, source):
    if weights is None:
        return np.ones(n_rows)
    label = "weights"
    if isinstance(weights, str):
        if weights not in columns:
            raise DataError(f"{source}: weights column '{weights}' is missing; the data has {_listing(columns)}")
        label = weights
        weights = columns[weights]
    weights = np.asarray(weights, dtype=float)
    if weights.shape != (n_rows,):
        raise DataError(f"{source}: {label} has shape {weights.shape}; expected ({n_rows},), one per row")
    bad = np.flatnonzero(~np.isfinite(weights) | (weights < 0))
    if len(bad):
        raise DataError(f"{source}: {label}, row {bad[0]}: weight {weights[bad[0]]:g} must be finite and >= 0")
    if weights.sum() <= 0:
        raise DataError(f"{source}: {label} sum to zero; at least one row needs positive weight")
    return weights
