"""The E-step of a hidden Markov chain: forward-backward and Viterbi over a step's latent configurations.

A chain node z is lagged on itself: at each step its value depends on the
previous step's. Everything else in a step is the within-step model the
enumeration engine already handles (observed children, further latent nodes
such as a state that emits a mixture, z -> m -> x). So a step's state is the
joint configuration c of its latent nodes, the emission of step t is
E_t(c) = p(x_t, rest of c | z(c)) from enumeration, and the transition from c
to c' is probs[z(c), z(c')], which depends on the chain axis only. The
recursions therefore sum (or maximise) over the other axes first and move
k-vectors between steps.

Forward-backward runs in scaled probability space: each row's emissions are
divided by their largest entry (kept as a log offset), and alpha is rescaled
every few steps (the scales give the log-likelihood). The rows are laid out once
in a grid of blocks (``blocks.py``); the recursions over it are in
``recursions.py`` (sums) and ``viterbi.py`` (maxima). This module forms the
emissions and, from the forward and backward vectors, the posteriors and
expected statistics, chunk by chunk so that each chunk is used while in cache.
"""

import sys
from typing import NamedTuple

import numpy as np

from ..errors import DataError
from . import enumeration, recursions, viterbi
from .blocks import BlockLayout, choose_block_length
from .engine import EnumerationEngine

# Rescale the forward and backward vectors every this many steps (see recursions.py).
NORMALISE_EVERY = 8
# Rows of probability emissions whose largest entry is below this are rescaled to 1.
SMALL_EMISSION = 1e-150
LOG_SMALLEST_NORMAL = float(np.log(np.finfo(float).tiny))


class ChainEngine(EnumerationEngine):
    """Exact E-step of a model with one chain node, over sequences of rows.

    Parameters
    ----------
    compiled : CompiledModel
    rows : Rows
        Time steps in order; identical rows are never grouped for a chain.
    lengths : sequence of int
        Rows per sequence, in order; they sum to the number of rows.
    """

    def __init__(self, compiled, rows, lengths):
        super().__init__(compiled, rows)
        if not np.all(rows.weights == 1.0):
            raise DataError("row weights do not apply to a chain's rows (each row is one time step); "
                            "leave out weights")
        self.chain = compiled.model.chain
        self.axis = compiled.latent.index(self.chain)
        self.k = compiled.latent_sizes[self.axis]
        self.lengths = np.asarray(lengths, dtype=np.intp)
        self.firsts = np.concatenate([[0], np.cumsum(self.lengths)[:-1]]).astype(np.intp)
        self.varying = enumeration.varying_factors(compiled, rows)
        self.within = [name for name in self.varying if name != self.chain]
        self.blocked = _Grid(rows, BlockLayout(self.lengths, choose_block_length(self.lengths, self.k)))
        # The grid holds the statistics the iterations read; rows in data order form theirs when
        # needed, so T(X) is not held twice.
        self.rows = rows.streamed(compiled)
        self._stepwise = None
        self._workspace = _Workspace()

    #: Forward-backward runs over all sequences at once, step by step.
    parallel_chunks = False

    def __sizeof__(self):
        # Besides the rows in data order, their copies in block order, and the arrays kept between E-steps.
        grids = [grid.rows for grid in (self.blocked, self._stepwise) if grid is not None]
        return super().__sizeof__() + sum(sys.getsizeof(rows) for rows in grids) + self._workspace.nbytes

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_workspace"] = _Workspace()      # scratch, refilled at each E-step: not worth sending
        return state

    # -- the pieces ---------------------------------------------------------------------------
    def _log_emissions(self, tables, rows, chunk):
        """log p(step's observations, non-chain latent values | z) per row of a chunk and configuration: (m, C)."""
        joint = enumeration._joint(self.compiled, rows, tables, chunk, self.within)
        constant = enumeration._constant_loglik(self.compiled, rows, tables, self.varying, chunk)
        if not np.isscalar(constant):
            joint += constant[:, None]
        return joint

    def _chain_view(self, array):
        """(m, C) -> (m, k, rest): the chain axis second, the other latent axes flattened."""
        shaped = array.reshape((len(array),) + self.compiled.latent_sizes)
        return np.moveaxis(shaped, self.axis + 1, 1).reshape(len(array), self.k, -1)

    def _from_chain_view(self, array):
        """(m, k, rest) -> (m, C), the inverse of ``_chain_view``."""
        sizes = list(self.compiled.latent_sizes)
        moved = [sizes[self.axis]] + sizes[:self.axis] + sizes[self.axis + 1:]
        return np.moveaxis(array.reshape((len(array),) + tuple(moved)), 1, self.axis + 1).reshape(len(array), -1)

    @property
    def stepwise(self):
        """The grid of one block per sequence, for the plain recursion rescaled at every step (built when needed)."""
        if self._stepwise is None:
            self._stepwise = _Grid(self.rows, BlockLayout(self.lengths, self.lengths.max()))
        return self._stepwise

    def _lattice(self, params):
        """Emissions and forward-backward vectors at ``params``, on the first route that carries them.

        Rescaling every few steps, then at every step, then one block per sequence: each
        route is exact where it returns; the later ones are for masses near underflow.

        Returns
        -------
        grid : _Grid
        emissions : _Emissions
        lattice : Lattice
        transition : ndarray of shape (k, k)
        """
        tables = enumeration._natural_tables(self.compiled, params)
        chain = tables[self.chain].probabilities
        for every, stepwise in ((NORMALISE_EVERY, False), (1, False), (1, True)):
            grid = self.stepwise if stepwise else self.blocked
            emissions = self._emissions(tables, grid)
            lattice = recursions.forward_backward(chain[0], chain[1:], emissions.per_state, grid.layout, every,
                                                  self._workspace)
            if lattice is not None:
                return grid, emissions, lattice, chain[1:]
        raise AssertionError("the stepwise route always returns")

    def _emissions(self, tables, grid):
        """Each cell's emissions scaled by its largest configuration, chunk by chunk (in cache).

        When every factor in a step's posterior is categorical the emissions are products
        of probabilities (at most 1 already): no logarithms, exponentials or row maxima,
        except for rows so small they are rescaled.
        """
        layout, n_cells = grid.layout, grid.layout.n_cells
        per_state = self._workspace("per_state", (n_cells, self.k))
        rest = self.compiled.n_configurations // self.k
        scaled = self._workspace("scaled", (n_cells, self.compiled.n_configurations)) if rest > 1 else None
        offset = self._workspace("offset", (n_cells,))
        offset.fill(0.0)
        in_probabilities = enumeration.categorical_only(self.compiled, self.within)

        def emit(chunk):
            target = scaled[chunk] if rest > 1 else per_state[chunk]
            valid = layout.valid[chunk]
            constant = enumeration._constant_loglik(self.compiled, grid.rows, tables, self.varying, chunk)
            if in_probabilities:
                target[...] = enumeration.joint_probabilities(self.compiled, grid.rows, tables, chunk, self.within)
                small = (target @ np.ones(target.shape[1]) < SMALL_EMISSION) & valid
                if small.any():
                    peak = _row_max(target[small])
                    with np.errstate(divide="ignore", invalid="ignore"):
                        target[small] /= peak[:, None]
                        offset[chunk][small] = np.log(peak)
                offset[chunk] += np.where(valid, constant, 0.0)
            else:
                log_emission = enumeration._joint(self.compiled, grid.rows, tables, chunk, self.within)
                # Padding cells are scaled too (so stay finite) but add nothing to the offset.
                peak = _row_max(log_emission)
                log_emission -= peak[:, None]
                # Entries below the smallest normal double next to the row's 1 weigh nothing, and
                # their subnormal exponentials take the CPU's slow path (3-4x): they become 0.
                np.copyto(log_emission, -np.inf, where=log_emission < LOG_SMALLEST_NORMAL)
                np.exp(log_emission, out=target)
                offset[chunk] = peak + constant if valid.all() else np.where(valid, peak + constant, 0.0)
            if rest > 1:
                per_state[chunk] = self._chain_view(target).sum(axis=2)

        for chunk in _chunks(n_cells):
            emit(chunk)
        if not np.isfinite(offset).all():
            enumeration._check_rows(offset[layout.cell_of_row], 0)
        per_state[layout.padding] = 1.0
        return _Emissions(per_state, scaled, float(offset.sum()))

    def _posterior_pass(self, params, consume):
        """Forward-backward, then each chunk of cells' posterior over configurations, in cell order.

        Parameters
        ----------
        params : dict
        consume : callable
            Called as ``consume(grid, chunk, gamma)`` with a slice of cells and its posterior
            (chunk cells, C), zero in padding cells, while it is in cache. ``gamma`` is
            overwritten by the next chunk's: copy what is kept.

        Returns
        -------
        transitions : ndarray of shape (k, k)
            Expected transition counts.
        first : ndarray of shape (k,)
            Expected counts of the first steps' states.
        loglik : float
        """
        grid, emissions, lattice, transition = self._lattice(params)
        layout, k = grid.layout, self.k
        alpha, beta, per_state = lattice.alpha, lattice.beta, emissions.per_state
        scale = lattice.scale.reshape(-1)
        n_cells, n_blocks = layout.n_cells, layout.n_blocks
        ones = np.ones(k)
        # Each chunk's two products go in the same two arrays (a chunk is consumed before the next is
        # smoothed): fresh ones of half a megabyte each made the heap grow and shrink, page by page.
        longest = min(enumeration.CHUNK_ROWS, n_cells)
        mass_rows, ahead_rows = self._workspace("mass", (longest, k)), self._workspace("ahead", (longest, k))

        def smooth(chunk):
            """The chunk's posterior over configurations and its share of the expected transitions, or None."""
            valid, following = layout.valid[chunk], layout.following[chunk]
            n = chunk.stop - chunk.start
            mass = np.multiply(alpha[chunk], beta[chunk], out=mass_rows[:n])
            with np.errstate(divide="ignore", invalid="ignore"):
                inverse = 1.0 / (mass @ ones)
            # A zero, infinite or undefined total (a zero scale leaves NaN) marks an impossible row.
            if not ((inverse > 0) & (inverse < np.inf) | ~valid).all():
                return chunk, None, None
            mass *= np.where(valid, inverse, 0.0)[:, None]
            ahead = np.multiply(per_state[chunk], beta[chunk], out=ahead_rows[:n])
            ahead *= np.where(following, inverse / scale[chunk], 0.0)[:, None]
            low = max(chunk.start, n_blocks)
            share = alpha[low - n_blocks:chunk.stop - n_blocks].T @ ahead[low - chunk.start:]
            if emissions.scaled is not None:
                mass = self._within(mass, emissions.scaled[chunk], per_state[chunk])
            return chunk, mass, share

        expected = np.zeros((k, k))
        for chunk, mass, share in map(smooth, _chunks(n_cells)):
            if mass is None:
                _raise_impossible(lattice, layout)
            expected += share
            consume(grid, chunk, mass)
        if len(layout.continued):
            # Steps whose predecessor ends the block before: position 0 of a continuing block.
            cells = layout.continued
            total = (alpha[cells] * beta[cells]) @ ones
            ahead = per_state[cells] * beta[cells] / (scale[cells] * total)[:, None]
            expected += alpha[(layout.length - 1) * n_blocks + cells - 1].T @ ahead
        firsts = layout.first_cells
        mass = alpha[firsts] * beta[firsts]
        first = (mass / (mass @ ones)[:, None]).sum(axis=0)
        return expected * transition, first, _loglik(lattice, layout, emissions)

    def _within(self, state_posterior, scaled, per_state):
        """A chain state's posterior (m, k) spread over its configurations in proportion to their emission: (m, C)."""
        with np.errstate(invalid="ignore", divide="ignore"):
            share = np.where(per_state > 0, state_posterior / per_state, 0.0)
        return self._from_chain_view(share[:, :, None] * self._chain_view(scaled))

    def _finish(self, stats, transitions, first, tables):
        """Add the factors outside the posterior and the chain's counts to within-step statistics."""
        stats.add(enumeration._fixed_statistics(self.compiled, self.rows, self.varying, tables))
        stats.sums[self.chain][0] += first
        stats.sums[self.chain][1:] += transitions
        stats.finish(self.compiled)
        return stats

    # -- the interface ------------------------------------------------------------------------
    def expected_statistics(self, params, hard=False):
        if hard:
            path, score = self._viterbi(params)
            gamma = np.zeros((self.rows.n_rows, self.compiled.n_configurations))
            gamma[np.arange(self.rows.n_rows), path] = 1.0
            return self.statistics_from_posterior(gamma, params), score
        stats = enumeration.ExpectedStatistics(self.compiled)
        tables = enumeration._natural_tables(self.compiled, params)

        def accumulate(grid, chunk, gamma):
            enumeration._accumulate(self.compiled, grid.rows, gamma, chunk, stats, self.within, tables)

        transitions, first, loglik = self._posterior_pass(params, accumulate)
        return self._finish(stats, transitions, first, tables), self.rows.base_total + loglik

    def objective(self, params, hard=False):
        """The log-likelihood from the forward scales, without the posterior pass (or, with ``hard``,
        the Viterbi path's complete-data log-likelihood)."""
        if hard:
            return self._viterbi(params)[1]
        grid, emissions, lattice, _ = self._lattice(params)
        loglik = _loglik(lattice, grid.layout, emissions)
        if not np.isfinite(loglik):
            _raise_impossible(lattice, grid.layout)
        return self.rows.base_total + loglik

    def statistics_from_posterior(self, posterior, params=None):
        """Statistics for a given posterior of each row's configuration (n_rows, C); transitions from its outer products.

        ``params``, where given, are the parameters missing coordinates are integrated out under.
        """
        tables = None if params is None else enumeration._natural_tables(self.compiled, params)
        chain = self._chain_view(posterior).sum(axis=2)
        first = chain[self.firsts].sum(axis=0)
        following = np.ones(self.rows.n_rows, dtype=bool)
        following[self.firsts] = False
        steps = np.flatnonzero(following)
        transitions = chain[steps - 1].T @ chain[steps]
        stats = enumeration.ExpectedStatistics(self.compiled)
        for chunk in _chunks(self.rows.n_rows):
            enumeration._accumulate(self.compiled, self.rows, posterior[chunk], chunk, stats, self.within, tables)
        return self._finish(stats, transitions, first, tables)

    def posterior_marginals(self, params):
        cells = {}

        def keep(grid, chunk, gamma):
            cells["layout"] = grid.layout
            cells.setdefault("gamma", np.empty((grid.layout.n_cells, gamma.shape[1])))[chunk] = gamma

        self._posterior_pass(params, keep)
        gamma = cells["gamma"][cells["layout"].cell_of_row]
        shaped = gamma.reshape((len(gamma),) + self.compiled.latent_sizes)
        marginals = {}
        for axis, name in enumerate(self.compiled.latent):
            others = tuple(a + 1 for a in range(len(self.compiled.latent)) if a != axis)
            marginals[name] = shaped.sum(axis=others) if others else shaped
        return marginals, None

    def most_probable(self, params):
        path, _ = self._viterbi(params)
        per_node = np.unravel_index(path, self.compiled.latent_sizes)
        return {name: values.astype(np.intp) for name, values in zip(self.compiled.latent, per_node)}

    def _viterbi(self, params):
        """The most probable joint path of configurations (n_rows,) and its complete-data log-likelihood."""
        tables = enumeration._natural_tables(self.compiled, params)
        chain = tables[self.chain].probabilities
        with np.errstate(divide="ignore"):
            log_start, log_transition = np.log(chain[0]), np.log(chain[1:])
        grid = self.blocked
        log_emission = np.empty((grid.layout.n_cells, self.compiled.n_configurations))
        for chunk in _chunks(grid.layout.n_cells):
            log_emission[chunk] = self._log_emissions(tables, grid.rows, chunk)
        log_emission[grid.layout.padding] = 0.0
        emission = self._chain_view(log_emission)
        best_rest = emission.argmax(axis=2)
        per_state = np.take_along_axis(emission, best_rest[:, :, None], axis=2)[:, :, 0]
        cells = grid.layout.cell_of_row
        states = viterbi.best_path(log_start, log_transition, per_state, grid.layout)[cells]
        rest = best_rest[cells, states]
        following = np.ones(self.rows.n_rows, dtype=bool)
        following[self.firsts] = False
        with np.errstate(invalid="ignore"):
            score = float(log_start[states[self.firsts]].sum()
                          + log_transition[states[:-1], states[1:]][following[1:]].sum()
                          + per_state[cells, states].sum())
        enumeration._check_rows(np.atleast_1d(score), 0)
        # Chain-view indices (z, other) -> configuration indices.
        one_hot = np.zeros((self.rows.n_rows, self.k, emission.shape[2]))
        one_hot[np.arange(self.rows.n_rows), states, rest] = 1.0
        return self._from_chain_view(one_hot).argmax(axis=1), score + self.rows.base_total


def _chunks(n_cells):
    """Slices of ``CHUNK_ROWS`` rows or cells covering ``n_cells``."""
    return [slice(start, min(start + enumeration.CHUNK_ROWS, n_cells))
            for start in range(0, n_cells, enumeration.CHUNK_ROWS)]


class _Workspace:
    """Arrays kept from one E-step to the next, by name: ``workspace(name, shape)``, contents undefined.

    A long chain's lattice arrays are megabytes each. Allocated afresh at every E-step they are
    mapped anew by the system, and each page faults and is zeroed on first touch: a fifth to a
    third of a 100,000-step chain's E-step. Reused, they cost nothing. Each E-step overwrites
    every entry it reads, and nothing it returns refers to them.
    """

    def __init__(self):
        self._arrays = {}

    def __call__(self, name, shape):
        array = self._arrays.get(name)
        if array is None or array.shape != shape:
            array = self._arrays[name] = np.empty(shape)
        return array

    @property
    def nbytes(self):
        return sum(array.nbytes for array in self._arrays.values())


class _Emissions(NamedTuple):
    """A grid's emissions, each cell scaled by its largest configuration."""

    per_state: np.ndarray     # (n_cells, k), summed over the other latent axes; 1 in padding cells
    scaled: np.ndarray        # (n_cells, C) when other latent axes exist, else None
    offset_total: float       # the sum of the cells' log scale factors


def _loglik(lattice, layout, emissions):
    """The sequences' log-likelihood, less the rows' log base measure: the forward scales and the
    emissions' scale factors."""
    rows = lattice.rescaled
    loglik = float((np.log(lattice.scale[rows]) * layout.valid.reshape(layout.length, -1)[rows]).sum())
    return loglik + emissions.offset_total


def _raise_impossible(lattice, layout):
    """Raise naming the first row (in row order) the forward-backward found impossible.

    The forward scales are looked at first: they fall to zero at the row where the
    sequence's probability does, where the smoothed totals are undefined all along it.
    """
    with np.errstate(divide="ignore", invalid="ignore"):
        forward = np.log(lattice.scale.reshape(-1))
        smoothed = np.log((lattice.alpha * lattice.beta).sum(axis=1))
    for values in (forward, forward + smoothed):
        enumeration._check_rows(np.where(layout.valid, values, 0.0)[layout.cell_of_row], 0)
    raise AssertionError("a cell failed its check but no row is impossible")


class _Grid:
    """A block layout with the rows put in its cell order once (padding cells repeat row 0)."""

    def __init__(self, rows, layout):
        self.layout = layout
        self.rows = rows.take(layout.source_rows)


def _row_max(array):
    """Each row's largest entry (n,) of an (n, m) array; column by column when rows are short (faster)."""
    if array.shape[1] > 32:
        return array.max(axis=1)
    peak = array[:, 0].copy()
    for column in range(1, array.shape[1]):
        np.maximum(peak, array[:, column], out=peak)
    return peak

