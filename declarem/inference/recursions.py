"""Scaled forward and backward recursions of a hidden Markov chain over a block grid (``blocks.py``).

Within a block the recursions are the textbook ones, vectorised over blocks:
alpha_t = (alpha_{t-1} @ A) * e_t and beta_{t-1} = A @ (e_t * beta_t). What
a block needs from its neighbours is the forward vector entering it and the
backward vector at its end. Two exact ways to get them:

- *Forgetting* (``_by_forgetting``): the product of A @ diag(e_t) over a block's
  first m steps soon has rows equal up to scale (rank one): the chain has
  forgotten where it entered, and the forward vector m steps in is that common
  row, whatever entered. Steps m onwards then fill in parallel, and the vector
  leaving each block enters the next for its first m steps. Backward likewise
  with the product over a block's last steps. Only 2m steps of (k, k) products
  are formed, and nothing runs block after block.
- *Products* (``_by_products``), when some block has not forgotten within its
  length: whole-block transfer matrices, joined by a scan over each sequence's
  blocks.

Both carry directions only; the per-step scales come from the forward fill,
which is the sequential recursion once a block's entering vector is known.

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
# Rows of a transfer matrix count as equal up to scale when every entry agrees to this,
# relative (so the forward vectors filled from the common row agree to it too).
SETTLED = 1e-13
# Test for a common row every this many steps at first, then every twice as many
# (a multiple of any ``every`` used).
SETTLE_CHECK = 8
# Entries of a unit-mass row below this are negligible in every sum they enter.
NEGLIGIBLE = 1e-280
# A row of a product whose mass falls below this in one step may have lost entries to underflow;
# rows are rescaled before their mass falls below ROW_SMALL (one more step cannot take it below ROW_TINY
# unless a single step shrinks it by 1e-180).
ROW_TINY = 1e-280
ROW_SMALL = 1e-100


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
        Rescale every ``every`` steps and at each block's end; 1, 2, 4 or 8.

    Returns
    -------
    Lattice, or None when a mass fell below what this rescaling can carry (then call
    again with ``every=1``, or with one block per sequence).
    """
    k, n_blocks, length = len(start), layout.n_blocks, layout.length
    grid = emission.reshape(length, n_blocks, k)
    alpha, beta = np.empty_like(grid), np.empty_like(grid)
    scale = np.ones((length, n_blocks))
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        if layout.chains is None:
            uniform, ones = np.full((n_blocks, k), 1.0 / k), np.ones((n_blocks, k))
            done = (_forward(start, transition, grid, layout, every, alpha, scale, uniform, 0, length)
                    and _backward(transition, grid, every, beta, ones, length - 1, 0))
        else:
            done = _by_forgetting(start, transition, grid, layout, every, alpha, beta, scale)
            if done is None:
                done = _by_products(start, transition, grid, layout, every, alpha, beta, scale)
    if not done:
        return None
    rescaled = [position for position in range(length) if _rescale_here(position, length, every)]
    return Lattice(alpha.reshape(-1, k), beta.reshape(-1, k), scale, rescaled)


def _rescale_here(position, length, every):
    return (position + 1) % every == 0 or position == length - 1


def _by_forgetting(start, transition, grid, layout, every, alpha, beta, scale):
    """Fill every block in parallel from the vectors its chain forgets its neighbours into.

    Returns True when filled, False when a mass fell below ``TINY``, None when some
    block has not forgotten within its length.
    """
    length, n_blocks, k = grid.shape
    head = _settle(_ForwardProducts(start, transition, grid, layout, every, per_row=True), length - SETTLE_CHECK)
    # The backward products forget about as fast as the forward ones did: a chain whose backward
    # rows still differ long after that (states that reach only some others) joins products instead.
    limit = min(length - SETTLE_CHECK, max(8 * SETTLE_CHECK, 4 * head[0])) if head is not None else 0
    tail = None if head is None else _settle(_BackwardProducts(transition, grid, layout, every), limit)
    if tail is None:
        return None
    (entered, direction), (left, backward_direction) = head, tail
    if not _forward(start, transition, grid, layout, every, alpha, scale, direction, entered, length):
        return False
    incoming = np.full((n_blocks, k), 1.0 / k)
    incoming[layout.continued] = alpha[-1][layout.continued - 1]
    if not _forward(start, transition, grid, layout, every, alpha, scale, incoming, 0, entered):
        return False
    # The backward vector left steps before a block's end is the common row, whatever follows.
    top = length - 1 - left
    if not _backward(transition, grid, every, beta, backward_direction, top, 0):
        return False
    following = layout.continued
    outgoing = np.ones((n_blocks, k))
    outgoing[following - 1] = (grid[0][following] * beta[0][following]) @ transition.T
    outgoing /= outgoing.sum(axis=1, keepdims=True)
    return _backward(transition, grid, every, beta, outgoing, length - 1, top + 1)


def _by_products(start, transition, grid, layout, every, alpha, beta, scale):
    """Fill every block in parallel from entering and leaving vectors joined through whole-block products."""
    length, n_blocks, k = grid.shape
    products = _ForwardProducts(start, transition, grid, layout, every)
    for _ in range(length):
        if not products.step():
            return False
    incoming = np.full((n_blocks, k), 1.0 / k)
    outgoing = np.ones((n_blocks, k))
    if not _join_blocks(products.current, layout, incoming, outgoing):
        return False
    return (_forward(start, transition, grid, layout, every, alpha, scale, incoming, 0, length)
            and _backward(transition, grid, every, beta, outgoing, length - 1, 0))


class _ForwardProducts:
    """Transfer matrices of every block's first steps, a step at a time: ``current`` (k, n_blocks, k).

    ``current[i, b, j]`` is P_b[i, j] for P_b the product over the steps taken of
    transition @ diag(emission), normalised per block (or, with ``per_row``, each
    row on its own: directions only); a sequence's first step uses the start
    probabilities in every row instead.
    """

    def __init__(self, start, transition, grid, layout, every, per_row=False):
        self.start, self.transition, self.grid, self.layout, self.every = start, transition, grid, layout, every
        self.per_row = per_row
        self.current = _identities(grid)
        self.spare = np.empty_like(self.current)
        self.taken = 0
        self.ones = np.ones(grid.shape[2])

    def step(self):
        """Take one more step; False when a block's mass fell below ``TINY`` (with ``every`` > 1)."""
        position, k = self.taken, self.grid.shape[2]
        following = self.spare
        np.matmul(self.current.reshape(-1, k), self.transition, out=following.reshape(-1, k))
        following *= self.grid[position]
        if position == 0:
            # Front padding carries nothing: any rank-one start lets those blocks settle.
            following[:, self.layout.padded] = 1.0 / k
        blocks = self.layout.starts.get(position)
        if blocks is not None:
            following[:, blocks] = self.start * self.grid[position][blocks]
        self.spare, self.current = self.current, following
        self.taken += 1
        return _rescale_products(following, position, self.grid.shape[0], self.every, self.per_row, self.ones)


class _BackwardProducts:
    """Transfer matrices of every block's last steps, taken from the end: ``current`` (k, n_blocks, k).

    ``current[j, b, i]`` is R_b[i, j] for R_b the product, in time order, of
    transition @ diag(emission) over the steps taken: its rows are R_b's columns,
    each normalised on its own (directions only).
    """

    def __init__(self, transition, grid, layout, every):
        self.transposed, self.grid, self.layout, self.every = np.ascontiguousarray(transition.T), grid, layout, every
        self.current = _identities(grid)
        self.spare = np.empty_like(self.current)
        self.taken = 0
        self.ones = np.ones(grid.shape[2])

    def step(self):
        length, k = self.grid.shape[0], self.grid.shape[2]
        position = length - 1 - self.taken
        if self.taken == 0:
            # Row j is column j of the transition times the last emission of j: its direction is
            # the column alone (the emission, however small, only scales it), or zero.
            self.current[...] = self.transposed[:, None, :] * (self.grid[position].T > 0)[:, :, None]
        else:
            self.current *= self.grid[position]
            np.matmul(self.current.reshape(-1, k), self.transposed, out=self.spare.reshape(-1, k))
            self.spare, self.current = self.current, self.spare
        starting = self.layout.starts.get(position + 1)
        if starting is not None:
            # Before a sequence's first step lies padding, whose backward vectors are never used.
            self.current[:, starting] = 1.0 / k
        self.taken += 1
        return _rescale_products(self.current, self.taken - 1, length, self.every, True, self.ones)


def _identities(grid):
    length, n_blocks, k = grid.shape
    return np.repeat(np.eye(k)[:, None, :], n_blocks, axis=1)


def _rescale_products(products, steps_done, length, every, per_row, ones):
    """Rescale each block's product to unit mass at a rescaling step, or each row at every step.

    Rows carry directions only (``per_row``), and rows of zero mass stay zero; one step can
    shrink a row by any factor, so their masses are looked at every step and they are
    rescaled when one is below ``ROW_SMALL`` or a test for a common row comes next. Returns
    False when a mass fell below ``TINY`` with ``every`` > 1, or a row's below ``ROW_TINY``
    (its entries may have underflowed).
    """
    if per_row:
        mass = products @ ones
        nonzero = mass > 0
        smallest = mass.min(where=nonzero, initial=1.0)      # the smallest nonzero mass (1 if none is below)
        if smallest < ROW_TINY:
            return False
        # Divide only before a test for a common row, or when a row has become small.
        if (steps_done + 1) % SETTLE_CHECK == 0 or smallest < ROW_SMALL:
            products /= np.where(nonzero, mass, 1.0)[:, :, None]
        return True
    if not _rescale_here(steps_done, length, every):
        return True
    mass = products.sum(axis=0) @ ones
    if every > 1 and not mass.min() >= TINY:
        return False
    products /= mass[:, None]
    return True


def _settle(products, limit):
    """Steps until every block's product (rows rescaled on their own) has rows equal up to scale.

    Tested after 8, 16, 24 and 32 steps, then every 16. Returns (steps, that common row
    (n_blocks, k)), or None when not settled within ``limit`` steps or when a row's mass
    fell below ``TINY`` between rescalings.
    """
    while True:
        stride = SETTLE_CHECK if products.taken < 4 * SETTLE_CHECK else 2 * SETTLE_CHECK
        if products.taken + stride > limit:
            return None
        for _ in range(stride):
            if not products.step():
                return None
        direction = _common_row(products.current)
        if direction is not None:
            return products.taken, direction


def _common_row(products):
    """The row every row of each block's matrix is proportional to, normalised (n_blocks, k); or None.

    The rows were each rescaled to unit mass. Rows of zero mass are ignored (their
    state contributes nothing); every other row must agree with their mean to
    ``SETTLED`` relative in every entry, apart from entries below ``NEGLIGIBLE``.
    """
    nonzero = products @ np.ones(products.shape[2]) > 0                     # (k, n_blocks)
    counted = nonzero.sum(axis=0)
    if not (counted > 0).all():
        return None
    mean = products.sum(axis=0) / counted[:, None]                          # (n_blocks, k)
    agrees = np.abs(products - mean) <= SETTLED * mean + NEGLIGIBLE
    if not (agrees | ~nonzero[:, :, None]).all():
        return None
    return mean / mean.sum(axis=1, keepdims=True)


def _join_blocks(products, layout, incoming, outgoing):
    """Fill in the forward vector entering each block and the backward vector at each block's end.

    A scan over each sequence's blocks in log2(blocks) rounds (Hillis and Steele):
    round d multiplies each running product by the one d blocks before it (forward)
    or after it (backward), for all blocks of all sequences at once. The forward
    products start from a sequence's first block, whose rows are all the start, so
    their rows stay equal: the entering vector is any row. Writes ``incoming`` and
    ``outgoing`` (n_blocks, k); returns False when a product's mass is not above
    ``JOIN_TINY`` (its entries may have underflowed).
    """
    chains = layout.chains
    k, most = products.shape[0], chains.shape[1]
    present = chains >= 0
    ordered = products.transpose(1, 0, 2)[np.where(present, chains, 0)]       # (sequences, most, k, k)
    ordered[~present] = np.eye(k)
    prefix, suffix = ordered, ordered.copy()
    shift = 1
    while shift < most:
        earlier = np.matmul(prefix[:, :-shift], prefix[:, shift:])
        later = np.matmul(suffix[:, :-shift], suffix[:, shift:])
        for joined in (earlier, later):
            mass = joined.sum(axis=(2, 3))
            if not mass.min() > JOIN_TINY:
                return False
            joined /= mass[:, :, None, None]
        prefix[:, shift:], suffix[:, :-shift] = earlier, later
        shift *= 2
    entering = prefix[:, :-1].sum(axis=2)                                      # (sequences, most - 1, k)
    leaving = suffix[:, 1:].sum(axis=3)
    follows = present[:, 1:]
    incoming[chains[:, 1:][follows]] = entering[follows] / entering[follows].sum(axis=1, keepdims=True)
    outgoing[chains[:, :-1][follows]] = leaving[follows] / leaving[follows].sum(axis=1, keepdims=True)
    return True


def _forward(start, transition, grid, layout, every, alpha, scale, entering, first, stop):
    """Fill alpha (length, n_blocks, k) and its scales at positions first..stop-1 from ``entering`` (n_blocks, k).

    ``entering`` is the normalised forward vector at position first - 1. Returns False
    when a mass fell below ``TINY`` (with ``every`` > 1).
    """
    ones = np.ones(grid.shape[2])
    current = entering
    for position in range(first, stop):
        step = alpha[position]
        np.matmul(current, transition, out=step)
        step *= grid[position]
        blocks = layout.starts.get(position)
        if blocks is not None:
            step[blocks] = start * grid[position][blocks]
        if _rescale_here(position, grid.shape[0], every):
            mass = scale[position] = step @ ones
            if every > 1 and not mass.min() >= TINY:
                return False
            step /= mass[:, None]
        current = step
    return True


def _backward(transition, grid, every, beta, top_vector, top, bottom):
    """Fill beta (length, n_blocks, k) at positions top down to bottom from ``top_vector`` at ``top``.

    Each vector is rescaled every ``every`` steps. Returns False when a mass fell below
    ``TINY`` (with ``every`` > 1).
    """
    if top < 0:
        return True
    beta[top] = top_vector
    ahead = np.empty(top_vector.shape)
    transposed = np.ascontiguousarray(transition.T)
    ones = np.ones(grid.shape[2])
    for position in range(top, bottom, -1):
        step = beta[position - 1]
        np.multiply(grid[position], beta[position], out=ahead)
        np.matmul(ahead, transposed, out=step)
        if (top - position + 1) % every == 0:
            mass = step @ ones
            if every > 1 and not mass.min() >= TINY:
                return False
            step /= mass[:, None]
    return True
