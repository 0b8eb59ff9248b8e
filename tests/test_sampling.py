"""Sampling: exact draws from user-declared families (or a refusal), built-ins unchanged.

User families are drawn by inversion of their declared density (UNU.RAN's PINV
with u-resolution 1e-10 on continuous supports, cumulative sums of the mass
function on discrete ones). Each draw is the quantile of one uniform from the
seeded generator, so besides distribution tests (Kolmogorov-Smirnov,
chi-square, medians) the draws are held against the exact quantiles of the
very uniforms they were made from.
"""

import json
import textwrap
from pathlib import Path

import networkx as nx
import numpy as np
import pytest
from support import run_cli
import scipy.stats

import declarem
import declarem.sampling
from declarem.cli import main
from declarem.errors import FitError

ROOT = Path(__file__).resolve().parent.parent
N = 20000
SEED = 7

FAMILIES = {
    "lognormal": {"logpdf": "-(log(x) - m)**2/(2*v) - log(x) - log(2*pi*v)/2", "support": "positive",
                  "params": {"m": "real", "v": "positive"}},
    # Weibull with shape 1/2 and scale s: a pole at 0 and a long right tail.
    "weibull_half": {"logpdf": "-log(2) - log(s) - (log(x) - log(s))/2 - sqrt(x/s)", "support": "positive",
                     "params": {"s": "positive"}},
    "ztpoisson": {"logpdf": "x*log(l) - l - lgamma(x + 1) - log(1 - exp(-l))", "support": "positive-integer",
                  "params": {"l": "positive"}},
    # A normal whose variance parameter is called cov: the name must not pick the sampler.
    "covnormal": {"logpdf": "-(x - mean)**2/(2*cov) - log(2*pi*cov)/2", "support": "real",
                  "params": {"mean": "real", "cov": "positive"}},
    "mygamma": {"logpdf": "k*log(r) - lgamma(k) + (k - 1)*log(x) - r*x", "support": "positive",
                "params": {"k": "positive", "r": "positive"}},
    "mygeometric": {"logpdf": "log(p) + (x - 1)*log(1 - p)", "support": "positive-integer",
                    "params": {"p": "unit"}},
}
MIXTURE_TRUTH = {
    "z": {"probs": [0.4, 0.6]},
    "x": {"m": [0.0, 2.0], "v": [4.0, 0.25]},
    "y": {"s": [1.0, 3.0]},
    "c": {"l": [2.5, 0.4]},
    "n": {"mean": [1.0, -2.0], "cov": [4.0, 0.25]},
}


def reference(node, params, component):
    """The scipy distribution of a node of the mixture in one component."""
    p = {name: np.asarray(value, dtype=float)[component] for name, value in params[node].items()}
    if node == "x":
        return scipy.stats.lognorm(s=np.sqrt(p["v"]), scale=np.exp(p["m"]))
    if node == "y":
        return scipy.stats.weibull_min(0.5, scale=p["s"])
    if node == "n":
        return scipy.stats.norm(p["mean"], np.sqrt(p["cov"]))
    raise KeyError(node)


def ztpoisson_pmf(values, rate):
    return scipy.stats.poisson.pmf(values, rate) / -np.expm1(-rate)


def one_node(family):
    graph = nx.DiGraph()
    graph.graph["families"] = {family: FAMILIES[family]}
    graph.add_node("x", family=family)
    return declarem.Model(graph)


@pytest.fixture(scope="module")
def mixture():
    """z -> x (log-normal), y (Weibull, shape 1/2), c (zero-truncated Poisson), n (normal with `cov`)."""
    graph = nx.DiGraph()
    graph.graph["families"] = {name: FAMILIES[name] for name in ("lognormal", "weibull_half", "ztpoisson",
                                                                 "covnormal")}
    graph.add_node("z", family="categorical", latent=True, k=2)
    for node, family in (("x", "lognormal"), ("y", "weibull_half"), ("c", "ztpoisson"), ("n", "covnormal")):
        graph.add_node(node, family=family)
        graph.add_edge("z", node)
    return declarem.Model(graph)


@pytest.fixture(scope="module")
def mixture_draws(mixture):
    return mixture.sample(N, MIXTURE_TRUTH, seed=SEED)


def uniforms_by_node(model, draws):
    """Each row's uniform, per node, as sampling consumes them.

    Each node takes one block of n_rows uniforms, in the compiled model's factor
    order; a child's block goes to its distinct parameter points in sorted order
    and, within a point, to its rows in order.
    """
    rng = np.random.default_rng(SEED)
    out = {}
    for name in model.compiled.factors:
        block = rng.random(N)
        if name == "z":
            out[name] = block
            continue
        points = [tuple(np.asarray(values, dtype=float)[k] for values in MIXTURE_TRUTH[name].values())
                  for k in range(2)]
        rows = np.concatenate([np.flatnonzero(draws["z"] == k) for k in sorted(range(2), key=points.__getitem__)])
        per_row = np.empty(N)
        per_row[rows] = block
        out[name] = per_row
    return out


def test_draws_are_the_quantiles_of_their_uniforms(mixture, mixture_draws):
    """Inversion is exact to UNU.RAN's u-resolution: |F(x) - u| <= 1e-10 for every draw."""
    uniforms = uniforms_by_node(mixture, mixture_draws)
    z = mixture_draws["z"]
    for node in ("x", "y", "n"):
        for k in range(2):
            rows = z == k
            levels = reference(node, MIXTURE_TRUTH, k).cdf(mixture_draws[node][rows])
            assert np.max(np.abs(levels - uniforms[node][rows])) < 2e-10, node
    for k, rate in enumerate(MIXTURE_TRUTH["c"]["l"]):
        rows = z == k
        support = np.arange(1, 200)
        cumulative = np.cumsum(ztpoisson_pmf(support, rate))
        expected = support[np.searchsorted(cumulative, uniforms["c"][rows], side="right")]
        np.testing.assert_array_equal(mixture_draws["c"][rows], expected)


def test_heavy_tailed_lognormal_matches_scipy(mixture_draws):
    """Variance 4 on the log scale: the median is e**m, not the 20.9 of the old grid inversion."""
    for k in range(2):
        values = mixture_draws["x"][mixture_draws["z"] == k]
        truth = reference("x", MIXTURE_TRUTH, k)
        assert scipy.stats.kstest(values, truth.cdf).pvalue > 1e-3
        assert np.median(values) == pytest.approx(truth.median(), rel=0.06)
        assert np.all(values > 0)


def test_weibull_with_a_pole_at_zero_matches_scipy(mixture_draws):
    """Shape 1/2: the density is infinite at 0; the median is s log(2)**2 (0.48 at s = 1), not 0.006."""
    for k, scale in enumerate(MIXTURE_TRUTH["y"]["s"]):
        values = mixture_draws["y"][mixture_draws["z"] == k]
        assert scipy.stats.kstest(values, reference("y", MIXTURE_TRUTH, k).cdf).pvalue > 1e-3
        assert np.median(values) == pytest.approx(scale * np.log(2) ** 2, rel=0.06)


def test_zero_truncated_poisson_matches_its_mass_function(mixture_draws):
    for k, rate in enumerate(MIXTURE_TRUTH["c"]["l"]):
        values = mixture_draws["c"][mixture_draws["z"] == k].astype(int)
        assert values.min() >= 1
        top = 7
        observed = np.bincount(np.minimum(values, top), minlength=top + 1)[1:]
        probabilities = ztpoisson_pmf(np.arange(1, top), rate)
        expected = len(values) * np.append(probabilities, 1 - probabilities.sum())
        keep = expected > 5
        merged_obs = np.append(observed[keep], observed[~keep].sum())
        merged_exp = np.append(expected[keep], expected[~keep].sum())
        if merged_exp[-1] == 0:
            merged_obs, merged_exp = merged_obs[:-1], merged_exp[:-1]
        assert scipy.stats.chisquare(merged_obs, merged_exp).pvalue > 1e-3


def test_a_parameter_named_cov_does_not_choose_the_gaussian_sampler(mixture_draws):
    for k in range(2):
        values = mixture_draws["n"][mixture_draws["z"] == k]
        truth = reference("n", MIXTURE_TRUTH, k)
        assert scipy.stats.kstest(values, truth.cdf).pvalue > 1e-3
        assert np.mean(values) == pytest.approx(truth.mean(), abs=4 * truth.std() / np.sqrt(len(values)))


def test_equal_seeds_give_equal_draws(mixture, mixture_draws):
    again = mixture.sample(N, MIXTURE_TRUTH, seed=SEED)
    for column, values in mixture_draws.items():
        np.testing.assert_array_equal(again[column], values)
    other = mixture.sample(100, MIXTURE_TRUTH, seed=SEED + 1)
    assert not np.array_equal(other["x"], mixture_draws["x"][:100])


def test_built_in_families_draw_with_their_numpy_samplers():
    """Categorical, Poisson, binomial and full-covariance normal: the numpy calls, in factor order."""
    graph = nx.DiGraph()
    graph.add_node("z", family="categorical", latent=True, k=2)
    graph.add_node("c", family="poisson")
    graph.add_node("b", family="binomial", trials=5)
    graph.add_node("g", family="normal", dim=2, covariance="full")
    for child in ("c", "b", "g"):
        graph.add_edge("z", child)
    model = declarem.Model(graph)
    cov = np.array([[[1.0, 0.3], [0.3, 2.0]], [[0.5, 0.0], [0.0, 0.5]]])
    truth = {"z": {"probs": [0.3, 0.7]}, "c": {"rate": [1.5, 9.0]}, "b": {"p": [0.2, 0.9]},
             "g": {"mean": [[0.0, 1.0], [5.0, -5.0]], "cov": cov}}
    drawn = model.sample(500, truth, seed=3)
    rng = np.random.default_rng(3)
    z = (rng.random(500)[:, None] >= np.cumsum(truth["z"]["probs"])).sum(axis=1)
    replay = {
        "c": lambda: rng.poisson(np.array(truth["c"]["rate"])[z]),
        "b": lambda: rng.binomial(5, np.array(truth["b"]["p"])[z]),
        "g": lambda: np.array(truth["g"]["mean"])[z] + np.einsum("nij,nj->ni", np.linalg.cholesky(cov)[z],
                                                                rng.standard_normal((500, 2))),
    }
    # The parent is drawn first; the children in the compiled model's order, each from the same stream.
    assert list(model.compiled.factors)[0] == "z"
    expected = {name: replay[name]() for name in list(model.compiled.factors)[1:]}
    np.testing.assert_array_equal(drawn["z"], z)
    np.testing.assert_array_equal(drawn["c"], expected["c"])
    np.testing.assert_array_equal(drawn["b"], expected["b"])
    np.testing.assert_allclose(np.column_stack([drawn["g_0"], drawn["g_1"]]), expected["g"], rtol=0, atol=1e-12)


@pytest.mark.parametrize("family, params, reason", [
    # Shape 0.001: most of the mass lies below the smallest float (numpy's own gamma returns zeros).
    ("mygamma", {"k": 0.001, "r": 1.0}, "does not vanish towards x = 2.22507e-308"),
    # Mean 1e7: the tail cannot be bounded within the values a window may hold.
    ("mygeometric", {"p": 1e-7}, "tail mass cannot be bounded below 1e-12"),
])
def test_distributions_that_cannot_be_sampled_exactly_are_refused(family, params, reason):
    model = one_node(family)
    with pytest.raises(FitError) as caught:
        model.sample(100, {"x": params}, seed=0)
    message = str(caught.value)
    where = ", ".join(f"{name}={value:g}" for name, value in params.items())
    assert message.startswith(f"node 'x': cannot sample family '{family}' exactly at {where}: ")
    assert reason in message and "\n" not in message


def test_the_same_families_sample_at_ordinary_parameters():
    gamma = one_node("mygamma").sample(N, {"x": {"k": 0.3, "r": 2.0}}, seed=1)["x"]
    assert scipy.stats.kstest(gamma, scipy.stats.gamma(0.3, scale=0.5).cdf).pvalue > 1e-3
    geometric = one_node("mygeometric").sample(N, {"x": {"p": 0.01}}, seed=1)["x"]
    uniforms = np.random.default_rng(1).random(N)
    np.testing.assert_array_equal(geometric, scipy.stats.geom(0.01).ppf(uniforms))


def test_too_many_distinct_parameter_points_are_refused(mixture, monkeypatch):
    monkeypatch.setattr(declarem.sampling, "MAX_POINTS", 1)
    with pytest.raises(FitError, match="cannot sample family '[a-z]+' exactly: its parameters take 2 distinct "
                                       "values, more than the 1"):
        mixture.sample(10, MIXTURE_TRUTH, seed=0)


SPEC = """
[model]
name = "incomes"

[families.lognormal]
logpdf = "-(log(x) - m)**2/(2*v) - log(x) - log(2*pi*v)/2"
support = "positive"
params = { m = "real", v = "positive" }

[nodes.z]
family = "categorical"
latent = true
k = 2

[nodes.x]
family = "lognormal"
parents = ["z"]
"""

REFUSED_SPEC = """
[families.mygamma]
logpdf = "k*log(r) - lgamma(k) + (k - 1)*log(x) - r*x"
support = "positive"
params = { k = "positive", r = "positive" }

[nodes.x]
family = "mygamma"
"""


def run(*args, cwd):
    return run_cli(*args, cwd=cwd)


def test_command_line_samples_a_user_family(tmp_path):
    (tmp_path / "incomes.toml").write_text(SPEC)
    (tmp_path / "truth.json").write_text(json.dumps({"z": {"probs": [0.5, 0.5]},
                                                     "x": {"m": [0.0, 3.0], "v": [4.0, 1.0]}}))
    result = run("sample", "incomes.toml", "--params", "truth.json", "--n", "1000", "--seed", "2",
                 "--out", "rows.csv", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    lines = (tmp_path / "rows.csv").read_text().splitlines()
    assert lines[0] == "z,x" and len(lines) == 1001
    values = np.array([float(line.split(",")[1]) for line in lines[1:]])
    assert np.all(values > 0)


def test_command_line_refusal_is_one_line_and_exit_2(tmp_path, capsys):
    # In process (the command line's own entry point), to spare a second interpreter start.
    (tmp_path / "tiny.toml").write_text(textwrap.dedent(REFUSED_SPEC))
    (tmp_path / "truth.json").write_text(json.dumps({"x": {"k": 0.001, "r": 1.0}}))
    status = main(["sample", str(tmp_path / "tiny.toml"), "--params", str(tmp_path / "truth.json"), "--n", "1000"])
    captured = capsys.readouterr()
    assert status == 2
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in captured.err
    assert lines[0].startswith("declarem: error: node 'x': cannot sample family 'mygamma' exactly at k=0.001, r=1:")
    assert captured.out == ""
