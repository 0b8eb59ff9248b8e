"""The most probable path of a hidden Markov chain over a block grid (``blocks.py``), in max-plus arithmetic.

delta_t(j) = max_i delta_{t-1}(i) + log A_ij + e_t(j), with back pointers to the
maximising i, vectorised over blocks. As for forward-backward (``recursions.py``)
a block needs only the vector entering it:

- *Coalescing*: the max-plus product of a block's first m steps soon has rows
  equal up to a constant (the best paths from every entering state have merged),
  so delta m steps in is that row, up to a constant, whatever entered; steps m
  onwards fill in parallel and the entering vectors come from the neighbours'
  ends. Constants do not change an argmax.
- *Products*, when some block's paths have not merged within its length: whole
  block max-plus products, joined block after block.

The path is then read back through the pointers in parallel too: from every
possible final state of every block at once, then block after block through the
state each block's first step came from.
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
    """The (relative) delta entering each block: the previous block's last, or joined through whole products."""
    length, n_blocks, k = delta.shape
    entering = np.zeros((n_blocks, k))
    if settled:
        entering[layout.continued] = delta[-1][layout.continued - 1]
        return entering
    chains, active = layout.chains, layout.active
    ordered = products.current.transpose(1, 0, 2)                       # (n_blocks, k, k), [b, i, j]
    current = np.zeros((active[0], k))
    for column in range(chains.shape[1] - 1):
        running = active[column + 1]
        scores = current[:running, :, None] + ordered[chains[:running, column]]
        current = scores.max(axis=1)
        peak = current.max(axis=1, keepdims=True)
        current = current - np.where(np.isfinite(peak), peak, 0.0)
        entering[chains[:running, column + 1]] = current
    return entering


def _fill(log_start, log_transition, grid, layout, delta, back, entering, first, stop):
    """Fill delta and the back pointers at positions first..stop-1 from ``entering`` at first - 1."""
    current = entering
    for position in range(first, stop):
        scores = current[:, :, None] + log_transition
        pointer = back[position]
        np.argmax(scores, axis=1, out=pointer)
        step = delta[position]
        step[...] = np.take_along_axis(scores, pointer[:, None, :], axis=1)[:, 0, :]
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
    for position in range(length - 1, 0, -1):
        states[position - 1] = np.take_along_axis(back[position], states[position], axis=1)
    came_from = np.take_along_axis(back[0], states[0], axis=1)          # (n_blocks, k): previous block's last
    last = np.zeros(n_blocks, dtype=np.intp)
    if layout.chains is None:
        last[:] = delta[-1].argmax(axis=1)
    else:
        chains, active = layout.chains, layout.active
        sequence_ends = chains[np.arange(len(chains)), (chains >= 0).sum(axis=1) - 1]
        last[sequence_ends] = delta[-1][sequence_ends].argmax(axis=1)
        for column in range(chains.shape[1] - 1, 0, -1):
            running = active[column]
            blocks = chains[:running, column]
            last[blocks - 1] = came_from[blocks, last[blocks]]
    return states[:, np.arange(n_blocks), last].reshape(-1)
