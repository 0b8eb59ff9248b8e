"""The E-step behind one small interface, with an implementation per kind of model.

The EM loop, SQUAREM, restarts, the initialisation, ``compare`` and ``Fit`` talk
to an engine only: it is prepared once for a data set (the rows' fixed views,
any sparse pattern) and then answers, at given parameters, the expected
statistics with the objective (or the objective alone), the posterior marginals,
and each row's most probable latent configuration. ``engine_for`` picks the implementation from the
model's shape:

- ``EnumerationEngine``: exact enumeration of the latent configurations within
  a row, in chunks of rows (any DAG of discrete latent nodes);
- ``BilinearEngine``: one latent category between two observed categorical
  indices (the topic model), whose expected counts are two sparse products;
  it answers everything else by enumeration;
- ``ChainEngine`` (``chain.py``): a hidden Markov chain, forward-backward and
  Viterbi over sequences of rows, with enumeration within each step.
"""

import sys

import numpy as np

from . import enumeration
from ..monitor import FALL_TOLERANCE
from .bilinear import bilinear_plan

#: Multiply-adds of a chunk's dense products from which a pool of threads pays (measured: a
#: full-covariance GMM at 8192 x 152 x 16 ran its E-step 1.6x faster on two threads; diagonal ones
#: at 8192 x 16 x 8 and latent class models gained nothing, and lost beside a busy core).
POOL_MIN_CHUNK_WORK = 1 << 21

#: float32 products leave the objective accurate to about 1e-8 relative (measured: 5e-8 on a
#: GMM of 30,000 rows): smaller falls near convergence are that rounding.
FLOAT32_FALL_TOLERANCE = 1e-6


class EnumerationEngine:
    """Exact E-step by enumerating each row's latent configurations.

    Parameters
    ----------
    compiled : CompiledModel
    rows : Rows
        The data set, prepared once (``prepare_rows``).
    """

    def __init__(self, compiled, rows):
        self.compiled = compiled
        self.rows = rows

    def __sizeof__(self):
        # The prepared rows (the compiled model is shared, and small beside them).
        return object.__sizeof__(self) + sys.getsizeof(self.rows)

    @property
    def parallel_chunks(self):
        """Whether the E-step's chunks of rows are worth sharing out to a pool of threads (``threads``).

        They are when there are several and each is mostly long numpy calls, which run outside
        the interpreter's lock: dense products of at least ``POOL_MIN_CHUNK_WORK``
        multiply-adds, or missing coordinates integrated out jointly. Chunks of short calls
        (categorical gathers, a normal of dimension 2) hold the lock most of the time, so
        threads only take turns, and lose beside a busy core.
        """
        rows = self.rows
        if rows.n_rows <= rows.chunk_rows:
            return False
        work = 0
        for name, factor in self.compiled.factors.items():
            if rows.factors[name].missing is not None and factor.missing_rule == "conditional":
                return True
            if factor.layout == "dense":
                work += factor.width * factor.n_sets
        return work * rows.chunk_rows >= POOL_MIN_CHUNK_WORK

    @property
    def fall_tolerance(self):
        """The relative fall of the objective that is rounding: larger when products run in float32."""
        narrow = any(view.dtype == np.float32 for view in self.rows.factors.values())
        return FLOAT32_FALL_TOLERANCE if narrow else FALL_TOLERANCE

    @property
    def shifts(self):
        """The centring shift of each location family's columns, ``{node: (*own,)}``."""
        return self.rows.shifts

    @property
    def n_observations(self):
        """The rows' total weight."""
        return float(self.rows.weights.sum())

    def column_variances(self, name):
        """Variance of each of a node's data columns over its present values, (columns,); None for no data."""
        view = self.rows.factors[name]
        if view.values is None:
            return None
        values = view.values.reshape(self.rows.n_rows, -1)
        # np.var is several times faster than np.nanvar; it serves when nothing is missing.
        return np.var(values, axis=0) if view.missing is None else np.nanvar(values, axis=0)

    def seeded_statistics(self, rng):
        """Expected statistics of the seeded starting posterior (``declarem.seeding``)."""
        from ..seeding import LocalBlocks, seeded_statistics
        return seeded_statistics(LocalBlocks([self]), rng)

    def batches(self, batch_size, rng):
        """The rows cut into batches for online EM: a seeded random partition, each batch its own engine.

        Returns
        -------
        list of (float, callable)
            Each batch's total weight and its ``expected_statistics(params, hard)``.
        """
        from ..online import DEFAULT_BATCH_SIZE
        size = DEFAULT_BATCH_SIZE if batch_size is None else batch_size
        order = rng.permutation(self.rows.n_rows)
        batches = []
        for first in range(0, self.rows.n_rows, size):
            rows = self.rows.take(np.sort(order[first:first + size]))
            batches.append((float(rows.weights.sum()), engine_for(self.compiled, rows).expected_statistics))
        return batches

    def expected_statistics(self, params, hard=False):
        """Expected statistics at ``params`` and the objective there.

        Returns
        -------
        stats : ExpectedStatistics
        objective : float
            The observed-data log-likelihood, or with ``hard`` the complete-data
            log-likelihood at each row's most probable configuration.
        """
        return enumeration.expected_statistics(self.compiled, self.rows, params, hard=hard)

    def statistics(self, params, hard=False):
        """Expected statistics at ``params`` where the objective there is not needed (SQUAREM's
        intermediate points); an engine whose objective costs extra work skips it."""
        return self.expected_statistics(params, hard=hard)[0]

    def objective(self, params, hard=False):
        """The objective at ``params`` alone, the number ``expected_statistics`` gives with the
        statistics (an EM run's last point, which no M-step follows)."""
        return enumeration.expected_statistics(self.compiled, self.rows, params, hard=hard, statistics=False)[1]

    def statistics_from_posterior(self, posterior):
        """Expected statistics for a given posterior of shape (n_rows, n_configurations)."""
        return enumeration.statistics_from_posterior(self.compiled, self.rows, posterior)

    def posterior_marginals(self, params):
        """Each latent node's posterior marginal, ``{node: (n_rows, k)}``, and each row's log-likelihood."""
        return enumeration.posterior_marginals(self.compiled, self.rows, params)

    def most_probable(self, params):
        """Each row's most probable joint latent configuration, read off per node: ``{node: (n_rows,)}``."""
        return enumeration.most_probable(self.compiled, self.rows, params)


class BilinearEngine(EnumerationEngine):
    """The topic model's E-step: expected counts by two sparse products, no per-row posterior."""

    def __init__(self, compiled, rows, plan):
        super().__init__(compiled, rows)
        self.plan = plan

    #: Its expected counts are two sparse products over all rows at once.
    parallel_chunks = False

    def _bilinear(self, params, hard, **parts):
        """The bilinear E-step's (statistics, objective), with only the parts asked for; None where it does
        not serve (hard EM, or a row whose probability underflows: the general engine then names it)."""
        if hard:
            return None
        found = enumeration.bilinear_expected_statistics(self.compiled, self.rows, params, self.plan, **parts)
        return None if found[0] is None and found[1] is None else found

    def expected_statistics(self, params, hard=False):
        found = self._bilinear(params, hard)
        return super().expected_statistics(params, hard=hard) if found is None else found

    def statistics(self, params, hard=False):
        found = self._bilinear(params, hard, objective=False)
        return super().expected_statistics(params, hard=hard)[0] if found is None else found[0]

    def objective(self, params, hard=False):
        found = self._bilinear(params, hard, statistics=False)
        return super().objective(params, hard=hard) if found is None else found[1]


def engine_for(compiled, rows, lengths=None):
    """The engine for a model and a prepared data set.

    Parameters
    ----------
    compiled : CompiledModel
    rows : Rows
    lengths : sequence of int, optional
        Rows per sequence, for a model with a chain (default: one sequence).

    Returns
    -------
    EnumerationEngine
    """
    if compiled.model.chain is not None:
        from .chain import ChainEngine
        return ChainEngine(compiled, rows, [rows.n_rows] if lengths is None else lengths)
    varying = enumeration.varying_factors(compiled, rows)
    if enumeration.categorical_only(compiled, varying):
        plan = bilinear_plan(compiled, rows, varying)
        if plan is not None:
            return BilinearEngine(compiled, rows, plan)
    return EnumerationEngine(compiled, rows)


__all__ = ["EnumerationEngine", "BilinearEngine", "engine_for"]
