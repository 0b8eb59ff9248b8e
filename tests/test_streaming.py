"""When T(X) would not fit its memory budget, each E-step forms it chunk by chunk: the same fit, exactly."""

import networkx as nx
import numpy as np
import pytest

import declarem
from declarem.data import node_data
from declarem.inference import prepare_rows


def model(covariance):
    graph = nx.DiGraph()
    graph.add_node("z", family="categorical", latent=True, k=3)
    graph.add_node("x", family="normal", dim=3, covariance=covariance)
    graph.add_node("c", family="poisson")
    graph.add_edge("z", "x")
    graph.add_edge("z", "c")
    return declarem.Model(graph)


def data(n=20000, seed=3):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 3, n)
    x = rng.normal(size=(n, 3)) + labels[:, None] * 2.5
    counts = rng.poisson(np.array([1.0, 4.0, 9.0])[labels]).astype(float)
    return {"x": x, "c": counts}


@pytest.mark.parametrize("covariance", ["full", "diag"])
def test_streamed_statistics_give_the_same_fit(covariance):
    fitted = model(covariance)
    columns = data()
    stored = fitted.fit(columns, seed=1, max_iter=15, tol=0)
    streamed = fitted.fit(columns, seed=1, max_iter=15, tol=0, memory_budget=0)
    assert streamed.history == stored.history
    for node, params in stored.params.items():
        for name, value in params.items():
            np.testing.assert_array_equal(streamed.params[node][name], value)


def test_budget_decides_what_is_stored():
    fitted = model("full")
    checked = node_data(fitted, data(1000))
    stored = prepare_rows(fitted.compiled, checked, memory_budget=10**9)
    streamed = prepare_rows(fitted.compiled, checked, memory_budget=1000)
    assert stored.factors["x"].statistics is not None and streamed.factors["x"].statistics is None
    assert streamed.base_total == pytest.approx(stored.base_total, rel=1e-15)
    chunk = slice(100, 300)
    np.testing.assert_array_equal(streamed.factors["x"].statistics_of(fitted.compiled.factors["x"], chunk),
                                  stored.factors["x"].statistics[chunk])


def test_budget_is_checked():
    with pytest.raises(declarem.DeclaremError, match="memory_budget"):
        model("full").fit(data(100), memory_budget=-1)
