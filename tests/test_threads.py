"""The E-step's pool of threads: the same fit on any number of threads, BLAS on one thread within a fit."""

import sys
import threading

import networkx as nx
import numpy as np
import pytest

import declarem
from declarem import threads
from declarem.errors import OptionError
from declarem.inference import enumeration
from support import gaussian_mixture

threadpoolctl = pytest.importorskip("threadpoolctl")


def _gmm(n_rows, k=3, dim=4, share_missing=0.0, seed=21):
    return gaussian_mixture(n_rows, k, dim, share_missing=share_missing, seed=seed)


def _latent_class(n_rows, seed=22):
    graph = nx.DiGraph()
    graph.add_node("z", family="categorical", latent=True, k=3)
    rng = np.random.default_rng(seed)
    data = {}
    classes = rng.integers(0, 3, n_rows)
    for item in range(6):
        name = f"item{item}"
        graph.add_node(name, family="categorical", k=10)
        graph.add_edge("z", name)
        data[name] = np.where(rng.random(n_rows) < 0.6, (classes * 3 + item) % 10, rng.integers(0, 10, n_rows))
    return declarem.Model(graph), data


def _same_fit(first, second):
    assert first.loglik == second.loglik
    assert first.history == second.history
    for node, values in first.params.items():
        for name, value in values.items():
            assert np.array_equal(value, second.params[node][name]), (node, name)


def _recorded_threads(monkeypatch):
    """The names of the threads that accumulate chunks' statistics, as they do."""
    names = []
    accumulate = enumeration._accumulate

    def recording(*arguments, **keywords):
        names.append(threading.current_thread().name)
        return accumulate(*arguments, **keywords)

    monkeypatch.setattr(enumeration, "_accumulate", recording)
    return names


@pytest.mark.parametrize("case, options", [
    ("gmm", {}),
    ("gmm with holes", {}),
    ("gmm", {"hard": True}),
    ("gmm", {"accelerate": "squarem"}),
    ("gmm", {"memory_budget": 0}),          # statistics formed per chunk, in each thread
], ids=["gmm", "gmm-holes", "gmm-hard", "gmm-squarem", "gmm-streamed"])
def test_a_fit_is_the_same_on_one_thread_and_on_several(case, options, monkeypatch):
    # dim 8, k 8: 8192 rows x 44 statistics x 8 sets per chunk, enough work for the pool.
    model, data = {"gmm": lambda: _gmm(30_000, k=8, dim=8),
                   "gmm with holes": lambda: _gmm(40_000, share_missing=0.15)}[case]()
    names = _recorded_threads(monkeypatch)
    one = model.fit(data, max_iter=4, tol=0, seed=3, threads=1, **options)
    assert not any(name.startswith("declarem-estep") for name in names)
    names.clear()
    several = model.fit(data, max_iter=4, tol=0, seed=3, threads=3, **options)
    assert any(name.startswith("declarem-estep") for name in names), "the chunks did not run on the pool"
    _same_fit(one, several)


def test_chunks_of_short_numpy_calls_run_in_turn(monkeypatch):
    # A latent class model's chunks are categorical gathers (the lock held most of the time), a
    # dimension-2 normal's products are small: threads would only take turns.
    for model, data in (_latent_class(30_000), _gmm(30_000, dim=2)):
        names = _recorded_threads(monkeypatch)
        model.fit(data, max_iter=2, tol=0, threads=2)
        assert names and set(names) == {threading.current_thread().name}


def test_categorical_chunks_on_a_pool_give_the_same_statistics():
    from declarem.data import node_data
    from declarem.inference.rows import prepare_rows
    model, data = _latent_class(30_000)
    fit = model.fit(data, max_iter=2, tol=0, threads=1)
    rows = prepare_rows(model.compiled, node_data(model, data))
    params = model.compiled.to_internal(fit.params, rows.shifts)
    for hard in (False, True):
        alone = enumeration.expected_statistics(model.compiled, rows, params, hard=hard)
        with threads.fit_threads(2, chunked=True):
            pooled = enumeration.expected_statistics(model.compiled, rows, params, hard=hard)
        assert alone[1] == pooled[1]
        for name in alone[0].sums:
            assert np.array_equal(alone[0].sums[name], pooled[0].sums[name])


def test_blas_runs_one_thread_during_a_fit_and_is_restored_after():
    model, data = _gmm(20_000)
    seen = []

    def progress(iteration, objective, change):
        seen.append({info["internal_api"]: info["num_threads"] for info in threadpoolctl.threadpool_info()
                     if info["user_api"] == "blas"})
        known.append(threads.blas_single_threaded())

    known = []
    with threadpoolctl.threadpool_limits(limits=2, user_api="blas"):
        before = [info["num_threads"] for info in threadpoolctl.threadpool_info() if info["user_api"] == "blas"]
        model.fit(data, max_iter=2, tol=0, progress=progress, threads=2)
        after = [info["num_threads"] for info in threadpoolctl.threadpool_info() if info["user_api"] == "blas"]
    assert seen and all(set(counts.values()) == {1} for counts in seen)
    assert after == before and set(before) == {2}
    # The missing-value products are split to stay on one BLAS thread only where the fit does not hold it there.
    assert known == [True, True] and not threads.blas_single_threaded()


def test_without_threadpoolctl_chunks_run_in_turn_with_the_same_result(monkeypatch):
    model, data = _gmm(30_000, k=8, dim=8)
    expected = model.fit(data, max_iter=3, tol=0, threads=2)
    monkeypatch.setattr(threads, "_one_blas_thread", lambda: None)
    names = _recorded_threads(monkeypatch)
    _same_fit(model.fit(data, max_iter=3, tol=0, threads=2), expected)
    assert names and set(names) == {threading.current_thread().name}


@pytest.mark.parametrize("value", [0, -1, 1.5, "2", True])
def test_threads_must_be_a_positive_integer(value):
    model, data = _gmm(100)
    with pytest.raises(OptionError, match="threads must be a positive integer"):
        model.fit(data, max_iter=1, threads=value)


def test_the_environment_sets_the_default(monkeypatch):
    monkeypatch.setenv("DECLAREM_THREADS", "3")
    assert threads.resolve_threads(None) == 3
    assert threads.resolve_threads(1) == 1
    monkeypatch.setenv("DECLAREM_THREADS", "many")
    with pytest.raises(OptionError, match="DECLAREM_THREADS must be a positive integer, found 'many'"):
        threads.resolve_threads(None)
    monkeypatch.delenv("DECLAREM_THREADS")
    assert threads.resolve_threads(None) == threads.usable_cores() >= 1


def test_the_command_line_refuses_zero_threads(tmp_path, capsys):
    from declarem.cli import main
    spec = tmp_path / "gmm.toml"
    spec.write_text('[nodes.z]\nfamily = "categorical"\nlatent = true\nk = 2\n\n'
                    '[nodes.x]\nfamily = "normal"\nparents = ["z"]\n')
    data = tmp_path / "x.csv"
    data.write_text("x\n" + "\n".join(str(v) for v in np.random.default_rng(0).normal(size=50)) + "\n")
    assert main(["fit", str(spec), "--data", str(data), "--threads", "0", "--quiet"]) == 2
    assert "threads must be a positive integer (or None for the usable cores), found 0" in capsys.readouterr().err


@pytest.mark.parametrize("option", [{"threads": 2}, {"dtype": "float32"}])
def test_dask_data_refuses_threads_and_dtype(option):
    dask_array = pytest.importorskip("dask.array")
    model, _ = _gmm(10, dim=1)
    with pytest.raises(OptionError, match="with dask data, .*leave out"):
        model.fit({"x": dask_array.from_array(np.arange(10.0), chunks=5)}, **option)


def test_blas_is_held_from_the_fit_setup_on_with_one_limit_per_fit(monkeypatch):
    """The setup's products run on one BLAS thread too (multi-threaded, OpenBLAS's threads spin on after
    them), and the fit sets the limit once: threadpoolctl's scan of the loaded libraries costs a millisecond."""
    import declarem.em
    model, data = _gmm(20_000)
    during_setup = []
    prepared = declarem.em._prepared

    def recording(*args, **kwargs):
        during_setup.append(([info["num_threads"] for info in threadpoolctl.threadpool_info()
                              if info["user_api"] == "blas"], threads.blas_single_threaded()))
        return prepared(*args, **kwargs)

    scans = []
    one_thread = threads._one_blas_thread
    monkeypatch.setattr(declarem.em, "_prepared", recording)
    monkeypatch.setattr(threads, "_one_blas_thread", lambda: scans.append(1) or one_thread())
    with threadpoolctl.threadpool_limits(limits=2, user_api="blas"):
        model.fit(data, max_iter=2, tol=0, threads=2)
        after = {info["num_threads"] for info in threadpoolctl.threadpool_info() if info["user_api"] == "blas"}
    counts, held = during_setup[0]
    assert counts and set(counts) == {1} and held
    assert len(scans) == 1 and after == {2} and not threads.blas_single_threaded()


def test_the_loaded_libraries_are_found_once_until_a_module_is_imported(monkeypatch):
    """threadpoolctl's scan of the loaded libraries (a millisecond or more) is kept between fits, and made
    again after an import, which may bring a BLAS of its own; each fit still holds every BLAS at one thread."""
    monkeypatch.setattr(threads, "_CONTROLLER", (None, -1))
    model, data = _gmm(200, dim=2)
    model.fit(data, max_iter=1, seed=0)         # the first fit's and threadpool_info's own imports
    threadpoolctl.threadpool_info()
    controllers, seen = [], []
    for imported in (False, False, True, False):
        if imported:
            monkeypatch.setitem(sys.modules, "declarem_test_new_module", object())
        model.fit(data, max_iter=1, seed=0)
        with threads.blas_held():
            controllers.append(threads._CONTROLLER[0])
            seen.append({info["num_threads"] for info in threadpoolctl.threadpool_info() if info["user_api"] == "blas"})
    assert controllers[0] is controllers[1] is not controllers[2] is controllers[3]
    assert all(counts == {1} for counts in seen)
