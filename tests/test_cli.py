"""The command line: fit, derive, check, sample; exit status 2 with one line for user errors."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from support import POISSON_SPEC, run_cli

ROOT = Path(__file__).resolve().parent.parent
def run(*args, cwd=ROOT):
    return run_cli(*args, cwd=cwd)


def run_process(*args, cwd=ROOT):
    """The real ``python -m declarem``, with the checkout on the path (so no install is needed)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    return subprocess.run([sys.executable, "-m", "declarem", *map(str, args)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


@pytest.fixture
def spec(tmp_path):
    path = tmp_path / "counts.toml"
    path.write_text(POISSON_SPEC)
    rng = np.random.default_rng(0)
    counts = rng.poisson(np.where(rng.random(300) < 0.5, 2.0, 12.0))
    (tmp_path / "counts.csv").write_text("c\n" + "\n".join(str(v) for v in counts) + "\n")
    return path


def test_fit_writes_json_and_shows_progress(spec, tmp_path):
    out = tmp_path / "fit.json"
    result = run_process("fit", spec, "--out", out, "--seed", "2")
    assert result.returncode == 0, result.stderr
    assert "iter     1" in result.stderr and "objective" in result.stderr and "change" in result.stderr
    stored = json.loads(out.read_text())
    assert {"loglik", "n_iter", "converged", "history", "params"} <= set(stored)
    assert sorted(np.round(stored["params"]["c"]["rate"])) == [2.0, 12.0]
    assert stored["history"][-1] == stored["loglik"]


def test_fit_options_reach_the_loop(spec, tmp_path):
    result = run("fit", spec, "--max-iter", "3", "--tol", "0", "--quiet")
    assert result.returncode == 0, result.stderr
    stored = json.loads(result.stdout)
    assert stored["n_iter"] == 3 and not stored["converged"] and len(stored["history"]) == 4
    assert result.stderr == ""


def test_derive_text_and_latex(spec):
    text = run("derive", spec)
    assert text.returncode == 0 and "rate = E[x]" in text.stdout
    latex = run("derive", spec, "--latex")
    assert latex.returncode == 0
    assert latex.stdout.startswith("\\documentclass") and "\\end{document}" in latex.stdout


def test_check(spec):
    result = run("check", spec)
    assert result.returncode == 0, result.stderr
    assert "valid" in result.stdout and "300 rows" in result.stdout


def test_sample_then_fit(spec, tmp_path):
    params = tmp_path / "params.json"
    params.write_text(json.dumps({"z": {"probs": [0.3, 0.7]}, "c": {"rate": [1.0, 20.0]}}))
    data = tmp_path / "sampled.csv"
    result = run("sample", spec, "--params", params, "--n", "2000", "--seed", "4", "--out", data)
    assert result.returncode == 0, result.stderr
    header = data.read_text().splitlines()[0]
    assert header.split(",") == ["z", "c"]
    again = run("sample", spec, "--params", params, "--n", "2000", "--seed", "4")
    assert again.stdout == data.read_text()
    fitted = run("fit", spec, "--data", data, "--quiet")
    rates = sorted(json.loads(fitted.stdout)["params"]["c"]["rate"])
    assert rates == pytest.approx([1.0, 20.0], rel=0.1)


@pytest.mark.parametrize("args, fragment", [
    (["fit", "missing.toml"], "missing.toml: no such spec file"),
    (["fit", "{spec}", "--max-iter", "-2"], "max_iter"),
    (["fit", "{spec}", "--data", "{bad}"], "column 'c', row 1"),
    (["fit", "{spec}", "--bogus"], "unrecognized arguments"),
    (["derive", "{broken}"], "unknown family 'poison'"),
])
def test_user_errors_exit_2_with_one_line(spec, tmp_path, args, fragment):
    bad = tmp_path / "bad.csv"
    bad.write_text("c\n1\n-4\n2\n")
    broken = tmp_path / "broken.toml"
    broken.write_text(textwrap.dedent("""
        [nodes.c]
        family = "poison"
    """))
    filled = [a.format(spec=spec, bad=bad, broken=broken) for a in args]
    result = run(*filled, cwd=tmp_path)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr
    assert fragment in lines[0]


def test_csv_triples_are_weighted_by_count_when_the_spec_declares_a_matrix(tmp_path):
    (tmp_path / "topics.toml").write_text(textwrap.dedent("""
        [data]
        path = "cells.csv"
        rows = "doc"
        columns = "word"
        [nodes.doc]
        family = "categorical"
        k = 3
        [nodes.topic]
        family = "categorical"
        latent = true
        k = 2
        parents = ["doc"]
        [nodes.word]
        family = "categorical"
        k = 4
        parents = ["topic"]
    """))
    (tmp_path / "cells.csv").write_text("doc,word,count\n0,0,5\n0,1,3\n1,2,4\n2,3,7\n2,0,1\n")
    import scipy.sparse
    matrix = scipy.sparse.csr_matrix(np.array([[5, 3, 0, 0], [0, 0, 4, 0], [1, 0, 0, 7]]))
    scipy.sparse.save_npz(tmp_path / "cells.npz", matrix)
    from_csv = run("fit", "topics.toml", "--quiet", "--max-iter", "5", "--tol", "0", cwd=tmp_path)
    from_npz = run("fit", "topics.toml", "--data", "cells.npz", "--quiet", "--max-iter", "5", "--tol", "0",
                   cwd=tmp_path)
    assert from_csv.returncode == 0 and from_npz.returncode == 0, from_csv.stderr + from_npz.stderr
    assert json.loads(from_csv.stdout)["n_observations"] == 20.0
    assert json.loads(from_npz.stdout)["n_observations"] == 20.0


def test_a_bare_declarem_lists_the_commands_and_version_and_defaults_show():
    bare = run()
    assert bare.returncode == 0 and "COMMAND" in bare.stdout
    for command in ("fit", "derive", "check", "sample", "compare", "decode", "top"):
        assert f"    {command} " in bare.stdout
    version = run("--version")
    assert version.returncode == 0 and version.stdout.startswith("declarem ")
    helped = run("fit", "--help")
    text = " ".join(helped.stdout.split())
    assert "[fit] max_iter, else 1000)" in text and "[fit] tol, else 1e-08)" in text
    assert "(default: 0)" in helped.stdout                       # --seed: a default of 0 is shown too


class _Terminal:
    """A captured stream that says it is a terminal."""

    def __init__(self):
        import io
        self.buffer = io.StringIO()

    def write(self, text):
        return self.buffer.write(text)

    def flush(self):
        pass

    def isatty(self):
        return True


def test_on_a_terminal_fit_prints_a_summary_and_one_progress_line(spec, monkeypatch):
    from declarem import cli
    out, err = _Terminal(), _Terminal()
    monkeypatch.setattr(sys, "stdout", out)
    monkeypatch.setattr(sys, "stderr", err)
    assert cli.main(["fit", str(spec), "--restarts", "2"]) == 0
    summary, progress = out.buffer.getvalue(), err.buffer.getvalue()
    assert summary.startswith("model 'counts': converged after") and "c.rate = [" in summary
    assert "loglik" in summary and "BIC" in summary and not summary.lstrip().startswith("{")
    lines = progress.split("\n")
    assert lines[0] == "restart 1 of 2" and lines[1].startswith("\riter     1") and "\riter     2" in lines[1]
    assert any(line.startswith("restart 2 of 2 kept") or line.startswith("restart 1 of 2 kept") for line in lines)
    monkeypatch.setattr(sys, "stdout", _Terminal())
    verbose = _Terminal()
    monkeypatch.setattr(sys, "stderr", verbose)
    assert cli.main(["fit", str(spec), "--verbose", "--json"]) == 0
    assert "\r" not in verbose.buffer.getvalue() and "\niter     2" in verbose.buffer.getvalue()
    assert json.loads(sys.stdout.buffer.getvalue())["converged"] is True


def test_the_progress_change_is_relative_as_tol_measures_it(spec):
    result = run("fit", spec, "--max-iter", "4", "--tol", "0")
    history = json.loads(result.stdout)["history"]
    shown = [float(line.split("change")[1].split()[0]) for line in result.stderr.splitlines()
             if line.startswith("iter")]
    want = [(b - a) / abs(b) for a, b in zip(history[:-1], history[1:])]
    np.testing.assert_allclose(shown, want, rtol=1e-3)
