"""Split a scalar family's log-density into exponential-family parts.

log p(x | theta) = sum_j eta_j(theta) T_j(x) - A(theta) + h(x)

The log-density is expanded (logs of products split, powers multiplied out)
and each additive term is factored into an x-only part and an x-free part:
x-free terms with parameters go to -A, x-only terms to h, and products to a
statistic T_j (grouped, so equal statistics share one natural parameter).
"""

from dataclasses import dataclass

import sympy

from ..errors import FamilyError, NotExponentialFamily
from ..expressions import MAX_SPECIAL_ARGUMENT, parse_expression

_SUPPORT_ASSUMPTIONS = {
    "real": {"real": True},
    "positive": {"positive": True},
    "nonnegative": {"nonnegative": True},
    "unit": {"positive": True},
    # No integer assumption: sympy would rewrite loggamma(x + 1) as log(gamma(x + 1)), which
    # overflows in floating point for counts above 170.
    "integer": {"real": True},
    "nonnegative-integer": {"nonnegative": True},
    "positive-integer": {"positive": True},
    "binary": {"nonnegative": True},
    "category": {"nonnegative": True},
}
_DOMAIN_ASSUMPTIONS = {"real": {"real": True}, "positive": {"positive": True},
                       "unit": {"positive": True}}


@dataclass(frozen=True)
class ExpFamForm:
    """A scalar family in exponential-family form.

    Attributes
    ----------
    x : sympy.Symbol
        The variable, with the support's assumptions.
    params : tuple of sympy.Symbol
        The parameters, in declaration order, with their domains' assumptions.
    logpdf : sympy.Expr
    statistics : tuple of sympy.Expr
        T_j(x).
    natural : tuple of sympy.Expr
        eta_j(theta).
    log_partition : sympy.Expr
        A(theta).
    base : sympy.Expr
        h(x), the log base measure.
    """

    x: sympy.Symbol
    params: tuple
    logpdf: sympy.Expr
    statistics: tuple
    natural: tuple
    log_partition: sympy.Expr
    base: sympy.Expr


def family_symbols(family):
    """The symbols of a family's variable and parameters, carrying their assumptions."""
    x = sympy.Symbol("x", **_SUPPORT_ASSUMPTIONS[family.support])
    params = tuple(sympy.Symbol(name, **_DOMAIN_ASSUMPTIONS[domain]) for name, domain in family.params)
    return x, params


def decompose(family, constants, where):
    """Put a scalar family's log-density into exponential-family form.

    Parameters
    ----------
    family : Family
        A family of kind ``"scalar"``.
    constants : mapping of str to number
        Values of the family's declared constants (binomial: ``trials``).
    where : str
        Context for error messages.

    Returns
    -------
    ExpFamForm
    """
    x, params, logpdf = parsed_logpdf(family, constants, where)

    # Only terms with x are expanded: x-free terms keep their declared form, which sympy's
    # solver handles better (the zero-truncated Poisson closes only in its declared form).
    with_x = sympy.Add(*[t for t in sympy.Add.make_args(logpdf) if t.has(x)])
    without_x = [t for t in sympy.Add.make_args(logpdf) if not t.has(x)]
    expanded = sympy.expand(sympy.expand_log(with_x, force=True), deep=True)
    coefficients = {}
    log_partition = sympy.Integer(0)
    base = sympy.Integer(0)
    param_set = set(params)
    for term in list(sympy.Add.make_args(expanded)) + without_x:
        param_part, x_part = term.as_independent(x, as_Add=False)
        if x_part.free_symbols & param_set:
            raise NotExponentialFamily(
                f"{where} is not an exponential family in its parameters: "
                f"the term {term} does not split into a function of x times a function of the "
                f"parameters; write a number in the logpdf in place of a parameter that mixes with x")
        if not (term.free_symbols & param_set):
            base += term
        elif x_part == 1:
            log_partition -= param_part
        else:
            coefficients[x_part] = coefficients.get(x_part, 0) + param_part
    if not coefficients:
        raise FamilyError(f"{where} has no term joining x and a parameter")
    statistics = tuple(sorted(coefficients, key=sympy.default_sort_key))
    natural = tuple(coefficients[t] for t in statistics)
    return ExpFamForm(x=x, params=params, logpdf=logpdf, statistics=statistics, natural=natural,
                      log_partition=log_partition, base=base)


def parsed_logpdf(family, constants, where):
    """A scalar family's variable, parameters and log-density (constants bound), checked to use them all.

    Returns
    -------
    x : sympy.Symbol
    params : tuple of sympy.Symbol
    logpdf : sympy.Expr
    """
    x, params = family_symbols(family)
    names = {"x": x, **{p.name: p for p in params}}
    constant_symbols = {name: sympy.Symbol(name, positive=True) for name in family.constants}
    names.update(constant_symbols)
    logpdf = parse_expression(family.logpdf, names, f"{where} logpdf")
    logpdf = _bind_constants(logpdf, {constant_symbols[name]: value for name, value in constants.items()})
    missing = [p.name for p in params if not logpdf.has(p)]
    if missing:
        raise FamilyError(f"{where}: logpdf does not use parameter(s) "
                          f"{', '.join(missing)}")
    if not logpdf.has(x):
        raise FamilyError(f"{where}: logpdf does not use x")
    return x, params, logpdf


def _bind_constants(logpdf, values):
    """Substitute the constants' values, evaluating functions of constants alone in floating point.

    sympy evaluates a special function of an integer exactly: lgamma(trials + 1)
    becomes the logarithm of a factorial with millions of digits for a large
    ``trials``. Such calls depend on no variable or parameter, so their values are
    taken numerically; everything else receives the exact value.
    """
    exact = {symbol: sympy.Integer(value) if float(value).is_integer() else sympy.nsimplify(value)
             for symbol, value in values.items()}
    if all(abs(value) <= MAX_SPECIAL_ARGUMENT for value in values.values()):
        return logpdf.subs(exact)
    numeric = {symbol: sympy.Float(value) for symbol, value in values.items()}
    calls = {call: call.xreplace(numeric) for call in logpdf.atoms(sympy.Function)
             if call.free_symbols and call.free_symbols <= set(values)}
    return logpdf.xreplace(calls).subs(exact)
