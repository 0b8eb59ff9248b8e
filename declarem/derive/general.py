"""Generalised EM for a family that is not an exponential family (sympy only).

When a user family's log-density does not split into T(x) eta(theta) (a negative
binomial with unknown dispersion, a Weibull with unknown shape), the M-step has
no finite sufficient statistics: it maximises the posterior-weighted
log-likelihood sum_r w_r l(x_r; theta) directly. What can still be closed is
derived here, per parameter: where d l / d theta_j is a sum of functions of x
times functions of the parameters, its stationarity equation involves only the
weighted means of those functions, and sympy may solve it for theta_j given the
others (a negative binomial's p = E[x] / (E[x] + r)). The remaining parameters
are found by Newton's method on the profile (the closed ones substituted), with
sympy's gradient and Hessian in unconstrained coordinates, vectorised over rows
and parameter sets.
"""

from dataclasses import dataclass, field

import sympy

from .budget import SolveBudget
from .coordinates import unconstrained
from .expfam import parsed_logpdf
from .scalar import _in_domain, attempt_solve

@dataclass
class GeneralSolution:
    """How a non-exponential family's parameters are fitted.

    Attributes
    ----------
    x : sympy.Symbol
    params : tuple of sympy.Symbol
    domains : dict of sympy.Symbol to str
    logpdf : sympy.Expr
        The whole log-density (the E-step evaluates it per row and set).
    functions : tuple of sympy.Expr
        f_k(x) whose weighted means the closed forms use.
    means : tuple of sympy.Symbol
        E[f_k], one per function.
    closed : dict of sympy.Symbol to sympy.Expr
        Parameters in closed form, in the means and the numeric parameters.
    numeric : tuple of sympy.Symbol
    unconstrained : tuple of sympy.Symbol
        u_i with theta_i = map(u_i) for each numeric parameter.
    profile : sympy.Expr
        l(x; theta) with the closed parameters substituted and the numeric ones
        written in their unconstrained variables: the per-row Newton objective.
    gradient, hessian : list of sympy.Expr
        Of the profile in the unconstrained variables.
    notes : list of str
    provisional : bool
        sympy's budget ran out: this process only, not stored.
    """

    x: sympy.Symbol
    params: tuple
    domains: dict
    logpdf: sympy.Expr
    functions: tuple
    means: tuple
    closed: dict
    numeric: tuple
    unconstrained: tuple
    profile: sympy.Expr
    gradient: list
    hessian: list
    notes: list = field(default_factory=list)
    provisional: bool = False

    @property
    def status(self):
        return "partial" if self.closed else "numeric"


def solve_general(family, constants, where):
    """Derive the generalised-EM M-step of a scalar family that is not an exponential family.

    Parameters
    ----------
    family : Family
    constants : mapping of str to number
    where : str

    Returns
    -------
    GeneralSolution
    """
    x, params, logpdf = parsed_logpdf(family, constants, where)
    domains = {p: family.domains[p.name] for p in params}
    budget = SolveBudget()
    functions, equations = {}, {}
    for parameter in params:
        equation = _in_weighted_means(sympy.diff(logpdf, parameter), x, params, functions)
        if equation is not None:
            equations[parameter] = equation
    means = {f: symbol for f, symbol in functions.items()}
    closed = {}
    for parameter, equation in equations.items():
        for candidate in attempt_solve([sympy.together(equation).as_numer_denom()[0]], [parameter], budget):
            expression = candidate.get(parameter)
            if expression is None or expression.has(parameter) or any(expression.has(p) for p in closed):
                continue
            if _in_domain(expression, domains[parameter]):
                closed = {p: e.subs(parameter, expression) for p, e in closed.items()}
                closed[parameter] = expression
                break
    if len(closed) == len(params):
        # Every parameter closes given the others, together: keep the last unsolved, so that the
        # profile has a variable (the family did not split, so the joint solution is not linear).
        closed.pop(params[-1])
    numeric = tuple(p for p in params if p not in closed)
    coordinates, _, profile, gradient, hessian = unconstrained(logpdf.subs(closed), numeric, domains)
    used = [f for f in functions if any(e.has(functions[f]) for e in closed.values())]
    notes = ["not an exponential family: generalised EM, maximising the posterior-weighted log-likelihood "
             "directly"]
    if closed:
        notes.append("closed form given the others for " + ", ".join(p.name for p in closed))
    return GeneralSolution(x=x, params=params, domains=domains, logpdf=logpdf,
                           functions=tuple(used), means=tuple(means[f] for f in used), closed=closed,
                           numeric=numeric, unconstrained=coordinates, profile=profile, gradient=gradient,
                           hessian=hessian, notes=notes, provisional=budget.exhausted)


def _in_weighted_means(derivative, x, params, functions):
    """The derivative's weighted sum over rows written in weighted means of functions of x, or None.

    sum_r w_r d l(x_r)/d theta = W sum_k c_k(theta) E[f_k]; possible when every term of the
    derivative is a function of x times a function of the parameters. New f_k are added to
    ``functions`` (f -> its mean's symbol).
    """
    expanded = sympy.expand(sympy.expand_log(derivative, force=True))
    total = sympy.Integer(0)
    parameters = set(params)
    for term in sympy.Add.make_args(expanded):
        coefficient, x_part = term.as_independent(x, as_Add=False)
        if x_part.free_symbols & parameters:
            return None
        if x_part == 1:
            total += coefficient
            continue
        if x_part not in functions:
            functions[x_part] = sympy.Symbol(f"E[{x_part}]", real=True)
        total += coefficient * functions[x_part]
    return total
