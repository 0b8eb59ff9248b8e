"""The seeded start of EM, as passes over blocks of rows.

With no complete ``init``, EM starts from an M-step on a seeded posterior: k-means++
seeding refined by a few weighted Lloyd steps on the standardised dense observed
children of a single latent node, softened; random responsibilities otherwise; then
made to agree with partial labels. Every step here is a pass over blocks of rows that
returns a small summary (column sums, a block's total mass, per-centre sums), so the
same code seeds a fit whose rows are in one array (one block) and one whose rows are
in dask partitions (a block each), and draws the same start from the same seed: the
k-means++ draws and the random responsibilities follow the global row order exactly
as numpy's ``Generator.choice`` and ``Generator.random`` would over all rows at once.

``blocks`` is any object with ``compiled``, ``n_rows`` (rows per block, a list),
and ``run_each(function, arguments)``: for each block whose entry of ``arguments``
(one per block) is a tuple rather than None, it calls ``function(engine, state,
*that tuple)`` with the block's engine and state (a dict, ``{}`` at first) where the
block lives, keeps the returned state there, and returns each block's result in
block order, None for a block left out (``LocalBlocks`` below;
``declarem.distributed`` for dask).
"""

import numpy as np

KMEANS_ITERATIONS = 10
#: Seeded responsibilities are softened so that no parameter starts on its domain's boundary
#: (a Bernoulli p of 0 or 1 could never leave it).
INITIAL_SOFTENING = 0.1


class LocalBlocks:
    """Blocks held in this process (an in-memory fit is one block).

    Parameters
    ----------
    engines : list of EnumerationEngine
        One per block, each over its block's prepared rows.
    """

    def __init__(self, engines):
        self.engines = list(engines)
        self.compiled = getattr(self.engines[0], "compiled", None)
        self.n_rows = [engine.rows.n_rows for engine in self.engines]
        self._states = [{} for _ in self.engines]

    def run_each(self, function, arguments):
        results = []
        for index, (engine, given) in enumerate(zip(self.engines, arguments)):
            result = None
            if given is not None:
                self._states[index], result = function(engine, self._states[index], *given)
            results.append(result)
        return results


def _run(blocks, function, *arguments):
    """``function`` on every block with the same arguments."""
    return blocks.run_each(function, [arguments] * len(blocks.n_rows))


def _run_one(blocks, index, function, *arguments):
    """``function`` on one block only: its result."""
    return blocks.run_each(function, [arguments if i == index else None for i in range(len(blocks.n_rows))])[index]


def seeded_statistics(blocks, rng):
    """Expected statistics of the seeded posterior, summed over the blocks.

    Parameters
    ----------
    blocks : LocalBlocks or another object with the same three members
    rng : numpy.random.Generator
        Left as drawing over all rows at once would leave it.

    Returns
    -------
    ExpectedStatistics
    """
    compiled = blocks.compiled
    n_total = sum(blocks.n_rows)
    n_configurations = compiled.n_configurations
    # k-means needs at least as many rows as centres (and costs a pass per centre).
    moments = _run(blocks, _feature_sums) if 1 < n_configurations <= n_total else [None]
    if n_configurations == 1:
        _run(blocks, _uniform_posterior)
    elif moments[0] is not None:
        _kmeans(blocks, moments, n_configurations, rng)
        _run(blocks, _softened_posterior, n_configurations)
    else:
        _random_posterior(blocks, n_configurations, rng)
    if compiled.model.latent and any(_run(blocks, _has_labels)):
        order = _label_order(_run(blocks, _label_agreement))
        _run(blocks, _respect_labels, order)
    return _summed(_run(blocks, _statistics))


class ArrayBlock:
    """Feature rows held as an array (a sample), standing in for an engine in the k-means passes."""

    def __init__(self, features, weights):
        self.features = features
        self.rows = _ArrayRows(weights)


class _ArrayRows:
    def __init__(self, weights):
        self.weights = weights
        self.n_rows = len(weights)


def kmeans_centres(features, weights, k, rng):
    """The k-means start (k-means++ and Lloyd steps) on rows held as an array: a sample of a larger data set.

    Parameters
    ----------
    features : ndarray of shape (n, columns)
        ``block_features`` of the sampled rows (NaN where missing).
    weights : ndarray of shape (n,)

    Returns
    -------
    recipe : tuple
        For ``seeded_posterior``: the standardisation and the centres.
    """
    blocks = LocalBlocks([ArrayBlock(features, weights)])
    centre, scale, centres = _kmeans(blocks, _run(blocks, _feature_sums), k, rng)
    return ("centres", centre, scale, centres)


def has_features(compiled):
    """Whether the seeded start is k-means on features (one latent node with dense observed children)."""
    return bool(_feature_nodes(compiled))


def _feature_nodes(compiled):
    """The observed nodes whose data are the k-means features: dense children of the single latent node
    (and of nothing else); none when the model has several latent nodes."""
    if len(compiled.latent) != 1:
        return []
    return [name for name, factor in compiled.factors.items()
            if factor.layout in ("dense", "rows") and factor.parents
            and all(compiled.model.nodes[p].latent for p in factor.parents)]


def random_recipe(n_rows, k, rng):
    """Per block, the recipe of its random responsibilities (the generator advanced to its first row);
    ``rng`` is left as drawing over all rows at once would leave it."""
    bit_state = rng.bit_generator.state
    skips = np.concatenate([[0], np.cumsum(n_rows)[:-1]]) * k
    rng.bit_generator.advance(int(sum(n_rows)) * k)
    return [("random", bit_state, int(skip), k) for skip in skips]


def seeded_posterior(engine, recipe):
    """A block's seeded posterior, (n_rows, n_configurations), formed from a recipe in one pass:
    ``("ones",)``, ``("random", bit_state, skip, k)`` or ``("centres", centre, scale, centres)``
    (softened nearest-centre labels)."""
    kind = recipe[0]
    n = engine.rows.n_rows
    if kind == "ones":
        return np.ones((n, 1))
    if kind == "random":
        return _random_block(engine, {}, *recipe[1:])[0]["posterior"]
    _, centre, scale, centres = recipe
    features = block_features(engine)
    features = (np.where(np.isnan(features), centre, features) - centre) / scale
    distance = -2.0 * features @ centres.T + np.einsum("ij,ij->i", centres, centres)
    return _softened(np.argmin(distance, axis=1), len(centres))


def label_agreement(engine, posterior):
    """Per labelled node, the weight the block's seeded components share with each label: (seeded, label)."""
    return _label_agreement(engine, {"posterior": posterior})[1]


def label_order(agreements):
    """Per labelled node, the seeded component that takes each label's place, from all blocks' agreements."""
    return _label_order(agreements)


def with_labels(engine, posterior, order):
    """The posterior renumbered to match the labels (``label_order``), labelled rows fixed."""
    return _respect_labels(engine, {"posterior": posterior}, order)[0]["posterior"]


def _summed(parts):
    total = parts[0]
    for part in parts[1:]:
        total.add(part)
    return total


# -- per-block steps: function(engine, state, *arguments) -> (state, result) ------------------------

def block_features(engine):
    """A block's k-means features, side by side: (n_rows, columns), NaN where missing; None if the model has none."""
    if isinstance(engine, ArrayBlock):
        return engine.features
    names = _feature_nodes(engine.compiled)
    if not names:
        return None
    rows = engine.rows
    return np.column_stack([rows.factors[name].values.reshape(rows.n_rows, -1) for name in names])


def _feature_sums(engine, state):
    features = block_features(engine)
    if features is None:
        return state, None
    present = ~np.isnan(features)
    return state, (np.where(present, features, 0.0).sum(axis=0), present.sum(axis=0))


def _feature_squares(engine, state, centre):
    # Missing values sit at their column's mean: they pull no row towards any centre.
    features = block_features(engine)
    features = np.where(np.isnan(features), centre, features) - centre
    return {"features": features}, (features * features).sum(axis=0)


def _standardise(engine, state, scale):
    features = state["features"] / scale
    squared = np.einsum("ij,ij->i", features, features)
    return {"features": features, "squared": squared,
            "closest": np.full(len(features), np.inf)}, float(engine.rows.weights.sum())


def _weight_sum(engine, state, total):
    # numpy's choice with p = weights / weights.sum() runs sums of p: this block's last one.
    return state, float(np.cumsum(engine.rows.weights / total)[-1])


def _draw_by_weight(engine, state, total, offset, last, u):
    return state, _features_at(state, engine.rows.weights / total, offset, last, u)


def _features_at(state, p, offset, last, u):
    """The features of the first row whose running sum of ``p`` (from ``offset``), over ``last``, exceeds ``u``.

    Where rounding leaves ``u`` past the block's last running sum, its last row, as numpy would take.
    """
    cdf = np.cumsum(np.concatenate([[offset], p]))[1:] / last
    index = min(int(np.searchsorted(cdf, u, side="right")), len(cdf) - 1)
    return state["features"][index].copy()


def _closest_mass(engine, state, centre):
    features, closest = state["features"], state["closest"]
    distance = state["squared"] - 2.0 * features @ centre + centre @ centre
    np.minimum(closest, np.maximum(distance, 0.0), out=closest)
    mass = closest * engine.rows.weights
    state["mass"] = mass
    return state, float(mass.sum())


def _mass_sum(engine, state, total):
    return state, float(np.cumsum(state["mass"] / total)[-1])


def _draw_by_mass(engine, state, total, offset, last, u):
    return state, _features_at(state, state["mass"] / total, offset, last, u)


def _lloyd_sums(engine, state, centres):
    features, weights = state["features"], engine.rows.weights
    distance = features @ centres.T
    distance *= -2.0
    distance += np.einsum("ij,ij->i", centres, centres)
    labels = np.argmin(distance, axis=1)
    k = len(centres)
    mass = np.bincount(labels, weights=weights, minlength=k)
    totals = np.column_stack([np.bincount(labels, weights=weights * column, minlength=k)
                              for column in features.T])
    state["labels"] = labels
    return state, (mass, totals)


def _softened_posterior(engine, state, k):
    return {"posterior": _softened(state["labels"], k)}, None


def _softened(labels, k):
    """Responsibilities (n, k) putting most of each row's mass on its label, softened."""
    posterior = np.full((len(labels), k), INITIAL_SOFTENING / k)
    posterior[np.arange(len(labels)), labels] += 1.0 - INITIAL_SOFTENING
    return posterior


def _uniform_posterior(engine, state):
    return {"posterior": np.ones((engine.rows.n_rows, 1))}, None


def _random_block(engine, state, bit_state, skip, k):
    from numpy.random import Generator, PCG64
    bits = PCG64()
    bits.state = bit_state
    bits.advance(skip)
    posterior = Generator(bits).random((engine.rows.n_rows, k))
    return {"posterior": posterior / posterior.sum(axis=1, keepdims=True)}, None


def _has_labels(engine, state):
    return state, bool(engine.rows.labels)


def _label_agreement(engine, state):
    """Per labelled node, the weight the seeded components share with each label: (seeded, label)."""
    compiled, rows = engine.compiled, engine.rows
    shaped = state["posterior"].reshape((rows.n_rows,) + compiled.latent_sizes)
    shared = {}
    for name, labels in rows.labels.items():
        axis = compiled.latent.index(name)
        k = compiled.latent_sizes[axis]
        given = labels >= 0
        others = tuple(a + 1 for a in range(len(compiled.latent)) if a != axis)
        marginal = shaped.sum(axis=others) if others else shaped
        shared[name] = (marginal[given] * rows.weights[given, None]).T @ np.eye(k)[labels[given]]
    return state, shared


def _respect_labels(engine, state, order):
    """The posterior with seeded components renumbered to match the labels, labelled rows fixed."""
    from .inference.enumeration import apply_labels
    compiled, rows = engine.compiled, engine.rows
    n = rows.n_rows
    shaped = state["posterior"].reshape((n,) + compiled.latent_sizes)
    for name in rows.labels:
        shaped = np.take(shaped, order[name], axis=compiled.latent.index(name) + 1)
    shaped = np.ascontiguousarray(shaped)
    apply_labels(compiled, rows, shaped, slice(0, n), probabilities=True)
    posterior = shaped.reshape(n, compiled.n_configurations)
    return {"posterior": posterior / posterior.sum(axis=1, keepdims=True)}, None


def _statistics(engine, state):
    return state, engine.statistics_from_posterior(state["posterior"])


# -- the passes -----------------------------------------------------------------------------------

def _kmeans(blocks, moments, k, rng):
    """k-means++ seeding and a few weighted Lloyd steps on standardised features.

    Returns
    -------
    centre, scale : ndarray of shape (columns,)
        The standardisation: features are (x - centre) / scale.
    centres : ndarray of shape (k, columns)
        After the Lloyd steps; each block's state keeps its rows' last labels.
    """
    sums = sum(m[0] for m in moments)
    counts = sum(m[1] for m in moments)
    centre = sums / counts
    n_total = sum(blocks.n_rows)
    scale = np.sqrt(sum(_run(blocks, _feature_squares, centre)) / n_total)
    scale = np.where(scale > 0, scale, 1.0)
    weight_total = sum(_run(blocks, _standardise, scale))
    first = _draw(blocks, rng, _weight_sum, _draw_by_weight, weight_total)
    centres = [first]
    for _ in range(1, k):
        mass_total = sum(_run(blocks, _closest_mass, centres[-1]))
        if mass_total > 0:
            centres.append(_draw(blocks, rng, _mass_sum, _draw_by_mass, mass_total))
        else:
            centres.append(_draw(blocks, rng, _weight_sum, _draw_by_weight, weight_total))
    centres = np.array(centres)
    for _ in range(KMEANS_ITERATIONS):
        parts = _run(blocks, _lloyd_sums, centres)
        mass = sum(p[0] for p in parts)
        totals = sum(p[1] for p in parts)
        filled = mass > 0
        centres[filled] = totals[filled] / mass[filled, None]
    return centre, scale, centres


def _draw(blocks, rng, block_sums_of, block_draw, total):
    """One row drawn as ``rng.choice(n_rows, p=mass / total)`` over all blocks' rows: its features.

    numpy takes u uniform and the first row whose running sum of p, divided by the last
    running sum, exceeds u; the running sums here continue from block to block.
    """
    block_sums = _run(blocks, block_sums_of, total)
    last = float(np.sum(block_sums))
    u = rng.random()
    offset = 0.0
    index = len(block_sums) - 1
    for i, block_sum in enumerate(block_sums):
        if (offset + block_sum) / last > u:
            index = i
            break
        offset += block_sum
    return _run_one(blocks, index, block_draw, total, offset, last, u)


def _random_posterior(blocks, k, rng):
    """Random responsibilities, as ``rng.random((n_rows, k))`` over all rows at once, normalised."""
    blocks.run_each(_random_block, [recipe[1:] for recipe in random_recipe(blocks.n_rows, k, rng)])


def _label_order(agreements):
    """Per labelled node, the seeded component that takes each label's place: (k,) int."""
    from scipy.optimize import linear_sum_assignment
    order = {}
    for name in agreements[0]:
        shared = sum(a[name] for a in agreements)
        seeded, label = linear_sum_assignment(-shared)
        mapping = np.empty(len(shared), dtype=np.intp)
        mapping[label] = seeded
        order[name] = mapping
    return order
