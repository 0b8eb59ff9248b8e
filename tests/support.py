"""Helpers shared by the tests: the command line run in this process, a Python file loaded as a module,
covariance parameters as full matrices, a seeded Gaussian mixture and its data.

A fresh interpreter per command costs the import of declarem (with sympy and scipy) every time;
most tests run ``declarem.cli.main`` here instead, with standard output, standard error and
warnings captured as a process would show them. A few tests still run the real
``python -m declarem`` (tests/test_cli.py, tests/test_docs.py) to hold this emulation to it.
"""

import contextlib
import importlib.util
import io
import subprocess
import warnings
from pathlib import Path

import numpy as np

#: A two-component Poisson mixture reading counts.csv beside it: the small model of the CLI tests.
POISSON_SPEC = """
[model]
name = "counts"

[data]
path = "counts.csv"

[nodes.z]
family = "categorical"
latent = true
k = 2

[nodes.c]
family = "poisson"
parents = ["z"]
"""


def load_file(path, name=None):
    """Load the Python file ``path`` (a reference update, a page generator) as a module named after it."""
    path = Path(path)
    spec = importlib.util.spec_from_file_location(name or path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def write(path, content):
    """Write text (UTF-8) or bytes to ``path``; return it as a Path."""
    path = Path(path)
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8")
    return path


def run_cli(*args, cwd="."):
    """Run ``declarem ARGS`` in this process.

    Parameters
    ----------
    *args : str or path-like
    cwd : path-like
        The working directory of the run.

    Returns
    -------
    subprocess.CompletedProcess
        With ``returncode``, ``stdout`` and ``stderr`` as text.
    """
    from declarem.cli import main
    arguments = [str(a) for a in args]
    out, err = io.StringIO(), io.StringIO()
    with contextlib.chdir(cwd), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), \
            warnings.catch_warnings():
        warnings.simplefilter("default")
        status = main(arguments)
    # As subprocess.run(..., text=True) reads a process's output: universal newlines.
    stdout, stderr = (stream.getvalue().replace("\r\n", "\n") for stream in (out, err))
    return subprocess.CompletedProcess(["declarem", *arguments], status, stdout, stderr)


def full_covariances(c, cov_type, k, d):
    """A vector normal's covariance parameter of any covariance type as (k, d, d) matrices."""
    c = np.asarray(c, dtype=float)
    if cov_type == "full":
        return c
    if cov_type == "tied":
        return np.broadcast_to(c, (k, d, d)).copy()
    if cov_type == "diag":
        return np.stack([np.diag(ck) for ck in c])
    if cov_type == "spherical":
        return c[:, None, None] * np.eye(d)[None]
    raise ValueError(cov_type)


def forward_backward(start, transition, emission, lengths):
    """Scaled forward-backward per sequence, plain numpy (a reference for chains).

    Returns
    -------
    posteriors : ndarray of shape (n_rows, k)
    transitions : ndarray of shape (k, k)
        Expected transition counts.
    loglik : float
    """
    gammas, xi, loglik, first = [], np.zeros_like(transition), 0.0, 0
    for length in lengths:
        e = emission[first:first + length]
        alpha = np.empty_like(e)
        scale = np.empty(length)
        alpha[0] = start * e[0]
        scale[0] = alpha[0].sum()
        alpha[0] /= scale[0]
        for t in range(1, length):
            alpha[t] = (alpha[t - 1] @ transition) * e[t]
            scale[t] = alpha[t].sum()
            alpha[t] /= scale[t]
        beta = np.ones_like(e)
        for t in range(length - 2, -1, -1):
            beta[t] = transition @ (e[t + 1] * beta[t + 1]) / scale[t + 1]
        gammas.append(alpha * beta)
        for t in range(1, length):
            xi += np.outer(alpha[t - 1], e[t] * beta[t]) * transition / scale[t]
        loglik += np.log(scale).sum()
        first += length
    return np.vstack(gammas), xi, loglik


def gaussian_mixture(n_rows, k, dim, covariance="full", share_missing=0.0, seed=0):
    """A model z -> x (k components, normal of dimension ``dim``) and seeded data: {"x": (n_rows, dim)}.

    The components' means are 3 apart along the diagonal; a ``share_missing`` of the cells is NaN.
    """
    import networkx as nx

    import declarem
    graph = nx.DiGraph()
    graph.add_node("z", family="categorical", latent=True, k=k)
    graph.add_node("x", family="normal", dim=dim, covariance=covariance)
    graph.add_edge("z", "x")
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n_rows, dim)) + 3.0 * rng.integers(0, k, n_rows)[:, None]
    if share_missing:
        x[rng.random(x.shape) < share_missing] = np.nan
    return declarem.Model(graph), {"x": x}


def fit_with_engine(model, data, monkeypatch, **options):
    """Fit ``model`` to ``data`` (convergence warnings silenced), catching the engine and start the EM
    loop receives: (engine, start's internal parameters, fit)."""
    from declarem import em
    from declarem.errors import ConvergenceWarning
    caught = {}
    original = em.run_em

    def catch(engine, params, *args, **kwargs):
        caught["engine"], caught["params"] = engine, params
        return original(engine, params, *args, **kwargs)
    monkeypatch.setattr(em, "run_em", catch)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        fit = model.fit(data, **options)
    return caught["engine"], caught["params"], fit
