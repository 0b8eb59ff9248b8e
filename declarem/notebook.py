"""Rich displays for Jupyter: a derivation as typeset math, a fit as a summary table, a model as its nodes.

Jupyter calls ``_repr_html_`` (and ``_repr_latex_``) on the last value of a cell; ``Derivation``,
``Fit`` and ``Model`` delegate here. The HTML is self-contained: tables, and math in ``$$ ... $$``
blocks that the notebook's MathJax typesets. Every text that comes from a spec or data is escaped.
"""

import html

import numpy as np

from .report import tex_text

#: Arrays with more entries than this are shown by shape, not in full.
LARGEST_SHOWN = 60


def derivation_latex(derivation):
    """The derivation as one display-math block: per node, its statistics and its M-step.

    Returns
    -------
    str
        ``$$\\begin{aligned} ... \\end{aligned}$$``, for ``_repr_latex_``.
    """
    rows = []
    for item in _items(derivation):
        rows.append(r"&\textbf{" + tex_text(_heading(item)) + "}")
        rows.append(r"&\text{E-step (expected statistics):}")
        rows.extend(_as_row(line) for line in item.statistics_latex)
        rows.append(r"&\text{M-step:}")
        rows.extend(_as_row(line) for line in item.updates_latex)
    return "$$\\begin{aligned}\n" + " \\\\\n".join(rows) + "\n\\end{aligned}$$"


def derivation_html(derivation):
    """The derivation as HTML: a heading per node, its statistics and M-step as typeset math, its notes."""
    parts = [f"<h3>Derivation of model <code>{_escape(derivation.model.name)}</code></h3>"]
    for item in _items(derivation):
        parts.append(f"<h4>{_escape(_heading(item))}</h4>")
        parts.append("<p>E-step (expected statistics):</p>")
        parts.append(_math_block(item.statistics_latex))
        parts.append("<p>M-step:</p>")
        parts.append(_math_block(item.updates_latex))
        parts.extend(f"<p><em>Note:</em> {_escape(note)}</p>" for note in item.notes)
    return "\n".join(parts)


def fit_html(fit):
    """A fit as a summary table (state, log-likelihood, BIC, AIC, sizes) and a table of its parameters."""
    state = "converged" if fit.converged else "stopped at max_iter (not converged)"
    summary = [("model", fit.model.name), ("state", f"{state} after {fit.n_iter} iterations"),
               ("log-likelihood", f"{fit.loglik:.10g}"), ("BIC", f"{fit.bic():.8g}"), ("AIC", f"{fit.aic():.8g}"),
               ("rows", f"{fit.n_observations:g}"), ("free parameters", str(fit.n_parameters))]
    if fit.n_missing:
        summary.append(("missing values", f"{fit.n_missing} cells in {fit.n_missing_rows} rows, integrated out"))
    if fit.log_prior:
        summary.append(("log prior", f"{fit.log_prior:.10g}"))
    params = []
    for node, values in fit.params.items():
        if not isinstance(values, dict):
            params.append((node, "", "()", f"{float(values):.6g}"))
            continue
        for name, value in values.items():
            array = np.asarray(value)
            params.append((node, name, str(array.shape), _array_text(array)))
    return (_table(["", ""], summary) + "\n"
            + _table(["node", "parameter", "shape", "value"], params, preformatted=3))


def model_html(model):
    """A model as a table of its nodes: family, role, size, parents (its graph's edges)."""
    rows = []
    for name, node in model.nodes.items():
        size = f"k = {node.k}" if node.is_discrete else f"dim = {node.dim}"
        extra = []
        if getattr(node, "covariance", None):
            extra.append(f"covariance = {node.covariance}")
        if node.chain:
            extra.append("a chain over the rows")
        rows.append((name, node.family.name, "latent" if node.latent else "observed",
                     ", ".join([size] + extra), ", ".join(node.parents + node.covariates) or "-"))
    return (f"<h3>Model <code>{_escape(model.name)}</code></h3>\n"
            + _table(["node", "family", "role", "size", "parents"], rows))


def _items(derivation):
    items = list(derivation.nodes.values())
    return items + ([derivation.free] if derivation.free else [])


def _heading(item):
    parents = f", one parameter set per value of ({', '.join(item.parents)})" if item.parents else ""
    return f"node {item.node}: {item.family}, {item.role}{parents} [{item.status}]"


def _as_row(line):
    """An align* row as an aligned row: keep its alignment point, or align it at its start."""
    return line if "&" in line else "&" + line


def _math_block(lines):
    return "<p>$$\\begin{aligned}\n" + " \\\\\n".join(_escape(_as_row(line)) for line in lines) + \
        "\n\\end{aligned}$$</p>"


def _array_text(array):
    if array.size > LARGEST_SHOWN:
        return f"{array.size} values (min {array.min():.4g}, max {array.max():.4g})"
    return np.array2string(array, precision=4, suppress_small=True, max_line_width=80)


def _escape(text):
    return html.escape(str(text), quote=True)


def _table(header, rows, preformatted=None):
    """An HTML table; the column at index ``preformatted`` keeps its line breaks."""
    head = "".join(f"<th>{_escape(h)}</th>" for h in header)
    body = []
    for row in rows:
        cells = []
        for index, cell in enumerate(row):
            text = _escape(cell)
            cells.append(f"<td><pre>{text}</pre></td>" if index == preformatted else f"<td>{text}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"
