"""Scaled forward and backward recursions of a hidden Markov chain over a block grid (``blocks.py``).

Within a block the recursions are the textbook ones, vectorised over blocks:
alpha_t = (alpha_{t-1} @ A) * e_t and beta_{t-1} = A @ (e_t * beta_t). What
a block needs from its neighbours is the forward vector entering it and the
backward vector at its end. Two exact ways to get them:

- *Forgetting* (``_by_forgetting``): a chain soon forgets where it entered, so
  forward vectors filled from a guessed entering vector meet, after some m
  steps, those filled from the true one. Every block is filled in parallel from
  a uniform guess; then each block's first steps are filled again from the
  vector leaving the block before, until the two fills agree; from there on
  the first fill stands. A sequence's first block is exact from its first step,
  so by induction every block is. Backward likewise from each block's end. The
  refills step (n_blocks, k) vectors, and nothing runs block after block.
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
# A refill meets the first fill when every entry of their unit-mass vectors agrees to this, relative
# (the vectors filled on from either then agree to it too).
SETTLED = 1e-13
# Compare the fills every this many steps (a multiple of any ``every`` used, so both are rescaled there).
SETTLE_CHECK = 8
# Entries of a unit-mass vector below this are negligible in every sum they enter.
NEGLIGIBLE = 1e-280


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


def forward_backward(start, transition, emission, layout, every, workspace=None):
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
    workspace : callable, optional
        ``workspace(name, shape)`` gives an array to fill (its contents are overwritten), for
        the lattice's arrays: ``ChainEngine`` keeps them from one E-step to the next.

    Returns
    -------
    Lattice, or None when a mass fell below what this rescaling can carry (then call
    again with ``every=1``, or with one block per sequence).
    """
    k, n_blocks, length = len(start), layout.n_blocks, layout.length
    grid = emission.reshape(length, n_blocks, k)
    if workspace is None:
        workspace = _fresh
    alpha, beta = workspace("alpha", grid.shape), workspace("beta", grid.shape)
    scale = workspace("scale", (length, n_blocks))
    scale.fill(1.0)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        if layout.chains is None:
            uniform, ones = np.full((n_blocks, k), 1.0 / k), np.ones((n_blocks, k))
            done = (_forward(start, transition, grid, layout, every, alpha, scale, uniform, 0, length)
                    and _backward(transition, grid, every, beta, ones, length - 1, 0))
        else:
            done = None if layout.joined else _by_forgetting(start, transition, grid, layout, every, alpha, beta,
                                                             scale)
            if done is None:
                done = _by_products(start, transition, grid, layout, every, alpha, beta, scale)
    if not done:
        return None
    rescaled = [position for position in range(length) if _rescale_here(position, length, every)]
    return Lattice(alpha.reshape(-1, k), beta.reshape(-1, k), scale, rescaled)


def _fresh(name, shape):
    return np.empty(shape)


def _rescale_here(position, length, every):
    return (position + 1) % every == 0 or position == length - 1


def _by_forgetting(start, transition, grid, layout, every, alpha, beta, scale):
    """Fill every block in parallel from a guess, then refill each block's first steps from the block before.

    A chain forgets where it entered: forward vectors filled from a guessed entering vector
    soon agree with those filled from the true one. So every block is filled at once from a
    uniform guess, then its first steps are filled again from the vector leaving the block
    before (as the first fill left it), ``SETTLE_CHECK`` steps at a time, until the refill
    agrees with the first fill to ``SETTLED`` relative in every entry; from there on the first
    fill stands. A sequence's first block is exact from its first step, so by induction along
    each sequence every block is. Backward likewise from each block's end.

    Returns True when filled, False when a mass fell below ``TINY``, None when some block's
    refill has not met its first fill within its length less ``SETTLE_CHECK`` steps.
    """
    length, n_blocks, k = grid.shape
    guess = np.full((n_blocks, k), 1.0 / k)
    if not _forward(start, transition, grid, layout, every, alpha, scale, guess, 0, length):
        return False
    incoming = guess.copy()
    incoming[layout.continued] = alpha[-1][layout.continued - 1]
    met = _refill_forward(start, transition, grid, layout, every, alpha, scale, incoming)
    if met is not True:
        return met
    if not _backward(transition, grid, every, beta, guess, length - 1, 0):
        return False
    following = layout.continued
    outgoing = guess.copy()
    outgoing[following - 1] = (grid[0][following] * beta[0][following]) @ transition.T
    outgoing[following - 1] /= outgoing[following - 1].sum(axis=1, keepdims=True)
    first_step = np.zeros(n_blocks, dtype=np.intp)
    for position, blocks in layout.starts.items():
        first_step[blocks] = position
    return _refill_backward(transition, grid, every, beta, outgoing, first_step)


def _refill_forward(start, transition, grid, layout, every, alpha, scale, entering):
    """Fill alpha again from ``entering`` until it meets the fill already there (see ``_by_forgetting``).

    Returns True when every block's refill met the first fill, False when a mass fell below
    ``TINY``, None when some block's did not within its length less ``SETTLE_CHECK`` steps.
    """
    previous, done = entering, 0
    for end in range(SETTLE_CHECK - 1, grid.shape[0] - SETTLE_CHECK, SETTLE_CHECK):
        earlier = alpha[end].copy()     # the first fill's, at a rescaled position (every divides SETTLE_CHECK)
        if not _forward(start, transition, grid, layout, every, alpha, scale, previous, done, end + 1):
            return False
        if _agree(alpha[end], earlier):
            return True
        previous, done = alpha[end], end + 1
    return None


def _refill_backward(transition, grid, every, beta, top_vector, first_step):
    """Fill beta again from ``top_vector`` at each block's end until it meets the fill already there.

    ``first_step`` (n_blocks,): where each block's rows begin (after a sequence's front padding,
    whose backward vectors are never used and are not compared: a block refilled down past its
    first row is exact whatever its padding holds).
    """
    length = grid.shape[0]
    top, vector = length - 1, top_vector
    for bottom in range(length - 1 - SETTLE_CHECK, SETTLE_CHECK - 1, -SETTLE_CHECK):
        earlier = beta[bottom].copy()   # the first fill's, rescaled to unit mass there (every divides SETTLE_CHECK)
        if not _backward(transition, grid, every, beta, vector, top, bottom):
            return False
        rows = first_step <= bottom
        if _agree(beta[bottom][rows], earlier[rows]):
            return True
        top, vector = bottom, beta[bottom]
    return None


def _agree(refilled, first):
    """Whether two fills' unit-mass vectors (n_blocks, k) agree to ``SETTLED`` relative in every entry
    (apart from entries below ``NEGLIGIBLE``)."""
    return bool(np.all(np.abs(refilled - first) <= SETTLED * np.maximum(refilled, first) + NEGLIGIBLE))


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
    transition @ diag(emission), normalised per block; a sequence's first step uses
    the start probabilities in every row instead.
    """

    def __init__(self, start, transition, grid, layout, every):
        self.start, self.transition, self.grid, self.layout, self.every = start, transition, grid, layout, every
        self.current = _identities(grid)
        self.spare = np.empty_like(self.current)
        self.taken = 0
        self.ones = np.ones(grid.shape[2])

    def step(self):
        """Take one more step; False when a block's mass fell below ``TINY`` (with ``every`` > 1)."""
        position, k = self.taken, self.grid.shape[2]
        following = self.spare
        np.dot(self.current.reshape(-1, k), self.transition, out=following.reshape(-1, k))
        following *= self.grid[position]
        if position == 0:
            # Front padding carries nothing: any rank-one start lets those blocks settle.
            following[:, self.layout.padded] = 1.0 / k
        blocks = self.layout.starts.get(position)
        if blocks is not None:
            following[:, blocks] = self.start * self.grid[position][blocks]
        self.spare, self.current = self.current, following
        self.taken += 1
        return _rescale_products(following, position, self.grid.shape[0], self.every, self.ones)


def _identities(grid):
    length, n_blocks, k = grid.shape
    return np.repeat(np.eye(k)[:, None, :], n_blocks, axis=1)


def _rescale_products(products, steps_done, length, every, ones):
    """Rescale each block's product to unit mass at a rescaling step.

    Returns False when a mass fell below ``TINY`` with ``every`` > 1.
    """
    if not _rescale_here(steps_done, length, every):
        return True
    mass = products.sum(axis=0) @ ones
    if every > 1 and not np.minimum.reduce(mass) >= TINY:
        return False
    products /= mass[:, None]
    return True


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
    last, starts = grid.shape[0] - 1, layout.starts
    # np.dot takes a few (n_blocks, k) x (k, k) products a microsecond faster than np.matmul, to the same bits.
    dot, smallest = np.dot, np.minimum.reduce
    current = entering
    for position in range(first, stop):
        step = alpha[position]
        dot(current, transition, out=step)
        step *= grid[position]
        if position in starts:
            blocks = starts[position]
            step[blocks] = start * grid[position][blocks]
        if (position + 1) % every == 0 or position == last:          # _rescale_here, inline
            mass = scale[position] = dot(step, ones)
            if every > 1 and not smallest(mass) >= TINY:
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
    dot, smallest = np.dot, np.minimum.reduce
    for position in range(top, bottom, -1):
        step = beta[position - 1]
        np.multiply(grid[position], beta[position], out=ahead)
        dot(ahead, transposed, out=step)
        if (top - position + 1) % every == 0:
            mass = dot(step, ones)
            if every > 1 and not smallest(mass) >= TINY:
                return False
            step /= mass[:, None]
    return True
