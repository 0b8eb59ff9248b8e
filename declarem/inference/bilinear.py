"""An E-step engine for one latent category between two observed categorical indices.

When the only factors that involve the latent node z are z's own probability
rows A[a, z] (selected by observed parents, the row index a) and one observed
categorical child with rows B[z, x] (the column index x), a row's posterior is
A[a, z] B[z, x] / M[a, x] with M = A B evaluated at the row. Its expected counts
then never need the per-row posterior:
    N_A = A * (S B^T),   N_B^T = B^T * (S^T A),   S = sparse(a, x, w / M[a, x]),
two sparse products over the non-zero cells (the topic model's documents and
words). Only M is formed per row.

When the table M is not much larger than the data (a corpus where a fair share
of the (document, word) cells occur), M is formed whole by one product, S is a
dense table, and the two products with it are dense: a few large BLAS calls
instead of per-row gathers and sparse products.
"""

from dataclasses import dataclass

import numpy as np

ROW_BLOCK = 8192
#: The dense form is taken when the table M has at most this many cells per row of data.
DENSE_CELLS_PER_ROW = 4


@dataclass
class BilinearPlan:
    """Which factors play the two roles, and the rows' fixed sparse pattern.

    Attributes
    ----------
    latent : str
        The latent node (its factor holds A).
    child : str
        The observed categorical child (its factor holds B).
    row_index : ndarray of shape (n_rows,)
        a: each row's parameter set of the latent node.
    column_index : ndarray of shape (n_rows,)
        x: each row's category of the child.
    pattern : scipy.sparse.csr_matrix
        Shape (sets of A, categories of B); its data are filled per E-step in
        ``order`` (rows sorted by (a, x)).
    transposed, transposed_order
        The same for the transpose (rows sorted by (x, a)), so both products run
        on row-compressed matrices.
    cells : ndarray of shape (n_rows,) or None
        For the dense form, each row's cell a * categories + x of M (else None).
    repeated_cells : bool
        Whether two rows share a cell (their ratios then add in S).
    """

    latent: str
    child: str
    row_index: np.ndarray
    column_index: np.ndarray
    pattern: object = None
    order: np.ndarray = None
    transposed: object = None
    transposed_order: np.ndarray = None
    cells: np.ndarray = None
    repeated_cells: bool = False


def bilinear_plan(compiled, rows, varying):
    """The plan if the model has the bilinear shape, else None.

    The shape: one latent node with no latent parents; the factors with a latent
    node in scope are its own and exactly one observed categorical child whose
    only parent it is. Duplicate (a, x) pairs are fine (their weights add).
    """
    if len(compiled.latent) != 1 or len(varying) != 2 or rows.labels or \
            any(view.missing is not None for view in rows.factors.values()):
        return None
    latent = compiled.latent[0]
    child = next(name for name in varying if name != latent)
    if latent not in varying:
        return None
    latent_factor, child_factor = compiled.factors[latent], compiled.factors[child]
    latent_view, child_view = rows.factors[latent], rows.factors[child]
    if latent_factor.layout != "latent" or latent_view.latent_axes:
        return None
    if child_factor.layout != "index" or child_view.observed_offset is not None or \
            compiled.model.nodes[child].parents != (latent,):
        return None
    if not hasattr(rows, "_bilinear_pattern"):
        row_index = latent_view.observed_offset if latent_view.observed_offset is not None \
            else np.zeros(rows.n_rows, dtype=np.intp)
        column_index = np.asarray(child_view.statistics, dtype=np.intp)
        shape = (latent_factor.n_sets, child_factor.k)
        if shape[0] * shape[1] <= DENSE_CELLS_PER_ROW * rows.n_rows:
            cells = row_index * shape[1] + column_index
            repeated = bool(np.any(np.bincount(cells, minlength=shape[0] * shape[1]) > 1))
            rows._bilinear_pattern = BilinearPlan(latent, child, row_index, column_index, cells=cells,
                                                  repeated_cells=repeated)
        else:
            pattern, order = _pattern(row_index, column_index, shape)
            transposed, transposed_order = _pattern(column_index, row_index, shape[::-1])
            rows._bilinear_pattern = BilinearPlan(latent, child, row_index, column_index, pattern, order,
                                                  transposed, transposed_order)
    return rows._bilinear_pattern


def _pattern(major, minor, shape):
    """A CSR matrix with one stored entry per row of the data, and the order that fills it."""
    order = _lexicographic_order(major, minor, shape)
    indptr = np.concatenate([[0], np.cumsum(np.bincount(major, minlength=shape[0]))])
    import scipy.sparse  # imported when first needed: it is slow to import
    return scipy.sparse.csr_matrix((np.zeros(len(major)), minor[order], indptr), shape=shape), order


def _lexicographic_order(major, minor, shape):
    """``np.lexsort((minor, major))``: by major, then minor, stably.

    Indices below 2**16 are sorted as two stable passes of numpy's radix sort (least
    significant key first), each skipped when its key is already in order (a CSR corpus's
    rows are): several times faster than lexsort's comparison sort.
    """
    if max(shape) > 2 ** 16:
        return np.lexsort((minor, major))
    order = None
    for key in (minor, major):
        key = (key if order is None else key[order]).astype(np.uint16)
        if np.all(key[1:] >= key[:-1]):
            continue
        step = np.argsort(key, kind="stable")
        order = step if order is None else order[step]
    return np.arange(len(major)) if order is None else order


def bilinear_mixture(plan, tables, rows):
    """M[a, x] per row, (n_rows,): its logarithm is the row's share of the objective; None when some row
    has zero probability (the caller then reports it through the general engine).

    Parameters
    ----------
    plan : BilinearPlan
    tables : dict
        The E-step's tables; A is the latent factor's probabilities (sets, K) and
        B^T the child's transposed probabilities (categories, K).
    rows : Rows
    """
    a_table = tables[plan.latent].probabilities
    b_transposed = tables[plan.child].transposed_probabilities
    if plan.cells is not None:
        mixture = np.take(a_table @ b_transposed.T, plan.cells)
    else:
        mixture = np.empty(rows.n_rows)
        for start in range(0, rows.n_rows, ROW_BLOCK):
            block = slice(start, min(start + ROW_BLOCK, rows.n_rows))
            # np.take gathers short rows several times faster than fancy indexing.
            gathered = np.take(a_table, plan.row_index[block], axis=0)
            gathered *= np.take(b_transposed, plan.column_index[block], axis=0)
            mixture[block] = gathered @ np.ones(gathered.shape[1])
    return mixture if np.all(mixture > 0) else None


def bilinear_statistics(plan, tables, rows, stats):
    """Add the two factors' expected counts to ``stats``; return each row's M[a, x] (``bilinear_mixture``).

    Returns
    -------
    ndarray of shape (n_rows,), or None when some row has zero probability (nothing is added then).
    """
    mixture = bilinear_mixture(plan, tables, rows)
    if mixture is None:
        return None
    a_table = tables[plan.latent].probabilities
    b_transposed = tables[plan.child].transposed_probabilities
    ratio = rows.weights / mixture
    if plan.cells is not None:
        if plan.repeated_cells:
            scaled = np.bincount(plan.cells, weights=ratio, minlength=a_table.shape[0] * b_transposed.shape[0])
        else:
            scaled = np.zeros(a_table.shape[0] * b_transposed.shape[0])
            scaled[plan.cells] = ratio
        scaled = scaled.reshape(a_table.shape[0], b_transposed.shape[0])
        stats.sums[plan.latent] += a_table * (scaled @ b_transposed)
        stats.sums[plan.child] += (b_transposed * (scaled.T @ a_table)).T
        return mixture
    plan.pattern.data = ratio[plan.order]
    plan.transposed.data = ratio[plan.transposed_order]
    stats.sums[plan.latent] += a_table * (plan.pattern @ b_transposed)
    stats.sums[plan.child] += (b_transposed * (plan.transposed @ a_table)).T
    return mixture
