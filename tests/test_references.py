"""Hand-coded reference updates in models/*_reference.py agree with declarem's derived updates, and the
generated model catalog pages (docs/models/) are fresh.

Each reference is a plain-numpy ``step(data, params) -> params`` written from its source's formulas
(the recitation's GMM updates, the Poisson and binomial mixtures, Dempster, Laird and Rubin's (1.4)-(1.5),
gene counting). ``declarem compare SPEC --reference FILE.py[:FUNCTION]`` must exit 0 for each, the Python
API ``declarem.compare.compare`` must report agreement, and a reference with a deliberate, plausible
mistake must make ``compare`` exit 1.
"""

import csv
import json
import textwrap
from pathlib import Path

import numpy as np
import pytest

import declarem
from declarem.cli import main
from declarem.compare import compare, load_reference

ROOT = Path(__file__).resolve().parent.parent
MODELS = ROOT / "models"

# spec, reference (FILE[:FUNCTION]), start (None: declarem's seeded start)
CASES = {
    "gmm": ("gmm", "gmm_reference.py", None),
    "poisson_mixture": ("poisson_mixture", "poisson_mixture_reference.py", None),
    "two_coins": ("two_coins", "two_coins_reference.py",
                  {"z": {"probs": [0.5, 0.5]}, "heads": {"p": [0.6, 0.5]}}),
    "two_coins_fixed": ("two_coins_fixed", "two_coins_reference.py:step_fixed", {"heads": {"p": [0.6, 0.5]}}),
    "genetic_linkage": ("genetic_linkage", "genetic_linkage_reference.py", {"theta": 0.5}),
    "genetic_linkage_seeded": ("genetic_linkage", "genetic_linkage_reference.py", None),
    "abo": ("abo", "abo_reference.py", {"p": 0.3, "q": 0.2, "r": 0.5}),
    "abo_seeded": ("abo", "abo_reference.py", None),
    "earthquakes_hmm2": ("earthquakes_hmm2", "poisson_hmm_reference.py",
                         {"z": {"start": [0.5, 0.5], "probs": [[0.9, 0.1], [0.1, 0.9]]}, "count": {"rate": [10.0, 30.0]}}),
    "earthquakes_hmm3_seeded": ("earthquakes_hmm3", "poisson_hmm_reference.py", None),
    "gaussian_hmm": ("gaussian_hmm", "gaussian_hmm_reference.py",
                     {"z": {"start": [0.4, 0.3, 0.3], "probs": [[0.8, 0.1, 0.1], [0.1, 0.8, 0.1], [0.1, 0.1, 0.8]]},
                      "x": {"mean": [[0.5, 0.5], [2.5, 1.5], [-0.5, 3.5]], "var": [[1.0, 1.0], [1.0, 1.0], [1.0, 1.0]]}}),
    "gaussian_hmm_seeded": ("gaussian_hmm", "gaussian_hmm_reference.py", None),
    "categorical_hmm": ("categorical_hmm", "categorical_hmm_reference.py",
                        {"z": {"start": [0.5, 0.5], "probs": [[0.9, 0.1], [0.2, 0.8]]},
                         "x": {"probs": [[0.25, 0.25, 0.25, 0.25], [0.2, 0.2, 0.2, 0.4]]}}),
    "categorical_hmm_seeded": ("categorical_hmm", "categorical_hmm_reference.py", None),
    "regression_mixture": ("regression_mixture", "regression_mixture_reference.py", None),
    "poisson_regression": ("poisson_regression", "poisson_regression_reference.py", None),
    "negbin_mixture": ("negbin_mixture", "negbin_mixture_reference.py", None),
    "weibull_mixture": ("weibull_mixture", "weibull_mixture_reference.py", None),
}



def read_csv(path):
    with open(path, newline="") as handle:
        rows = list(csv.DictReader(handle))
    return {name: np.array([float(row[name]) for row in rows]) for name in rows[0]}


def data_of(spec):
    import tomllib
    with open(MODELS / f"{spec}.toml", "rb") as handle:
        path = tomllib.load(handle)["data"]["path"]
    return read_csv(MODELS / path)


def run_compare(arguments, capsys):
    status = main(["compare", *arguments])
    output = capsys.readouterr()
    return status, output.out + output.err


@pytest.mark.parametrize("case", list(CASES))
def test_command_line_compare_agrees(case, tmp_path, capsys):
    spec, ref, start = CASES[case]
    arguments = [str(MODELS / f"{spec}.toml"), "--reference", str(MODELS / ref), "--iterations", "10"]
    if start is not None:
        init = tmp_path / "init.json"
        init.write_text(json.dumps(start))
        arguments += ["--init", str(init)]
    status, output = run_compare(arguments, capsys)
    assert status == 0, output
    assert "agree within" in output and "DISAGREE" not in output
    assert "never fell" in output


@pytest.mark.parametrize("case", list(CASES))
def test_python_compare_agrees(case):
    spec, ref, start = CASES[case]
    model = declarem.load_model(str(MODELS / f"{spec}.toml"))
    step = load_reference(str(MODELS / ref))
    result = compare(model, data_of(spec), step, init=start, iterations=12)
    assert result.agree, "\n".join(result.table())
    assert result.reference_fell == []
    assert result.absolute.shape == (12, len(result.names))
    # both objectives are the same function of equal parameters
    np.testing.assert_allclose(result.derived_objective, result.reference_objective, rtol=1e-10)


WRONG_GMM = '''
import importlib.util
import numpy as np

_spec = importlib.util.spec_from_file_location("gmm_reference", {path!r})
_ref = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_ref)


def step(data, params):
    """A classic slip: the covariance about the OLD mean mu^(t), not the recitation's mu^(t+1)."""
    new = _ref.step(data, params)
    old_mean = np.asarray(params["x"]["mean"], dtype=float)
    x = _ref._points(data, old_mean.shape[1])
    resp = _ref.responsibilities(data, params)
    for i in range(old_mean.shape[0]):
        centred = x - old_mean[i]
        new["x"]["cov"][i] = (resp[:, i, None] * centred).T @ centred / resp[:, i].sum()
    return new
'''

WRONG_ABO = '''
import importlib.util
import numpy as np

_spec = importlib.util.spec_from_file_location("abo_reference", {path!r})
_ref = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_ref)


def step(data, params):
    """Gene counting with the heterozygotes' factor 2 forgotten: P(AO) taken as p r instead of 2 p r."""
    n_o, n_a, n_b, n_ab = _ref.counts(data)
    p, q, r = (float(params[name]) for name in ("p", "q", "r"))
    n_aa = n_a * p * p / (p * p + p * r)
    n_ao = n_a - n_aa
    n_bb = n_b * q * q / (q * q + q * r)
    n_bo = n_b - n_bb
    alleles = 2.0 * (n_o + n_a + n_b + n_ab)
    p, q, r = ((2 * n_aa + n_ao + n_ab) / alleles, (2 * n_bb + n_bo + n_ab) / alleles,
               (2 * n_o + n_ao + n_bo) / alleles)
    return {{"p": p, "q": q, "r": r}}
'''


@pytest.mark.parametrize("spec, template, reference, wrong", [
    ("gmm", WRONG_GMM, "gmm_reference.py", "x.cov"),
    ("abo", WRONG_ABO, "abo_reference.py", "p"),
], ids=["gmm-covariance-about-the-old-mean", "abo-heterozygote-factor-forgotten"])
def test_a_wrong_catalog_reference_fails(spec, template, reference, wrong, tmp_path, capsys):
    path = tmp_path / f"wrong_{spec}.py"
    path.write_text(textwrap.dedent(template.format(path=str(MODELS / reference))))
    status, output = run_compare([str(MODELS / f"{spec}.toml"), "--reference", str(path)], capsys)
    assert status == 1, output
    assert "DISAGREE" in output
    lines = [line for line in output.splitlines() if line.startswith(wrong + " ")]
    assert lines and lines[0].rstrip().endswith("NO"), output

    model = declarem.load_model(str(MODELS / f"{spec}.toml"))
    result = compare(model, data_of(spec), load_reference(str(path)), iterations=3)
    assert not result.agree
    column = result.names.index(wrong)
    assert not result.within[:, column].all()
    if spec == "gmm":     # the slip is in the covariance alone: weights and means still agree at step 1
        assert result.within[0, result.names.index("z.probs")] and result.within[0, result.names.index("x.mean")]


def test_every_reference_names_its_spec():
    """Each models/*_reference.py file is exercised above, against the spec it is named after."""
    references = {p.name for p in MODELS.glob("*_reference.py")}
    covered = {ref.split(":")[0] for _, ref, _ in CASES.values()} | {"topic_model_reference.py"}
    assert references <= covered, references - covered


# ---------------------------------------------------------------------------------------------
# The catalog pages in docs/models/
# ---------------------------------------------------------------------------------------------

def test_catalog_pages_are_fresh(page_generator):
    generator = page_generator
    pages = generator.render()
    assert set(pages) == {f"{p.stem}.md" for p in MODELS.glob("*.toml")} | {"index.md"}
    stale = generator.stale(pages)
    assert not stale, f"docs/models is stale ({', '.join(stale)}): run python docs/generate_models.py"
    index = pages["index.md"]
    for path in MODELS.glob("*.toml"):
        page = pages[f"{path.stem}.md"]
        assert f"]({path.stem}.md)" in index
        assert path.read_text().rstrip("\n") in page               # the spec, verbatim
        assert "```mermaid" in page and "\\begin{align*}" in page and "log-likelihood:" in page
