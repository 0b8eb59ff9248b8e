"""Generate docs/families.md from the built-in family table and declarem's own derivations.

For every built-in family (and two custom families declared the way a user declares one),
this script builds a one-node mixture -- a latent categorical ``z`` with ``K`` values and an
observed child ``x`` of the family -- asks ``model.derive()`` for the derivation, and writes the
family's declaration, parameter shapes and derived M-step (as text and as LaTeX) into
docs/families.md. Nothing on the page is written by hand.

    python docs/generate_families.py           # rewrite docs/families.md
    python docs/generate_families.py --check   # exit 1 if docs/families.md is stale

tests/test_docs.py fails when the committed page differs from what this script generates.
"""

import argparse
import os
import sys

import networkx as nx

import declarem
from declarem.families.builtin import BUILTIN_TABLE, INTERNAL

PAGE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "families.md")
K = 2  # values of the latent parent in the generated examples; shapes are shown with K

#: Custom families shown as examples, declared exactly as in a spec's [families.NAME] table.
CUSTOM = {
    "rayleigh": {
        "logpdf": "log(x) - 2*log(s) - x**2/(2*s**2)",
        "support": "positive",
        "params": {"s": "positive"},
        "description": "Rayleigh distribution with scale `s` (a custom family: not built in).",
    },
    "ztpoisson": {
        "logpdf": "x*log(l) - l - lgamma(x + 1) - log(1 - exp(-l))",
        "support": "positive-integer",
        "params": {"l": "positive"},
        "description": "Zero-truncated Poisson with parameter `l` (a custom family: not built in).",
    },
}

#: In a variant's attributes: give ``x`` a covariate parent ``u`` as well (a regression).
REGRESSION = "_regression"

#: The node attributes of each example; one family may have several variants.
VARIANTS = {
    "categorical": [("categorical", {"k": 3})],
    "deterministic": [("deterministic", {"table": [0, 0]})],
    "covariate": [],
    "bernoulli": [("bernoulli", {}), ("bernoulli, with a continuous parent `u` (logistic regression)",
                                      {REGRESSION: True})],
    "binomial": [("binomial", {"trials": 10})],
    "poisson": [("poisson", {}), ("poisson, with a continuous parent `u` (Poisson regression)", {REGRESSION: True})],
    "exponential": [("exponential", {})],
    "geometric": [("geometric", {})],
    "normal": [
        ("normal, univariate", {}),
        ("normal, with a continuous parent `u` (linear regression)", {REGRESSION: True}),
        ('normal, `dim = 2`, `covariance = "full"`', {"dim": 2, "covariance": "full"}),
        ('normal, `dim = 2`, `covariance = "tied"`', {"dim": 2, "covariance": "tied"}),
        ('normal, `dim = 2`, `covariance = "diag"`', {"dim": 2, "covariance": "diag"}),
        ('normal, `dim = 2`, `covariance = "spherical"`', {"dim": 2, "covariance": "spherical"}),
    ],
    "gamma": [("gamma", {})],
    "beta": [("beta", {})],
    "rayleigh": [("rayleigh", {})],
    "ztpoisson": [("ztpoisson", {})],
}


def mixture(family, attrs):
    """A one-node mixture: latent categorical z (K values) -> observed x of ``family``."""
    graph = nx.DiGraph()
    graph.graph["model"] = {"name": f"{family}_mixture"}
    if family in CUSTOM:
        graph.graph["families"] = {family: CUSTOM[family]}
    graph.add_node("z", family="categorical", latent=True, k=K)
    graph.add_node("x", family=family, **{k: v for k, v in attrs.items() if k != REGRESSION})
    graph.add_edge("z", "x")
    if attrs.get(REGRESSION):
        graph.add_node("u", family="covariate")
        graph.add_edge("u", "x")
    return declarem.Model(graph, source=f"{family} example")


def _toml_value(value):
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return f'"{value}"'
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{k} = {_toml_value(v)}" for k, v in value.items()) + " }"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return str(value)


def spec_text(family, attrs):
    lines = []
    if family in CUSTOM:
        lines.append(f"[families.{family}]")
        for key in ("logpdf", "support", "params"):
            lines.append(f"{key} = {_toml_value(CUSTOM[family][key])}")
        lines.append("")
    if attrs.get(REGRESSION):
        lines += ["[nodes.u]", 'family = "covariate"', ""]
    lines += ["[nodes.x]", f'family = "{family}"']
    lines += [f"{key} = {_toml_value(value)}" for key, value in attrs.items() if key != REGRESSION]
    lines.append('parents = ["z", "u"]' if attrs.get(REGRESSION) else 'parents = ["z"]')
    return "\n".join(lines)


def shape_text(factor, spec):
    """A parameter's shape with symbols: K for the parent, D for columns, k for categories."""
    own = {"CategoricalFactor": "k", "RegressionFactor": "m"}.get(type(factor).__name__, "D")
    dims = [] if spec.tied_across_parents else ["K"] * len(factor.parents)
    dims += [own] * len(spec.own_shape)
    if not dims:
        return "()"
    return "(" + ", ".join(dims) + ("," if len(dims) == 1 else "") + ")"


def node_section(derivation, node):
    """The text of one node's part of ``str(derivation)``."""
    blocks = str(derivation).split("\n\n")
    return next(block for block in blocks if block.startswith(f"node {node}:"))


def latex_block(item):
    lines = [r"\begin{aligned}"]
    lines.append(" \\\\\n".join(item.updates_latex))
    lines.append(r"\end{aligned}")
    return "\n".join(lines)


def family_rows(name, entry):
    params = ", ".join(f"`{p}` ({domain})" for p, domain in entry["params"]) or "none"
    density = f'`{entry["logpdf"]}`' if entry["logpdf"] else \
        "none: a covariate has no distribution" if entry.get("kind") == "covariate" else \
        "none: 0 where `x = table[parent]`, else minus infinity"
    rows = [("log-density", density), ("support", f'`{entry["support"]}`'),
            ("parameters (domain)", params)]
    if entry.get("linear"):
        rows.append(("linear parameter (continuous parents)", f'`{entry["linear"]}`'))
    if entry.get("constants"):
        rows.append(("node constants", ", ".join(f"`{c}`" for c in entry["constants"])))
    return rows


def variant_section(family, title, attrs, level=None):
    model = mixture(family, attrs)
    derivation = model.derive()
    item = derivation["x"]
    factor = model.compiled.factors["x"]
    shapes = ", ".join(f"`{p}` {shape_text(factor, spec)}" for p, spec in factor.params.items()) or "none"
    out = [f"{'#' * level} {title}", ""] if level else []
    covariates = " and a covariate `u` (m = 1 column)" if attrs.get(REGRESSION) else ""
    out.append(f"Parameters of `x` under a parent `z` with K values{covariates}: {shapes}; "
               f"M-step: **{item.status}**.")
    out += ["", "```toml", spec_text(family, attrs), "```", ""]
    out += ["Derived by `model.derive()` (text):", "", "```text", node_section(derivation, "x"), "```", ""]
    out += ["LaTeX (`derive --latex`), the M-step:", "", "```math", latex_block(item), "```", ""]
    return out


def render():
    """The whole page as a string."""
    out = [
        "<!-- Generated by docs/generate_families.py from declarem.families.builtin.BUILTIN_TABLE and",
        "     model.derive(); do not edit by hand: run `python docs/generate_families.py`. -->",
        "",
        "# Families",
        "",
        "Every family below is declared as data (a log-density in `x`, a support and parameter",
        "domains); declarem derives each M-step from that declaration alone. For each family this",
        "page builds a one-node mixture, a latent categorical `z` with `K` values and an observed",
        "child `x` (the examples use K = 2), and shows what `model.derive()` says about `x`.",
        "Each example's spec is the `[nodes.x]` table shown plus",
        '`[nodes.z]` with `family = "categorical"`, `latent = true`, `k = 2`.',
        "Shapes use K for the parent's values, D for a vector node's columns (`dim` or `columns`)",
        "and k for a categorical node's categories. The statuses mean: **closed**, sympy solved",
        "the M-step; **partial**, some parameters closed given the others, the rest numerically;",
        "**numeric**, Newton's method with sympy's gradient and Hessian; **declared**, the family",
        "carries its moment map (the multivariate normal). See [spec.md](spec.md) for the spec",
        "format and [quickstart.md](quickstart.md) for a tour.",
        "",
        "## The mixing node `z` (categorical, latent)",
        "",
    ]
    model = mixture("poisson", {})
    derivation = model.derive()
    out += ["```text", node_section(derivation, "z"), "```", "",
            "```math", latex_block(derivation["z"]), "```", ""]
    out += ["## Built-in families", ""]
    for name, entry in BUILTIN_TABLE.items():
        if name in INTERNAL:
            continue
        out += [f"### {name}", "", entry["description"], "", "| | |", "|---|---|"]
        out += [f"| {key} | {value} |" for key, value in family_rows(name, entry)]
        out.append("")
        if name == "normal":
            mvn = BUILTIN_TABLE["multivariate_normal"]
            out += [f"With `dim > 1` and `covariance = \"full\"` or `\"tied\"`: {mvn['description']} "
                    "Its statistics are x and the upper triangle of x x^T; its moment map is declared "
                    "with the family (sympy cannot solve for a general dimension).", ""]
        variants = VARIANTS[name]
        for title, attrs in variants:
            out += variant_section(name, title, attrs, 4 if len(variants) > 1 else None)
    out += ["## Custom families (examples)", "",
            "A spec declares these in a `[families.NAME]` table (in Python, the graph attribute",
            '`g.graph["families"]`); they are not built in.', ""]
    for name, table in CUSTOM.items():
        entry = dict(table, params=tuple(table["params"].items()))
        out += [f"### {name}", "", table["description"], "", "| | |", "|---|---|"]
        out += [f"| {key} | {value} |" for key, value in family_rows(name, entry)]
        out.append("")
        variants = VARIANTS[name]
        for title, attrs in variants:
            out += variant_section(name, title, attrs, 4 if len(variants) > 1 else None)
    return "\n".join(out).rstrip("\n") + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if the page is stale")
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        try:
            with open(PAGE) as handle:
                current = handle.read()
        except FileNotFoundError:
            current = None
        if current != text:
            print(f"{PAGE} is stale: run python docs/generate_families.py", file=sys.stderr)
            return 1
        return 0
    with open(PAGE, "w") as handle:
        handle.write(text)
    print(f"wrote {PAGE}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
