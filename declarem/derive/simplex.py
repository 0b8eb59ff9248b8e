"""The M-step of a probability vector on the simplex, derived with a Lagrange multiplier.

A categorical factor's expected complete-data log-likelihood is
sum_j n_j * logpdf(p_j), with n_j the expected count of category j (plus a
log prior term per element when a prior is declared). Stationarity of the
Lagrangian, d/dp_j [n_j logpdf(p_j) + prior_j] + lambda = 0, is solved for p_j
by sympy; when the solution separates as u(n_j) * w(lambda), the constraint
sum_j p_j = 1 fixes w(lambda) = 1 / sum_i u(n_i), so p_j = u(n_j) / sum_i u(n_i).
"""

from dataclasses import dataclass

import sympy

from ..errors import FamilyError
from ..expressions import parse_expression


@dataclass(frozen=True)
class SimplexSolution:
    """The derived update of a probability vector.

    Attributes
    ----------
    count : sympy.Symbol
        n_j, the expected count of a category.
    pseudo : sympy.Symbol
        a_j, the Dirichlet prior's concentration for the category (unused without a prior).
    element_objective : sympy.Expr
        The term of the objective for one category.
    numerator : sympy.Expr
        u(n_j, a_j): p_j is proportional to it.
    """

    count: sympy.Symbol
    pseudo: sympy.Symbol
    element_objective: sympy.Expr
    numerator: sympy.Expr


def solve_simplex(family, prior_logpdf, where):
    """Derive p_j = u(n_j) / sum_i u(n_i) for an indicator family.

    Parameters
    ----------
    family : Family
        Of kind ``"indicator"``; its logpdf is the log of the category's probability ``p``.
    prior_logpdf : str or None
        A prior's log-density for one element, in ``p`` and its hyperparameter ``a``
        (Dirichlet: ``"(a - 1)*log(p)"``), or None for maximum likelihood.
    where : str
    """
    p = sympy.Symbol("p", positive=True)
    count = sympy.Symbol("n", nonnegative=True)
    pseudo = sympy.Symbol("a", positive=True)
    multiplier = sympy.Symbol("lambda", real=True)
    element = count * parse_expression(family.logpdf, {"p": p}, f"{where} logpdf")
    if prior_logpdf is not None:
        element += parse_expression(prior_logpdf, {"p": p, "a": pseudo}, f"{where}: prior")
    solutions = sympy.solve(sympy.diff(element, p) + multiplier, p)
    if len(solutions) != 1:
        raise FamilyError(f"{where}: the simplex update has {len(solutions)} "
                          "stationary points; expected one")
    numerator, scale = solutions[0].as_independent(multiplier, as_Add=False)
    if scale.has(count, pseudo):
        raise FamilyError(f"{where}: the simplex update does not separate "
                          "into a count part and a multiplier part")
    sign = sympy.sign(scale.subs(multiplier, -1))
    return SimplexSolution(count=count, pseudo=pseudo, element_objective=element,
                           numerator=sympy.simplify(sign * numerator))
