"""Unconstrained coordinates for numeric M-steps (sympy): one map per domain, used by every derivation.

Newton's method runs in variables u that range over the real line: theta = u for a real
parameter, exp(u) for a positive one, 1 / (1 + exp(-u)) for one in (0, 1) (``numeric.TO_DOMAIN``
is the same map in numpy). A group of parameters on a simplex uses additive log-ratios.
"""

import sympy

#: theta = map(u), per domain.
TO_DOMAIN = {"real": lambda u: u, "positive": sympy.exp, "unit": lambda u: 1 / (1 + sympy.exp(-u))}


def unconstrained(objective, unknowns, domains, groups=()):
    """The objective in unconstrained coordinates, with its gradient and Hessian.

    Parameters
    ----------
    objective : sympy.Expr
    unknowns : sequence of sympy.Symbol
        The parameters solved for numerically, each with a domain in ``domains``
        (members of ``groups`` are given the domain ``"simplex"`` and skipped there).
    domains : mapping of sympy.Symbol to str
    groups : sequence of sequence of sympy.Symbol
        Parameters that lie on a simplex together: member i = exp(u_i) / (1 + sum exp(u)),
        the last member 1 / (1 + sum exp(u)).

    Returns
    -------
    coordinates : tuple of sympy.Symbol
        ``u_NAME`` per unknown (per simplex member but the last).
    to_params : dict of sympy.Symbol to sympy.Expr
    profile : sympy.Expr
    gradient : list of sympy.Expr
    hessian : list of list of sympy.Expr
    """
    coordinates = []
    to_params = {}
    for parameter in unknowns:
        if domains[parameter] == "simplex":
            continue
        u = sympy.Symbol(f"u_{parameter.name}", real=True)
        coordinates.append(u)
        to_params[parameter] = TO_DOMAIN[domains[parameter]](u)
    for members in groups:
        free = [sympy.Symbol(f"u_{m.name}", real=True) for m in members[:-1]]
        coordinates.extend(free)
        denominator = 1 + sum(sympy.exp(u) for u in free)
        for member, u in zip(members[:-1], free):
            to_params[member] = sympy.exp(u) / denominator
        to_params[members[-1]] = 1 / denominator
    profile = objective.subs(to_params)
    gradient = [sympy.diff(profile, u) for u in coordinates]
    hessian = [[sympy.diff(g, v) for v in coordinates] for g in gradient]
    return tuple(coordinates), to_params, profile, gradient, hessian
