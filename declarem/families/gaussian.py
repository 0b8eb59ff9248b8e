"""The multivariate normal's exponential-family parts, declared with numpy.

sympy cannot solve grad A(eta) = E[T] for a general dimension, so this family
carries its moment-to-parameter map in its declaration. The statistics are
T(x) = [x, upper(x x^T)] (the upper triangle, row by row); the natural
parameters are [Sigma^-1 mu, -1/2 Sigma^-1 with off-diagonal terms doubled].
Tests hold the moment map equal to a numeric solution of the moment-matching
equation.
"""

import numpy as np
import scipy.sparse


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
    out = np.empty((n_rows, statistic_size(dim)))
    # Row blocks that stay in cache while each is written column slice by column slice.
    for first in range(0, n_rows, 2048):
        block = x[first:first + 2048]
        target = out[first:first + 2048]
        target[:, :dim] = block
        start = dim
        for i in range(dim):
            # Row i of the upper triangle: x_i * x_j for j >= i, one broadcast product (no gathers).
            np.multiply(block[:, i:i + 1], block[:, i:], out=target[:, start:start + dim - i])
            start += dim - i
    return out


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
    chol = np.linalg.cholesky(cov)
    identity = np.broadcast_to(np.eye(dim), cov.shape)
    chol_inv = np.linalg.solve(chol, identity)
    precision = np.swapaxes(chol_inv, 1, 2) @ chol_inv
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
    dim = mean.shape[1]
    chol = np.linalg.cholesky(cov)
    chol_inv = np.linalg.solve(chol, np.broadcast_to(np.eye(dim), cov.shape))
    precision = np.swapaxes(chol_inv, 1, 2) @ chol_inv
    return precision, np.einsum("kij,kj->ki", precision, mean)


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

    def groups_in(self, positions):
        """The given rows (all partly missing) grouped by size.

        Parameters
        ----------
        positions : ndarray of int, shape (m,)
            Row indices into the data set.

        Returns
        -------
        list of (size, members, coordinates, pattern)
            ``members`` index into ``positions``; ``coordinates`` (len(members), size) are
            the members' missing coordinates and ``pattern`` their pattern ids.
        """
        sizes = self.size[positions]
        groups = []
        for size, distinct in self.coordinates.items():
            members = np.flatnonzero(sizes == size)
            if len(members):
                pattern = self.pattern[positions[members]]
                groups.append((size, members, distinct[pattern], pattern))
        return groups


def pattern_conditionals(precision, patterns):
    """Per distinct pattern and set, the conditional covariance of the missing coordinates.

    The conditional covariance of x_m given x_o is C = (P_mm)^-1, P the precision:
    one small factorisation per distinct pattern and set, per E-step.

    Returns
    -------
    dict of int to (ndarray (n_patterns, n_sets, s, s), ndarray (n_patterns, n_sets))
        Per size s: C, and 1/2 log det C.
    """
    out = {}
    for size, coordinates in patterns.coordinates.items():
        block = precision[:, coordinates[:, :, None], coordinates[:, None, :]]      # (n_sets, p, s, s)
        block = np.ascontiguousarray(np.swapaxes(block, 0, 1))
        chol = np.linalg.cholesky(block)
        chol_inv = np.linalg.solve(chol, np.broadcast_to(np.eye(size), block.shape))
        covariance = np.swapaxes(chol_inv, -1, -2) @ chol_inv
        half_logdet = -np.log(np.diagonal(chol, axis1=-2, axis2=-1)).sum(axis=-1)
        out[size] = (covariance, half_logdet)
    return out


def conditional_fill(x0, precision, shifted_mean, groups, conditionals):
    """Conditional means of the missing coordinates, and the log-density correction, per row and set.

    With x0 a row with its missing coordinates set to 0, r = P x0 - P mu and
    C = (P_mm)^-1, the conditional mean of x_m given x_o is -C r_m, and the marginal
    log-density of the observed coordinates is the joint log-density at x0 plus
    1/2 r_m^T C r_m + s/2 log(2 pi) + 1/2 log det C.

    Parameters
    ----------
    x0 : ndarray of shape (m, dim)
        Partly missing rows, zero where missing.
    precision : ndarray of shape (n_sets, dim, dim)
    shifted_mean : ndarray of shape (n_sets, dim)
    groups : list
        From ``MissingPatterns.groups_in`` for these rows.
    conditionals : dict
        From ``pattern_conditionals``.

    Returns
    -------
    correction : ndarray of shape (m, n_sets)
    fills : list of ndarray
        Per group, the conditional means, (members, n_sets, s).
    """
    m, dim = x0.shape
    n_sets = precision.shape[0]
    stacked = np.swapaxes(precision, 0, 1).reshape(dim, n_sets * dim)
    residual = (x0 @ stacked).reshape(m, n_sets, dim) - shifted_mean
    correction = np.empty((m, n_sets))
    fills = []
    for size, members, coordinates, pattern in groups:
        covariance, half_logdet = conditionals[size]
        picked = np.take_along_axis(residual[members], coordinates[:, None, :], axis=2)     # (g, n_sets, s)
        solved = np.einsum("gkab,gkb->gka", covariance[pattern], picked)
        correction[members] = 0.5 * np.einsum("gka,gka->gk", picked, solved) + half_logdet[pattern] \
            + 0.5 * size * np.log(2.0 * np.pi)
        fills.append(-solved)
    return correction, fills


def conditional_moments(x0, weights, groups, conditionals, fills):
    """Weighted sums of E[x] and E[x x^T] per set over partly missing rows (their conditional moments).

    Parameters
    ----------
    x0 : ndarray of shape (m, dim)
    weights : ndarray of shape (m, n_sets)
        Each row's posterior weight on each set.
    groups, conditionals, fills
        As ``conditional_fill`` takes and returns them.

    Returns
    -------
    ndarray of shape (n_sets, statistic_size(dim))
        In the layout of ``statistics``: the sums of E[x], then of E[x x^T]'s upper triangle.
    """
    m, dim = x0.shape
    n_sets = weights.shape[1]
    completed = np.broadcast_to(x0, (n_sets, m, dim)).copy()
    second = np.zeros((n_sets, dim, dim))
    sets = np.arange(n_sets)
    for (size, members, coordinates, pattern), fill in zip(groups, fills):
        completed[sets[:, None, None], members[None, :, None], coordinates[None, :, :]] = np.swapaxes(fill, 0, 1)
        covariance = conditionals[size][0]
        # The conditional covariance is one per pattern: weight it by the pattern's total weight.
        used, first, position = np.unique(pattern, return_index=True, return_inverse=True)
        gather = scipy.sparse.csr_matrix((np.ones(len(members)), (position.reshape(-1), np.arange(len(members)))),
                                         shape=(len(used), len(members)))
        spread = np.einsum("pk,pkab->kpab", gather @ weights[members], covariance[used])
        used_coordinates = coordinates[first]
        np.add.at(second, (sets[:, None, None, None], used_coordinates[None, :, :, None],
                           used_coordinates[None, :, None, :]), spread)
    weighted = completed * weights.T[:, :, None]
    first = weighted.sum(axis=1)
    second += np.swapaxes(weighted, 1, 2) @ completed
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
