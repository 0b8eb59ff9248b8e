"""The derivation, for people: per node, the expected statistics and the M-step, as text and LaTeX."""

from dataclasses import dataclass, field

import numpy as np
import sympy


@dataclass
class NodeDerivation:
    """What declarem derived for one node.

    Attributes
    ----------
    node : str
    family : str
    role : str
        ``"latent"`` or ``"observed"``.
    parents : tuple of str
    statistics : list of str
        The expected sufficient statistics the E-step computes, per parameter set.
    updates : list of str
        The M-step, one line per parameter (or the equation solved numerically).
    updates_latex : list of str
    status : str
        ``"closed"``, ``"partial"`` (some parameters closed given the others),
        ``"numeric"`` or ``"declared"`` (a moment map carried by the family).
    notes : list of str
    """

    node: str
    family: str
    role: str
    parents: tuple
    statistics: list
    statistics_latex: list
    updates: list
    updates_latex: list
    status: str
    notes: list = field(default_factory=list)

    @property
    def closed_form(self):
        return self.status in ("closed", "declared")


class Derivation:
    """The whole model's derivation; ``str()`` for reading, ``to_latex()`` for typesetting."""

    def __init__(self, model):
        self.model = model
        compiled = model.compiled
        self.nodes = {name: _describe(model, name, factor) for name, factor in compiled.factors.items()}
        for name, owner in compiled.sharing.items():
            self.nodes[name].notes.append(f"shares the parameters of '{owner}': the M-step above runs once, on "
                                          f"the statistics of both nodes pooled")
            self.nodes[owner].notes.append(f"its parameters are shared with '{name}' (statistics pooled)")
        self.free = _describe_free(model, compiled.block) if compiled.block and compiled.block.names else None

    def __getitem__(self, node):
        return self.nodes[node]

    def __str__(self):
        lines = [f"Derivation of model '{self.model.name}'"]
        for item in self.nodes.values():
            indexed = f", one parameter set per value of ({', '.join(item.parents)})" if item.parents else ""
            lines.append("")
            lines.append(f"node {item.node}: {item.family}, {item.role}{indexed} [{item.status}]")
            lines.append("  E-step computes, per parameter set, the posterior-weighted means:")
            lines.extend(f"    {s}" for s in item.statistics)
            lines.append("  M-step:")
            lines.extend(f"    {u}" for u in item.updates)
            lines.extend(f"  note: {n}" for n in item.notes)
        if self.free:
            lines.append("")
            lines.append(f"free parameters {', '.join(self.free.parents)} [{self.free.status}]")
            lines.append("  E-step computes the expected counts of the nodes written in them:")
            lines.extend(f"    {s}" for s in self.free.statistics)
            lines.append("  M-step:")
            lines.extend(f"    {u}" for u in self.free.updates)
            lines.extend(f"  note: {n}" for n in self.free.notes)
        return "\n".join(lines)

    def _repr_latex_(self):
        from .notebook import derivation_latex
        return derivation_latex(self)

    def _repr_html_(self):
        from .notebook import derivation_html
        return derivation_html(self)

    def to_latex(self, standalone=True):
        """The derivation as LaTeX; ``standalone`` wraps it in a compilable document."""
        body = [f"\\section*{{Derivation of model \\texttt{{{tex_text(self.model.name)}}}}}"]
        for item in self.nodes.values():
            parents = f", indexed by ${', '.join(_tex_name(p) for p in item.parents)}$" if item.parents else ""
            body.append(f"\\subsection*{{Node \\texttt{{{tex_text(item.node)}}}: "
                        f"{tex_text(item.family)}, {item.role}{parents} ({item.status})}}")
            body.append("Expected sufficient statistics:")
            body.append("\\begin{align*}")
            body.append(" \\\\\n".join(item.statistics_latex))
            body.append("\\end{align*}")
            body.append("M-step:")
            body.append("\\begin{align*}")
            body.append(" \\\\\n".join(item.updates_latex))
            body.append("\\end{align*}")
            for note in item.notes:
                body.append(f"\\noindent\\emph{{Note:}} {tex_text(note)}\\par")
        if self.free:
            body.append(f"\\subsection*{{Free parameters ({self.free.status})}}")
            body.append("Expected counts:")
            body.append("\\begin{align*}")
            body.append(" \\\\\n".join(self.free.statistics_latex))
            body.append("\\end{align*}")
            body.append("M-step:")
            body.append("\\begin{align*}")
            body.append(" \\\\\n".join(self.free.updates_latex))
            body.append("\\end{align*}")
        text = "\n".join(body)
        if not standalone:
            return text
        return ("\\documentclass{article}\n\\usepackage{amsmath,amssymb}\n\\begin{document}\n"
                + text + "\n\\end{document}\n")


def tex_text(text):
    """Text escaped for LaTeX's text mode."""
    replacements = {"\\": r"\textbackslash{}", "_": r"\_", "%": r"\%", "&": r"\&", "#": r"\#",
                    "$": r"\$", "{": r"\{", "}": r"\}", "^": r"\^{}", "~": r"\~{}"}
    return "".join(replacements.get(c, c) for c in str(text))


def _grouped(expression):
    return f"({expression})" if expression.is_Add else str(expression)


def _tex_name(name):
    return r"\mathrm{" + tex_text(name) + "}"


def _describe(model, name, factor):
    node = model.nodes[name]
    role = "latent" if node.latent else "observed"
    kind = type(factor).__name__
    if kind == "DeterministicFactor":
        return _describe_deterministic(node, role)
    if kind == "ChainFactor":
        return _describe_chain(node, factor, role)
    if kind == "CategoricalFactor" and factor.expressed:
        return _describe_expressed(node, role)
    if kind == "CategoricalFactor":
        return _describe_categorical(node, factor, role)
    if kind == "GaussianFactor":
        return _describe_gaussian(node, factor, role)
    if kind == "CovariateFactor":
        return _describe_covariate(node, role)
    if kind == "RegressionFactor":
        return _describe_regression(node, factor, role)
    if kind == "GeneralFactor":
        return _describe_general(node, factor, role)
    return _describe_scalar(node, factor, role)


def _simplex_terms(solution):
    """The derived simplex update's numerator for category j and its denominator's term for category i."""
    j, i = sympy.Symbol("n_j"), sympy.Symbol("n_i")
    a_j, a_i = sympy.Symbol("a_j"), sympy.Symbol("a_i")
    return (solution.numerator.subs({solution.count: j, solution.pseudo: a_j}),
            solution.numerator.subs({solution.count: i, solution.pseudo: a_i}))


def _describe_categorical(node, factor, role):
    solution = factor.kernels.solution
    numerator, denominator = _simplex_terms(solution)
    text = f"probs[j] = {_grouped(numerator)} / sum_i {_grouped(denominator)}"
    latex = (r"\mathrm{probs}_j &= \frac{" + sympy.latex(numerator) + r"}{\sum_i \left(" +
             sympy.latex(denominator) + r"\right)}")
    notes = [f"solved by sympy: stationarity of {solution.element_objective} + lambda*p, "
             "normalised over the simplex"]
    if node.prior:
        name, value = node.prior
        notes.append(f"MAP under a {name} prior with a = {np.array2string(value)}; "
                     "the objective in history includes the log prior")
    of = f"{node.name} = j"
    return NodeDerivation(
        node=node.name, family=node.family.name, role=role, parents=node.parents,
        statistics=[f"n_j = sum over rows of weight * P({of} | row), j = 0..{node.k - 1}"],
        statistics_latex=[r"n_j &= \textstyle\sum_r w_r\, P(" + _tex_name(node.name) + r" = j \mid r)"],
        updates=[text], updates_latex=[latex], status="closed", notes=notes)


def _describe_chain(node, factor, role):
    """A chain's start and transition rows: the simplex update applied to first-step and transition counts."""
    solution = factor.kernels.solution
    numerator, denominator = _simplex_terms(solution)
    z = node.name
    updates = [f"start[j] = {_grouped(numerator)} / sum_i {_grouped(denominator)}, with n_j = s_j",
               f"probs[h, j] = {_grouped(numerator)} / sum_i {_grouped(denominator)}, with n_j = n_hj"]
    fraction = r"\frac{" + sympy.latex(numerator) + r"}{\sum_i \left(" + sympy.latex(denominator) + r"\right)}"
    latex = [r"\mathrm{start}_j &= " + fraction + r", \quad n_j = s_j",
             r"\mathrm{probs}_{hj} &= " + fraction + r", \quad n_j = n_{hj}"]
    notes = [f"{z} is a chain (lagged on itself): forward-backward gives the expected counts; "
             f"solved by sympy: stationarity of {solution.element_objective} + lambda*p on each row"]
    if node.prior:
        name, value = node.prior
        notes.append(f"MAP under a {name} prior with a = {np.array2string(value)} on start and on each row")
    return NodeDerivation(
        node=z, family=node.family.name, role=role, parents=(f"{z} at the previous step",),
        statistics=[f"s_j = sum over sequences of P({z} = j at the first step | sequence)",
                    f"n_hj = sum over steps t > 0 of P({z} = h at t - 1, {z} = j at t | sequence)"],
        statistics_latex=[r"s_j &= \textstyle\sum_{\mathrm{seq}} P(" + _tex_name(z) + r"_1 = j \mid \mathrm{seq})",
                          r"n_{hj} &= \textstyle\sum_{t>1} P(" + _tex_name(z) + r"_{t-1} = h, " + _tex_name(z) +
                          r"_t = j \mid \mathrm{seq})"],
        updates=updates, updates_latex=latex, status="closed", notes=notes)


def _describe_deterministic(node, role):
    parent = node.parents[0]
    mapping = ", ".join(f"{i}->{v}" for i, v in enumerate(node.table))
    return NodeDerivation(
        node=node.name, family="deterministic", role=role, parents=node.parents,
        statistics=["none: the node has no parameters"], statistics_latex=[r"&\text{none}"],
        updates=["none"], updates_latex=[r"&\text{none}"], status="closed",
        notes=[f"table {parent} -> {node.name}: {mapping}; the E-step keeps only the values of {parent} "
               f"that map to the observed {node.name}"])


def _describe_covariate(node, role):
    return NodeDerivation(
        node=node.name, family="covariate", role=role, parents=node.parents,
        statistics=["none: a covariate has no distribution"], statistics_latex=[r"&\text{none}"],
        updates=["none"], updates_latex=[r"&\text{none}"], status="closed",
        notes=["its columns enter the linear predictor of the nodes it is a parent of"])


def _describe_regression(node, factor, role):
    solution = factor.kernels.solution
    shown = _shown_regression(solution)
    u = ", ".join(node.covariates)
    predictor = f"lambda = intercept + coef . ({u})"
    linear = solution.linear.name
    tex = {solution.predictor: r"\lambda"}
    statistics = [f"w_r = weight of row r on each parameter set (its posterior); {predictor}"]
    statistics_latex = [r"&w_{r s} = P(\text{set } s \mid r), \quad \lambda_{r s} = \mathrm{intercept}_s + "
                        r"\mathrm{coef}_s \cdot u_r"]
    score = f"sum_r w_r ({shown(solution.first)}) [1, {u}]"
    if solution.quadratic:
        updates = [f"(intercept, coef) solve 0 = {score}: weighted least squares, in closed form "
                   f"(d2/dlambda2 = {shown(solution.second)} does not depend on the data)"]
        status = "closed"
    else:
        updates = [f"(intercept, coef) solve 0 = {score} (Newton's method: Hessian sum_r w_r "
                   f"({shown(solution.second)}) [1, {u}][1, {u}]^T)"]
        status = "numeric"
    updates_latex = [r"0 &= \textstyle\sum_r w_r\," + sympy.latex(solution.first, symbol_names=tex) +
                     r"\,(1, u_r)"]
    for parameter, phi in solution.weighted_means.items():
        updates.append(f"{parameter.name} = sum_r w_r ({shown(phi)}) / sum_r w_r")
        updates_latex.append(f"{_tex_name(parameter.name)} &= " + r"\textstyle\sum_r w_r\," +
                             sympy.latex(phi, symbol_names=tex) + r" \big/ \sum_r w_r")
    notes = [f"link: lambda = {shown(solution.link)}, so {linear} = {shown(solution.inverse)}",
             f"log-density in lambda: {shown(solution.log_density)} (+ log h(x))",
             f"continuous parents {u} set {linear} through the canonical link; discrete parents index the sets"]
    for name in factor.regularized:
        notes.append(f"reg_covar is added to {name}")
    return NodeDerivation(node=node.name, family=f"{node.family.name} regression", role=role,
                          parents=node.parents, statistics=statistics,
                          statistics_latex=statistics_latex, updates=updates, updates_latex=updates_latex,
                          status=status, notes=notes)


def _describe_general(node, factor, role):
    solution = factor.kernels.solution
    statistics = ["w_r = weight of row r on each parameter set (its posterior)"]
    statistics_latex = [r"&w_{r s} = P(\text{set } s \mid r)"]
    statistics += [f"{m} = sum_r w_r {f} / sum_r w_r" for m, f in zip(solution.means, solution.functions)]
    statistics_latex += [f"&{sympy.latex(m)} = " + r"\textstyle\sum_r w_r\, " + sympy.latex(f) +
                         r" \big/ \sum_r w_r" for m, f in zip(solution.means, solution.functions)]
    updates, updates_latex = [], []
    for parameter, expression in solution.closed.items():
        updates.append(f"{parameter.name} = {expression} (given the others)")
        updates_latex.append(f"{_tex_name(parameter.name)} &= {sympy.latex(expression)}")
    if solution.numeric:
        names = ", ".join(p.name for p in solution.numeric)
        updates.append(f"{names}: maximise sum_r w_r log p(x_r) (Newton's method in "
                       f"{', '.join(u.name for u in solution.unconstrained)}, sympy gradient and Hessian of "
                       "each row's term; only steps that raise it)")
        updates_latex.append(r"&\max_{" + ", ".join(_tex_name(p.name) for p in solution.numeric) +
                             r"} \textstyle\sum_r w_r \log p(x_r)")
    notes = list(solution.notes)
    notes.append(f"log-density: {solution.logpdf}")
    for name in factor.regularized:
        notes.append(f"reg_covar is added to {name}")
    return NodeDerivation(node=node.name, family=node.family.name, role=role, parents=node.parents,
                          statistics=statistics, statistics_latex=statistics_latex, updates=updates,
                          updates_latex=updates_latex, status=solution.status, notes=notes)


def _shown_regression(solution):
    """Expressions of a regression's derivation with the linear predictor written lambda."""
    named = sympy.Symbol("lambda", real=True)
    return lambda expression: expression.subs(solution.predictor, named)


def _describe_expressed(node, role):
    probs = [str(p) for p in node.probs]
    return NodeDerivation(
        node=node.name, family="categorical", role=role, parents=node.parents,
        statistics=[f"n_j = sum over rows of weight * P({node.name} = j | row), j = 0..{node.k - 1}"],
        statistics_latex=[r"n_j &= \textstyle\sum_r w_r\, P(" + _tex_name(node.name) + r" = j \mid r)"],
        updates=[f"probs = [{', '.join(probs)}]" + (" at the free parameters' update"
                                                    if any(p.free_symbols for p in node.probs) else "")],
        updates_latex=[r"\mathrm{probs} &= \left(" + ", ".join(sympy.latex(p) for p in node.probs) + r"\right)"],
        status="closed", notes=["probabilities written in free parameters; see the free parameters' M-step"
                                if any(p.free_symbols for p in node.probs) else
                                "fixed probabilities, declared as constants: not estimated"])


def _describe_free(model, block):
    solution = block.solution
    count_names = {symbol: sympy.Symbol(f"n_{node}[{j}]") for (node, j), symbol in solution.counts.items()}
    tex = {symbol: f"n^{{{tex_text(node)}}}_{{{j}}}" for (node, j), symbol in solution.counts.items()}
    tex.update({p: _tex_name(p.name) for p in solution.params})
    statistics = [f"n_{node}[j] = expected count of {node} = j" for node in block.nodes]
    statistics_latex = [f"&n^{{{tex_text(node)}}}_j" for node in block.nodes]
    objective = solution.objective.subs(count_names)
    if solution.closed:
        updates = [f"{p.name} = {e.subs(count_names)}" for p, e in solution.closed.items()]
        updates_latex = [f"{_tex_name(p.name)} &= {sympy.latex(e, symbol_names=tex)}"
                         for p, e in solution.closed.items()]
        notes = [f"solved by sympy: stationarity of {objective}"]
    else:
        updates = [f"maximise {objective} (Newton's method, sympy gradient and Hessian)"]
        updates_latex = [r"&\max\; " + sympy.latex(solution.objective, symbol_names=tex)]
        notes = list(solution.notes)
    for group, members in block.groups.items():
        notes.append(f"{', '.join(members)} lie on the simplex '{group}'")
    return NodeDerivation(node="[params]", family="free parameters", role="free", parents=tuple(block.names),
                          statistics=statistics, statistics_latex=statistics_latex, updates=updates,
                          updates_latex=updates_latex, status=solution.status, notes=notes)


def _describe_gaussian(node, factor, role):
    parts = factor.parts
    notes = ["the multivariate normal's moment map is declared with the family (sympy cannot solve "
             "for a general dimension); tests hold it equal to a numeric solution of grad A = E[T]"]
    updates = list(parts.update_text)
    latex = [u.replace("=", "&=", 1) for u in parts.update_latex]
    if factor.params["cov"].tied_across_parents:
        notes.append("cov is tied across parent values: the weighted mean of the per-set covariances")
    notes.append("reg_covar is added to the diagonal of cov")
    return NodeDerivation(
        node=node.name, family=f"normal ({node.covariance} covariance, dim {node.dim})", role=role,
        parents=node.parents, statistics=["E[x]", "E[x x^T]"],
        statistics_latex=[r"&\mathbb{E}[x]", r"&\mathbb{E}[x x^\top]"],
        updates=updates, updates_latex=latex, status="declared", notes=notes)


def _describe_scalar(node, factor, role):
    solution = factor.kernels.solution
    tex_names = {t: r"\mathbb{E}[" + sympy.latex(s) + "]" for t, s in zip(solution.means, solution.form.statistics)}
    tex_names.update({p: _tex_name(p.name) for p in solution.form.params})
    statistics = [str(t) for t in solution.means]
    statistics_latex = [f"&{tex_names[t]}" for t in solution.means]
    updates, updates_latex = [], []
    for parameter in solution.form.params:
        if parameter in solution.closed:
            expression = solution.closed[parameter]
            updates.append(f"{parameter.name} = {expression}")
            updates_latex.append(f"{_tex_name(parameter.name)} &= {sympy.latex(expression, symbol_names=tex_names)}")
    if solution.numeric:
        unknowns = ", ".join(p.name for p in solution.numeric)
        profile = solution.objective.subs(solution.closed)
        for parameter in solution.numeric:
            equation = sympy.diff(profile, parameter)
            updates.append(f"{parameter.name}: solve 0 = {equation} (Newton's method, sympy gradient and Hessian)")
            updates_latex.append(f"0 &= {sympy.latex(equation, symbol_names=tex_names)}"
                                 r" \quad\text{(solved for }" + _tex_name(parameter.name) + r"\text{ numerically)}")
        solution_notes = [f"{unknowns} found numerically, maximising {profile}"]
    else:
        solution_notes = []
    notes = list(solution.notes) + solution_notes
    if node.dim > 1 or node.columns:
        notes.append(f"applied to each of the node's {node.dim} columns independently")
    for name, spec in factor.params.items():
        if name in factor.tie_columns:
            notes.append(f"{name} is shared by all columns: the mean over columns of its update")
        if spec.tied_across_parents:
            notes.append(f"{name} is tied across parent values: the weighted mean of its update")
    for name in factor.regularized:
        notes.append(f"reg_covar is added to {name}")
    label = node.family.name
    if node.covariance:
        label = f"{label} ({node.covariance} covariance, dim {node.dim})"
    return NodeDerivation(node=node.name, family=label, role=role, parents=node.parents,
                          statistics=statistics, statistics_latex=statistics_latex, updates=updates,
                          updates_latex=updates_latex, status=solution.status, notes=notes)
