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
divided by their largest entry (kept as a log offset), and alpha is normalised
at every step (the normalisers give the log-likelihood). Sequences are aligned
at their first step and processed together, step by step, so the work per step
is vectorised over sequences and configurations.
"""

import numpy as np

from ..errors import DataError
from . import enumeration
from .engine import EnumerationEngine


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
        starts = np.concatenate([[0], np.cumsum(self.lengths)[:-1]]).astype(np.intp)
        # Longest sequences first: at step t the sequences still running are a prefix.
        order = np.argsort(-self.lengths, kind="stable")
        self.starts = starts[order]
        self.sorted_lengths = self.lengths[order]
        self.firsts = starts
        self.varying = enumeration.varying_factors(compiled, rows)
        self.within = [name for name in self.varying if name != self.chain]

    # -- the pieces ---------------------------------------------------------------------------
    def _log_emissions(self, tables):
        """log p(step's observations, non-chain latent values | z) per row and configuration: (n_rows, C)."""
        rows = self.rows
        out = np.empty((rows.n_rows, self.compiled.n_configurations))
        for start in range(0, rows.n_rows, enumeration.CHUNK_ROWS):
            chunk = slice(start, min(start + enumeration.CHUNK_ROWS, rows.n_rows))
            out[chunk] = enumeration._joint(self.compiled, rows, tables, chunk, self.within)
            out[chunk] += np.reshape(enumeration._constant_loglik(self.compiled, rows, tables, self.varying,
                                                                  chunk), (-1, 1))
        return out

    def _chain_view(self, array):
        """(m, C) -> (m, k, rest): the chain axis second, the other latent axes flattened."""
        shaped = array.reshape((len(array),) + self.compiled.latent_sizes)
        return np.moveaxis(shaped, self.axis + 1, 1).reshape(len(array), self.k, -1)

    def _from_chain_view(self, array):
        """(m, k, rest) -> (m, C), the inverse of ``_chain_view``."""
        sizes = list(self.compiled.latent_sizes)
        moved = [sizes[self.axis]] + sizes[:self.axis] + sizes[self.axis + 1:]
        return np.moveaxis(array.reshape((len(array),) + tuple(moved)), 1, self.axis + 1).reshape(len(array), -1)

    def _running(self, t):
        """How many sequences (longest first) have a step t."""
        return int(np.searchsorted(-self.sorted_lengths, -(t + 1), side="right"))

    def forward_backward(self, params):
        """Posterior of each row's configuration, expected transitions, first-step posteriors, log-likelihood.

        Returns
        -------
        gamma : ndarray of shape (n_rows, C)
        transitions : ndarray of shape (k, k)
        first : ndarray of shape (k,)
        loglik : float
        """
        tables = enumeration._natural_tables(self.compiled, params)
        chain = tables[self.chain].probabilities
        start, transition = chain[0], chain[1:]
        log_emission = self._log_emissions(tables)
        offset = log_emission.max(axis=1)
        enumeration._check_rows(offset, 0)
        emission = self._chain_view(np.exp(log_emission - offset[:, None]))
        n_rows = self.rows.n_rows
        alpha = np.empty_like(emission)
        scale = np.empty(n_rows)
        rows0 = self.starts
        first = start[None, :, None] * emission[rows0]
        scale[rows0] = first.sum(axis=(1, 2))
        alpha[rows0] = first / scale[rows0][:, None, None]
        for t in range(1, int(self.sorted_lengths[0])):
            active = self._running(t)
            current = self.starts[:active] + t
            predicted = alpha[current - 1].sum(axis=2) @ transition
            step = predicted[:, :, None] * emission[current]
            scale[current] = step.sum(axis=(1, 2))
            alpha[current] = step / scale[current][:, None, None]
        enumeration._check_rows(np.log(scale), 0)
        beta = np.empty_like(emission)
        lasts = self.starts + self.sorted_lengths - 1
        beta[lasts] = 1.0
        transitions = np.zeros((self.k, self.k))
        for t in range(int(self.sorted_lengths[0]) - 1, 0, -1):
            active = self._running(t)
            current = self.starts[:active] + t
            ahead = (emission[current] * beta[current]).sum(axis=2)
            transitions += (alpha[current - 1].sum(axis=2).T @ (ahead / scale[current][:, None])) * transition
            beta[current - 1] = ((ahead @ transition.T) / scale[current][:, None])[:, :, None]
        gamma = self._from_chain_view(alpha * beta)
        loglik = float(np.log(scale).sum() + offset.sum())
        return gamma, transitions, (alpha[rows0] * beta[rows0]).sum(axis=(0, 2)), loglik

    def _statistics(self, gamma, transitions, first):
        stats = enumeration.ExpectedStatistics(self.compiled)
        rows = self.rows
        for start in range(0, rows.n_rows, enumeration.CHUNK_ROWS):
            chunk = slice(start, min(start + enumeration.CHUNK_ROWS, rows.n_rows))
            enumeration._accumulate(self.compiled, rows, gamma[chunk], chunk, stats, self.within)
        stats.add(enumeration._fixed_statistics(self.compiled, rows, self.varying))
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
            return self.statistics_from_posterior(gamma), score
        gamma, transitions, first, loglik = self.forward_backward(params)
        return self._statistics(gamma, transitions, first), self.rows.base_total + loglik

    def statistics_from_posterior(self, posterior):
        """Statistics for a given posterior of each row's configuration (n_rows, C); transitions from its outer products."""
        chain = self._chain_view(posterior).sum(axis=2)
        first = chain[self.firsts].sum(axis=0)
        following = np.ones(self.rows.n_rows, dtype=bool)
        following[self.firsts] = False
        steps = np.flatnonzero(following)
        transitions = chain[steps - 1].T @ chain[steps]
        return self._statistics(posterior, transitions, first)

    def posterior_marginals(self, params):
        gamma, _, _, _ = self.forward_backward(params)
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
        emission = self._chain_view(self._log_emissions(tables))
        n_rows, rest = self.rows.n_rows, emission.shape[2]
        delta = np.empty_like(emission)
        back = np.zeros((n_rows, self.k), dtype=np.intp)
        rows0 = self.starts
        delta[rows0] = log_start[None, :, None] + emission[rows0]
        for t in range(1, int(self.sorted_lengths[0])):
            active = self._running(t)
            current = self.starts[:active] + t
            previous = delta[current - 1]
            best_rest = previous.argmax(axis=2)
            best = np.take_along_axis(previous, best_rest[:, :, None], axis=2)[:, :, 0]
            scores = best[:, :, None] + log_transition[None]
            from_state = scores.argmax(axis=1)
            back[current] = from_state * rest + np.take_along_axis(best_rest, from_state, axis=1)
            delta[current] = np.take_along_axis(scores, from_state[:, None, :], axis=1)[:, 0, :, None] + \
                emission[current]
        lasts = self.starts + self.sorted_lengths - 1
        flat = delta[lasts].reshape(len(lasts), -1)
        state = flat.argmax(axis=1)
        score = float(flat[np.arange(len(lasts)), state].sum())
        enumeration._check_rows(np.atleast_1d(score), 0)
        path = np.empty(n_rows, dtype=np.intp)
        for t in range(int(self.sorted_lengths[0]) - 1, -1, -1):
            active = self._running(t)
            current = self.starts[:active] + t
            ending = self.sorted_lengths[:active] == t + 1
            chosen = state[:active].copy()
            going_on = current[~ending]
            chosen[~ending] = back[going_on + 1, path[going_on + 1] // rest]
            path[current] = chosen
        # Chain-view indices (z * rest + other) -> configuration indices.
        z, other = np.divmod(path, rest)
        one_hot = np.zeros((n_rows, self.k, rest))
        one_hot[np.arange(n_rows), z, other] = 1.0
        return self._from_chain_view(one_hot).argmax(axis=1), score + self.rows.base_total
