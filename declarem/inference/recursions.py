"""Scaled forward and backward recursions of a hidden Markov chain over a block grid (``blocks.py``).

Within a block the recursions are the textbook ones, vectorised over blocks:
alpha_t = (alpha_{t-1} @ A) * e_t and beta_{t-1} = A @ (e_t * beta_t). Blocks
are joined through their transfer matrices P_b = prod over the block's steps of
A @ diag(e_t): the forward vector entering block j+1 is the one entering block j
times P_j, and the backward vector at the end of block j-1 is P_j times the one
at the end of block j. Products and joins are normalised, so they carry
directions only; the per-step scales come from the forward fill, which is
exactly the sequential recursion once each block's entering vector is known.

Rescaling every step costs two numpy calls per step, so vectors are rescaled
every ``every`` steps. Between rescalings a vector's mass can only fall
(emissions are scaled to at most 1 and transitions are stochastic), so a mass
still above ``TINY`` at a rescaling shows nothing of weight underflowed; when
one falls below, the caller runs the recursion again rescaling every step.
"""

from typing import NamedTuple

import numpy as np

TINY = 1e-200
# Joining multiplies normalised transfer matrices: a joined mass above this shows the
# entries that matter were far above underflow.
JOIN_TINY = 1e-290


class Lattice(NamedTuple):
    """Forward and backward vectors of every grid cell.

    alpha : ndarray of shape (n_cells, k)
        Forward vectors, divided by the product of the scales up to each cell.
    beta : ndarray of shape (n_cells, k)
        Backward vectors, each rescaled to an arbitrary positive multiple.
    scale : ndarray of shape (length, n_blocks)
        The divisor applied to alpha at each cell (1 where it was not rescaled).
    rescaled : list of int
        The positions at which alpha was rescaled.
    """

    alpha: np.ndarray
    beta: np.ndarray
    scale: np.ndarray
    rescaled: list


def forward_backward(start, transition, emission, layout, every):
    """The scaled forward and backward vectors of every cell.

    Parameters
    ----------
    start : ndarray of shape (k,)
    transition : ndarray of shape (k, k)
    emission : ndarray of shape (n_cells, k)
        Each cell's emission per chain state, scaled to at most 1; 1 in padding cells.
    layout : BlockLayout
    every : int
        Rescale every ``every`` steps and at each block's end.

    Returns
    -------
    Lattice, or None when a mass fell below what this rescaling can carry (then call
    again with ``every=1``, or with one block per sequence).
    """
    k, n_blocks, length = len(start), layout.n_blocks, layout.length
    grid = emission.reshape(length, n_blocks, k)
    incoming = np.full((n_blocks, k), 1.0 / k)
    outgoing = np.ones((n_blocks, k))
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        if layout.chains is not None:
            products = _block_products(start, transition, grid, layout, every)
            if products is None or not _join_blocks(products, layout, incoming, outgoing):
                return None
        forward = _forward(start, transition, grid, layout, incoming, every)
        if forward is None:
            return None
        beta = _backward(transition, grid, outgoing, every)
        if beta is None:
            return None
    alpha, scale, rescaled = forward
    return Lattice(alpha.reshape(-1, k), beta.reshape(-1, k), scale, rescaled)


def _rescale_here(steps_done, length, every):
    return steps_done % every == 0 or steps_done == length


def _block_products(start, transition, grid, layout, every):
    """Each block's transfer matrix, normalised: (k, n_blocks, k) with [i, b, j] = P_b[i, j].

    A sequence's first step uses the start probabilities in every row instead of
    the transition. Returns None when a block's mass fell below ``TINY`` with ``every`` > 1.
    """
    length, n_blocks, k = grid.shape
    current = np.repeat(np.eye(k)[:, None, :], n_blocks, axis=1)
    following = np.empty_like(current)
    for position in range(length):
        np.matmul(current.reshape(-1, k), transition, out=following.reshape(-1, k))
        following *= grid[position]
        blocks = layout.starts.get(position)
        if blocks is not None:
            following[:, blocks] = start * grid[position][blocks]
        if _rescale_here(position + 1, length, every):
            mass = following.sum(axis=0) @ np.ones(k)
            if every > 1 and not mass.min() >= TINY:
                return None
            following /= mass[:, None]
        current, following = following, current
    return current


def _join_blocks(products, layout, incoming, outgoing):
    """Fill in the forward vector entering each block and the backward vector at each block's end.

    Sequentially over the blocks of a sequence, vectorised over sequences. Writes
    ``incoming`` and ``outgoing`` (n_blocks, k); returns False when a joined mass is
    not above ``JOIN_TINY``.
    """
    chains, active = layout.chains, layout.active
    k, most = products.shape[0], chains.shape[1]
    ordered = products.transpose(1, 0, 2)[chains]          # (sequences, most blocks, k, k)
    ones = np.ones(k)
    forward = np.full((most, active[0], k), 1.0 / k)
    backward = np.ones((most, active[0], k))
    masses = np.ones((2, most, active[0]))
    for column in range(most - 1):
        running = active[column + 1]
        joined = np.matmul(forward[column, :running, None, :], ordered[:running, column])[:, 0]
        mass = masses[0, column, :running] = joined @ ones
        np.divide(joined, mass[:, None], out=forward[column + 1, :running])
    for column in range(most - 1, 0, -1):
        running = active[column]
        joined = np.matmul(ordered[:running, column], backward[column, :running, :, None])[:, :, 0]
        mass = masses[1, column, :running] = joined @ ones
        np.divide(joined, mass[:, None], out=backward[column - 1, :running])
    if not masses.min() > JOIN_TINY:
        return False
    present = chains >= 0
    incoming[chains[present]] = forward.transpose(1, 0, 2)[present]
    outgoing[chains[present]] = backward.transpose(1, 0, 2)[present]
    return True


def _forward(start, transition, grid, layout, incoming, every):
    """Forward vectors (length, n_blocks, k), the scales (length, n_blocks), the rescaled positions."""
    length, n_blocks, k = grid.shape
    alpha = np.empty_like(grid)
    scale = np.ones((length, n_blocks))
    rescaled = []
    ones = np.ones(k)
    current = incoming
    for position in range(length):
        step = alpha[position]
        np.matmul(current, transition, out=step)
        step *= grid[position]
        blocks = layout.starts.get(position)
        if blocks is not None:
            step[blocks] = start * grid[position][blocks]
        if _rescale_here(position + 1, length, every):
            mass = scale[position] = step @ ones
            if every > 1 and not mass.min() >= TINY:
                return None
            step /= mass[:, None]
            rescaled.append(position)
        current = step
    return alpha, scale, rescaled


def _backward(transition, grid, outgoing, every):
    """Backward vectors (length, n_blocks, k), each rescaled every ``every`` steps."""
    length, n_blocks, k = grid.shape
    beta = np.empty_like(grid)
    beta[-1] = outgoing
    ahead = np.empty((n_blocks, k))
    transposed = np.ascontiguousarray(transition.T)
    ones = np.ones(k)
    for position in range(length - 1, 0, -1):
        step = beta[position - 1]
        np.multiply(grid[position], beta[position], out=ahead)
        np.matmul(ahead, transposed, out=step)
        if _rescale_here(length - position, length, every):
            mass = step @ ones
            if every > 1 and not mass.min() >= TINY:
                return None
            step /= mass[:, None]
    return beta
