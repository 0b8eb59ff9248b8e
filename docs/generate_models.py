"""Generate the model catalog pages, docs/models/NAME.md for every models/NAME.toml, and docs/models/index.md.

Each page shows the spec verbatim, its graph (mermaid and a table of nodes), the updates declarem derives
(``model.derive()`` as text, and ``to_latex(standalone=False)``), the fit that
``declarem fit models/NAME.toml --seed 0`` gives on the bundled data (log-likelihood, iterations,
parameters to four significant digits) and that fit's pictures (``fit.plot``), written to
docs/models/images/NAME.svg.

    python docs/generate_models.py            rewrite the pages and their pictures
    python docs/generate_models.py --check    exit 1, naming the stale pages, if any page differs or a
                                              picture is missing

tests/test_references.py fails when a committed page differs from what this script generates;
tests/test_plot.py, when a page does not show its picture. The pictures' bytes depend on the
matplotlib version and fonts, so no test compares them.
"""

import argparse
import contextlib
import functools
import io
import json
import os
import re
import sys
import tempfile
import tomllib
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
MODELS = ROOT / "models"
PAGES = ROOT / "docs" / "models"
SIGNIFICANT = 4          # digits of the parameters on the pages
LOGLIK_DECIMALS = 3
LARGEST_SHOWN = 60       # arrays with more entries are summarised, not printed
IMAGES = "images"        # the pictures' directory, inside docs/models
#: Category names drawn on a model's picture: model -> node -> file in models/ with one name per line.
LABELS = {"topic_model": {"word": "topic_model_vocab.txt"}}


def specs():
    """The catalog: every models/*.toml, by name."""
    return sorted(MODELS.glob("*.toml"))


def fit_spec(path, loaded=False):
    """``declarem fit PATH --seed 0`` on the spec's bundled data: the JSON result, as a dict.

    With ``loaded``, the fit read back from that JSON (a ``declarem.Fit``) instead. A spec is fitted
    once per process (its page and its picture show the same fit): the fit's JSON is kept, keyed by
    the spec's path and text and by its data file's size and modification time.
    """
    from declarem.fit import Fit

    text = _fit_json(*_fit_key(path))
    if not loaded:
        return json.loads(text)
    import declarem

    with tempfile.TemporaryDirectory() as scratch:
        out = os.path.join(scratch, "fit.json")
        with open(out, "w") as handle:
            handle.write(text)
        return Fit.load(out, model=declarem.load_model(str(path)))


def _fit_key(path):
    """What a seeded fit of the spec at ``path`` depends on: its path, its text, its data file's state."""
    path = Path(path).resolve()
    text = path.read_text()
    data = tomllib.loads(text).get("data", {}).get("path")
    state = None
    if isinstance(data, str) and (path.parent / data).is_file():
        stat = (path.parent / data).stat()
        state = (stat.st_size, stat.st_mtime_ns)
    return str(path), text, state


@functools.lru_cache(maxsize=None)
def _fit_json(path, text, data_state):
    """The text of the JSON that ``declarem fit PATH --seed 0 --quiet --out FILE`` writes."""
    from declarem.cli import main

    with tempfile.TemporaryDirectory() as scratch:
        out = os.path.join(scratch, "fit.json")
        errors = io.StringIO()
        with contextlib.redirect_stderr(errors):
            status = main(["fit", path, "--seed", "0", "--quiet", "--out", out])
        if status != 0:
            raise RuntimeError(f"declarem fit {path} exited {status}: {errors.getvalue().strip()}")
        with open(out) as handle:
            return handle.read()


def picture_path(name):
    """Where a model's picture is, relative to docs/models."""
    return f"{IMAGES}/{name}.svg"


def picture_link(name):
    """The markdown that shows a model's picture on its page."""
    return f"![{name}: the model's graph, the objective per iteration and the fit over the data]({picture_path(name)})"


def picture_section(name):
    lines = [f"`fit.plot(data=...)` of that fit (`declarem plot models/{name}.toml --fit FIT.json --out {name}.svg`; "
             "what each panel shows: [pictures](../plots.md)):", "", picture_link(name)]
    return lines


def write_picture(path):
    """Draw the seeded fit of the spec at ``path`` over its bundled data into docs/models/images/NAME.svg."""
    from declarem.plot import save_figure
    from declarem.spec import data_path

    fit = fit_spec(path, loaded=True)
    labels = {node: (MODELS / file).read_text().splitlines() for node, file in LABELS.get(path.stem, {}).items()}
    figure = fit.plot(data=data_path(fit.model), labels=labels or None)
    target = PAGES / picture_path(path.stem)
    target.parent.mkdir(parents=True, exist_ok=True)
    save_figure(figure, target)


def _number(value):
    value = float(value)
    if value == 0:
        return "0"
    text = f"{value:.{SIGNIFICANT}g}"
    return "0" if text in ("-0", "-0.0") else text


def _array(value):
    array = np.asarray(value, dtype=float)
    if array.ndim == 0:
        return _number(array)
    return np.array2string(array, formatter={"float_kind": _number}, separator=", ",
                           max_line_width=100, threshold=LARGEST_SHOWN + 1)


def _shape(value):
    shape = np.shape(value)
    return "scalar" if shape == () else str(tuple(shape))


def _mermaid_label(name, node):
    family = node.get("family", "?")
    extra = []
    for key in ("k", "dim", "trials", "covariance"):
        if key in node:
            extra.append(f"{key} = {node[key]}")
    if "probs" in node:
        extra.append("probs in free parameters")
    if "table" in node:
        extra.append("table")
    if "prior" in node:
        extra.append("prior")
    text = f"{name}: {family}" + (f"<br/>{', '.join(extra)}" if extra else "")
    return text.replace('"', "'")


def graph_section(spec):
    nodes = spec.get("nodes", {})
    lines = ["```mermaid", "flowchart TD"]
    for name, node in nodes.items():
        label = _mermaid_label(name, node)
        if node.get("latent"):
            lines.append(f'    {name}(["{label}"])')           # rounded: latent
        else:
            lines.append(f'    {name}["{label}"]')             # box: observed
    for name, node in nodes.items():
        for parent in node.get("parents", []):
            lines.append(f"    {parent} --> {name}")
    lateness = [name for name, node in nodes.items() if node.get("latent")]
    if lateness:
        lines.append("    classDef latent stroke-dasharray: 5 5")
        lines.append(f"    class {','.join(lateness)} latent")
    lines.append("```")
    lines.append("")
    lines.append("Rounded, dashed nodes are latent; boxes are observed. Edges run from parent to child.")
    lines.append("")
    lines.append("| node | family | role | parents | declared |")
    lines.append("|---|---|---|---|---|")
    for name, node in nodes.items():
        role = "latent" if node.get("latent") else "observed"
        parents = ", ".join(node.get("parents", [])) or "none"
        declared = []
        for key in ("k", "dim", "trials", "covariance", "columns", "probs", "table", "prior"):
            if key in node:
                declared.append(f"`{key} = {_toml_value(node[key])}`")
        lines.append(f"| `{name}` | {node.get('family', '?')} | {role} | {parents} | "
                     f"{'<br/>'.join(declared) or ''} |")
    params = spec.get("params", {})
    if params:
        lines.append("")
        lines.append("Free parameters (`[params]`): " + ", ".join(
            f"`{name}` ({', '.join(f'{k} {v}' for k, v in entry.items())})" for name, entry in params.items()))
    return lines


def _toml_value(value):
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{k} = {_toml_value(v)}" for k, v in value.items()) + " }"
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def fit_section(name, result):
    lines = [f"`declarem fit models/{name}.toml --seed 0` (default `max_iter`, `tol`, one start):", ""]
    lines.append(f"- log-likelihood: {result['loglik']:.{LOGLIK_DECIMALS}f}"
                 + (f" (log prior {result['log_prior']:.{LOGLIK_DECIMALS}f})" if result.get("log_prior") else ""))
    lines.append(f"- iterations: {result['n_iter']}, converged: {'yes' if result['converged'] else 'no'}")
    lines.append("")
    lines.append("| parameter | shape | value |")
    lines.append("|---|---|---|")
    blocks = []
    for node, value in result["params"].items():
        entries = value.items() if isinstance(value, dict) else [(None, value)]
        for param, values in entries:
            label = f"`{node}.{param}`" if param is not None else f"`{node}`"
            size = int(np.size(values))
            if size == 0:
                lines.append(f"| {label} | none | (no parameters) |")
            elif size > LARGEST_SHOWN:
                array = np.asarray(values, dtype=float)
                lines.append(f"| {label} | {_shape(values)} | too large to list; entries from "
                             f"{_number(array.min())} to {_number(array.max())} |")
            elif np.ndim(values) <= 1 and size <= 8:
                lines.append(f"| {label} | {_shape(values)} | `{_array(values)}` |")
            else:
                lines.append(f"| {label} | {_shape(values)} | below |")
                blocks += [f"{label}:", "", "```text", _array(values), "```", ""]
    if blocks:
        lines.append("")
        lines += blocks
    return lines


def render_page(path):
    import declarem

    text = path.read_text()
    spec = tomllib.loads(text)
    name = path.stem
    model = declarem.load_model(str(path))
    derivation = model.derive()
    result = fit_spec(path)
    described = spec.get("model", {}).get("description", "").strip()
    lines = [f"# {name}", "",
             f"<!-- Generated by docs/generate_models.py from models/{name}.toml: do not edit. -->", "",
             "[All models](index.md)", ""]
    if described:
        lines += [" ".join(described.split()), ""]
    lines += ["## Spec", "", f"[models/{name}.toml](../../models/{name}.toml):", "", "```toml", text.rstrip("\n"),
              "```", ""]
    lines += ["## Graph", ""] + graph_section(spec) + [""]
    lines += ["## Derived updates", "", "`declarem derive` (text):", "", "```text", str(derivation).rstrip("\n"),
              "```", "", "`model.derive().to_latex(standalone=False)`:", "", "```latex",
              derivation.to_latex(standalone=False).rstrip("\n"), "```", ""]
    lines += ["## Fit on the bundled data", ""] + fit_section(name, result) + [""]
    lines += ["## Pictures", ""] + picture_section(name)
    return "\n".join(lines).rstrip("\n") + "\n"


ABBREVIATIONS = re.compile(r"^(?:[A-Za-z]|i\.e|e\.g|al|pp|cf|vs|eds?|vol|no)$", re.I)


def first_sentence(text):
    """The description's first sentence: up to a full stop followed by a capital letter or a digit,
    not one that ends an initial or an abbreviation ("A. P.", "et al.", "i.e.", "pp.")."""
    text = " ".join(text.split())
    for match in re.finditer(r"(\S+)\.\s+(?=[A-Z0-9])", text):
        if not ABBREVIATIONS.match(match.group(1).lstrip("(")):
            return text[:match.end(1) + 1]
    return text


def _summary(path):
    described = tomllib.loads(path.read_text()).get("model", {}).get("description", "")
    return first_sentence(described).replace("|", "/")


def render_index(paths):
    lines = ["# Model catalog", "",
             "<!-- Generated by docs/generate_models.py: do not edit. -->", "",
             "One page per spec in `models/`: the spec, its graph, the updates declarem derives and its fit on "
             "the bundled data. Regenerate with `python docs/generate_models.py`.", "",
             "| model | what it is |", "|---|---|"]
    for path in paths:
        lines.append(f"| [{path.stem}]({path.stem}.md) | {_summary(path)} |")
    return "\n".join(lines) + "\n"


def render():
    """Every page: {file name in docs/models: text}."""
    paths = specs()
    pages = {f"{path.stem}.md": render_page(path) for path in paths}
    pages["index.md"] = render_index(paths)
    return pages


def stale(pages=None):
    """Names of pages that differ from what would be generated, plus pages with no spec."""
    pages = render() if pages is None else pages
    names = [name for name, text in pages.items()
             if not (PAGES / name).is_file() or (PAGES / name).read_text() != text]
    extra = [p.name for p in PAGES.glob("*.md") if p.name not in pages] if PAGES.is_dir() else []
    pictures = [picture_path(p.stem) for p in specs() if not (PAGES / picture_path(p.stem)).is_file()]
    return sorted(names + extra + pictures)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="report stale pages instead of writing them")
    args = parser.parse_args(argv)
    pages = render()
    if args.check:
        names = stale(pages)
        if names:
            print("stale: " + ", ".join(names), file=sys.stderr)
            return 1
        return 0
    PAGES.mkdir(parents=True, exist_ok=True)
    for old in PAGES.glob("*.md"):
        if old.name not in pages:
            old.unlink()
    for name, text in pages.items():
        (PAGES / name).write_text(text)
    pictures = {picture_path(path.stem) for path in specs()}
    for old in (PAGES / IMAGES).glob("*.svg"):
        if f"{IMAGES}/{old.name}" not in pictures:
            old.unlink()
    for path in specs():
        write_picture(path)
    print(f"wrote {len(pages)} pages and {len(pictures)} pictures to {PAGES.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
