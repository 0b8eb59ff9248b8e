"""`derive --latex` output compiles with pdflatex (skipped where no TeX is installed)."""

import shutil
import subprocess
from pathlib import Path

import pytest

import declarem

ROOT = Path(__file__).resolve().parent.parent
SPECS = ["gmm", "gamma_mixture", "topic_model", "abo", "genetic_linkage", "latent_class", "two_coins_fixed"]


@pytest.mark.skipif(shutil.which("pdflatex") is None, reason="pdflatex is not installed")
@pytest.mark.parametrize("spec", SPECS)
def test_latex_compiles(spec, tmp_path):
    document = declarem.load_model(ROOT / "models" / f"{spec}.toml").derive().to_latex()
    (tmp_path / "derivation.tex").write_text(document)
    result = subprocess.run(["pdflatex", "-interaction=nonstopmode", "-halt-on-error", "derivation.tex"],
                            cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout[-3000:]
    assert (tmp_path / "derivation.pdf").stat().st_size > 1000


def test_latex_is_a_standalone_document():
    document = declarem.load_model(ROOT / "models" / "abo.toml").derive().to_latex()
    assert document.startswith("\\documentclass") and document.rstrip().endswith("\\end{document}")
    assert "\\begin{align*}" in document and "Free parameters" in document
