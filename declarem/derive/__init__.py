"""sympy only: from family declarations to solved M-steps, computed once and cached.

Derivations depend only on a family's declaration (and constants such as
binomial's ``trials``), so they are cached per declaration: a second model, or
a second fit, using the same family does no sympy work.
"""

import functools
import warnings

from ..errors import FamilyError
from ..expressions import parse_expression
from .cache import cached
from .expfam import decompose
from .general import solve_general
from .regression import solve_regression
from .scalar import CHECK_POINTS, solve_scalar
from .simplex import solve_simplex

__all__ = ["scalar_solution", "simplex_solution", "regression_solution", "general_solution", "warn_if_provisional"]


@functools.lru_cache(maxsize=None)
def scalar_solution(family, constants=(), prior=None):
    """The derived M-step of a scalar family.

    Parameters
    ----------
    family : Family
    constants : tuple of (str, number)
        Values of the family's constants, e.g. ``(("trials", 10),)``.
    prior : str or None
        A log prior density in the family's parameter names (MAP).

    Returns
    -------
    ScalarSolution
    """
    def compute():
        constant_values = dict(constants)
        where = f"family '{family.name}'"
        form = decompose(family, constant_values, where=where)
        upper = constant_values.get(family.upper_bound) if family.upper_bound else None
        prior_expression = None if prior is None else log_prior_expression(prior, form, family.domains)
        return solve_scalar(form, family.support, family.domains, upper=upper, prior=prior_expression)

    solution = cached("scalar", repr((_declaration(family), constants, prior)), compute)
    warn_if_provisional(f"family '{family.name}'", solution)
    return solution


@functools.lru_cache(maxsize=None)
def regression_solution(family, constants=()):
    """The derived linear-predictor form of a family whose linear parameter continuous parents set.

    Parameters
    ----------
    family : Family
        With ``linear`` declared.
    constants : tuple of (str, number)

    Returns
    -------
    RegressionSolution
    """
    where = f"family '{family.name}'"

    def compute():
        form = decompose(family, dict(constants), where=where)
        return solve_regression(form, family.linear, family.domains, where)

    return cached("regression", repr((_declaration(family), family.linear, constants)), compute)


@functools.lru_cache(maxsize=None)
def general_solution(family, constants=()):
    """The derived generalised-EM M-step of a family that is not an exponential family.

    Returns
    -------
    GeneralSolution
    """
    where = f"family '{family.name}'"
    solution = cached("general", repr((_declaration(family), constants)),
                      lambda: solve_general(family, dict(constants), where))
    warn_if_provisional(where, solution)
    return solution


@functools.lru_cache(maxsize=None)
def simplex_solution(family, prior_logpdf=None):
    """The derived update of an indicator family's probability vector (MAP under a prior)."""
    return cached("simplex", repr((_declaration(family), prior_logpdf)),
                  lambda: solve_simplex(family, prior_logpdf, where=f"family '{family.name}'"))


def warn_if_provisional(what, solution):
    """Say when a derivation's sympy budget ran out, so its route is this process's only."""
    if getattr(solution, "provisional", False):
        warnings.warn(f"{what}: sympy did not finish within its budget of CPU time; the M-step is solved "
                      "numerically in this process, and the derivation is not cached",
                      RuntimeWarning, stacklevel=3)


def log_prior_expression(text, form, domains):
    """A prior's log-density as a sympy expression in the family's parameters, finite on their domains.

    Raises
    ------
    FamilyError
        When it is not finite at the parameter points the derivation checks.
    """
    symbols = {p.name: p for p in form.params}
    expression = parse_expression(text, symbols, "prior logpdf")
    for index in range(2):
        point = {p: CHECK_POINTS[domains[p.name]][(index + position) % 2] for position, p in enumerate(form.params)}
        value = expression.subs(point).evalf()
        if not (value.is_real and value.is_finite):
            at = ", ".join(f"{p.name} = {v:g}" for p, v in point.items())
            raise FamilyError(f"the prior's logpdf {text!r} is {value} at {at}, inside the parameters' domains; "
                              "a log prior density must be finite there")
    return expression


def _declaration(family):
    """What a derivation depends on: the declared text, support, parameters and constants."""
    return (family.name, family.kind, family.logpdf, family.support, family.params, family.constants,
            family.upper_bound)
