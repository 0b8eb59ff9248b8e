"""Shared parameters (#11 item 4): shares = "OTHER" fits one set of parameters from pooled statistics.

Held against plain numpy EM for exchangeable items of a latent class model and for repeated normal
measurements; the count of free parameters, init on either node, and the refusals.
"""

import networkx as nx
import numpy as np
import pytest
from scipy import stats
from scipy.special import logsumexp

import declarem
from declarem.errors import FamilyError, InitError, SpecError


def _items(family="bernoulli", n_items=3, **attrs):
    graph = nx.DiGraph()
    graph.add_node("z", family="categorical", latent=True, k=2)
    names = [f"item{i}" for i in range(n_items)]
    for i, name in enumerate(names):
        extra = {"shares": names[0]} if i else {}
        graph.add_node(name, family=family, **attrs, **extra)
        graph.add_edge("z", name)
    return graph, names


def test_exchangeable_items_pool_their_counts():
    rng = np.random.default_rng(0)
    z = rng.random(600) < 0.3
    answers = (rng.random((600, 3)) < np.where(z, 0.85, 0.2)[:, None]).astype(float)
    graph, names = _items()
    model = declarem.Model(graph)
    start = {"z": {"probs": [0.5, 0.5]}, "item0": {"p": [0.3, 0.6]}}
    fit = model.fit(dict(zip(names, answers.T)), init=start, max_iter=6, tol=0.0)
    probs, p = np.array([0.5, 0.5]), np.array([0.3, 0.6])
    for _ in range(6):
        log_joint = np.log(probs) + (answers[:, :, None] * np.log(p) + (1 - answers[:, :, None]) * np.log1p(-p)).sum(1)
        resp = np.exp(log_joint - logsumexp(log_joint, axis=1, keepdims=True))
        probs = resp.mean(axis=0)
        p = (resp * answers.sum(axis=1, keepdims=True)).sum(axis=0) / (3 * resp.sum(axis=0))
    for name in names:
        np.testing.assert_allclose(fit.params[name]["p"], p, rtol=1e-12)
    np.testing.assert_allclose(fit.params["z"]["probs"], probs, rtol=1e-12)
    assert fit.n_parameters == 1 + 2
    derived = model.derive()
    assert any("shares the parameters of 'item0'" in note for note in derived["item2"].notes)
    assert any("shared with 'item1'" in note for note in derived["item0"].notes)


def test_repeated_normal_measurements_share_mean_and_variance():
    rng = np.random.default_rng(1)
    z = rng.random(400) < 0.5
    x = np.where(z, 5.0, -1.0)[:, None] + rng.normal(0.0, 1.0, (400, 2)) + 1000.0   # far from 0: no centring
    graph, names = _items("normal", n_items=2)
    model = declarem.Model(graph)
    start = {"z": {"probs": [0.5, 0.5]}, "item0": {"mean": [998.0, 1006.0], "var": [2.0, 2.0]}}
    fit = model.fit(dict(zip(names, x.T)), init=start, max_iter=5, tol=0.0, reg_covar=0.0)
    probs, mean, var = np.array([0.5, 0.5]), np.array([998.0, 1006.0]), np.array([2.0, 2.0])
    for _ in range(5):
        log_joint = np.log(probs) + stats.norm.logpdf(x[:, :, None], mean, np.sqrt(var)).sum(axis=1)
        resp = np.exp(log_joint - logsumexp(log_joint, axis=1, keepdims=True))
        probs = resp.mean(axis=0)
        weight = 2 * resp.sum(axis=0)
        mean = (resp * x.sum(axis=1, keepdims=True)).sum(axis=0) / weight
        var = sum((resp * (x[:, [j]] - mean) ** 2).sum(axis=0) for j in range(2)) / weight
    np.testing.assert_allclose(fit.params["item1"]["mean"], mean, rtol=1e-12)
    np.testing.assert_allclose(fit.params["item0"]["var"], var, rtol=1e-9)


def test_shared_parameters_are_given_once_in_an_init():
    rng = np.random.default_rng(2)
    graph, names = _items()
    data = {name: (rng.random(50) < 0.5).astype(float) for name in names}
    model = declarem.Model(graph)
    on_sharer = model.fit(data, init={"z": {"probs": [0.5, 0.5]}, "item2": {"p": [0.2, 0.7]}}, max_iter=2, tol=0)
    on_owner = model.fit(data, init={"z": {"probs": [0.5, 0.5]}, "item0": {"p": [0.2, 0.7]}}, max_iter=2, tol=0)
    assert on_sharer.history == on_owner.history
    again = model.fit(data, init=on_owner, max_iter=1, tol=0)        # a fit lists them on every node: equal
    assert again.history[0] == pytest.approx(on_owner.history[-1])
    with pytest.raises(InitError, match="give the shared parameters once"):
        model.fit(data, init={"item0": {"p": [0.2, 0.7]}, "item1": {"p": [0.3, 0.7]}})


@pytest.mark.parametrize("change, error, message", [
    (lambda g: g.nodes["item1"].update(shares="nothing"), SpecError, "must name another node"),
    (lambda g: g.nodes["item1"].update(shares="item2"), SpecError, "itself shares the parameters of 'item0'"),
    (lambda g: g.nodes["item1"].update(family="poisson"), SpecError, "must be declared alike"),
    (lambda g: g.nodes["item1"].update(shares="z"), SpecError, "only observed nodes share parameters"),
])
def test_nodes_that_cannot_share_are_refused(change, error, message):
    graph, _ = _items()
    change(graph)
    with pytest.raises(error, match=message):
        declarem.Model(graph).compiled


def test_a_family_fitted_row_by_row_does_not_share():
    graph, _ = _items("weibull")
    graph.graph["families"] = {"weibull": {"logpdf": "log(k) - log(lam) + (k - 1)*(log(x) - log(lam)) - (x/lam)**k",
                                           "support": "positive", "params": {"k": "positive", "lam": "positive"}}}
    with pytest.raises(FamilyError, match="does not share parameters"):
        declarem.Model(graph).compiled
