"""Free parameters in category probabilities, deterministic (coarsening) nodes, and their M-steps."""

import json
import textwrap

import numpy as np
import pytest

import declarem
from declarem.errors import InitError, SpecError

LINKAGE_LATENT = """
[params]
theta = { domain = "unit" }
[nodes.z]
family = "categorical"
latent = true
k = 5
probs = ["1/2", "theta/4", "(1 - theta)/4", "(1 - theta)/4", "theta/4"]
[nodes.x]
family = "deterministic"
parents = ["z"]
table = [0, 0, 1, 2, 3]
"""
LINKAGE_DIRECT = """
[params]
theta = { domain = "unit" }
[nodes.x]
family = "categorical"
k = 4
probs = ["1/2 + theta/4", "(1 - theta)/4", "(1 - theta)/4", "theta/4"]
"""
ABO = """
[params]
p = { simplex = "allele" }
q = { simplex = "allele" }
r = { simplex = "allele" }
[nodes.genotype]
family = "categorical"
latent = true
k = 6
probs = ["r**2", "p**2", "2*p*r", "q**2", "2*q*r", "2*p*q"]
[nodes.phenotype]
family = "deterministic"
parents = ["genotype"]
table = [0, 1, 1, 2, 2, 3]
"""
LINKAGE_COUNTS = {"x": np.array([0.0, 1.0, 2.0, 3.0]), "count": np.array([125.0, 18.0, 20.0, 34.0])}


def load(tmp_path, text, name="spec.toml"):
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return declarem.load_model(path)


def linkage_root(counts):
    """The maximiser of the observed-data likelihood: the root in (0, 1) of its quadratic."""
    y1, y2, y3, y4 = counts
    n = y1 + y2 + y3 + y4
    a, b, c = n, -(y1 - 2 * (y2 + y3) - y4), -2 * y4
    return (-b + np.sqrt(b * b - 4 * a * c)) / (2 * a)


def test_linkage_closed_form_is_derived(tmp_path):
    derivation = load(tmp_path, LINKAGE_LATENT).derive()
    assert derivation.free.status == "closed"
    assert "theta = (n_z[1] + n_z[4])/(n_z[1] + n_z[2] + n_z[3] + n_z[4])" in str(derivation)


def test_linkage_em_reaches_the_maximum_likelihood_estimate(tmp_path):
    model = load(tmp_path, LINKAGE_LATENT)
    fit = model.fit(LINKAGE_COUNTS, weights="count", init={"theta": 0.5}, max_iter=60, tol=0)
    truth = linkage_root(LINKAGE_COUNTS["count"])
    assert fit.params["theta"] == pytest.approx(truth, rel=1e-12)
    assert np.all(np.diff(fit.history) >= -1e-12 * np.abs(fit.history[1:]))


def test_linkage_em_iterates_match_the_hand_update(tmp_path):
    """theta' = (y1 * (theta/4)/(1/2 + theta/4) + y4) / (that + y2 + y3 + y4): the DLR update."""
    model = load(tmp_path, LINKAGE_LATENT)
    y1, y2, y3, y4 = LINKAGE_COUNTS["count"]
    theta = 0.5
    expected = []
    for _ in range(5):
        split = y1 * (theta / 4) / (0.5 + theta / 4)
        theta = (split + y4) / (split + y2 + y3 + y4)
        expected.append(theta)
    for iterations, value in enumerate(expected, start=1):
        fit = model.fit(LINKAGE_COUNTS, weights="count", init={"theta": 0.5}, max_iter=iterations, tol=0)
        assert fit.params["theta"] == pytest.approx(value, rel=1e-13)


def test_direct_multinomial_closes_in_one_step(tmp_path):
    model = load(tmp_path, LINKAGE_DIRECT)
    fit = model.fit(LINKAGE_COUNTS, weights="count", init={"theta": 0.5}, max_iter=1, tol=0)
    assert fit.params["theta"] == pytest.approx(linkage_root(LINKAGE_COUNTS["count"]), rel=1e-12)
    assert model.derive().free.status == "closed"


def test_abo_gene_counting(tmp_path):
    model = load(tmp_path, ABO)
    data = {"phenotype": np.array([0.0, 1.0, 2.0, 3.0]), "count": np.array([176.0, 182.0, 60.0, 17.0])}
    fit = model.fit(data, weights="count", init={"p": 0.3, "q": 0.3, "r": 0.4}, max_iter=200, tol=0)
    p, q, r = fit.params["p"], fit.params["q"], fit.params["r"]
    assert p + q + r == pytest.approx(1.0, abs=1e-14)
    # Gene counting by hand from the same start, the classic update.
    n_o, n_a, n_b, n_ab = data["count"]
    n = n_o + n_a + n_b + n_ab
    hp, hq, hr = 0.3, 0.3, 0.4
    for _ in range(200):
        aa = n_a * hp * hp / (hp * hp + 2 * hp * hr)
        bb = n_b * hq * hq / (hq * hq + 2 * hq * hr)
        hp, hq = (2 * aa + (n_a - aa) + n_ab) / (2 * n), (2 * bb + (n_b - bb) + n_ab) / (2 * n)
        hr = 1 - hp - hq
    assert (p, q, r) == pytest.approx((hp, hq, hr), rel=1e-10)
    assert model.derive().free.status == "closed"


def test_free_parameters_round_trip_and_sample(tmp_path):
    model = load(tmp_path, ABO)
    data = model.sample(3000, {"p": 0.25, "q": 0.15, "r": 0.6}, seed=3)
    assert set(np.unique(data["phenotype"])) <= {0, 1, 2, 3}
    table = np.array([0, 1, 1, 2, 2, 3])
    np.testing.assert_array_equal(table[data["genotype"].astype(int)], data["phenotype"])
    fit = model.fit({"phenotype": data["phenotype"]})
    assert fit.params["p"] == pytest.approx(0.25, abs=0.03)
    assert fit.n_parameters == 2
    path = tmp_path / "fit.json"
    fit.save(path)
    stored = json.loads(path.read_text())
    assert isinstance(stored["params"]["p"], float)
    loaded = declarem.Fit.load(path)
    assert loaded.params["q"] == fit.params["q"]
    np.testing.assert_array_equal(loaded.posterior({"phenotype": data["phenotype"][:5]})["genotype"],
                                  fit.posterior({"phenotype": data["phenotype"][:5]})["genotype"])


def test_numeric_route_when_no_closed_form(tmp_path):
    model = load(tmp_path, """
        [params]
        a = { domain = "positive" }
        [nodes.x]
        family = "categorical"
        k = 3
        probs = ["exp(-a)", "a*exp(-a)", "1 - exp(-a) - a*exp(-a)"]
    """)
    derivation = model.derive()
    assert derivation.free.status == "numeric"
    counts = np.array([30.0, 40.0, 30.0])
    fit = model.fit({"x": np.arange(3.0), "count": counts}, weights="count", init={"a": 1.0}, max_iter=3, tol=0)
    grid = np.linspace(0.01, 5, 200001)
    loglik = counts[0] * (-grid) + counts[1] * (np.log(grid) - grid) + counts[2] * np.log1p(
        -np.exp(-grid) - grid * np.exp(-grid))
    assert fit.params["a"] == pytest.approx(grid[np.argmax(loglik)], abs=1e-4)


@pytest.mark.parametrize("text, fragment", [
    ("[params]\ntheta = { domain = \"unit\" }\n[nodes.x]\nfamily = \"categorical\"\nk = 2\n"
     "probs = [\"theta\", \"theta\"]\n", "do not sum to 1"),
    ("[params]\ntheta = { domain = \"unit\" }\nphi = { domain = \"unit\" }\n[nodes.x]\nfamily = \"categorical\"\n"
     "k = 2\nprobs = [\"theta\", \"1 - theta\"]\n", "declares phi but no node"),
    ("[params]\np = { simplex = \"s\" }\n[nodes.x]\nfamily = \"categorical\"\nk = 2\n"
     "probs = [\"p\", \"1 - p\"]\n", "simplex group 's' has only p"),
    ("[params]\ntheta = { domain = \"interval\" }\n[nodes.x]\nfamily = \"categorical\"\nk = 2\n"
     "probs = [\"theta\", \"1 - theta\"]\n", "domain 'interval'"),
    ("[nodes.z]\nfamily = \"categorical\"\nlatent = true\nk = 3\n[nodes.x]\nfamily = \"deterministic\"\n"
     "parents = [\"z\"]\ntable = [0, 1]\n", "'table' has 2 entries"),
    ("[params]\ntheta = { domain = \"unit\" }\n[nodes.x]\nfamily = \"categorical\"\nk = 2\n"
     "probs = [\"theta\", \"__import__('os')\"]\n", "not allowed"),
])
def test_free_parameter_errors(tmp_path, text, fragment):
    with pytest.raises(declarem.DeclaremError) as info:
        load(tmp_path, text)
    assert fragment in str(info.value) and "spec.toml" in str(info.value)


def test_free_parameter_init_errors(tmp_path):
    model = load(tmp_path, ABO)
    data = {"phenotype": np.array([0.0, 1.0, 2.0, 3.0])}
    with pytest.raises(InitError, match="give all of p, q, r"):
        model.fit(data, init={"p": 0.5})
    with pytest.raises(InitError, match="must sum to 1"):
        model.fit(data, init={"p": 0.5, "q": 0.4, "r": 0.4})
    with pytest.raises(InitError, match="expressions in free parameters"):
        model.fit(data, init={"genotype": {"probs": np.full(6, 1 / 6)}})
    with pytest.raises(SpecError):
        load(tmp_path, LINKAGE_LATENT.replace("theta = {", "z = {"))
