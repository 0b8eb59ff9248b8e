"""The multivariate normal's exponential-family parts, declared with numpy.

sympy cannot solve grad A(eta) = E[T] for a general dimension, so this family
carries its moment-to-parameter map in its declaration. The statistics are
T(x) = [x, upper(x x^T)] (the upper triangle, row by row); the natural
parameters are [Sigma^-1 mu, -1/2 Sigma^-1 with off-diagonal terms doubled].
Tests hold the moment map equal to a numeric solution of the moment-matching
equation.
"""

import numpy as np

from ..threads import blas_single_threaded, map_in_order


def upper_indices(dim):
    """Row and column indices of the upper triangle, row by row, of a (dim, dim) matrix."""
    return np.triu_indices(dim)


def statistic_size(dim):
    return dim + dim * (dim + 1) // 2


def statistic_names(dim):
    rows, cols = upper_indices(dim)
    return [f"x[{i}]" for i in range(dim)] + [f"x[{i}]*x[{j}]" for i, j in zip(rows, cols)]


def statistics(x):
    """Sufficient statistics of the rows of x.

    Parameters
    ----------
    x : ndarray of shape (n_rows, dim)

    Returns
    -------
    ndarray of shape (n_rows, dim + dim*(dim+1)/2)
    """
    n_rows, dim = x.shape
    # Formed column by column as rows of the transpose, in cache-sized blocks of rows: each product
    # is then one contiguous multiply (about 8x faster than writing strided columns of a row-major
    # array). The result is the transpose's view: (n_rows, width), column-major.
    out = np.empty((statistic_size(dim), n_rows))
    for first in range(0, n_rows, 8192):
        columns = np.ascontiguousarray(x[first:first + 8192].T)
        target = out[:, first:first + 8192]
        target[:dim] = columns
        start = dim
        for i in range(dim):
            # Row i of the upper triangle: x_i * x_j for j >= i.
            np.multiply(columns[i], columns[i:], out=target[start:start + dim - i])
            start += dim - i
    return out.T


def natural(mean, cov):
    """Natural parameters and log-partition.

    Parameters
    ----------
    mean : ndarray of shape (n_sets, dim)
    cov : ndarray of shape (n_sets, dim, dim)

    Returns
    -------
    eta : ndarray of shape (n_sets, statistic_size(dim))
    log_partition : ndarray of shape (n_sets,)
    """
    n_sets, dim = mean.shape
    chol, precision = _precision(cov)
    rows, cols = upper_indices(dim)
    eta = np.empty((n_sets, statistic_size(dim)))
    eta[:, :dim] = np.einsum("kij,kj->ki", precision, mean)
    eta[:, dim:] = -0.5 * precision[:, rows, cols] * np.where(rows == cols, 1.0, 2.0)
    half_logdet = np.log(np.diagonal(chol, axis1=1, axis2=2)).sum(axis=1)
    log_partition = 0.5 * np.einsum("ki,ki->k", eta[:, :dim], mean) + half_logdet
    return eta, log_partition


def base(dim):
    """The log base measure, -dim/2 log(2 pi), the same for every row."""
    return -0.5 * dim * np.log(2.0 * np.pi)


def second_moments(mean_statistics, dim):
    """Unpack the upper-triangle statistics into symmetric matrices.

    Parameters
    ----------
    mean_statistics : ndarray of shape (n_sets, statistic_size(dim))

    Returns
    -------
    first : ndarray of shape (n_sets, dim)
    second : ndarray of shape (n_sets, dim, dim)
    """
    n_sets = mean_statistics.shape[0]
    rows, cols = upper_indices(dim)
    second = np.empty((n_sets, dim, dim))
    second[:, rows, cols] = mean_statistics[:, dim:]
    second[:, cols, rows] = mean_statistics[:, dim:]
    return mean_statistics[:, :dim], second


def moment_map(mean_statistics, dim):
    """Solve grad A(eta) = E[T] for the parameters: mean = E[x], cov = E[x x^T] - mean mean^T.

    Parameters
    ----------
    mean_statistics : ndarray of shape (n_sets, statistic_size(dim))

    Returns
    -------
    dict with ``mean`` of shape (n_sets, dim) and ``cov`` of shape (n_sets, dim, dim)
    """
    first, second = second_moments(mean_statistics, dim)
    cov = second - first[:, :, None] * first[:, None, :]
    return {"mean": first.copy(), "cov": cov}


def precision_and_shift(mean, cov):
    """The precision matrices and P mu, for conditioning on observed coordinates.

    Returns
    -------
    precision : ndarray of shape (n_sets, dim, dim)
    shifted_mean : ndarray of shape (n_sets, dim)
        precision @ mean per set.
    """
    precision = _precision(cov)[1]
    return precision, np.einsum("kij,kj->ki", precision, mean)


def _precision(cov):
    """Cholesky factors and inverses of covariance matrices, (n_sets, dim, dim) each."""
    chol = np.linalg.cholesky(cov)
    chol_inv = np.linalg.solve(chol, np.broadcast_to(np.eye(cov.shape[-1]), cov.shape))
    return chol, np.swapaxes(chol_inv, 1, 2) @ chol_inv


class MissingPatterns:
    """Which coordinates each row misses, as distinct patterns grouped by size (built once per data set).

    Parameters
    ----------
    missing : ndarray of bool, shape (n_rows, dim)

    Attributes
    ----------
    size : ndarray of int, shape (n_rows,)
        Number of missing coordinates per row.
    pattern : ndarray of int, shape (n_rows,)
        Each incomplete row's pattern among the distinct ones of its size; -1 for rows
        with nothing or everything missing.
    coordinates : dict of int to ndarray
        Per size s (0 < s < dim), the distinct patterns' missing coordinates, (n_patterns, s).
    """

    def __init__(self, missing):
        n_rows, dim = missing.shape
        self.size = missing.sum(axis=1)
        self.pattern = np.full(n_rows, -1, dtype=np.intp)
        self.coordinates = {}
        for size in np.unique(self.size):
            if not 0 < size < dim:
                continue
            rows = np.flatnonzero(self.size == size)
            coordinates = np.nonzero(missing[rows])[1].reshape(len(rows), size)
            distinct, pattern = np.unique(coordinates, axis=0, return_inverse=True)
            self.coordinates[int(size)] = distinct
            self.pattern[rows] = pattern.reshape(-1)

    def plan(self, x0, missing, positions):
        """The index work for integrating out these rows' missing coordinates, done once per data set.

        Parameters
        ----------
        x0 : ndarray of shape (m, dim)
            The rows, zero where missing; each has some coordinate present and some missing.
        missing : ndarray of bool, shape (m, dim)
            Where they are missing.
        positions : ndarray of int, shape (m,)
            Their indices in the data set these patterns describe.

        Returns
        -------
        FillPlan
        """
        return FillPlan(self, x0, missing, positions)


class FillPlan:
    """Partly missing rows arranged for the conditional-normal computations (built once per chunk of rows).

    Each (row, missing coordinate) pair is an *entry*; entries are ordered by coordinate,
    so per coordinate the entries are one contiguous segment, and the products with the
    precision's columns and the sums over rows are a few small matrix products.

    Attributes
    ----------
    x0 : ndarray of shape (m, dim)
    entry_x0 : ndarray of shape (n_entries, 1 + dim)
        Each entry's row, by coordinate, after a leading 1.
    segments : list of (int, slice)
        Per missing coordinate, its entries.
    groups : list of (size, members, entries, pattern, starts, used, block, runs)
        Per number of missing coordinates s: member rows (g,) in pattern order, their
        entries (g, s), their patterns (g,), where each pattern's run starts, the
        distinct patterns, the flat (row, column) indices of each pattern's missing
        block in a (dim, dim) array, (p, s, s), and the sparse (p, g) indicator of each
        pattern's rows, whose product sums (g, ...) arrays over each pattern's run.
    row_order, entry_order : ndarray of int, shape (m,) and (n_entries,)
        Where each row (each entry) is among the groups' rows (entries, group by group,
        coordinate-major) laid end to end: per-group results are put in row (entry) order
        by one gather, several times faster than scattering each group's rows.
    """

    def __init__(self, patterns, x0, missing, positions):
        m, dim = x0.shape
        self.x0 = x0
        self.dim = dim
        sizes = patterns.size[positions]
        rows, coordinates = np.nonzero(missing.T)                # entries ordered by coordinate
        coordinates, rows = rows, coordinates
        entry_of = np.full((m, dim), -1, dtype=np.intp)
        entry_of[rows, coordinates] = np.arange(len(rows))
        # Each entry's row with a leading 1: one product gives an entry's weighted sums and cross moments.
        self.entry_x0 = np.column_stack([np.ones(len(rows)), x0[rows]])
        bounds = np.searchsorted(coordinates, np.arange(dim + 1))
        self.segments = [(c, slice(bounds[c], bounds[c + 1])) for c in range(dim) if bounds[c + 1] > bounds[c]]
        self.n_entries = len(rows)
        self.groups = []
        for size, distinct in patterns.coordinates.items():
            members = np.flatnonzero(sizes == size)
            if not len(members):
                continue
            # Members in pattern order: each pattern's rows are one run.
            members = members[np.argsort(patterns.pattern[positions[members]], kind="stable")]
            pattern = patterns.pattern[positions[members]]
            entries = entry_of[members[:, None], distinct[pattern]]
            used, starts = np.unique(pattern, return_index=True)
            placed = distinct[used]
            block = (placed[:, :, None] * dim + placed[:, None, :])                 # (p, s, s)
            self.groups.append((size, members, entries, pattern, starts, used, block, _runs(starts, len(members))))
        self.row_order = _inverse_order([group[1] for group in self.groups], m)
        self.entry_order = _inverse_order([group[2].T.reshape(-1) for group in self.groups], self.n_entries)


def _runs(starts, n):
    """The (runs, n) CSR indicator of consecutive runs of rows beginning at ``starts``.

    Its product with a (n, width) array sums each run's rows, in row order (as np.add.reduceat
    would, to the bit), for every column at once.
    """
    import scipy.sparse  # imported when first needed: it is slow to import
    run = np.repeat(np.arange(len(starts)), np.diff(np.append(starts, n)))
    return scipy.sparse.csr_matrix((np.ones(n), (run, np.arange(n))), shape=(len(starts), n))


def _inverse_order(parts, n):
    """Position of each of 0..n-1 in ``parts`` laid end to end (a permutation of them): (n,) int."""
    order = np.empty(n, dtype=np.intp)
    if parts:
        order[np.concatenate(parts)] = np.arange(n)
    return order


def _in_order(parts, order):
    """Per-group rows laid end to end, put in the order ``order`` gives (``FillPlan.row_order``)."""
    return np.take(np.concatenate(parts), order, axis=0)


def pattern_conditionals(precision, patterns):
    """Per distinct pattern and set, the conditional covariance of the missing coordinates.

    The conditional covariance of x_m given x_o is C = (P_mm)^-1, P the precision: one
    small symmetric positive definite inverse per distinct pattern and set, per E-step,
    all of one size at once.

    Returns
    -------
    dict of int to (ndarray (s, s, n_patterns, n_sets), ndarray (n_patterns, n_sets))
        Per size s: C (entry by entry), and 1/2 log det C.
    """
    def of_size(size):
        coordinates = patterns.coordinates[size]
        block = np.empty((size, size) + (len(coordinates), precision.shape[0]))
        for a in range(size):
            for b in range(size):
                block[a, b] = precision[:, coordinates[:, a], coordinates[:, b]].T
        covariance, logdet = _spd_inverse(block)
        return covariance, -0.5 * logdet

    sizes = list(patterns.coordinates)
    return dict(zip(sizes, map_in_order(of_size, sizes)))      # sizes on the fit's threads, if it has some


def _spd_inverse(block):
    """Inverses and log-determinants of many small symmetric positive definite matrices.

    Gauss-Jordan elimination without pivoting (stable for positive definite matrices),
    vectorised over the matrices: they are laid out (s, s, ...), so each step works on
    contiguous arrays of all of them, where a batched LAPACK call pays per matrix.

    Parameters
    ----------
    block : ndarray of shape (s, s, ...)

    Returns
    -------
    inverse : ndarray of shape (s, s, ...)
    logdet : ndarray of shape (...)
    """
    size = block.shape[0]
    reduced = block.copy()
    inverse = np.zeros_like(block)
    for a in range(size):
        inverse[a, a] = 1.0
    logdet = np.zeros(block.shape[2:])
    product = np.empty(block.shape[1:])
    for i in range(size):
        # At step i the reduced rows are zero left of column i, and the inverse's rows zero right of
        # column i: only the columns that can change are worked on (about half the work).
        later, done = slice(i + 1, size), slice(0, i + 1)
        pivot = reduced[i, i].copy()
        logdet += np.log(pivot)
        reduced[i, later] /= pivot
        inverse[i, done] /= pivot
        for j in range(size):
            if j != i:
                factor = reduced[j, i]
                np.multiply(factor, reduced[i, later], out=product[:size - i - 1])
                reduced[j, later] -= product[:size - i - 1]
                np.multiply(factor, inverse[i, done], out=product[:i + 1])
                inverse[j, done] -= product[:i + 1]
    return inverse, logdet


def conditional_fill(plan, precision, shifted_mean, conditionals):
    """Conditional means of the missing coordinates, and the log-density correction, per row and set.

    With x0 a row with its missing coordinates set to 0, r = P x0 - P mu and
    C = (P_mm)^-1, the conditional mean of x_m given x_o is -C r_m, and the marginal
    log-density of the observed coordinates is the joint log-density at x0 plus
    1/2 r_m^T C r_m + s/2 log(2 pi) + 1/2 log det C.

    Parameters
    ----------
    plan : FillPlan
    precision : ndarray of shape (n_sets, dim, dim)
    shifted_mean : ndarray of shape (n_sets, dim)
    conditionals : dict
        From ``pattern_conditionals``.

    Returns
    -------
    correction : ndarray of shape (m, n_sets)
    fills : list of ndarray
        Per group of the plan, the conditional means, (s, members, n_sets).
    """
    n_sets = precision.shape[0]
    residual = np.empty((plan.n_entries, n_sets))
    for coordinate, segment in plan.segments:
        # r at this coordinate, for the entries missing it: their rows times P's column, for every set.
        for block in _single_threaded(segment, plan.dim * n_sets):
            np.matmul(plan.entry_x0[block, 1:], precision[:, :, coordinate].T, out=residual[block])
        residual[segment] -= shifted_mean[:, coordinate]
    corrections = []
    fills = []
    for size, members, entries, pattern, *_ in plan.groups:
        covariance, half_logdet = conditionals[size]
        if len(members) * n_sets >= ENTRYWISE_LEAST:
            # Entry by entry over (rows, sets) arrays: s is small, and numpy is slow along short axes.
            # np.take: row gathers several times faster than fancy indexing.
            picked = [np.take(residual, entries[:, a], axis=0) for a in range(size)]       # s x (g, n_sets)
            solved = []
            quadratic = np.zeros((len(members), n_sets))
            for a in range(size):
                column = np.take(covariance[a, 0], pattern, axis=0) * picked[0]
                for b in range(1, size):
                    column += np.take(covariance[a, b], pattern, axis=0) * picked[b]
                quadratic += picked[a] * column
                solved.append(column)
            solved = np.array(solved)
        else:
            # Few rows (many missing coordinates are rare): a fixed number of calls beats s^2 of them.
            picked = np.moveaxis(np.take(residual, entries, axis=0), 1, 0)                 # (s, g, n_sets)
            solved = np.einsum("abgk,bgk->agk", np.take(covariance, pattern, axis=2), picked)
            quadratic = np.einsum("agk,agk->gk", picked, solved)
        corrections.append(0.5 * quadratic + np.take(half_logdet, pattern, axis=0) + 0.5 * size * np.log(2.0 * np.pi))
        fills.append(-solved)                                                              # (s, g, n_sets)
    return _in_order(corrections, plan.row_order), fills


def _single_threaded(segment, width):
    """The segment's rows in blocks whose products with a (width)-sized operand OpenBLAS runs on one thread.

    Larger ones it spreads over threads, which for these small products is several times
    slower, and stalls beside other busy processes. One block when the fit holds BLAS to
    one thread already.
    """
    if blas_single_threaded():
        return [segment]
    step = max(1, SINGLE_THREAD_PRODUCT // width)
    return [slice(first, min(first + step, segment.stop)) for first in range(segment.start, segment.stop, step)]


# Multiply-adds below which OpenBLAS keeps a matrix product on one thread.
SINGLE_THREAD_PRODUCT = 1 << 17

# The (a, b) pairs with a <= b of a small matrix, by size.
_PAIRS = [np.triu_indices(size) for size in range(17)]

# Below this many (row, set) pairs, a group of partly missing rows is done in whole-array calls
# rather than entry by entry.
ENTRYWISE_LEAST = 8192


def conditional_moments(plan, weights, conditionals, fills):
    """What the missing coordinates add to the weighted sums of T(x0), per set: E[T(x)] - T(x0).

    With x = x0 + f (f the conditional means, zero on the present coordinates) and C the
    conditional covariance, E[x x^T] = x0 x0^T + x0 f^T + f x0^T + f f^T + C. Only the
    missing coordinates' entries are formed.

    Parameters
    ----------
    plan : FillPlan
    weights : ndarray of shape (m, n_sets)
        Each row's posterior weight on each set.
    conditionals, fills
        As ``conditional_fill`` takes and returns them.

    Returns
    -------
    ndarray of shape (n_sets, statistic_size(dim))
        In the layout of ``statistics``.
    """
    dim = plan.dim
    n_sets = weights.shape[1]
    weighted_fills = []
    # The missing blocks' f f^T + C, on and above the diagonal (coordinates ascend within a pattern).
    upper = np.zeros(n_sets * dim * dim)
    set_offset = np.arange(n_sets) * dim * dim
    for (size, members, entries, pattern, starts, used, block, runs), fill in zip(plan.groups, fills):
        member_weights = np.take(weights, members, axis=0)                                 # (g, n_sets)
        pattern_weights = runs @ member_weights                                            # (p, n_sets)
        covariance = conditionals[size][0]
        weighted = fill * member_weights
        first_index, second_index = _PAIRS[size] if size < len(_PAIRS) else np.triu_indices(size)
        # Each pair's products side by side, then one sparse product sums them over each pattern's rows.
        products = np.empty((len(members), len(first_index), n_sets))
        for position, (a, b) in enumerate(zip(first_index, second_index)):
            np.multiply(weighted[a], fill[b], out=products[:, position])
        summed = (runs @ products.reshape(len(members), -1)).reshape(len(used), len(first_index), n_sets)
        summed = summed.transpose(1, 0, 2)                                                  # (pairs, p, n_sets)
        pairs = covariance.reshape((size * size,) + covariance.shape[2:])
        # The chunk's patterns first: they are few of the size's patterns.
        summed += pattern_weights * np.take(np.take(pairs, used, axis=1), first_index * size + second_index, axis=0)
        weighted_fills.append(weighted.reshape(-1, n_sets))
        places = block[:, first_index, second_index].T                                      # (pairs, p)
        upper += np.bincount((places[:, :, None] + set_offset).reshape(-1), weights=summed.reshape(-1),
                             minlength=upper.size)
    weighted_fill = _in_order(weighted_fills, plan.entry_order)                               # (n_entries, n_sets)
    upper = upper.reshape(n_sets, dim, dim)
    second = upper + np.swapaxes(upper, 1, 2)
    second[:, np.arange(dim), np.arange(dim)] -= upper[:, np.arange(dim), np.arange(dim)]
    first = np.zeros((n_sets, dim))
    for coordinate, segment in plan.segments:
        sums = sum(weighted_fill[block].T @ plan.entry_x0[block]                           # (n_sets, 1 + dim)
                   for block in _single_threaded(segment, (dim + 1) * n_sets))
        first[:, coordinate] = sums[:, 0]
        second[:, :, coordinate] += sums[:, 1:]
        second[:, coordinate, :] += sums[:, 1:]
    rows_index, cols_index = upper_indices(dim)
    return np.concatenate([first, second[:, rows_index, cols_index]], axis=1)


class GaussianParts:
    """The parts a ``"gaussian"`` family declares, gathered for the derivation."""

    statistics = staticmethod(statistics)
    statistic_names = staticmethod(statistic_names)
    statistic_size = staticmethod(statistic_size)
    natural = staticmethod(natural)
    base = staticmethod(base)
    moment_map = staticmethod(moment_map)
    precision_and_shift = staticmethod(precision_and_shift)
    missing_patterns = MissingPatterns
    pattern_conditionals = staticmethod(pattern_conditionals)
    conditional_fill = staticmethod(conditional_fill)
    conditional_moments = staticmethod(conditional_moments)
    update_text = ("mean = E[x]", "cov = E[x x^T] - mean mean^T")
    update_latex = (r"\mu = \mathbb{E}[x]", r"\Sigma = \mathbb{E}[x x^\top] - \mu \mu^\top")
