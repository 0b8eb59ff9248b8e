"""Continuous parents: a family's linear parameter through its canonical link (sympy only).

A child with continuous parents u has, per parameter set, a linear predictor
lambda = intercept + coef . u, and its declared linear parameter is set through
the canonical link: the natural parameter paired with the statistic x is
g(theta_L) c(others), and lambda = g(theta_L) (identity for a normal mean, log
for a Poisson rate, logit for a Bernoulli probability). What the fit needs is
derived here, once per family:

- the log-density in lambda, ``l(x, lambda, others) - log h(x)``, from the
  exponential-family form (so log and logit links give ``x lambda - exp(lambda)``
  and ``x lambda - log(1 + exp(lambda))``);
- its first and second derivatives in lambda: the M-step in (intercept, coef) is
  Newton's method on sum_rows w l, with gradient X^T (w dl) and Hessian
  X^T diag(w d2l) X; when d2l does not depend on x or lambda, the objective is
  quadratic and one step from zero is its maximiser, in closed form (weighted
  least squares for a normal mean);
- each other parameter's update given lambda, where it is a weighted mean of a
  function of (x, lambda) (a normal's variance: the weighted mean squared
  residual).
"""

from dataclasses import dataclass, field

import sympy

from ..errors import FamilyError
from .budget import SolveBudget
from .scalar import attempt_solve

LINEAR_PREDICTOR = "lambda_"


@dataclass
class RegressionSolution:
    """How a family's parameters are fitted when continuous parents set its linear parameter.

    Attributes
    ----------
    x : sympy.Symbol
    linear : sympy.Symbol
        The parameter the linear predictor sets.
    predictor : sympy.Symbol
        lambda, the linear predictor.
    link : sympy.Expr
        g(theta_L) = lambda.
    inverse : sympy.Expr
        theta_L as a function of lambda.
    others : tuple of sympy.Symbol
        The family's other parameters, one value per parameter set.
    log_density : sympy.Expr
        log p(x | lambda, others) - log h(x).
    first, second : sympy.Expr
        d/dlambda and d2/dlambda2 of ``log_density``.
    weighted_means : dict of sympy.Symbol to sympy.Expr
        phi(x, lambda) of each other parameter: its update is the weighted mean of phi.
    quadratic : bool
        ``second`` depends on neither x nor lambda: (intercept, coef) in closed form.
    notes : list of str
    """

    x: sympy.Symbol
    linear: sympy.Symbol
    predictor: sympy.Symbol
    link: sympy.Expr
    inverse: sympy.Expr
    others: tuple
    log_density: sympy.Expr
    first: sympy.Expr
    second: sympy.Expr
    weighted_means: dict
    quadratic: bool
    notes: list = field(default_factory=list)


def solve_regression(form, linear_name, domains, where):
    """Derive the linear-predictor form of a family in exponential-family form.

    Parameters
    ----------
    form : ExpFamForm
    linear_name : str
        The family's declared linear parameter.
    domains : mapping of str to str
        Each parameter's domain.
    where : str
        For error messages.

    Returns
    -------
    RegressionSolution
    """
    x = form.x
    by_name = {p.name: p for p in form.params}
    if linear_name not in by_name:
        raise FamilyError(f"{where}: 'linear' names '{linear_name}', which is not one of its parameters "
                          f"({', '.join(by_name)})")
    linear = by_name[linear_name]
    others = tuple(p for p in form.params if p is not linear)
    paired = [j for j, t in enumerate(form.statistics) if sympy.simplify(t - x) == 0]
    if not paired:
        raise FamilyError(f"{where}: no statistic is x itself, so '{linear_name}' has no canonical link "
                          "for continuous parents")
    eta = form.natural[paired[0]]
    parts = sympy.separatevars(eta, symbols=[linear], dict=True)
    if not parts or linear not in parts or parts[linear].free_symbols - {linear}:
        raise FamilyError(f"{where}: the natural parameter paired with x, {eta}, does not factor into a "
                          f"function of '{linear_name}' times one of the other parameters, so '{linear_name}' "
                          "has no canonical link for continuous parents")
    link = parts[linear]
    predictor = sympy.Symbol(LINEAR_PREDICTOR, real=True)
    budget = SolveBudget()
    candidates = [s.get(linear) for s in attempt_solve([link - predictor], [linear], budget)]
    candidates = [c for c in candidates if c is not None and not c.has(sympy.I)]
    if len(candidates) != 1:
        raise FamilyError(f"{where}: sympy could not invert the link {link} = lambda for '{linear_name}' "
                          "uniquely")
    inverse = candidates[0]
    substituted = {linear: inverse}
    # The paired natural parameter is lambda c(others) by construction; writing it so keeps the inverse link
    # out of it (a logit's log(p) - log(1 - p) would not cancel numerically). The log-partition is brought
    # over one denominator inside its logarithms, without combining them into powers that overflow.
    total = x * predictor * parts["coeff"]
    total += sum((t * e.subs(substituted) for j, (t, e) in enumerate(zip(form.statistics, form.natural))
                  if j != paired[0]), sympy.Integer(0))
    log_partition = sympy.expand_log(sympy.together(form.log_partition.subs(substituted), deep=True), force=True)
    log_density = _factored(sympy.expand(total - log_partition))
    first = sympy.simplify(sympy.diff(log_density, predictor))
    second = sympy.simplify(sympy.diff(first, predictor))
    weighted_means = {}
    for parameter in others:
        weighted_means[parameter] = _weighted_mean_update(log_density, parameter, x, predictor, domains,
                                                          budget, where)
    quadratic = not second.has(x) and not second.has(predictor)
    notes = []
    return RegressionSolution(x=x, linear=linear, predictor=predictor, link=link, inverse=inverse, others=others,
                              log_density=log_density, first=first, second=second,
                              weighted_means=weighted_means, quadratic=quadratic, notes=notes)


def _weighted_mean_update(log_density, parameter, x, predictor, domains, budget, where):
    """phi(x, lambda) with d l / d parameter = c(parameter) (phi - parameter): the update is a weighted mean."""
    derivative = sympy.diff(log_density, parameter)
    for solution in attempt_solve([sympy.together(derivative).as_numer_denom()[0]], [parameter], budget):
        phi = solution.get(parameter)
        if phi is None or phi.has(parameter):
            continue
        phi = sympy.factor(phi)     # (x - lambda)**2, not x**2 - 2 lambda x + lambda**2, which cancels
        ratio = sympy.simplify(derivative / (phi - parameter))
        if not ratio.has(x) and not ratio.has(predictor):
            return phi
    raise FamilyError(f"{where}: with continuous parents, '{parameter.name}' has no update that is a weighted "
                      "mean given the linear predictor; continuous parents are supported where every other "
                      "parameter has one (a normal's variance does)")


def _factored(expression):
    """The expression with its rational terms factored together (a normal's -(x - lambda)**2/(2 var) rather
    than terms in x**2, lambda x and lambda**2 that cancel for data far from zero)."""
    terms = sympy.Add.make_args(expression)
    rational = [t for t in terms if not t.atoms(sympy.Function)]
    if len(rational) < 2:
        return expression
    rest = [t for t in terms if t.atoms(sympy.Function)]
    return sympy.factor(sympy.Add(*rational)) + sympy.Add(*rest)
