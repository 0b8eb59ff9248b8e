"""The most probable path of a hidden Markov chain over a block grid (``blocks.py``), in max-plus arithmetic.

delta_t(j) = max_i delta_{t-1}(i) + log A_ij + e_t(j), with back pointers to the
maximising i, vectorised over blocks. As for forward-backward (``recursions.py``)
a block needs only the vector entering it:

- *Coalescing*: the max-plus product of a block's first m steps soon has rows
  equal up to a constant (the best paths from every entering state have merged),
  so delta m steps in is that row, up to a constant, whatever entered; steps m
  onwards fill in parallel and the entering vectors come from the neighbours'
  ends. Constants do not change an argmax.
- *Products*, when some block's paths have not merged within its length:
  whole-block max-plus products, joined by a prefix scan in log2(blocks) rounds.

The path is then read back through the pointers in parallel too: from every
possible final state of every block at once, then through the state each
block's first step came from, by pointer jumping in log2(blocks) rounds.
"""

import numpy as np

# Rows of a max-plus product count as equal up to a constant when every finite entry,
# after subtracting its row's largest, agrees to this (relative to 1 + its size).
COALESCED = 1e-11
CHECK_EVERY = 8


def best_path(log_start, log_transition, log_emission, layout):
    """Each cell's chain state on the most probable path of its sequence.

    Parameters
    ----------
    log_start : ndarray of shape (k,)
    log_transition : ndarray of shape (k, k)
    log_emission : ndarray of shape (n_cells, k)
        Each cell's log emission per chain state (its best within-step configuration); 0 in padding.
    layout : BlockLayout

    Returns
    -------
    ndarray of int, shape (n_cells,)
        Garbage in padding cells.
    """
    length, n_blocks, k = layout.length, layout.n_blocks, len(log_start)
    grid = log_emission.reshape(length, n_blocks, k)
    back = np.zeros((length, n_blocks, k), dtype=np.intp)
    delta = np.empty((length, n_blocks, k))
    with np.errstate(invalid="ignore"):
        if layout.chains is None:
            _fill(log_start, log_transition, grid, layout, delta, back, np.zeros((n_blocks, k)), 0, length)
        else:
            products = _Products(log_start, log_transition, grid, layout)
            direction = products.coalesce(length - CHECK_EVERY)
            if direction is not None:
                first = products.taken
                _fill(log_start, log_transition, grid, layout, delta, back, direction, first, length)
            else:
                while products.taken < length:
                    products.step()
                first = length
            entering = _entering(products, delta, layout, settled=direction is not None)
            _fill(log_start, log_transition, grid, layout, delta, back, entering, 0, first)
    return _read_back(delta, back, layout)


class _Products:
    """Max-plus products of every block's first steps: ``current`` (k, n_blocks, k), [i, b, j] the best
    log-score from state i before the block to state j at the last step taken, less a constant per block."""

    def __init__(self, log_start, log_transition, grid, layout):
        self.log_start, self.log_transition, self.grid, self.layout = log_start, log_transition, grid, layout
        k, n_blocks = grid.shape[2], grid.shape[1]
        self.current = np.full((k, n_blocks, k), -np.inf)
        self.current[np.arange(k), :, np.arange(k)] = 0.0
        self.taken = 0

    def step(self):
        position, k = self.taken, self.grid.shape[2]
        current = self.current
        following = current[:, :, :1] + self.log_transition[0]
        for state in range(1, k):
            np.maximum(following, current[:, :, state:state + 1] + self.log_transition[state], out=following)
        following += self.grid[position]
        if position == 0:
            following[:, self.layout.padded] = 0.0
        blocks = self.layout.starts.get(position)
        if blocks is not None:
            following[:, blocks] = self.log_start + self.grid[position][blocks]
        peak = following.max(axis=(0, 2))
        following -= np.where(np.isfinite(peak), peak, 0.0)[:, None]
        self.current = following
        self.taken += 1

    def coalesce(self, limit):
        """Step until every block's rows are equal up to a constant; that row (n_blocks, k), or None."""
        while self.taken + CHECK_EVERY <= limit:
            for _ in range(CHECK_EVERY):
                self.step()
            row = _common_row(self.current)
            if row is not None:
                return row
        return None


def _common_row(products):
    """The row every feasible row of each block equals up to a constant, or None."""
    peak = products.max(axis=2, keepdims=True)
    feasible = np.isfinite(peak[:, :, 0])
    if not feasible.any(axis=0).all():
        return None
    relative = np.where(feasible[:, :, None], products - np.where(np.isfinite(peak), peak, 0.0), np.nan)
    reference = np.nanmax(relative, axis=0)                              # (n_blocks, k)
    finite = np.isfinite(reference)
    known = np.where(finite, reference, 0.0)
    same_pattern = (np.isfinite(relative) == finite) | ~feasible[:, :, None]
    close = np.abs(np.where(finite, relative - reference, 0.0)) <= COALESCED * (1 + np.abs(known))
    if not (same_pattern & (close | ~feasible[:, :, None])).all():
        return None
    return reference


def _entering(products, delta, layout, settled):
    """The (relative) delta entering each block: the previous block's last, or joined through whole products.

    Joining is a max-plus prefix scan over each sequence's blocks in log2(blocks) rounds (as
    ``recursions._join_blocks`` does for sums): round d joins each running product with the one d
    blocks before it, for all blocks of all sequences at once. A sequence's first product has rows
    equal up to a constant (they all start from the start probabilities), so the delta entering the
    block after a prefix is its best row, up to a constant.
    """
    length, n_blocks, k = delta.shape
    entering = np.zeros((n_blocks, k))
    if settled:
        entering[layout.continued] = delta[-1][layout.continued - 1]
        return entering
    chains = layout.chains
    present = chains >= 0
    prefix = products.current.transpose(1, 0, 2)[np.where(present, chains, 0)]     # (sequences, most, k, k)
    identity = np.full((k, k), -np.inf)
    np.fill_diagonal(identity, 0.0)
    prefix[~present] = identity
    shift, needed = 1, chains.shape[1] - 1           # the last block's prefix enters nothing
    while shift < needed:
        prefix[:, shift:needed] = _max_plus(prefix[:, :needed - shift], prefix[:, shift:needed])
        shift *= 2
    scores = prefix[:, :-1].max(axis=2)                                          # (sequences, most - 1, k)
    peak = scores.max(axis=2, keepdims=True)
    scores -= np.where(np.isfinite(peak), peak, 0.0)
    follows = present[:, 1:]
    entering[chains[:, 1:][follows]] = scores[follows]
    return entering


def _max_plus(first, second):
    """first (x) second in max-plus arithmetic over the last two axes, less each product's largest entry."""
    joined = (first[..., :, :, None] + second[..., None, :, :]).max(axis=-2)
    peak = joined.max(axis=(-2, -1), keepdims=True)
    joined -= np.where(np.isfinite(peak), peak, 0.0)
    return joined


def _fill(log_start, log_transition, grid, layout, delta, back, entering, first, stop):
    """Fill delta and the back pointers at positions first..stop-1 from ``entering`` at first - 1."""
    current = entering
    for position in range(first, stop):
        scores = current[:, :, None] + log_transition
        pointer = back[position]
        np.argmax(scores, axis=1, out=pointer)
        step = delta[position]
        np.max(scores, axis=1, out=step)            # the scores at the pointers
        step += grid[position]
        blocks = layout.starts.get(position)
        if blocks is not None:
            step[blocks] = log_start + grid[position][blocks]
        peak = step.max(axis=1, keepdims=True)
        step -= np.where(np.isfinite(peak), peak, 0.0)
        current = step


def _read_back(delta, back, layout):
    """Follow the back pointers: each cell's state on its sequence's best path, (n_cells,)."""
    length, n_blocks, k = delta.shape
    # From every possible last state of every block at once: the state at each position.
    states = np.empty((length, n_blocks, k), dtype=np.intp)
    states[-1] = np.arange(k)
    blocks = np.arange(n_blocks)[:, None]
    for position in range(length - 1, 0, -1):
        states[position - 1] = back[position][blocks, states[position]]
    came_from = back[0][blocks, states[0]]                               # (n_blocks, k): previous block's last
    last = np.zeros(n_blocks, dtype=np.intp)
    if layout.chains is None:
        last[:] = delta[-1].argmax(axis=1)
    else:
        last[:] = _last_states(came_from, delta[-1], layout.chains)
    return states[:, np.arange(n_blocks), last].reshape(-1)


def _last_states(came_from, final_delta, chains):
    """The state at each block's last position on its sequence's best path, (n_blocks,).

    A block's ``came_from`` (k,) maps the state at its last position to the state at the previous
    block's last position. Composed from each sequence's end by pointer jumping, in log2(blocks)
    rounds for all sequences at once (past a sequence's end the maps are the identity): after them,
    ``maps[:, c]`` takes the state at the sequence's end to the state at the end of its c-th block.
    """
    n_sequences, most = chains.shape
    k = came_from.shape[1]
    present = chains >= 0
    ends = chains[np.arange(n_sequences), present.sum(axis=1) - 1]
    final = final_delta[ends].argmax(axis=1)                                       # (sequences,)
    last = np.empty(len(came_from), dtype=np.intp)
    last[ends] = final
    if most == 1:
        return last
    maps = np.broadcast_to(np.arange(k), (n_sequences, most - 1, k)).copy()
    following = present[:, 1:]
    maps[following] = came_from[chains[:, 1:][following]]
    shift = 1
    while shift < most - 1:
        maps[:, :-shift] = np.take_along_axis(maps[:, :-shift], maps[:, shift:], axis=2)
        shift *= 2
    found = np.take_along_axis(maps, np.broadcast_to(final[:, None, None], (n_sequences, most - 1, 1)), axis=2)
    earlier = present[:, :-1] & following            # every block but a sequence's last
    last[chains[:, :-1][earlier]] = found[:, :, 0][earlier]
    return last
