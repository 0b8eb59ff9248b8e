"""Textbook EM problems in the catalog, fitted by declarem and held to their published figures.

* models/genetic_linkage.toml: Dempster, Laird and Rubin (1977), Section 1 and Table 1 (iterates from
  theta = 0.5, the ratio of successive deviations, theta* = 0.6268214980).
* models/abo.toml: gene counting on Clarke et al.'s (1959) duodenal-ulcer ABO data, as in Lange (2002);
  held to the exact maximum-likelihood estimate computed here independently (scipy on the observed
  likelihood), and to Lange's four-decimal figures (0.2136, 0.0501, 0.7363).
* models/two_coins_fixed.toml: Do and Batzoglou (2008), ten iterations from (0.6, 0.5) with the coin
  chosen with probability 1/2: (0.80, 0.52).

Exact arithmetic (fractions) and closed forms are computed in this file, not taken from declarem.
"""

import csv
import math
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
from scipy import optimize

import declarem
from support import load_file

ROOT = Path(__file__).resolve().parent.parent
MODELS = ROOT / "models"


def read_csv(path):
    with open(path, newline="") as handle:
        rows = list(csv.DictReader(handle))
    return {name: np.array([float(row[name]) for row in rows]) for name in rows[0]}


def load(name):
    return declarem.load_model(str(MODELS / f"{name}.toml"))


def reference(name):
    return load_file(MODELS / f"{name}_reference.py", f"textbook_{name}")


# ---------------------------------------------------------------------------------------------
# Genetic linkage: Dempster, Laird and Rubin (1977), J. R. Statist. Soc. B 39:1-38, Section 1
# ---------------------------------------------------------------------------------------------

DLR_COUNTS = (125, 18, 20, 34)
# Table 1, column pi^(p), p = 0..8, as printed.
DLR_TABLE_1 = [0.500000000, 0.608247423, 0.624321051, 0.626488879, 0.626777323, 0.626815632,
               0.626820719, 0.626821395, 0.626821484]
# Table 1, column (pi^(p+1) - pi*) / (pi^(p) - pi*), p = 0..5.
DLR_RATIOS = [0.1465, 0.1346, 0.1330, 0.1328, 0.1328, 0.1328]
DLR_THETA_STAR = 0.6268214980                 # printed (15 + sqrt(53809)) / 394
EXACT_THETA_STAR = (15 + math.sqrt(53809)) / 394


def dlr_exact_iterates(n):
    """(1.4) and (1.5) in exact rational arithmetic from theta = 1/2."""
    y1, y2, y3, y4 = (Fraction(c) for c in DLR_COUNTS)
    theta = Fraction(1, 2)
    out = [theta]
    for _ in range(n):
        x2 = y1 * (theta / 4) / (Fraction(1, 2) + theta / 4)
        theta = (x2 + y4) / (x2 + y2 + y3 + y4)
        out.append(theta)
    return [float(t) for t in out]


@pytest.fixture(scope="module")
def linkage():
    return load("genetic_linkage"), read_csv(MODELS / "genetic_linkage.csv")


def test_linkage_data_are_the_papers(linkage):
    _, data = linkage
    counts = np.bincount(data["x"].astype(int), weights=data["count"], minlength=4)
    assert tuple(counts) == DLR_COUNTS


def test_linkage_quadratic_root_is_the_printed_estimate():
    """The closed form of Section 1, computed here: the printed 0.6268214980 is its value to 9 decimals
    (the tenth printed digit is one unit high: the root is 0.62682149787...)."""
    assert EXACT_THETA_STAR == pytest.approx(reference("genetic_linkage").mle(DLR_COUNTS), abs=1e-15)
    assert abs(EXACT_THETA_STAR - DLR_THETA_STAR) < 2e-10
    assert round(EXACT_THETA_STAR, 9) == round(DLR_THETA_STAR, 9)


def test_linkage_derives_the_papers_m_step(linkage):
    model, _ = linkage
    derivation = model.derive()
    assert derivation.free.status == "closed"
    assert "theta = (n_z[1] + n_z[4])/(n_z[1] + n_z[2] + n_z[3] + n_z[4])" in str(derivation)


def test_linkage_reproduces_table_1(linkage):
    """declarem's iterates from theta = 0.5 are the paper's Table 1 (to one unit in its ninth decimal)
    and exact arithmetic (to 1e-12)."""
    model, data = linkage
    exact = dlr_exact_iterates(8)
    got = [0.5]
    for n in range(1, 9):
        fit = model.fit(data, init={"theta": 0.5}, max_iter=n, tol=0)
        assert fit.n_iter == n
        got.append(fit.params["theta"])
        assert isinstance(fit.params["theta"], float)
    np.testing.assert_allclose(got, exact, rtol=0, atol=1e-12)
    np.testing.assert_allclose(got, DLR_TABLE_1, rtol=0, atol=1e-9)
    ratios = [(got[p + 1] - EXACT_THETA_STAR) / (got[p] - EXACT_THETA_STAR) for p in range(6)]
    assert [round(r, 4) for r in ratios] == DLR_RATIOS


def test_linkage_converges_to_the_maximum_likelihood_estimate(linkage):
    model, data = linkage
    fit = model.fit(data, init={"theta": 0.5}, max_iter=40, tol=0)
    assert fit.params["theta"] == pytest.approx(EXACT_THETA_STAR, abs=1e-12)
    assert abs(fit.params["theta"] - DLR_THETA_STAR) < 2e-10
    np.testing.assert_allclose(fit.params["z"]["probs"],
                               reference("genetic_linkage").cell_probs(EXACT_THETA_STAR), atol=1e-12)
    assert np.all(np.diff(fit.history) >= -1e-12 * np.abs(fit.history[1:]))
    # the observed-data log-likelihood (without the multinomial coefficient), computed here
    y = np.array(DLR_COUNTS, dtype=float)
    t = EXACT_THETA_STAR
    assert fit.loglik == pytest.approx(float(y @ np.log([0.5 + t / 4, (1 - t) / 4, (1 - t) / 4, t / 4])),
                                       rel=1e-12)


def test_linkage_from_the_seeded_start(linkage):
    """No init: the default (seeded) start reaches the same estimate."""
    model, data = linkage
    fit = model.fit(data, seed=0, tol=0, max_iter=60)      # the objective is flat long before theta is
    assert fit.params["theta"] == pytest.approx(EXACT_THETA_STAR, abs=1e-12)


LINKAGE_DIRECT = """
[params]
theta = { domain = "unit" }

[nodes.x]
family = "categorical"
k = 4
probs = ["1/2 + theta/4", "(1 - theta)/4", "(1 - theta)/4", "theta/4"]
"""


def test_linkage_declared_without_the_latent_split(linkage, tmp_path):
    """The same likelihood declared on the four observed cells: no latent node, and the derived M-step
    is the root of the quadratic, so one iteration lands on theta* (Rao's problem solved directly)."""
    _, data = linkage
    path = tmp_path / "direct.toml"
    path.write_text(LINKAGE_DIRECT)
    model = declarem.load_model(str(path))
    assert model.derive().free.status == "closed"
    fit = model.fit(data, weights="count", init={"theta": 0.5}, max_iter=1, tol=0)
    assert fit.params["theta"] == pytest.approx(EXACT_THETA_STAR, abs=1e-13)
    latent = load("genetic_linkage").fit(data, init={"theta": 0.5}, max_iter=40, tol=0)
    assert fit.loglik == pytest.approx(latent.loglik, rel=1e-12)


# ---------------------------------------------------------------------------------------------
# ABO blood groups: Clarke et al. (1959) duodenal-ulcer data, as in Lange (2002), chapter 2
# ---------------------------------------------------------------------------------------------

ABO_COUNTS = {"O": 284, "A": 186, "B": 38, "AB": 13}      # phenotype codes 0, 1, 2, 3 in models/abo.csv
LANGE = {"p": 0.2136, "q": 0.0501, "r": 0.7363}            # A, B, O allele frequencies, four decimals


def abo_observed_loglik(p, q, counts=ABO_COUNTS):
    r = 1.0 - p - q
    return (counts["O"] * math.log(r * r) + counts["A"] * math.log(p * p + 2 * p * r)
            + counts["B"] * math.log(q * q + 2 * q * r) + counts["AB"] * math.log(2 * p * q))


def abo_exact_mle():
    """Maximise the observed four-cell likelihood directly (no EM): the root of its score in (p, q)."""
    n_o, n_a, n_b, n_ab = (ABO_COUNTS[g] for g in ("O", "A", "B", "AB"))

    def score(v):
        p, q = v
        r = 1.0 - p - q
        a, b = p * p + 2 * p * r, q * q + 2 * q * r          # P(A), P(B); d/dp and d/dq with r = 1 - p - q
        return [-2 * n_o / r + n_a * 2 * r / a - n_b * 2 * q / b + n_ab / p,
                -2 * n_o / r - n_a * 2 * p / a + n_b * 2 * r / b + n_ab / q]

    solution = optimize.root(score, [0.25, 0.1], tol=1e-14)
    assert solution.success
    p, q = solution.x
    # it is the maximum: the observed log-likelihood is lower at nearby points
    best = abo_observed_loglik(p, q)
    for dp, dq in ((1e-4, 0), (-1e-4, 0), (0, 1e-4), (0, -1e-4), (1e-4, -1e-4)):
        assert abo_observed_loglik(p + dp, q + dq) < best
    return {"p": p, "q": q, "r": 1.0 - p - q}


@pytest.fixture(scope="module")
def abo():
    return load("abo"), read_csv(MODELS / "abo.csv")


def test_abo_data_are_the_published_counts(abo):
    _, data = abo
    counts = np.bincount(data["phenotype"].astype(int), weights=data["count"], minlength=4)
    assert tuple(counts) == tuple(ABO_COUNTS[g] for g in ("O", "A", "B", "AB"))
    assert counts.sum() == 521


def test_abo_derives_gene_counting(abo):
    model, _ = abo
    derivation = model.derive()
    assert derivation.free.status == "closed"
    text = str(derivation)
    assert "p = (n_genotype[1] + n_genotype[2]/2 + n_genotype[5]/2)/" in text
    assert "r = (n_genotype[0] + n_genotype[2]/2 + n_genotype[4]/2)/" in text


def test_abo_reaches_the_exact_mle_and_langes_figures(abo):
    model, data = abo
    exact = abo_exact_mle()
    assert {k: round(v, 4) for k, v in exact.items()} == LANGE
    fit = model.fit(data, init={"p": 1 / 3, "q": 1 / 3, "r": 1 / 3}, max_iter=100, tol=0)
    for name in "pqr":
        assert isinstance(fit.params[name], float)
        assert fit.params[name] == pytest.approx(exact[name], abs=1e-10), name
        assert round(fit.params[name], 4) == LANGE[name]
    assert fit.params["p"] + fit.params["q"] + fit.params["r"] == pytest.approx(1.0, abs=1e-14)
    assert fit.loglik == pytest.approx(abo_observed_loglik(exact["p"], exact["q"]), rel=1e-12)
    assert np.all(np.diff(fit.history) >= -1e-12 * np.abs(fit.history[1:]))


def test_abo_iterates_are_gene_counting(abo):
    """Each EM iteration is one round of hand-coded gene counting (models/abo_reference.py)."""
    model, data = abo
    ref = reference("abo")
    params = {"p": 0.3, "q": 0.2, "r": 0.5}
    for n in range(1, 5):
        params = ref.step(data, params)
        fit = model.fit(data, init={"p": 0.3, "q": 0.2, "r": 0.5}, max_iter=n, tol=0)
        for name in "pqr":
            assert fit.params[name] == pytest.approx(params[name], abs=1e-13), (n, name)
        np.testing.assert_allclose(fit.params["genotype"]["probs"], params["genotype"]["probs"], atol=1e-13)


# ---------------------------------------------------------------------------------------------
# Two coins: Do and Batzoglou (2008), Nature Biotechnology 26:897-899, Figure 1b
# ---------------------------------------------------------------------------------------------

PAPER_START = {"heads": {"p": [0.6, 0.5]}}


@pytest.fixture(scope="module")
def coins():
    return load("two_coins_fixed"), read_csv(MODELS / "two_coins.csv")


def test_two_coins_fixed_reference_gives_the_papers_figures(coins):
    """The hand-coded update with the coin chosen with probability 1/2: (0.80, 0.52) after ten iterations."""
    _, data = coins
    params = reference("two_coins").run(data, {"z": {"probs": [0.5, 0.5]}, **PAPER_START}, 10, fixed=True)
    assert np.round(params["heads"]["p"], 2).tolist() == [0.80, 0.52]


def test_two_coins_fixed_reproduces_the_paper(coins):
    """declarem on two_coins_fixed.toml: ten iterations from the paper's start give (0.80, 0.52)."""
    model, data = coins
    fit = model.fit(data, init=PAPER_START, max_iter=10, tol=0)
    expected = reference("two_coins").run(data, {"z": {"probs": [0.5, 0.5]}, **PAPER_START}, 10, fixed=True)
    assert fit.n_iter == 10
    np.testing.assert_allclose(fit.params["heads"]["p"], expected["heads"]["p"], rtol=0, atol=1e-12)
    np.testing.assert_allclose(fit.params["z"]["probs"], [0.5, 0.5], atol=0)
    assert np.round(fit.params["heads"]["p"], 2).tolist() == [0.80, 0.52]


def test_two_coins_fixed_converges_to_the_papers_fixed_point(coins):
    """From the default seeded start, EM with the coin probabilities held at 1/2 reaches the point the
    paper's iteration converges to (up to which coin is called A)."""
    model, data = coins
    fit = model.fit(data, seed=0, tol=0, max_iter=300)
    limit = reference("two_coins").run(data, {"z": {"probs": [0.5, 0.5]}, **PAPER_START}, 300, fixed=True)
    np.testing.assert_allclose(sorted(fit.params["heads"]["p"]), sorted(limit["heads"]["p"]), atol=1e-7)
    np.testing.assert_allclose(fit.params["z"]["probs"], [0.5, 0.5], atol=0)
    # two free parameters (the biases): the constant coin probabilities are not counted
    assert fit.bic() == pytest.approx(-2 * fit.loglik + 2 * math.log(5), rel=1e-12)
