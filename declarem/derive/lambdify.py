"""Turn sympy expressions into numpy callables, with scipy's special functions."""

import numpy as np
import sympy

_MODULES = ["scipy", "numpy"]


def to_numpy(arguments, expression):
    """Lambdify ``expression`` over ``arguments``, returning real arrays.

    Constant expressions broadcast against the first argument, and complex
    results of real branches (LambertW's principal branch) are returned as
    their real part.
    """
    function = sympy.lambdify(arguments, expression, modules=_MODULES)

    def evaluate(*values):
        result = function(*values)
        if np.iscomplexobj(result):
            result = result.real
        if values:
            result = np.broadcast_to(result, np.broadcast_shapes(*(np.shape(v) for v in values)))
        return np.array(result, dtype=float)

    return evaluate
