"""Online (stepwise) EM reaches the batch fit's optimum, continues with partial_fit, and runs on dask partitions.

Tolerances are those docs/online.md states.
"""

import os

import dask
import dask.dataframe as dd
import networkx as nx
import numpy as np
import pandas as pd
import pytest

import declarem
from declarem.data import read_model_data
from declarem.errors import OptionError

MODELS = os.path.join(os.path.dirname(__file__), "..", "models")


@pytest.fixture(scope="module")
def gmm():
    model = declarem.load_model(os.path.join(MODELS, "gmm.toml"))
    columns, _ = read_model_data(model, os.path.join(MODELS, "gmm.csv"))
    frame = pd.DataFrame(columns)
    return model, frame, model.fit(frame, seed=0, tol=1e-12, max_iter=2000)


def _corpus(n_docs=200, n_words=40, k=3, length=80, seed=11):
    """Word counts of documents drawn from k topics: the topic model's triples (doc, word, count)."""
    rng = np.random.default_rng(seed)
    topics = rng.dirichlet(np.full(n_words, 0.1), k)
    mixtures = rng.dirichlet(np.full(k, 0.5), n_docs)
    doc, word, count = [], [], []
    for d in range(n_docs):
        drawn = rng.choice(n_words, length, p=mixtures[d] @ topics)
        words, counts = np.unique(drawn, return_counts=True)
        doc += [d] * len(words)
        word += words.tolist()
        count += counts.tolist()
    graph = nx.DiGraph()
    graph.add_node("doc", family="categorical", k=n_docs)
    graph.add_node("topic", family="categorical", latent=True, k=k)
    graph.add_node("word", family="categorical", k=n_words)
    graph.add_edges_from([("doc", "topic"), ("topic", "word")])
    return declarem.Model(graph), {"doc": np.array(doc), "word": np.array(word), "count": np.array(count, float)}


def _relative(found, expected):
    return abs(found - expected) / abs(expected)


def test_online_gmm_reaches_the_batch_optimum(gmm):
    model, frame, batch = gmm
    fit = model.fit(frame, seed=0, method="online", batch_size=100, max_iter=60, tol=0)
    assert fit.n_iter == 60 and len(fit.history) == 61
    assert _relative(fit.loglik, batch.loglik) < 1e-5
    assert fit.loglik <= batch.loglik + 1e-9 * abs(batch.loglik)     # the batch fit is the optimum
    np.testing.assert_allclose(fit.params["x"]["mean"], batch.params["x"]["mean"], atol=0.05)
    np.testing.assert_allclose(fit.params["z"]["probs"], batch.params["z"]["probs"], atol=0.01)


def test_online_topic_model_reaches_the_batch_optimum():
    model, data = _corpus()
    batch = model.fit(data, weights="count", seed=0, tol=1e-9, max_iter=5000)
    fit = model.fit(data, weights="count", seed=0, method="online", batch_size=500, max_iter=60, tol=0)
    # Noisier than the GMM: a batch holds a few of a document's words, blown up to the data's size.
    assert _relative(fit.loglik, batch.loglik) < 1e-3
    np.testing.assert_allclose(fit.params["word"]["probs"], batch.params["word"]["probs"], atol=0.03)


def test_the_batch_optimum_is_a_fixed_point_of_online_em(gmm):
    """Started at the batch optimum, online EM stays near it (its steps average out)."""
    model, frame, batch = gmm
    fit = model.fit(frame, init=batch, method="online", batch_size=300, max_iter=20, tol=0)
    assert _relative(fit.loglik, batch.loglik) < 1e-5


def test_online_fits_are_seeded_and_stop_at_tol(gmm):
    model, frame, _ = gmm
    first = model.fit(frame, seed=3, method="online", batch_size=300, tol=1e-6)
    again = model.fit(frame, seed=3, method="online", batch_size=300, tol=1e-6)
    assert first.converged and first.n_iter < 100
    assert abs(first.history[-1] - first.history[-2]) < 1e-6 * abs(first.history[-1])
    assert first.history == again.history
    np.testing.assert_array_equal(first.params["x"]["cov"], again.params["x"]["cov"])
    other = model.fit(frame, seed=4, method="online", batch_size=300, tol=1e-6)
    assert other.history != first.history


def test_partial_fit_continues_an_online_fit(gmm):
    model, frame, batch = gmm
    first, second = frame.iloc[:450], frame.iloc[450:]
    fit = model.fit(first, seed=0, method="online", batch_size=150, max_iter=5, tol=0)
    updated = fit.partial_fit(second)
    assert updated is not fit and fit.n_iter == 5 and updated.n_iter == 6
    assert updated.n_observations == len(second)
    assert updated.history[:-1] == fit.history
    # The step moves the parameters towards those of the new rows, by the step size's share.
    state = fit.online_state
    assert updated.online_state.n_steps == state.n_steps + 1
    assert not np.allclose(updated.params["x"]["mean"], fit.params["x"]["mean"])
    # Batches of the whole data, stepped in one by one, end near the batch optimum.
    for epoch in range(3):
        for rows in np.array_split(np.random.default_rng(epoch).permutation(len(frame)), 9):
            updated = updated.partial_fit(frame.iloc[rows])
    with pytest.warns(declarem.ConvergenceWarning):
        at_the_end = model.fit(frame, init=updated, max_iter=0)      # the log-likelihood at these parameters
    assert _relative(at_the_end.loglik, batch.loglik) < 1e-4


def test_partial_fit_needs_an_online_fit(gmm):
    model, frame, batch = gmm
    with pytest.raises(OptionError, match="method='online'"):
        batch.partial_fit(frame)


def test_online_options_are_checked(gmm):
    model, frame, _ = gmm
    for options, message in [({"method": "online", "step": 0.5}, "step must be a number in"),
                             ({"method": "online", "batch_size": 0}, "batch_size must"),
                             ({"method": "stochastic"}, "method must be one of"),
                             ({"batch_size": 10}, "apply to method='online'"),
                             ({"method": "online", "accelerate": "squarem"}, "online EM is not accelerated")]:
        with pytest.raises(OptionError, match=message):
            model.fit(frame, **options)
    chain = declarem.load_model(os.path.join(MODELS, "gaussian_hmm.toml"))
    with pytest.raises(OptionError, match="chain"):
        chain.fit(os.path.join(MODELS, "gaussian_hmm.csv"), method="online")


def test_online_em_over_dask_partitions(gmm):
    """Each partition is a batch; the result reaches the batch optimum as in memory."""
    model, frame, batch = gmm
    shuffled = frame.sample(frac=1.0, random_state=0).reset_index(drop=True)
    with dask.config.set(scheduler="threads"):
        fit = model.fit(dd.from_pandas(shuffled, npartitions=6), seed=0, method="online", max_iter=15, tol=0)
    assert _relative(fit.loglik, batch.loglik) < 1e-5
