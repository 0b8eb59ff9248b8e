"""Missing values through the whole path: chains, categorical parents, files, reporting and bad input.

The exact agreement of mixtures and latent class models with missing values against independent
references (Ghahramani-Jordan, the poLCA convention, partial labels) is in test_missing_reference.py.
Here every reference is plain numpy written in this file, from the same initialisation; parameters are
held to 1e-9 relative and log-likelihoods to 1e-10.
"""

import json

import networkx as nx
import numpy as np
import pytest
from scipy.special import logsumexp
from support import forward_backward, run_cli

import declarem
from declarem.errors import DataError

RTOL = 1e-9


def _poisson_hmm_graph(k):
    g = nx.DiGraph()
    g.add_node("z", family="categorical", latent=True, k=k)
    g.add_node("count", family="poisson")
    g.add_edge("z", "count")
    g.add_edge("z", "z", lag=1)
    return g


def _poisson_hmm_em(counts, lengths, start, transition, rate, n_iter):
    """Baum-Welch for a Poisson HMM where a missing count has emission probability 1 at every state."""
    from scipy.stats import poisson
    present = ~np.isnan(counts)
    for _ in range(n_iter):
        emission = np.ones((len(counts), len(rate)))
        emission[present] = poisson.pmf(counts[present, None], rate[None, :])
        gamma, xi, loglik = forward_backward(start, transition, emission, lengths)
        firsts = np.cumsum([0] + list(lengths[:-1]))
        start = gamma[firsts].sum(axis=0) / len(lengths)
        transition = xi / xi.sum(axis=1, keepdims=True)
        rate = (gamma[present] * counts[present, None]).sum(axis=0) / gamma[present].sum(axis=0)
    emission = np.ones((len(counts), len(rate)))
    emission[present] = poisson.pmf(counts[present, None], rate[None, :])
    return start, transition, rate, forward_backward(start, transition, emission, lengths)


def test_chain_missing_steps_carry_the_chain_on():
    rng = np.random.default_rng(11)
    lengths = [120, 75, 200]
    states = [rng.integers(0, 2)]
    for _ in range(sum(lengths) - 1):
        states.append(states[-1] if rng.random() < 0.9 else 1 - states[-1])
    counts = rng.poisson(np.array([2.0, 9.0])[np.array(states)]).astype(float)
    counts[rng.random(len(counts)) < 0.2] = np.nan
    counts[130:140] = np.nan                  # a run of missing steps inside the second sequence
    start, transition, rate = np.array([0.6, 0.4]), np.array([[0.8, 0.2], [0.3, 0.7]]), np.array([1.5, 7.0])
    model = declarem.Model(_poisson_hmm_graph(2))
    fit = model.fit({"count": counts}, lengths=lengths, max_iter=10, tol=0.0,
                    init={"z": {"start": start, "probs": transition}, "count": {"rate": rate}})
    want_start, want_transition, want_rate, (gamma, _, loglik) = _poisson_hmm_em(
        counts, lengths, start, transition, rate, 10)
    np.testing.assert_allclose(fit.params["z"]["start"], want_start, rtol=RTOL, atol=1e-12)
    np.testing.assert_allclose(fit.params["z"]["probs"], want_transition, rtol=RTOL)
    np.testing.assert_allclose(fit.params["count"]["rate"], want_rate, rtol=RTOL)
    np.testing.assert_allclose(fit.loglik, loglik, rtol=1e-10)
    posterior = fit.posterior({"count": counts}, lengths=lengths)["z"]
    np.testing.assert_allclose(posterior, gamma, rtol=1e-8, atol=1e-12)
    assert fit.n_missing == int(np.isnan(counts).sum())


def test_a_missing_categorical_parent_is_summed_over():
    """x | z, c with c observed but missing on a quarter of the rows: c is latent there."""
    rng = np.random.default_rng(3)
    n = 600
    c, z = rng.integers(0, 2, n), rng.integers(0, 2, n)
    x = rng.normal(np.array([[0.0, 3.0], [1.5, 5.0]])[c, z], 1.0)
    c_data = c.astype(float)
    c_data[rng.random(n) < 0.25] = np.nan
    g = nx.DiGraph()
    g.add_node("z", family="categorical", latent=True, k=2)
    g.add_node("c", family="categorical", k=2)
    g.add_node("x", family="normal")
    g.add_edge("z", "x")
    g.add_edge("c", "x")
    model = declarem.Model(g)
    assert model.nodes["x"].parents == ("z", "c")
    mean0, var0 = np.array([[-0.5, 2.5], [1.0, 4.5]]), np.array([[1.5, 1.0], [1.0, 1.2]])     # [z, c]
    init = {"z": {"probs": [0.5, 0.5]}, "c": {"probs": [0.4, 0.6]}, "x": {"mean": mean0, "var": var0}}
    fit = model.fit({"x": x, "c": c_data}, init=init, max_iter=10, tol=0.0, reg_covar=0.0)

    wz, wc, mean, var = np.array([0.5, 0.5]), np.array([0.4, 0.6]), mean0.copy(), var0.copy()
    present = ~np.isnan(c_data)
    allowed = np.ones((n, 2))
    allowed[present] = np.eye(2)[c_data[present].astype(int)]
    for _ in range(11):
        log_joint = (np.log(wz)[None, :, None] + np.log(wc)[None, None, :] - 0.5 * np.log(2 * np.pi * var)[None]
                     - 0.5 * (x[:, None, None] - mean[None]) ** 2 / var[None])          # (n, z, c)
        log_joint = np.where(allowed[:, None, :] > 0, log_joint, -np.inf)
        row = logsumexp(log_joint.reshape(n, -1), axis=1)
        if _ == 10:
            break
        r = np.exp(log_joint - row[:, None, None])
        wz, wc = r.sum(axis=(0, 2)) / n, r.sum(axis=(0, 1)) / n
        mass = r.sum(axis=0)
        mean = np.einsum("nzc,n->zc", r, x) / mass
        var = np.einsum("nzc,nzc->zc", r, (x[:, None, None] - mean[None]) ** 2) / mass
    np.testing.assert_allclose(fit.params["z"]["probs"], wz, rtol=RTOL)
    np.testing.assert_allclose(fit.params["c"]["probs"], wc, rtol=RTOL)
    np.testing.assert_allclose(fit.params["x"]["mean"], mean, rtol=RTOL)
    np.testing.assert_allclose(fit.params["x"]["var"], var, rtol=RTOL)
    np.testing.assert_allclose(fit.loglik, row.sum(), rtol=1e-10)
    assert (fit.n_missing, fit.n_missing_rows) == (int((~present).sum()), int((~present).sum()))


SPEC = """
[model]
name = "holes"

[data]
path = "holes.csv"

[nodes.z]
family = "categorical"
latent = true
k = 2

[nodes.x]
family = "normal"
dim = 2
covariance = "full"
parents = ["z"]

[nodes.q]
family = "categorical"
k = 3
parents = ["z"]
"""


def _write_holes(tmp_path):
    """A CSV with empty and NA cells; returns the missing cells per column and the rows with any."""
    rng = np.random.default_rng(5)
    lines = ["x_0,x_1,q"]
    per_column = {"x_0": 0, "x_1": 0, "q": 0}
    rows = 0
    for i in range(120):
        x = rng.normal([0.0, 4.0 * (i % 2)], 1.0)
        cells = {"x_0": f"{x[0]:.6f}", "x_1": f"{x[1]:.6f}", "q": str(int(rng.integers(0, 3)))}
        if i % 7 == 3:
            cells["x_1"] = ""
        if i % 11 == 5:
            cells["q"] = "NA"
        if i == 40:
            cells = {"x_0": "", "x_1": "", "q": ""}
        holes = [name for name, cell in cells.items() if cell in ("", "NA")]
        for name in holes:
            per_column[name] += 1
        rows += bool(holes)
        lines.append(",".join(cells.values()))
    (tmp_path / "holes.csv").write_text("\n".join(lines) + "\n")
    (tmp_path / "holes.toml").write_text(SPEC)
    return per_column, rows


def test_csv_holes_fit_and_are_reported(tmp_path):
    per_column, n_rows = _write_holes(tmp_path)
    n_missing = sum(per_column.values())
    spec = tmp_path / "holes.toml"
    fit = declarem.load_model(spec).fit(str(tmp_path / "holes.csv"))
    assert (fit.n_missing, fit.n_missing_rows) == (n_missing, n_rows)
    assert np.all(np.diff(fit.history) >= -1e-9 * np.abs(np.array(fit.history[:-1])))
    out = tmp_path / "fit.json"
    assert run_cli("fit", spec, "--out", out, "--quiet").returncode == 0
    stored = json.loads(out.read_text())
    assert (stored["n_missing"], stored["n_missing_rows"]) == (n_missing, n_rows)
    loaded = declarem.Fit.load(out)
    assert (loaded.n_missing, loaded.n_missing_rows) == (n_missing, n_rows)
    report = run_cli("check", spec, cwd=tmp_path)
    assert report.returncode == 0, report.stderr
    assert f"missing values: {n_missing} cells in {n_rows} rows" in report.stdout
    for column, node in (("x_0", "x"), ("x_1", "x"), ("q", "q")):
        assert f"column '{column}' (node '{node}'): {per_column[column]} missing" in report.stdout


def test_none_and_pandas_na_objects_are_missing():
    """pandas' nullable columns give object arrays holding pd.NA; plain lists may hold None."""
    class NAType:                      # stands in for pandas' pd.NA, which declarem recognises by type name
        pass
    x = np.array([0.1, None, 2.0, 3.5, NAType(), 0.7, 2.2, 1.9], dtype=object)
    g = nx.DiGraph()
    g.add_node("z", family="categorical", latent=True, k=2)
    g.add_node("x", family="normal")
    g.add_edge("z", "x")
    fit = declarem.Model(g).fit({"x": x}, max_iter=5)
    assert fit.n_missing == 2


@pytest.mark.parametrize("data, message", [
    ({"x": [np.nan, np.nan, np.nan], "q": [0, 1, 2]}, "column 'x' of node 'x' is missing on every row"),
    ({"x": [0.5, 1.0, 2.0], "q": [0, 1, 2], "z": [0, 5, np.nan]}, "column 'z', row 1: label 5 is not a value"),
    ({"x": [0.5, 1.0, 2.0], "q": [0, 1.5, np.nan]}, "column 'q', row 1: value 1.5 is not a category"),
])
def test_bad_missing_input_is_named(data, message):
    g = nx.DiGraph()
    g.add_node("z", family="categorical", latent=True, k=2)
    g.add_node("x", family="normal")
    g.add_node("q", family="categorical", k=3)
    g.add_edge("z", "x")
    g.add_edge("z", "q")
    with pytest.raises(DataError, match=message):
        declarem.Model(g).fit(data, max_iter=3)


def test_a_nan_weight_is_refused():
    g = nx.DiGraph()
    g.add_node("z", family="categorical", latent=True, k=2)
    g.add_node("x", family="normal")
    g.add_edge("z", "x")
    with pytest.raises(DataError, match=r"weights, row 1: weight nan must be finite"):
        declarem.Model(g).fit({"x": [0.5, 1.0, 2.0, 3.0]}, weights=[1.0, np.nan, 1.0, 1.0], max_iter=3)


def test_a_missing_sequence_label_is_refused(tmp_path):
    g = _poisson_hmm_graph(2)
    g.graph["data"] = {"sequence": "series"}
    with pytest.raises(DataError, match="column 'series', row 2: a missing value in the sequence column"):
        declarem.Model(g).fit({"count": [1.0, 2.0, 3.0, 4.0], "series": [0.0, 0.0, np.nan, 1.0]}, max_iter=3)


@pytest.mark.parametrize("cov_type", ["full", "tied"])
def test_both_routes_for_missing_coordinates_agree(monkeypatch, cov_type):
    """Groups of partly missing rows go entry by entry when large, in whole arrays when small: same result."""
    from declarem.families import gaussian
    rng = np.random.default_rng(8)
    x = rng.normal(size=(400, 5)) + np.repeat(np.array([[0.0] * 5, [3.0] * 5]), 200, axis=0)
    x[rng.random(x.shape) < 0.2] = np.nan
    g = nx.DiGraph()
    g.add_node("z", family="categorical", latent=True, k=2)
    g.add_node("x", family="normal", dim=5, covariance=cov_type)
    g.add_edge("z", "x")
    model = declarem.Model(g)
    fits = []
    for least in (0, 10 ** 9):
        monkeypatch.setattr(gaussian, "ENTRYWISE_LEAST", least)
        fits.append(model.fit({"x": x}, max_iter=8, tol=0.0, seed=1))
    np.testing.assert_allclose(fits[0].history, fits[1].history, rtol=1e-12)
    np.testing.assert_allclose(fits[0].params["x"]["cov"], fits[1].params["x"]["cov"], rtol=1e-10)
    np.testing.assert_allclose(fits[0].params["x"]["mean"], fits[1].params["x"]["mean"], rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_a_few_labels_name_the_components_from_the_start(seed):
    """Three labelled rows per component: the seeded start is renumbered to agree with them, so component j
    is the labelled class j (without that, k-means numbers the clusters its own way and EM keeps them)."""
    rng = np.random.default_rng(4)
    centres = np.array([[0.0, 0.0], [4.0, 1.0], [0.5, 5.0]])
    truth = np.repeat(np.arange(3), 150)
    x = centres[truth] + rng.normal(size=(450, 2))
    labels = np.full(450, np.nan)
    for j in range(3):
        labels[np.flatnonzero(truth == j)[:3]] = j
    g = nx.DiGraph()
    g.add_node("z", family="categorical", latent=True, k=3)
    g.add_node("x", family="normal", dim=2, covariance="full")
    g.add_edge("z", "x")
    fit = declarem.Model(g).fit({"x": x, "z": labels}, seed=seed)
    assert np.abs(fit.params["x"]["mean"] - centres).max() < 0.5
    posterior = fit.posterior({"x": x, "z": labels})["z"]
    assert (posterior.argmax(axis=1) == truth).mean() > 0.95
