"""Declaring models: TOML and networkx give the same model; bad declarations get clear errors."""

import textwrap

import networkx as nx
import numpy as np
import pytest

import declarem
from declarem.errors import DataError, DeclaremError, FamilyError, InitError, SpecError

GMM_TOML = """
[model]
name = "gmm"

[nodes.z]
family = "categorical"
latent = true
k = 2

[nodes.x]
family = "normal"
dim = 2
covariance = "full"
parents = ["z"]
"""


def write(tmp_path, text, name="spec.toml"):
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def gmm_graph():
    graph = nx.DiGraph()
    graph.add_node("z", family="categorical", latent=True, k=2)
    graph.add_node("x", family="normal", dim=2, covariance="full")
    graph.add_edge("z", "x")
    return graph


def two_blobs(n=200, seed=0):
    rng = np.random.default_rng(seed)
    return {"x": np.concatenate([rng.normal(0, 1, (n, 2)), rng.normal(4, 1, (n, 2))])}


def test_toml_and_graph_give_the_same_model_and_fit(tmp_path):
    from_toml = declarem.load_model(write(tmp_path, GMM_TOML))
    from_graph = declarem.Model(gmm_graph())
    assert list(from_toml.nodes) == list(from_graph.nodes)
    for name in from_toml.nodes:
        a, b = from_toml.nodes[name], from_graph.nodes[name]
        assert (a.family.name, a.latent, a.k, a.parents, a.dim, a.covariance) == \
               (b.family.name, b.latent, b.k, b.parents, b.dim, b.covariance)
    data = two_blobs()
    fit_a = from_toml.fit(data, seed=3)
    fit_b = from_graph.fit(data, seed=3)
    assert fit_a.loglik == fit_b.loglik
    np.testing.assert_array_equal(fit_a.params["x"]["cov"], fit_b.params["x"]["cov"])


def test_parameter_shapes_follow_the_contract():
    graph = nx.DiGraph()
    graph.add_node("z", family="categorical", latent=True, k=3)
    graph.add_node("x", family="normal", dim=2, covariance="full")
    graph.add_node("c", family="poisson", columns=["c1", "c2", "c3"])
    graph.add_edge("z", "x")
    graph.add_edge("z", "c")
    compiled = declarem.Model(graph).compiled
    shapes = {(n, p): compiled.factors[n].external_shape(s) for n in compiled.factors
              for p, s in compiled.factors[n].params.items()}
    assert shapes == {("z", "probs"): (3,), ("x", "mean"): (3, 2), ("x", "cov"): (3, 2, 2),
                      ("c", "rate"): (3, 3)}


@pytest.mark.parametrize("covariance, shapes", [
    ("tied", {"mean": (3, 2), "cov": (2, 2)}),
    ("diag", {"mean": (3, 2), "var": (3, 2)}),
    ("spherical", {"mean": (3, 2), "var": (3,)}),
])
def test_covariance_type_shapes(covariance, shapes):
    graph = nx.DiGraph()
    graph.add_node("z", family="categorical", latent=True, k=3)
    graph.add_node("x", family="normal", dim=2, covariance=covariance)
    graph.add_edge("z", "x")
    factor = declarem.Model(graph).compiled.factors["x"]
    assert {p: factor.external_shape(s) for p, s in factor.params.items()} == shapes


def spec_error(tmp_path, text, error=SpecError):
    with pytest.raises(error) as info:
        declarem.load_model(write(tmp_path, text))
    assert isinstance(info.value, DeclaremError)
    message = str(info.value)
    assert "spec.toml" in message
    return message


def test_cycle_is_named(tmp_path):
    message = spec_error(tmp_path, """
        [nodes.a]
        family = "categorical"
        k = 2
        parents = ["b"]
        [nodes.b]
        family = "categorical"
        k = 2
        parents = ["a"]
    """)
    assert "cycle" in message and "a" in message and "b" in message


def test_unknown_family_suggests_the_nearest(tmp_path):
    message = spec_error(tmp_path, """
        [nodes.x]
        family = "poison"
    """, FamilyError)
    assert "node 'x'" in message and "did you mean 'poisson'" in message


@pytest.mark.parametrize("attrs, fragment", [
    ('family = "categorical"\nlatent = true', "needs 'k'"),
    ('family = "categorical"\nk = 1', "'k' must be an integer >= 2"),
    ('family = "binomial"', "needs 'trials'"),
    ('family = "normal"\ndim = 0', "'dim' must be a positive integer"),
    ('family = "normal"\ndim = 2\ncovariance = "banded"', "'covariance' must be one of"),
    ('family = "poisson"\nlatent = true', "latent nodes must be categorical"),
    ('family = "poisson"\nfamly = 2', "did you mean 'family'"),
    ('family = "categorical"\nk = 2\nprior = { dirichlet = 0.5 }', "MAP estimate is undefined"),
    ('family = "categorical"\nk = 2\nprior = { dirichlet = [1, 2, 3] }', "has shape (3,)"),
    ('family = "poisson"\nprior = { dirichlet = 2 }', "applies to categorical nodes"),
    ('family = "categorical"\nk = 2\nprior = { wishart = 2 }', "unknown prior"),
])
def test_node_errors_name_file_and_node(tmp_path, attrs, fragment):
    message = spec_error(tmp_path, "[nodes.x]\n" + attrs + "\n")
    assert "node 'x'" in message and fragment in message


def test_continuous_parent_of_a_family_without_a_linear_parameter_is_refused(tmp_path):
    message = spec_error(tmp_path, """
        [nodes.a]
        family = "normal"
        [nodes.b]
        family = "gamma"
        parents = ["a"]
    """)
    assert "node 'b'" in message and "parent 'a'" in message and "no linear parameter" in message


def test_missing_parent_is_named(tmp_path):
    message = spec_error(tmp_path, """
        [nodes.b]
        family = "poisson"
        parents = ["ghost"]
    """)
    assert "ghost" in message


def test_invalid_toml_names_the_file(tmp_path):
    assert "not valid TOML" in spec_error(tmp_path, "[nodes.x\nfamily=")


def test_user_family_errors(tmp_path):
    message = spec_error(tmp_path, """
        [families.odd]
        logpdf = "x*log(l) - l"
        support = "positive"
        params = { l = "somewhere" }
        [nodes.x]
        family = "odd"
    """, FamilyError)
    assert "domain" in message
    message = spec_error(tmp_path, """
        [families.evil]
        logpdf = "__import__('os').getcwd()"
        support = "real"
        params = { l = "real" }
        [nodes.z]
        family = "categorical"
        latent = true
        k = 2
        [nodes.x]
        family = "evil"
        parents = ["z"]
    """, DeclaremError)
    assert "not allowed" in message


def test_observed_node_missing_from_data():
    model = declarem.Model(gmm_graph())
    with pytest.raises(DataError, match="node 'x'.*columns y"):
        model.fit({"y": np.zeros(10)})


def test_negative_poisson_count_names_column_and_row():
    graph = nx.DiGraph()
    graph.add_node("z", family="categorical", latent=True, k=2)
    graph.add_node("c", family="poisson")
    graph.add_edge("z", "c")
    with pytest.raises(DataError) as info:
        declarem.Model(graph).fit({"c": np.array([1.0, 2.0, 0.0, -3.0, 4.0])})
    assert "column 'c'" in str(info.value) and "row 3" in str(info.value)


def test_category_out_of_range_names_row():
    graph = nx.DiGraph()
    graph.add_node("z", family="categorical", latent=True, k=2)
    graph.add_node("q", family="categorical", k=3)
    graph.add_edge("z", "q")
    with pytest.raises(DataError, match="row 2.*0..2"):
        declarem.Model(graph).fit({"q": np.array([0, 1, 3, 2])})


@pytest.mark.parametrize("init, fragment", [
    ({"x": {"mean": np.zeros((3, 2))}}, "shape (3, 2); expected (2, 2)"),
    ({"x": {"scale": np.ones(2)}}, "no parameter 'scale'"),
    ({"w": {"mean": np.zeros(2)}}, "'w' is not a node"),
    ({"z": {"probs": [0.7, 0.7]}}, "summing to 1"),
    ({"x": {"cov": -np.ones((2, 2, 2))}}, "positive definite"),
])
def test_init_errors(init, fragment):
    with pytest.raises(InitError) as info:
        declarem.Model(gmm_graph()).fit(two_blobs(), init=init)
    assert fragment in str(info.value)


def test_unnormalised_custom_density_is_refused(tmp_path):
    model = declarem.load_model(write(tmp_path, """
        [families.halfnorm]
        logpdf = "log(x) - x**2/(2*s**2)"
        support = "positive"
        params = { s = "positive" }
        [nodes.z]
        family = "categorical"
        latent = true
        k = 2
        [nodes.x]
        family = "halfnorm"
        parents = ["z"]
    """))
    with pytest.raises(FamilyError, match="node 'x'.*not normalised"):
        model.derive()


def test_integer_support_family_derives_and_fits(tmp_path):
    model = declarem.load_model(write(tmp_path, """
        [families.discrete_laplace]
        logpdf = "-l*abs(x) + log(1 - exp(-l)) - log(1 + exp(-l))"
        support = "integer"
        params = { l = "positive" }
        [nodes.z]
        family = "categorical"
        latent = true
        k = 2
        [nodes.x]
        family = "discrete_laplace"
        parents = ["z"]
    """))
    assert model.derive()["x"].status == "closed"
    truth = {"z": {"probs": np.array([0.5, 0.5])}, "x": {"l": np.array([0.3, 2.0])}}
    data = model.sample(4000, truth, seed=2)
    assert (data["x"] < 0).any()
    fit = model.fit({"x": data["x"]}, restarts=2)
    np.testing.assert_allclose(np.sort(fit.params["x"]["l"]), [0.3, 2.0], rtol=0.15)


def test_spec_weights_apply_in_python(tmp_path):
    path = write(tmp_path, """
        [data]
        path = "coins.csv"
        weights = "count"
        [nodes.z]
        family = "categorical"
        latent = true
        k = 2
        [nodes.heads]
        family = "binomial"
        trials = 10
        parents = ["z"]
    """)
    model = declarem.load_model(path)
    heads = np.array([5.0, 9.0, 8.0, 4.0, 7.0])
    count = np.array([2.0, 1.0, 3.0, 1.0, 2.0])
    init = {"z": {"probs": [0.5, 0.5]}, "heads": {"p": [0.6, 0.5]}}
    weighted = model.fit({"heads": heads, "count": count}, init=init, max_iter=5, tol=0)
    repeated = model.fit({"heads": np.repeat(heads, count.astype(int))}, init=init, max_iter=5, tol=0,
                         weights=np.ones(9))
    assert weighted.n_observations == 9.0
    np.testing.assert_allclose(weighted.params["heads"]["p"], repeated.params["heads"]["p"], rtol=1e-12)


def test_deterministic_node_needs_one_parent(tmp_path):
    message = spec_error(tmp_path, """
        [nodes.x]
        family = "deterministic"
        table = [0, 1]
    """)
    assert "exactly one parent" in message
