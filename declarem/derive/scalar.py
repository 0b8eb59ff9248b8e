"""The M-step of a scalar family, solved from its stationarity equations.

With t_j the weighted mean of T_j(x) over the rows a parameter set serves, the
expected complete-data log-likelihood per unit weight is
    f(theta; t) = sum_j eta_j(theta) t_j - A(theta),
and the M-step solves d f / d theta = 0 (moment matching, grad A = t).

Three outcomes, tried in order:
- closed: sympy solves all equations at once (denominators cleared, roots
  outside the domain dropped, each candidate checked at known moments);
- partial: some parameters solve from their own equation in terms of the others
  (gamma: rate = shape / E[x]); the rest is a small numeric problem on the
  profile objective;
- numeric: every parameter is found by Newton's method on f, with sympy's
  gradient and Hessian in unconstrained coordinates.
Every closed form is checked against its numeric twin at two parameter points.
"""

from dataclasses import dataclass, field

import numpy as np
import sympy

from ..errors import FamilyError
from .budget import SolveBudget
from .coordinates import unconstrained
from .moments import expected_statistics, is_positive_statistic

CHECK_POINTS = {"real": (0.7, -1.3), "positive": (1.6, 0.45), "unit": (0.35, 0.7)}
CHECK_RTOL = 1e-6
#: Total weights of a set at which MAP closed forms are checked.
CHECK_WEIGHTS = (3.0, 40.0)
#: W, a set's total weight, in MAP objectives (the prior enters as prior / W beside the means).
WEIGHT = sympy.Symbol("W", positive=True)
NORMALISATION_RTOL = 1e-6


@dataclass
class ScalarSolution:
    """How one scalar family's M-step is solved.

    Attributes
    ----------
    form : ExpFamForm
    means : tuple of sympy.Symbol
        t_j, the weighted means of the statistics.
    objective : sympy.Expr
        f(theta; t).
    closed : dict of sympy.Symbol to sympy.Expr
        Parameters in closed form, in terms of the means and of the numeric parameters.
    numeric : tuple of sympy.Symbol
        Parameters found numerically.
    unconstrained : tuple of sympy.Symbol
        u_i with theta_i = map(u_i) for each numeric parameter.
    profile : sympy.Expr
        The objective in the unconstrained variables, closed parameters substituted.
    gradient, hessian : list of sympy.Expr
        Of the profile in the unconstrained variables.
    poolable : dict of sympy.Symbol to sympy.Expr
        Parameters that may be tied across sets, with phi(t): the tied value is
        the weighted mean of phi over the sets.
    notes : list of str
    provisional : bool
        sympy's budget ran out before every attempt finished: the route serves this
        process only and is not stored in the on-disk cache.
    prior : sympy.Expr or None
        The log prior density (MAP): the objective then has ``prior / WEIGHT``, and the
        closed forms and the numeric problem take the set's weight W.
    """

    form: object
    domains: dict
    means: tuple
    objective: sympy.Expr
    closed: dict
    numeric: tuple
    unconstrained: tuple = ()
    profile: sympy.Expr = None
    gradient: list = field(default_factory=list)
    hessian: list = field(default_factory=list)
    poolable: dict = field(default_factory=dict)
    notes: list = field(default_factory=list)
    provisional: bool = False
    prior: sympy.Expr = None

    @property
    def status(self):
        if not self.numeric:
            return "closed"
        return "partial" if self.closed else "numeric"


def mean_symbols(form):
    """Symbols for the weighted means of the statistics, positive where the statistic is."""
    names = []
    for statistic in form.statistics:
        positive = is_positive_statistic(form, statistic)
        names.append(sympy.Symbol(f"E[{statistic}]", positive=True) if positive
                     else sympy.Symbol(f"E[{statistic}]", real=True))
    return tuple(names)


def _cleared(equation):
    numerator, _ = sympy.together(equation).as_numer_denom()
    return numerator


def attempt_solve(equations, unknowns, budget):
    """sympy's solutions of a system, or [] when it has none, gives up, or the budget refuses it.

    Parameters
    ----------
    equations : list of sympy.Expr
        Each equal to zero.
    unknowns : list of sympy.Symbol
    budget : SolveBudget
    """
    if not budget.admits(equations, unknowns):
        return []

    def solve():
        try:
            return sympy.solve(equations, unknowns, dict=True)
        except (NotImplementedError, ValueError, TypeError, ZeroDivisionError, RecursionError):
            return []

    finished, solutions = budget.run(solve)
    return solutions if finished else []


class _Checker:
    """Check candidate closed forms at parameter points whose moments are known by quadrature."""

    def __init__(self, form, support, domains, means, upper):
        self.points = []
        for index in range(2):
            values = {p: CHECK_POINTS[domains[p]][(index + position) % 2]
                      for position, p in enumerate(form.params)}
            moments, mass = expected_statistics(form, support, values, upper=upper)
            if not abs(mass - 1.0) < NORMALISATION_RTOL:
                at = ", ".join(f"{p.name} = {v:g}" for p, v in values.items())
                raise FamilyError(f"the declared log-density is not normalised: at {at} it sums or "
                                  f"integrates to {mass:.6g} over the '{support}' support, not 1; "
                                  "include the normalising terms in logpdf")
            self.points.append((values, dict(zip(means, moments))))

    def holds(self, parameter, expression, given=()):
        """Whether ``parameter = expression`` returns the true value at every check point."""
        for values, moments in self.points:
            substituted = expression.subs(moments).subs({p: values[p] for p in given})
            if substituted.free_symbols:
                return False
            try:
                number = complex(substituted.evalf())
            except (TypeError, ValueError):
                return False
            truth = values[parameter]
            if abs(number.imag) > 1e-9 * (1 + abs(truth)) or \
                    abs(number.real - truth) > CHECK_RTOL * (1 + abs(truth)):
                return False
        return True


def _in_domain(expression, domain):
    if domain == "positive" and (expression.is_positive is False or expression.is_nonpositive):
        return False
    if domain == "real" and expression.is_real is False:
        return False
    if domain == "unit" and (expression.is_positive is False):
        return False
    return True


def solve_scalar(form, support, domains, upper=None, prior=None):
    """Derive the M-step of a scalar family.

    Parameters
    ----------
    form : ExpFamForm
    support : str
    domains : mapping of parameter name to domain
    upper : int or None
        Upper bound of a bounded discrete support (binomial trials), for the checks.
    prior : sympy.Expr or None
        A log prior density in the parameters: the M-step is then MAP, maximising
        eta . t - A + prior / W per set, W the set's total weight (``WEIGHT``).

    Returns
    -------
    ScalarSolution
    """
    domains = {p: domains[p.name] for p in form.params}
    means = mean_symbols(form)
    objective = sum((eta * t for eta, t in zip(form.natural, means)), sympy.Integer(0)) - form.log_partition
    checker = _Checker(form, support, domains, means, upper)
    if prior is not None:
        objective += prior / WEIGHT
        checker = _StationarityChecker(checker, objective, domains)
    equations = [sympy.diff(objective, p) for p in form.params]
    notes = []
    budget = SolveBudget()

    closed = {}
    candidates = attempt_solve([_cleared(e) for e in equations], list(form.params), budget) or \
        attempt_solve(equations, list(form.params), budget)
    for solution in candidates:
        if set(solution) != set(form.params) or any(solution[p].has(*form.params) for p in form.params):
            continue
        if all(_in_domain(solution[p], domains[p]) and checker.holds(p, solution[p]) for p in form.params):
            closed = {p: solution[p] for p in form.params}
            break
    if not closed:
        notes.append("sympy found no closed form for all parameters together")
        closed = _partial(form, equations, domains, checker, budget)
        if closed:
            names = ", ".join(p.name for p in closed)
            notes.append(f"closed form for {names} given the others")

    numeric = tuple(p for p in form.params if p not in closed)
    solution = ScalarSolution(form=form, domains=domains, means=means, objective=objective,
                              closed=closed, numeric=numeric, notes=notes, provisional=budget.exhausted,
                              prior=prior)
    _add_numeric_problem(solution)
    # A tied parameter is the weighted mean of its per-set updates, which a prior does not keep.
    solution.poolable = _poolable(solution) if prior is None else {}
    _check_numeric_twin(solution, checker)
    return solution


class _StationarityChecker:
    """Check candidate MAP closed forms: at the check points' moments and a few weights, the objective's
    derivative in the parameter vanishes there, at a value in its domain."""

    def __init__(self, checker, objective, domains):
        self.objective, self.domains = objective, domains
        self.points = [(values, {**moments, WEIGHT: weight})
                       for values, moments in checker.points for weight in CHECK_WEIGHTS]

    def holds(self, parameter, expression, given=()):
        for values, moments in self.points:
            fixed = {p: values[p] for p in given}
            candidate = expression.subs(moments).subs(fixed)
            try:
                value = complex(candidate.evalf())
            except (TypeError, ValueError):
                return False
            if candidate.free_symbols or abs(value.imag) > 1e-9 * (1 + abs(value.real)) or \
                    not _numerically_in(value.real, self.domains[parameter]):
                return False
            others = {p: v for p, v in values.items() if p != parameter and p not in fixed}
            slope = sympy.diff(self.objective, parameter).subs(moments).subs(fixed).subs(others)
            try:
                slope = complex(slope.subs(parameter, value.real).evalf())
            except (TypeError, ValueError):
                return False
            if not abs(slope) < CHECK_RTOL * (1 + abs(value.real)):
                return False
        return True


def _numerically_in(value, domain):
    return {"real": True, "positive": value > 0, "unit": 0 < value < 1}[domain]


def _partial(form, equations, domains, checker, budget):
    """Parameters that solve from their own equation given the others, substituted to a fixed point."""
    closed = {}
    for parameter, equation in zip(form.params, equations):
        candidates = attempt_solve([_cleared(equation)], [parameter], budget) or \
            attempt_solve([equation], [parameter], budget)
        others = [p for p in form.params if p != parameter]
        for candidate in candidates:
            expression = candidate.get(parameter)
            if expression is None or any(expression.has(p) for p in closed):
                continue
            if _in_domain(expression, domains[parameter]) and checker.holds(parameter, expression, others):
                closed = {p: e.subs(parameter, expression) for p, e in closed.items()}
                closed[parameter] = expression
                break
    if len(closed) == len(form.params):
        return {}
    return closed


def _add_numeric_problem(solution):
    if not solution.numeric:
        return
    solution.unconstrained, _, solution.profile, solution.gradient, solution.hessian = unconstrained(
        solution.objective.subs(solution.closed), solution.numeric, solution.domains)


def numeric_twin(solution):
    """The solution with every parameter solved numerically: the closed forms' numeric twin, for checks."""
    twin = ScalarSolution(form=solution.form, domains=solution.domains, means=solution.means,
                          objective=solution.objective, closed={}, numeric=solution.form.params,
                          prior=solution.prior)
    _add_numeric_problem(twin)
    return twin


def _poolable(solution):
    """Closed parameters that may be tied: f's derivative is c(theta) * (phi(t) - theta)."""
    poolable = {}
    for parameter, expression in solution.closed.items():
        if expression.has(*solution.numeric) or any(
                e.has(parameter) for p, e in solution.closed.items() if p != parameter):
            continue
        others = {p: e for p, e in solution.closed.items() if p != parameter}
        derivative = sympy.diff(solution.objective, parameter).subs(others)
        ratio = sympy.simplify(derivative / (expression - parameter))
        if not ratio.has(*solution.means):
            poolable[parameter] = expression
    return poolable


def _check_numeric_twin(solution, checker):
    """The numeric route must reach the same parameters as the closed route, at known moments."""
    from ..kernels import NumericSolver
    twin = NumericSolver.from_solution(solution, solve_all=True)
    route = NumericSolver.from_solution(solution)
    for values, moments in checker.points:
        means = np.array([[moments[t] for t in solution.means]])
        weights = np.array([moments.get(WEIGHT, 1.0)])
        start = {p.name: np.array([1.0 if solution.domains[p] != "real" else 0.0])
                 if solution.domains[p] != "unit" else np.array([0.5]) for p in solution.form.params}
        found = twin.solve(means, start, weights)
        # Under a prior the maximiser is not the point the moments came from: the derived route's answer is.
        expected = route.solve(means, start, weights) if solution.prior is not None else \
            {p.name: np.array([values[p]]) for p in solution.form.params}
        for p in solution.form.params:
            target = float(expected[p.name][0])
            if abs(found[p.name][0] - target) > 1e-5 * (1 + abs(target)):
                solution.notes.append(
                    f"numeric check: {p.name} = {found[p.name][0]:.8g}, expected {target:.8g}")
