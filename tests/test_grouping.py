"""Identical rows of counts are fitted once, with their summed weight: the same fit as row by row."""

import networkx as nx
import numpy as np
import pytest

import declarem
import declarem.em
from declarem.data import group_repeated_counts, node_data


def _poisson_mixture(n_rows=5000, share_missing=0.0, seed=41):
    graph = nx.DiGraph()
    graph.add_node("z", family="categorical", latent=True, k=2)
    graph.add_node("count", family="poisson")
    graph.add_node("kind", family="categorical", k=3)
    graph.add_edge("z", "count")
    graph.add_edge("z", "kind")
    rng = np.random.default_rng(seed)
    z = rng.integers(0, 2, n_rows)
    count = rng.poisson(np.where(z == 0, 1.5, 6.0)).astype(float)
    count[rng.random(n_rows) < share_missing] = np.nan
    kind = np.where(rng.random(n_rows) < 0.7, z, rng.integers(0, 3, n_rows))
    return declarem.Model(graph), {"count": count, "kind": kind}


@pytest.mark.parametrize("share_missing", [0.0, 0.1])
def test_grouped_counts_give_the_fit_of_the_rows_one_by_one(share_missing, monkeypatch):
    model, data = _poisson_mixture(share_missing=share_missing)
    checked = node_data(model, data)
    grouped = group_repeated_counts(model, checked)
    assert grouped.n_rows < 60 and grouped.weights.sum() == checked.n_rows
    assert ("count" in grouped.missing) == bool(share_missing)
    # The fit runs on the grouped rows and draws its start from the rows as given.
    _, engine, seeding, *_ = declarem.em._prepared(model, data, None, "data", None, None)
    assert engine.rows.n_rows == grouped.n_rows and seeding.rows.n_rows == checked.n_rows
    together = model.fit(data, seed=2, tol=1e-10)
    monkeypatch.setattr(declarem.em, "group_repeated_counts", lambda model, checked: checked)
    apart = model.fit(data, seed=2, tol=1e-10)
    assert together.n_iter == apart.n_iter and together.n_missing == apart.n_missing
    assert together.loglik == pytest.approx(apart.loglik, rel=1e-12)
    for node, values in apart.params.items():
        for name, value in values.items():
            np.testing.assert_allclose(together.params[node][name], value, rtol=1e-9, atol=1e-12)


def test_rows_with_a_real_valued_column_are_not_grouped():
    graph = nx.DiGraph()
    graph.add_node("z", family="categorical", latent=True, k=2)
    graph.add_node("x", family="normal")
    graph.add_edge("z", "x")
    model = declarem.Model(graph)
    checked = node_data(model, {"x": np.arange(100) % 7})
    assert group_repeated_counts(model, checked) is checked


def test_categorical_rows_are_left_to_group_identical_rows(monkeypatch):
    """All-categorical rows are grouped (or found distinct) once, by their codes; the counts' grouping, which
    compares whole rows, is not run on them again."""
    graph = nx.DiGraph()
    graph.add_node("z", family="categorical", latent=True, k=2)
    graph.add_node("a", family="categorical", k=4)
    graph.add_node("b", family="categorical", k=5)
    graph.add_edge("z", "a")
    graph.add_edge("z", "b")
    model = declarem.Model(graph)
    checked = node_data(model, {"a": np.arange(20) % 4, "b": np.arange(20) // 4})      # every row distinct

    def compare_rows(*args, **kwargs):
        raise AssertionError("the rows were compared again")

    monkeypatch.setattr(np, "unique", compare_rows)
    assert group_repeated_counts(model, checked) is checked
