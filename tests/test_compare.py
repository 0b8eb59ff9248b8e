"""`compare`: a correct hand-coded update agrees with the derived one; a wrong one is caught."""

import textwrap
from pathlib import Path

import numpy as np
import pytest
from support import POISSON_SPEC, run_cli

import declarem
from declarem.compare import compare, load_reference
from declarem.errors import ReferenceUpdateError

ROOT = Path(__file__).resolve().parent.parent
REFERENCE = '''
import numpy as np
from scipy.stats import poisson


def step(data, params):
    """The Poisson-mixture EM update, written by hand."""
    x = data["c"]
    weights, rates = params["z"]["probs"], params["c"]["rate"]
    joint = np.log(weights) + poisson.logpmf(x[:, None], rates)
    joint -= joint.max(axis=1, keepdims=True)
    resp = np.exp(joint)
    resp /= resp.sum(axis=1, keepdims=True)
    total = resp.sum(axis=0)
    return {"z": {"probs": total / len(x)}, "c": {"rate": resp.T @ x / total}}


def wrong(data, params):
    """Off by one part in a million in the rates: small, but not rounding."""
    new = step(data, params)
    new["c"]["rate"] = new["c"]["rate"] * (1 + 1e-6)
    return new


def crashes(data, params):
    raise ValueError("boom")
'''


@pytest.fixture
def files(tmp_path):
    rng = np.random.default_rng(0)
    counts = rng.poisson(np.where(rng.random(400) < 0.4, 3.0, 11.0))
    (tmp_path / "counts.csv").write_text("c\n" + "\n".join(map(str, counts)) + "\n")
    (tmp_path / "spec.toml").write_text(textwrap.dedent(POISSON_SPEC))
    (tmp_path / "reference.py").write_text(REFERENCE)
    return tmp_path


def run(*args, cwd):
    return run_cli(*args, cwd=cwd)


def test_correct_reference_agrees(files):
    result = run("compare", "spec.toml", "--reference", "reference.py", "--iterations", "6", cwd=files)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "agree within" in result.stdout and "never fell" in result.stdout
    assert "c.rate" in result.stdout and "z.probs" in result.stdout


def test_wrong_reference_is_caught(files):
    result = run("compare", "spec.toml", "--reference", "reference.py:wrong", cwd=files)
    assert result.returncode == 1
    assert "DISAGREE" in result.stdout and "NO" in result.stdout


def test_broken_reference_is_a_user_error(files):
    result = run("compare", "spec.toml", "--reference", "reference.py:crashes", cwd=files)
    assert result.returncode == 2
    assert "boom" in result.stderr and len(result.stderr.strip().splitlines()) == 1
    missing = run("compare", "spec.toml", "--reference", "nowhere.py", cwd=files)
    assert missing.returncode == 2 and "nowhere.py" in missing.stderr


def test_python_api(files):
    model = declarem.load_model(files / "spec.toml")
    from declarem.data import read_csv
    data = read_csv(files / "counts.csv")
    step = load_reference(f"{files / 'reference.py'}:step")
    result = compare(model, data, step, iterations=5, init={"z": {"probs": [0.5, 0.5]}, "c": {"rate": [1.0, 5.0]}})
    assert result.agree and not result.reference_fell
    assert result.absolute.shape == (5, 2)
    np.testing.assert_allclose(result.derived_objective, result.reference_objective, rtol=1e-12)
    with pytest.raises(ReferenceUpdateError, match="missing c.rate"):
        compare(model, data, lambda d, p: {"z": p["z"]}, iterations=1)
