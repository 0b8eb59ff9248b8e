"""How a chain's rows are laid out for forward-backward: sequences cut into blocks of equal length.

A Python loop over time steps costs numpy's call overhead at every step, so one
long sequence would pay it hundreds of thousands of times. Instead every
sequence is cut into blocks of ``length`` steps (its first block padded at the
front), and the recursions run over the position within a block, vectorised
over all blocks at once; ``recursions.py`` says how blocks learn the vectors
entering and leaving them. With a single block per sequence this is the plain
recursion, vectorised over sequences.

The grid is stored (position, block, state): each step's slice is one
contiguous (n_blocks, k) array, the transition one matrix product, and the rows
are put in grid order once per fit, so an iteration gathers nothing.
"""

import numpy as np

# A rough cost model of one loop step (seconds), measured on this project's machines;
# it only chooses the block length, never the result.
STEP_OVERHEAD = 12e-6
PER_STATE_BLOCK = 3e-9
PRODUCT_OVERHEAD = 20e-6
PER_PRODUCT_ENTRY = 3.6e-9
# One round of joining whole-block products (both directions, ``recursions._join_blocks``).
JOIN_OVERHEAD = 60e-6
JOIN_PER_BLOCK = 0.25e-6
JOIN_PER_BLOCK_ENTRY = 0.0135e-6
# Steps a chain typically takes to forget where it entered (recursions.py), and the
# shortest block: room to forget from each end. A chain that forgets more slowly than its blocks
# are long is joined by whole-block products instead (exact either way; this only sets the cost).
FORGETTING_STEPS = 32
SHORTEST_BLOCK = 2 * FORGETTING_STEPS
# Shorter blocks leave no room to forget: they are always joined by whole-block products, whose
# log2(blocks) rounds cost less than a few hundred loop steps when the sequences hold few blocks.
JOINED_BLOCKS = (4, 8, 16, 32)


def choose_block_length(lengths, k):
    """The block length with the least modelled time for these sequences and ``k`` states.

    Parameters
    ----------
    lengths : ndarray of int, shape (n_sequences,)
    k : int

    Returns
    -------
    int
        The longest length (one block per sequence: the plain recursion), a length
        of at least ``SHORTEST_BLOCK`` (blocks that forget), or one of ``JOINED_BLOCKS``
        (blocks joined by products).
    """
    longest = int(lengths.max())

    def fill_cost(length, n_blocks):
        return 2 * length * (STEP_OVERHEAD + PER_STATE_BLOCK * k * n_blocks)

    def product_step(n_blocks):
        return PRODUCT_OVERHEAD + PER_PRODUCT_ENTRY * k * k * n_blocks * (0.2 * k + 1) / 2.6

    best, best_cost = longest, fill_cost(longest, len(lengths))
    for length in JOINED_BLOCKS:
        if length >= longest:
            break
        n_blocks = int((-(-lengths // length)).sum())
        rounds = int(np.ceil(np.log2(-(-longest // length))))
        cost = (length * product_step(n_blocks) + fill_cost(length, n_blocks)
                + rounds * (JOIN_OVERHEAD + n_blocks * (JOIN_PER_BLOCK + JOIN_PER_BLOCK_ENTRY * k * k)))
        if cost < best_cost:
            best, best_cost = length, cost
    length = SHORTEST_BLOCK
    while length < longest:
        n_blocks = int((-(-lengths // length)).sum())
        cost = fill_cost(length, n_blocks) + 2 * FORGETTING_STEPS * product_step(n_blocks)
        if cost < best_cost:
            best, best_cost = length, cost
        length = int(length * 1.25) + 1
    return best


class BlockLayout:
    """Where each row sits in the (position, block) grid, and how blocks chain into sequences.

    Grid cells are numbered position-major, ``cell = position * n_blocks + block``,
    so one position's cells are contiguous and a cell's predecessor in its block is
    ``cell - n_blocks``.

    Parameters
    ----------
    lengths : ndarray of int, shape (n_sequences,)
        Rows per sequence, sequences contiguous and in row order.
    length : int
        Steps per block.

    Attributes
    ----------
    length, n_blocks, n_cells : int
    cell_of_row : ndarray of int, shape (n_rows,)
    source_rows : ndarray of int, shape (n_cells,)
        The row in each cell; padding cells repeat row 0 (their values are never used).
    valid : ndarray of bool, shape (n_cells,)
        Cells holding a row.
    padding : ndarray of int
        The other cells (a mask over every cell costs far more than these few indices).
    following : ndarray of bool, shape (n_cells,)
        Cells holding a step that has a predecessor in its sequence.
    first_cells : ndarray of int, shape (n_sequences,)
        The cell of each sequence's first step.
    starts : dict of int to ndarray of int
        For each position that holds a sequence's first step, the blocks where it does.
    continued : ndarray of int
        Blocks that continue the block before them (not a sequence's first block).
    padded : ndarray of int
        Sequences' first blocks that begin with padding.
    chains : ndarray of int, shape (n_sequences, most blocks), or None
        Block ids of each sequence in order, longest sequences first, -1 past a sequence's end;
        None when every sequence is one block.
    joined : bool
        Whether blocks are too short to forget in (``SHORTEST_BLOCK``) and are always joined
        by whole-block products.
    """

    def __init__(self, lengths, length):
        lengths = np.asarray(lengths, dtype=np.intp)
        self.length = int(length)
        per_sequence = -(-lengths // self.length)
        pads = per_sequence * self.length - lengths
        first_block = np.concatenate([[0], np.cumsum(per_sequence)[:-1]]).astype(np.intp)
        self.n_blocks = int(per_sequence.sum())
        self.n_cells = self.length * self.n_blocks
        first_row = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.intp)
        sequence = np.repeat(np.arange(len(lengths)), lengths)
        local = np.arange(int(lengths.sum())) - first_row[sequence] + pads[sequence]
        block = first_block[sequence] + local // self.length
        self.cell_of_row = (local % self.length) * self.n_blocks + block
        self.source_rows = np.zeros(self.n_cells, dtype=np.intp)
        self.source_rows[self.cell_of_row] = np.arange(len(self.cell_of_row))
        self.valid = np.zeros(self.n_cells, dtype=bool)
        self.valid[self.cell_of_row] = True
        self.padding = np.flatnonzero(~self.valid)
        self.first_cells = pads * self.n_blocks + first_block
        self.following = self.valid.copy()
        self.following[self.first_cells] = False
        self.starts = {int(pad): first_block[pads == pad] for pad in np.unique(pads)}
        is_first = np.zeros(self.n_blocks, dtype=bool)
        is_first[first_block] = True
        self.continued = np.flatnonzero(~is_first)
        self.padded = first_block[pads > 0]
        self.chains = None
        self.joined = False
        if per_sequence.max() > 1:
            order = np.argsort(-per_sequence, kind="stable")
            offsets = np.arange(int(per_sequence.max()))
            self.chains = np.where(offsets[None, :] < per_sequence[order][:, None],
                                   first_block[order][:, None] + offsets[None, :], -1)
            self.joined = self.length < SHORTEST_BLOCK
