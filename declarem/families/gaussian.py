"""The multivariate normal's exponential-family parts, declared with numpy.

sympy cannot solve grad A(eta) = E[T] for a general dimension, so this family
carries its moment-to-parameter map in its declaration. The statistics are
T(x) = [x, upper(x x^T)] (the upper triangle, row by row); the natural
parameters are [Sigma^-1 mu, -1/2 Sigma^-1 with off-diagonal terms doubled].
Tests hold the moment map equal to a numeric solution of the moment-matching
equation.
"""

import numpy as np


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


class GaussianParts:
    """The parts a ``"gaussian"`` family declares, gathered for the derivation."""

    statistics = staticmethod(statistics)
    statistic_names = staticmethod(statistic_names)
    statistic_size = staticmethod(statistic_size)
    natural = staticmethod(natural)
    base = staticmethod(base)
    moment_map = staticmethod(moment_map)
    update_text = ("mean = E[x]", "cov = E[x x^T] - mean mean^T")
    update_latex = (r"\mu = \mathbb{E}[x]", r"\Sigma = \mathbb{E}[x x^\top] - \mu \mu^\top")
