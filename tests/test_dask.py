"""Fits from dask data equal the in-memory fits of the same rows (issue #12).

The cluster tests start their own ``distributed.LocalCluster`` of two worker processes (no
external service); the others run on dask's threaded scheduler. Each fit from dask data is
held against the in-memory fit from the same seed: same start (the seeding passes follow the
global row order), same iterations, parameters equal to 1e-10.
"""

import os
import pickle
import subprocess
import sys
import textwrap

import dask
import dask.array as da
import dask.dataframe as dd
import distributed
import networkx as nx
import numpy as np
import pandas as pd
import pytest

import declarem
from declarem import cli
from declarem import distributed as declarem_distributed
from declarem.data import read_model_data
from declarem.errors import FitError

MODELS = os.path.join(os.path.dirname(__file__), "..", "models")


def _catalog(name):
    model = declarem.load_model(os.path.join(MODELS, f"{name}.toml"))
    columns, _ = read_model_data(model, os.path.join(MODELS, model.data_info["path"]))
    return model, pd.DataFrame(columns)


def _assert_same_fit(expected, found, tol=1e-10):
    assert found.n_iter == expected.n_iter
    assert found.converged == expected.converged
    np.testing.assert_allclose(found.history, expected.history, rtol=tol)
    assert found.loglik == pytest.approx(expected.loglik, rel=tol)
    assert found.n_observations == pytest.approx(expected.n_observations, rel=1e-12)
    for node, params in expected.params.items():
        if not isinstance(params, dict):
            assert found.params[node] == pytest.approx(params, rel=tol, abs=tol)
            continue
        for name, value in params.items():
            np.testing.assert_allclose(found.params[node][name], value, rtol=tol, atol=tol, err_msg=f"{node}.{name}")


@pytest.fixture(scope="module")
def worker_cache(tmp_path_factory):
    """The workers' derivation cache: it must stay empty, for a worker never derives."""
    return tmp_path_factory.mktemp("worker-cache") / "cache"


@pytest.fixture(scope="module")
def cluster_client(worker_cache):
    # A task whose worker dies fails at once (the last test kills a worker on purpose).
    with dask.config.set({"distributed.scheduler.allowed-failures": 0}), \
            distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
                                     silence_logs=50, env={"DECLAREM_CACHE_DIR": str(worker_cache)}) as cluster, \
            distributed.Client(cluster) as client:
        yield client


@pytest.fixture
def threads():
    with dask.config.set(scheduler="threads"):
        yield


# -- on a local cluster of two worker processes --------------------------------------------------

@pytest.mark.parametrize("name, options", [
    ("gmm", {}),                                    # k-means++ seeding over partitions
    ("latent_class", {}),                           # all-discrete: reduced to distinct rows first
    ("topic_model", {"max_iter": 8, "tol": 0}),     # sparse counts, bilinear E-step per partition
    ("abo", {}),                                    # free parameters, closed-form M-step
])
def test_cluster_fit_equals_the_in_memory_fit(cluster_client, name, options):
    model, frame = _catalog(name)
    expected = model.fit(frame, seed=4, **options)
    found = model.fit(dd.from_pandas(frame, npartitions=3), seed=4, **options)
    _assert_same_fit(expected, found)


def test_workers_never_derive(cluster_client, worker_cache):
    """After the cluster fits above, the workers' own derivation cache was never written."""
    assert cluster_client.run(lambda: os.environ.get("DECLAREM_CACHE_DIR")) and \
        set(cluster_client.run(lambda: os.environ.get("DECLAREM_CACHE_DIR")).values()) == {str(worker_cache)}
    assert not worker_cache.exists() or not any(worker_cache.iterdir())


def test_fit_from_a_mapping_of_dask_arrays(threads):
    model, frame = _catalog("gmm")
    expected = model.fit(frame, seed=1, max_iter=20, tol=0)
    arrays = {column: da.from_array(frame[column].to_numpy(), chunks=250) for column in frame.columns}
    _assert_same_fit(expected, model.fit(arrays, seed=1, max_iter=20, tol=0))


# -- on the threaded scheduler -------------------------------------------------------------------

@pytest.mark.parametrize("name, options", [
    ("gmm", {"hard": True}),
    ("gmm", {"restarts": 2, "max_iter": 30}),
    ("latent_class", {}),
    ("poisson_mixture", {"accelerate": "squarem"}),
    ("genetic_linkage", {}),
    ("penguins", {}),
])
def test_threaded_fit_equals_the_in_memory_fit(threads, name, options):
    model, frame = _catalog(name)
    expected = model.fit(frame, seed=7, **options)
    _assert_same_fit(expected, model.fit(dd.from_pandas(frame, npartitions=4), seed=7, **options))


def _holed_data(seed=3):
    """A mixture with an observed categorical parent, missing values and partial labels: (graph, frame)."""
    rng = np.random.default_rng(seed)
    n = 600
    c = rng.integers(0, 2, n)
    z = rng.integers(0, 2, n)
    x = rng.normal(size=(n, 2)) + 3.0 * z[:, None] + 1.5 * c[:, None]
    x[rng.random((n, 2)) < 0.1] = np.nan
    c = c.astype(float)
    c[450 + rng.choice(150, 20, replace=False)] = np.nan       # missing in the last partition only
    labels = np.where(rng.random(n) < 0.2, z, np.nan)
    g = nx.DiGraph()
    g.add_node("z", family="categorical", latent=True, k=2)
    g.add_node("c", family="categorical", k=2)
    g.add_node("x", family="normal", dim=2, covariance="full")
    g.add_edges_from([("z", "x"), ("c", "x")])
    return g, pd.DataFrame({"c": c, "x_0": x[:, 0], "x_1": x[:, 1], "z": labels})


def test_missing_values_partial_labels_and_a_parent_missing_in_one_partition(threads):
    g, frame = _holed_data()
    model = declarem.Model(g)
    expected = model.fit(frame, seed=2)
    found = model.fit(dd.from_pandas(frame, npartitions=4), seed=2)
    _assert_same_fit(expected, found)
    assert found.n_missing == expected.n_missing > 0
    assert found.n_missing_rows == expected.n_missing_rows


def test_random_start_follows_the_global_row_order(threads):
    """Two latent nodes: the seeded posterior is random, drawn per partition from the advanced generator."""
    rng = np.random.default_rng(0)
    n = 500
    g = nx.DiGraph()
    g.add_node("a", family="categorical", latent=True, k=2)
    g.add_node("b", family="categorical", latent=True, k=3)
    g.add_node("x", family="normal")
    g.add_edges_from([("a", "x"), ("b", "x")])
    frame = pd.DataFrame({"x": rng.normal(size=n) * 3 + rng.integers(0, 4, n)})
    model = declarem.Model(g)
    expected = model.fit(frame, seed=5, max_iter=15, tol=0)
    _assert_same_fit(expected, model.fit(dd.from_pandas(frame, npartitions=3), seed=5, max_iter=15, tol=0))


CHAIN_SPEC = """
[data]
sequence = "series"

[nodes.z]
family = "categorical"
latent = true
k = 2
lagged = ["z"]

[nodes.x]
family = "normal"
parents = ["z"]
"""


def _chain_data(n_sequences=6, length=60, seed=8):
    rng = np.random.default_rng(seed)
    series, values = [], []
    for sequence in range(n_sequences):
        state = rng.integers(0, 2)
        for _ in range(length):
            state = state if rng.random() < 0.9 else 1 - state
            series.append(100 + sequence)
            values.append(rng.normal(3.0 * state, 1.0))
    return pd.DataFrame({"series": series, "x": values})


def test_chain_sequences_within_partitions_give_the_in_memory_fit(threads, tmp_path):
    (tmp_path / "chain.toml").write_text(CHAIN_SPEC)
    model = declarem.load_model(str(tmp_path / "chain.toml"))
    frame = _chain_data()
    expected = model.fit(frame, seed=1)
    parts = dd.from_pandas(frame, npartitions=3, sort=False)
    assert parts.npartitions == 3
    _assert_same_fit(expected, model.fit(parts, seed=1))
    _assert_same_fit(model.fit(frame, seed=1, hard=True), model.fit(parts, seed=1, hard=True))
    split = dd.from_pandas(frame.iloc[30:].reset_index(drop=True), npartitions=2, sort=False)
    with pytest.raises(declarem.DeclaremError, match="has rows in dask partitions 0 and 1"):
        model.fit(split)
    chain, whole = _catalog("gaussian_hmm")
    with pytest.raises(declarem.DeclaremError, match="one sequence.*cannot be split over partitions"):
        chain.fit(dd.from_pandas(whole, npartitions=2))


def test_streamed_partitions_give_the_in_memory_fit(threads):
    """Data over the memory budget is read again for every pass: from a complete init the iterations are the
    in-memory ones; seeded, the start is k-means on a sample and the fit reaches the same optimum."""
    model, frame = _catalog("gmm")
    parts = dd.from_pandas(frame, npartitions=3)
    start = model.fit(frame, seed=0, max_iter=2, tol=0)
    expected = model.fit(frame, init=start, max_iter=30, tol=0)
    streamed = model.fit(parts, init=start, max_iter=30, tol=0, memory_budget=1)
    _assert_same_fit(expected, streamed)
    assert streamed.peak_memory > 0 and expected.peak_memory is None
    seeded = model.fit(parts, seed=0, memory_budget=1)
    assert seeded.converged
    assert seeded.loglik == pytest.approx(model.fit(frame, seed=0).loglik, rel=1e-9)


def test_streamed_random_start_and_labels_are_the_in_memory_ones(threads):
    g, frame = _holed_data()
    g.add_node("w", family="categorical", latent=True, k=2)       # two latent nodes: a random start
    g.add_edge("w", "x")
    model = declarem.Model(g)
    expected = model.fit(frame, seed=6, max_iter=20, tol=0)
    _assert_same_fit(expected, model.fit(dd.from_pandas(frame, npartitions=3), seed=6, max_iter=20, tol=0,
                                         memory_budget=1))


def test_csv_and_parquet_part_files_give_the_in_memory_fit(threads, tmp_path):
    pytest.importorskip("pyarrow")
    model, frame = _catalog("gmm")
    expected = model.fit(frame, seed=3)
    for part, rows in enumerate(np.array_split(np.arange(len(frame)), 3)):
        frame.iloc[rows].to_csv(tmp_path / f"part-{part}.csv", index=False)
        frame.iloc[rows].to_parquet(tmp_path / f"part-{part}.parquet", index=False)
    from_csv = model.fit(dd.read_csv(str(tmp_path / "part-*.csv")), seed=3)
    from_parquet = model.fit(dd.read_parquet(str(tmp_path / "part-*.parquet")), seed=3)
    _assert_same_fit(expected, from_csv)
    _assert_same_fit(expected, from_parquet)


def test_command_line_fits_part_files(tmp_path):
    pytest.importorskip("pyarrow")
    model, frame = _catalog("gmm")
    expected = model.fit(frame, seed=0)
    for part, rows in enumerate(np.array_split(np.arange(len(frame)), 3)):
        frame.iloc[rows].to_parquet(tmp_path / f"part-{part}.parquet", index=False)
    spec = os.path.join(MODELS, "gmm.toml")
    out = tmp_path / "fit.json"
    assert cli.main(["fit", spec, "--data", str(tmp_path / "part-*.parquet"), "--scheduler", "threads", "--quiet",
                     "--out", str(out)]) == 0
    _assert_same_fit(expected, declarem.Fit.load(str(out), model))
    # A directory of Parquet files, a glob or a Parquet file is read as part files; other paths as before.
    assert all(declarem_distributed.is_parts_path(str(p)) for p in (tmp_path, tmp_path / "part-*.csv", tmp_path / "a.parquet"))
    assert not any(declarem_distributed.is_parts_path(p) for p in (os.path.join(MODELS, "gmm.csv"), MODELS))


# -- bad input and what is not supported ---------------------------------------------------------

def test_a_bad_value_names_the_partition_and_the_row(threads):
    model, frame = _catalog("latent_class")
    column = frame.columns[0]
    frame.loc[frame.index[len(frame) // 2 + 7], column] = 9
    parts = dd.from_pandas(frame, npartitions=2)
    with pytest.raises(declarem.DeclaremError, match=r"dask partition 1 \(of 2\): column '[^']+', row 7: value 9"):
        model.fit(parts)


def test_what_dask_data_does_not_support_yet_is_refused_clearly(threads):
    model, frame = _catalog("gmm")
    parts = dd.from_pandas(frame, npartitions=2)
    with pytest.raises(declarem.DeclaremError, match="name of a column"):
        model.fit(parts, weights=np.ones(len(frame)))
    regression, frame = _catalog("regression_mixture")
    with pytest.raises(declarem.DeclaremError, match="row by row.*compute the data into memory"):
        regression.fit(dd.from_pandas(frame, npartitions=2))
    chain, frame = _catalog("categorical_hmm")
    with pytest.raises(declarem.DeclaremError, match="lengths do not apply to dask data"):
        chain.fit(dd.from_pandas(frame, npartitions=2), lengths=[len(frame)])


def test_posteriors_of_dask_data_are_computed_per_partition(threads):
    """fit.posterior takes data in memory; on dask data it says how to map it over the partitions, and that
    recipe gives the in-memory posterior."""
    model, frame = _catalog("gmm")
    parts = dd.from_pandas(frame, npartitions=3)
    fit = model.fit(parts, seed=0)
    with pytest.raises(declarem.DeclaremError, match="map_partitions"):
        fit.posterior(parts)
    mapped = parts.map_partitions(lambda part: pd.DataFrame(fit.posterior(part)["z"])).compute()
    np.testing.assert_allclose(mapped.to_numpy(), fit.posterior(frame)["z"], rtol=1e-12, atol=1e-15)


def test_without_dask_the_message_names_the_extra(monkeypatch):
    model, frame = _catalog("gmm")

    class Lazy:
        def __dask_graph__(self):
            return {}

    monkeypatch.setitem(sys.modules, "dask", None)
    with pytest.raises(declarem.DeclaremError, match=r"pip install 'declarem\[dask\]'"):
        model.fit(Lazy())


# -- what travels: models, compiled models and fits pickle -----------------------------------------

def test_model_compiled_model_and_fit_pickle():
    model, frame = _catalog("genetic_linkage")
    fit = model.fit(frame, seed=0)
    loaded = pickle.loads(pickle.dumps(fit))
    assert loaded.loglik == fit.loglik
    assert loaded.model.compiled.free_names == model.compiled.free_names
    compiled = pickle.loads(pickle.dumps(model.compiled))
    assert compiled.model.compiled is compiled            # the loaded model does not derive again
    again = compiled.model.fit(frame, seed=0)
    _assert_same_fit(fit, again, tol=0)


def test_kept_partitions_tell_dask_their_size():
    """dask's scheduler keeps a task beside the data it needs by their sizes: an engine or checked data
    reporting a Python object's few bytes let it ship hundreds of megabytes between workers per pass."""
    from dask.sizeof import sizeof

    from declarem.data import node_data
    from declarem.inference import engine_for, prepare_rows

    for name, lengths in [("gmm", None), ("earthquakes_hmm2", "whole")]:
        model, frame = _catalog(name)
        checked = node_data(model, frame)
        held = sum(values.nbytes for values in checked.values.values()) + checked.weights.nbytes
        assert sizeof(checked) >= held
        rows = prepare_rows(model.compiled, checked)
        engine = engine_for(model.compiled, rows, None if lengths is None else [checked.n_rows])
        statistics = rows.factors[model.observed[0]].statistics
        assert statistics is not None
        assert sizeof(engine) >= statistics.nbytes + rows.weights.nbytes
        assert sizeof((checked, None, None)) >= held          # a partition's checked block, as kept


def test_a_worker_with_a_cold_cache_and_no_sympy_evaluates_the_received_derivation(tmp_path):
    """A pickled compiled model carries its derivation: a process with an empty cache that cannot import
    sympy runs the same E-step."""
    model, frame = _catalog("gamma_mixture")
    fit = model.fit(frame, seed=0, max_iter=3, tol=0)
    from declarem.inference import engine_for, prepare_rows
    from declarem.data import node_data
    compiled = model.compiled
    engine = engine_for(compiled, prepare_rows(compiled, node_data(model, frame)))
    params = compiled.to_internal(fit.params, engine.shifts)
    stats, objective = engine.expected_statistics(params)
    (tmp_path / "sent.pkl").write_bytes(pickle.dumps((compiled, frame, fit.params)))
    script = textwrap.dedent("""
        import pickle, sys
        sys.modules["sympy"] = None
        from declarem.inference import engine_for, prepare_rows
        from declarem.data import node_data
        compiled, frame, external = pickle.loads(open(sys.argv[1], "rb").read())
        engine = engine_for(compiled, prepare_rows(compiled, node_data(compiled.model, frame)))
        stats, objective = engine.expected_statistics(compiled.to_internal(external, engine.shifts))
        open(sys.argv[2], "wb").write(pickle.dumps((stats.sums, objective)))
    """)
    env = dict(os.environ, DECLAREM_CACHE_DIR=str(tmp_path / "empty-cache"))
    subprocess.run([sys.executable, "-c", script, str(tmp_path / "sent.pkl"), str(tmp_path / "back.pkl")],
                   check=True, env=env, timeout=120)
    sums, found = pickle.loads((tmp_path / "back.pkl").read_bytes())
    assert found == objective
    for name, value in stats.sums.items():
        np.testing.assert_array_equal(sums[name], value)
    assert not os.path.exists(tmp_path / "empty-cache") or not os.listdir(tmp_path / "empty-cache")


def test_a_worker_that_dies_gives_a_clear_error_and_no_fit(cluster_client):
    """Last in the file: it kills one of the shared cluster's workers (its nanny starts another)."""
    model, frame = _catalog("gmm")
    parts = dd.from_pandas(frame, npartitions=2).map_partitions(_die_on_second_partition, meta=frame.iloc[:0])
    with pytest.raises(FitError, match="worker died"):
        model.fit(parts)


def _die_on_second_partition(frame):
    if frame.index[0] > 0:
        os._exit(1)
    return frame
