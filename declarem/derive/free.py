"""The M-step of free parameters that category probabilities are written in.

With n_{v,j} the expected count of category j of node v, the free parameters
maximise  f(theta; n) = sum_v sum_j n_{v,j} log p_{v,j}(theta).
Parameters on a simplex are reduced to free coordinates first (the last member
is one minus the others). The stationarity equations, denominators cleared,
go to sympy's solver under a budget of CPU time (``budget.py``); a candidate is kept only when it
returns the parameters that generated exactly known counts, at two check
points. Otherwise Newton's method solves it numerically, with sympy's gradient
and Hessian in unconstrained coordinates.
"""

from dataclasses import dataclass, field

import sympy

from .budget import SolveBudget
from .coordinates import unconstrained
from .scalar import _cleared, attempt_solve

CHECK_POINTS = {"real": (0.7, -0.4), "positive": (1.6, 0.45), "unit": (0.35, 0.7)}
SIMPLEX_POINTS = ((0.5, 0.3, 0.2, 0.1, 0.05), (0.2, 0.45, 0.35, 0.25, 0.15))


@dataclass
class FreeSolution:
    """How a block of free parameters is solved.

    Attributes
    ----------
    params : tuple of sympy.Symbol
        Every free parameter of the block, in declaration order.
    domains : dict of sympy.Symbol to str
        ``real``, ``positive``, ``unit`` or ``simplex``.
    groups : dict of str to tuple of sympy.Symbol
        Simplex groups; the last member is eliminated.
    counts : dict of (str, int) to sympy.Symbol
        n_{node, j}.
    probs : dict of str to list of sympy.Expr
        Each member node's category probabilities in the parameters.
    objective : sympy.Expr
    closed : dict of sympy.Symbol to sympy.Expr or None
        Every parameter in closed form (in the counts), when sympy found it.
    unconstrained : tuple of sympy.Symbol
    to_params : dict of sympy.Symbol to sympy.Expr
        Each parameter in the unconstrained coordinates.
    profile, gradient, hessian
        The objective and its derivatives in the unconstrained coordinates.
    notes : list of str
    """

    params: tuple
    domains: dict
    groups: dict
    counts: dict
    probs: dict
    objective: sympy.Expr
    closed: dict = None
    unconstrained: tuple = ()
    to_params: dict = field(default_factory=dict)
    profile: sympy.Expr = None
    gradient: list = field(default_factory=list)
    hessian: list = field(default_factory=list)
    notes: list = field(default_factory=list)
    provisional: bool = False

    @property
    def status(self):
        return "closed" if self.closed else "numeric"


def solve_free(params, domains, groups, probs):
    """Derive the M-step of a block of free parameters.

    Parameters
    ----------
    params : tuple of sympy.Symbol
    domains : dict of sympy.Symbol to str
    groups : dict of str to tuple of sympy.Symbol
    probs : dict of str to list of sympy.Expr
        Node name -> its category probabilities.

    Returns
    -------
    FreeSolution
    """
    counts = {(node, j): sympy.Symbol(f"n[{node}={j}]", nonnegative=True)
              for node, values in probs.items() for j in range(len(values))}
    eliminated = {members[-1]: 1 - sum(members[:-1]) for members in groups.values()}
    objective = sum((counts[(node, j)] * sympy.log(p) for node, values in probs.items()
                     for j, p in enumerate(values)), sympy.Integer(0))
    reduced = objective.subs(eliminated)
    unknowns = [p for p in params if p not in eliminated]
    solution = FreeSolution(params=params, domains=domains, groups=groups, counts=counts, probs=probs,
                            objective=objective)
    points = _check_points(params, domains, groups)
    known = [_exact_counts(counts, probs, point) for point in points]
    equations = [sympy.diff(reduced, u) for u in unknowns]
    budget = SolveBudget()
    candidates = attempt_solve([_cleared(e) for e in equations], unknowns, budget) or \
        attempt_solve(equations, unknowns, budget)
    solution.provisional = budget.exhausted
    for candidate in candidates:
        if set(candidate) != set(unknowns) or any(candidate[u].has(*params) for u in unknowns):
            continue
        full = dict(candidate)
        for member, expression in eliminated.items():
            full[member] = sympy.simplify(expression.subs(candidate))
        if all(_returns(full, point, count_values) for point, count_values in zip(points, known)):
            solution.closed = {p: full[p] for p in params}
            break
    if not solution.closed:
        solution.notes.append("sympy found no closed form; solved by Newton's method")
    _numeric_problem(solution, eliminated, unknowns)
    return solution


def _check_points(params, domains, groups):
    points = []
    for index in range(2):
        point = {}
        for position, p in enumerate(params):
            if domains[p] != "simplex":
                point[p] = sympy.nsimplify(CHECK_POINTS[domains[p]][(index + position) % 2])
        for members in groups.values():
            weights = [sympy.nsimplify(SIMPLEX_POINTS[index][i % len(SIMPLEX_POINTS[index])])
                       for i in range(len(members))]
            total = sum(weights)
            point.update({m: w / total for m, w in zip(members, weights)})
        points.append(point)
    return points


def _exact_counts(counts, probs, point):
    """Counts proportional to the probabilities at a point: their maximiser is the point."""
    return {counts[(node, j)]: 1000 * p.subs(point) for node, values in probs.items()
            for j, p in enumerate(values)}


def _returns(full, point, count_values):
    for p, expression in full.items():
        value = expression.subs(count_values)
        try:
            number = complex(value.evalf())
        except (TypeError, ValueError):
            return False
        truth = float(point[p])
        if abs(number.imag) > 1e-9 or abs(number.real - truth) > 1e-9 * (1 + abs(truth)):
            return False
    return True


def _numeric_problem(solution, eliminated, unknowns):
    """Unconstrained coordinates, and the objective's gradient and Hessian in them."""
    (solution.unconstrained, solution.to_params, solution.profile, solution.gradient,
     solution.hessian) = unconstrained(solution.objective, unknowns, solution.domains, solution.groups.values())
