"""Turn sympy expressions into numpy callables, with scipy's special functions."""

import sympy

from ..evaluate import real_array

_MODULES = ["scipy", "numpy"]


def to_numpy(arguments, expression):
    """Lambdify ``expression`` over ``arguments``, returning real arrays.

    Constant expressions broadcast against the first argument, and complex
    results of real branches (LambertW's principal branch) are returned as
    their real part.
    """
    function = sympy.lambdify(arguments, _float_large_integers(expression), modules=_MODULES)
    return lambda *values: real_array(function(*values), values)


# Integers beyond this are not int64 in numpy: numpy would hold them as Python objects (log(100!),
# from a binomial's constants), which its functions cannot take.
LARGEST_EXACT = 2 ** 53


def _float_large_integers(expression):
    """The expression with integers too large for numpy's integers written as floats."""
    if not isinstance(expression, sympy.Basic):
        return expression
    return expression.replace(lambda e: e.is_Integer and abs(e) > LARGEST_EXACT, lambda e: sympy.Float(e))
