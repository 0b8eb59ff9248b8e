"""An engine's objective alone: the number its E-step gives with the statistics, to the bit, for every
kind of engine; SQUAREM asks for a plain EM point's statistics and objective only when it keeps that point."""

from pathlib import Path

import networkx as nx
import numpy as np
import pytest

import declarem
from declarem import em, squarem
from declarem.data import read_csv
from declarem.errors import FitError
from declarem.inference import enumeration
from support import fit_with_engine

ROOT = Path(__file__).resolve().parent.parent


def _engine_and_params(model, data, monkeypatch, **options):
    """The engine of a fit and its parameters after a few iterations, in internal form."""
    engine, _, fit = fit_with_engine(model, data, monkeypatch, max_iter=3, seed=0, **options)
    return engine, model.compiled.to_internal(fit.params, engine.shifts)


def _catalog(name):
    model = declarem.load_model(ROOT / "models" / f"{name}.toml")
    return model, str(ROOT / "models" / model.data_info["path"])


def _normal_mixture(holes):
    """A two-dimensional normal mixture over more rows than two chunks, some coordinates missing if ``holes``."""
    rng = np.random.default_rng(2)
    n = 2 * enumeration.CHUNK_ROWS + 1500
    z = rng.integers(0, 2, n)
    x = rng.normal(size=(n, 2)) + 3.0 * z[:, None]
    if holes:
        x[rng.random((n, 2)) < 0.05] = np.nan
    graph = nx.DiGraph()
    graph.add_node("z", family="categorical", latent=True, k=2)
    graph.add_node("x", family="normal", dim=2, covariance="full")
    graph.add_edge("z", "x")
    return declarem.Model(graph), {"x_0": x[:, 0], "x_1": x[:, 1]}


@pytest.mark.parametrize("case, hard", [
    ("hasselblad", False),              # enumeration over grouped rows
    ("hasselblad", True),
    ("negbin_mixture", False),          # a family fitted row by row (the "rows" layout)
    ("topic_model", False),             # the bilinear engine
    ("categorical_hmm", False),         # the chain engine: forward scales
    ("categorical_hmm", True),          # the Viterbi path's complete-data log-likelihood
    ("many rows", False),               # several chunks
    ("many rows with holes", False),    # missing coordinates integrated out
])
def test_the_objective_alone_is_the_e_steps_to_the_bit(monkeypatch, case, hard):
    model, data = _normal_mixture(case.endswith("holes")) if case.startswith("many") else _catalog(case)
    engine, params = _engine_and_params(model, data, monkeypatch)
    assert case != "many rows" or engine.rows.n_rows > 2 * engine.rows.chunk_rows
    stats, objective = engine.expected_statistics(params, hard=hard)
    assert stats is not None and np.isfinite(objective)
    assert engine.objective(params, hard=hard) == objective


def _without_symbols_2_and_3(params, data):
    params["x"]["probs"] = np.array([[0.5, 0.5, 0.0, 0.0], [0.5, 0.5, 0.0, 0.0]])
    return int(np.flatnonzero(read_csv(data)["x"] >= 2)[0])


def _without_word_7(params, data):
    probs = np.array(params["word"]["probs"], dtype=float)
    probs[:, 7] = 0.0
    params["word"]["probs"] = probs / probs.sum(axis=1, keepdims=True)
    rows = _engine_rows(data)
    return int(np.flatnonzero(rows == 7)[0])


def _engine_rows(path):
    """The topic model's rows in the engine's order: the word of each stored cell of the matrix, row by row."""
    import scipy.sparse
    return scipy.sparse.load_npz(path).tocsr().indices


@pytest.mark.parametrize("name, impossible", [("categorical_hmm", _without_symbols_2_and_3),
                                              ("topic_model", _without_word_7)])
def test_the_objective_alone_names_an_impossible_row(monkeypatch, name, impossible):
    model, data = _catalog(name)
    engine, params = _engine_and_params(model, data, monkeypatch)
    first = impossible(params, data)
    for ask in (engine.expected_statistics, engine.objective):
        with pytest.raises(FitError, match=f"row {first} has zero probability"):
            ask(params)


def _counted_squarem(monkeypatch, calls):
    """SQUAREM as the EM loop runs it, counting its calls of the E-step, statistics and objective."""
    original = squarem.run_squarem

    def counting(*args):
        *leading, estep, statistics, mstep, monitor, objective_at = args

        def count(name, function):
            def counted(params):
                calls[name] += 1
                return function(params)
            return counted
        return original(*leading, count("estep", estep), count("statistics", statistics), mstep, monitor,
                        count("objective", objective_at))
    monkeypatch.setattr(em, "run_squarem", counting)


@pytest.mark.parametrize("name", ["topic_model", "negbin_mixture"])
def test_squarem_evaluates_only_the_points_it_uses(monkeypatch, name):
    """A cycle asks for the statistics alone at its first EM point and at each extrapolated point, a full
    E-step at each stabilised point and at a plain EM point only when it keeps it, and never for an
    objective alone: a jump is checked against the cycle's start, whose objective it already has."""
    model, data = _catalog(name)
    calls = {"estep": 0, "statistics": 0, "objective": 0}
    _counted_squarem(monkeypatch, calls)
    fit = model.fit(data, seed=0)
    assert fit.converged
    cycles = len(fit.history) - 1
    stabilised = fit.n_iter - 2 * cycles          # every M-step beyond a cycle's two plain ones
    assert calls["objective"] == 0
    assert calls["statistics"] == cycles + stabilised
    kept_plain = calls["estep"] - 1 - stabilised
    assert 0 <= kept_plain < cycles
    # Monotone, up to rounding where a plain EM point is kept at the optimum.
    assert np.all(np.diff(fit.history) >= -1e-14 * np.abs(fit.history[1:]))


def test_squarem_ending_on_a_plain_em_step_asks_for_its_objective_alone(monkeypatch):
    """A run stopped by max_iter after a cycle's first EM step reports that point's objective alone."""
    model, data = _catalog("negbin_mixture")
    calls = {"estep": 0, "statistics": 0, "objective": 0}
    _counted_squarem(monkeypatch, calls)
    fit = model.fit(data, seed=0, max_iter=1, tol=0)
    assert fit.n_iter == 1 and calls == {"estep": 1, "statistics": 0, "objective": 1}
    plain = model.fit(data, seed=0, max_iter=1, tol=0, accelerate="none")
    assert fit.history == plain.history


@pytest.mark.parametrize("name", ["hasselblad", "categorical_hmm"])
def test_plain_em_asks_for_the_objective_alone_after_its_last_m_step(monkeypatch, name):
    """No M-step follows the last one: the E-step after it gives the objective alone, and the fit is the
    one the full E-step gives."""
    model, data = _catalog(name)
    engine_class = type(_engine_and_params(model, data, monkeypatch)[0])
    with monkeypatch.context() as patched:
        patched.setattr(engine_class, "objective",
                        lambda self, params, hard=False: self.expected_statistics(params, hard=hard)[1])
        full = model.fit(data, seed=0, max_iter=6, tol=0, accelerate="none")
    calls = {"expected_statistics": 0, "objective": 0}
    for method in calls:
        original = getattr(engine_class, method)

        def counted(self, *args, _original=original, _method=method, **kwargs):
            calls[_method] += 1
            return _original(self, *args, **kwargs)
        monkeypatch.setattr(engine_class, method, counted)
    fit = model.fit(data, seed=0, max_iter=6, tol=0, accelerate="none")
    assert calls == {"expected_statistics": 6, "objective": 1}
    assert fit.history == full.history and fit.loglik == full.loglik
