"""The tutorial notebook runs, and what Jupyter would display is what the objects hold.

docs/tutorial.ipynb is executed headless, cell by cell, in one namespace from the repository's root (as
a kernel started there would run it); the value of each code cell's last expression is rendered as
Jupyter renders it, through ``_repr_html_`` or ``_repr_latex_`` where the object has them. No Jupyter is
needed: a notebook is JSON, and its code cells are Python.
"""

import ast
import json
import os
import re
from pathlib import Path

import numpy as np
import pytest

import declarem

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "docs" / "tutorial.ipynb"


def run_notebook(path):
    """Execute the code cells; return each cell's displayed value (None when its last line is a statement)."""
    notebook = json.loads(path.read_text())
    assert notebook["nbformat"] == 4
    namespace, shown = {"__name__": "__notebook__"}, []
    for cell in notebook["cells"]:
        if cell["cell_type"] != "code":
            continue
        assert cell["outputs"] == [], "the committed notebook carries no outputs"
        tree = ast.parse("".join(cell["source"]))
        last = tree.body.pop() if tree.body and isinstance(tree.body[-1], ast.Expr) else None
        exec(compile(tree, str(path), "exec"), namespace)
        value = eval(compile(ast.Expression(last.value), str(path), "eval"), namespace) if last else None
        shown.append(value)
    return namespace, shown


@pytest.fixture(scope="module")
def executed():
    here = os.getcwd()
    os.chdir(ROOT)
    try:
        return run_notebook(NOTEBOOK)
    finally:
        os.chdir(here)


def test_the_tutorial_runs_and_shows_rich_objects(executed):
    namespace, shown = executed
    kinds = [type(value).__name__ for value in shown]
    assert kinds[:3] == ["Model", "Derivation", "Fit"] and kinds[-2:] == ["Fit", "ndarray"]
    assert namespace["partial"].n_missing > 0


def test_a_model_shows_its_nodes(executed):
    model = executed[0]["model"]
    page = model._repr_html_()
    for name, node in model.nodes.items():
        assert f"<td>{name}</td><td>{node.family.name}</td>" in page
    assert "<td>z</td>" in page and "latent" in page


def test_a_derivation_shows_as_typeset_math(executed):
    derivation = executed[0]["derivation"]
    latex = derivation._repr_latex_()
    assert latex.startswith("$$\\begin{aligned}") and latex.endswith("\\end{aligned}$$")
    body = latex[2:-2]
    assert body.count("{") == body.count("}") and body.count("\\begin") == body.count("\\end")
    for item in derivation.nodes.values():
        assert f"node {item.node}:" in latex
        for line in item.updates_latex:
            assert line in latex
    page = derivation._repr_html_()
    assert page.count("$$\\begin{aligned}") == 2 * len(derivation.nodes)
    assert "&amp;" in page and "<h4>node x:" in page       # math escaped for HTML, MathJax reads it back


def test_a_fit_shows_as_a_summary_table(executed):
    fit, partial = executed[0]["fit"], executed[0]["partial"]
    page = fit._repr_html_()
    assert f"<td>{fit.loglik:.10g}</td>" in page and f"<td>{fit.bic():.8g}</td>" in page
    assert "converged after" in page and "missing values" not in page
    probs = np.array2string(np.asarray(fit.params["z"]["probs"]), precision=4, suppress_small=True,
                            max_line_width=80)
    assert f"<pre>{probs}</pre>" in page
    assert re.search(r"<td>missing values</td><td>\d+ cells in \d+ rows", partial._repr_html_())


def test_spec_text_is_escaped_in_html():
    import networkx as nx
    g = nx.DiGraph(model={"name": "<b>bold</b>"})
    g.add_node("z", family="categorical", latent=True, k=2)
    g.add_node("x", family="normal")
    g.add_edge("z", "x")
    page = declarem.Model(g)._repr_html_()
    assert "<b>bold</b>" not in page and "&lt;b&gt;bold&lt;/b&gt;" in page
