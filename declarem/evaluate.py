"""Stored expressions evaluated with numpy, without sympy.

A derivation's numeric kernels are kept as expression trees in the form the
derivation cache writes (``derive.serial``): ``["Add", a, b]``,
``["Symbol", name, assumptions]``, ``["Integer", "3"]``, ... This module turns
such a tree into a numpy callable by walking it once into nested closures. It
imports neither sympy nor the tree's source, so a process whose derivations are
all cached never imports sympy, and the cold and warm routes evaluate the same
trees the same way, to the last bit.

Only the heads in ``FUNCTIONS`` and the leaves below are accepted; anything else
raises ``TreeError``, and the caller treats the tree as absent.
"""

from fractions import Fraction
from functools import reduce

import numpy as np

# Integers beyond this are not int64 in numpy (log(100!) from a binomial's constants): they are
# evaluated as floats, which numpy's functions can take.
LARGEST_EXACT = 2 ** 53
# Derived trees are a few dozen levels deep; this bound keeps the walk far inside Python's recursion limit.
MAX_DEPTH = 300


class TreeError(ValueError):
    """A tree that is not an expression this module evaluates."""


def _special(name):
    """A scipy.special function, imported when a tree first calls one (scipy.special is slow to import)."""
    found = []

    def call(*args):
        if not found:
            import scipy.special
            found.append(getattr(scipy.special, name))
        return found[0](*args)
    return call


def _lambert_w(x, branch=0):
    import scipy.special
    return scipy.special.lambertw(x, branch)


def _lower_gamma(s, x):
    import scipy.special
    return scipy.special.gamma(s) * scipy.special.gammainc(s, x)


def _upper_gamma(s, x):
    import scipy.special
    return scipy.special.gamma(s) * scipy.special.gammaincc(s, x)


def _harmonic(n):
    import scipy.special
    return scipy.special.digamma(np.add(n, 1)) + np.euler_gamma


def _select(*pairs):
    """Piecewise: the first branch whose condition holds, nan where none does."""
    values = [value for value, _ in pairs]
    conditions = [np.asarray(condition, dtype=bool) for _, condition in pairs]
    shape = np.broadcast_shapes(*(np.shape(v) for v in values), *(np.shape(c) for c in conditions))
    return np.select([np.broadcast_to(c, shape) for c in conditions],
                     [np.broadcast_to(v, shape) for v in values], default=np.nan)


#: Function heads and their numpy (or scipy.special) evaluation.
FUNCTIONS = {
    "log": np.log, "exp": np.exp, "Abs": np.abs, "sign": np.sign, "sin": np.sin, "cos": np.cos,
    "tan": np.tan, "tanh": np.tanh, "sinh": np.sinh, "cosh": np.cosh, "atan": np.arctan,
    "asinh": np.arcsinh, "atanh": np.arctanh, "re": np.real, "im": np.imag, "floor": np.floor,
    "ceiling": np.ceil,
    "loggamma": _special("gammaln"), "gamma": _special("gamma"), "digamma": _special("psi"),
    "polygamma": _special("polygamma"), "factorial": _special("factorial"), "binomial": _special("binom"),
    "erf": _special("erf"), "erfc": _special("erfc"), "zeta": _special("zeta"), "beta": _special("beta"),
    "xlogy": _special("xlogy"), "LambertW": _lambert_w, "lowergamma": _lower_gamma,
    "uppergamma": _upper_gamma, "harmonic": _harmonic,
    "Max": lambda *a: reduce(np.maximum, a), "Min": lambda *a: reduce(np.minimum, a),
    "And": lambda *a: reduce(np.logical_and, a), "Or": lambda *a: reduce(np.logical_or, a),
    "Not": np.logical_not,
    "StrictLessThan": np.less, "LessThan": np.less_equal, "StrictGreaterThan": np.greater,
    "GreaterThan": np.greater_equal, "Equality": np.equal, "Unequality": np.not_equal,
}
CONSTANTS = {"pi": np.pi, "E": np.e, "EulerGamma": np.euler_gamma, "I": 1j, "oo": np.inf, "-oo": -np.inf,
             "zoo": complex(np.inf, np.nan), "nan": np.nan, "true": True, "false": False}


def compile_tree(argument_names, tree):
    """A numpy callable evaluating ``tree`` at the arguments, in order.

    Parameters
    ----------
    argument_names : sequence of str
        The names of the tree's symbols, in the order the callable takes them.
    tree : list
        An expression tree (see the module docstring).

    Returns
    -------
    callable
        ``f(*values) -> ndarray of float``, broadcast over the shapes of the
        values (a constant tree broadcasts too); complex results of real
        branches (LambertW's principal branch) are returned as their real part.

    Raises
    ------
    TreeError
        When the tree is not one this module evaluates, or uses a name not among
        the arguments.
    """
    return CompiledTree(argument_names, tree)


class CompiledTree:
    """A tree compiled to numpy closures; pickles as its tree and recompiles (no sympy) when loaded.

    A worker process receiving a compiled model so evaluates the very expressions the
    sending process derived, whatever its own derivation cache holds.
    """

    def __init__(self, argument_names, tree):
        self.argument_names = list(argument_names)
        self.tree = tree
        positions = {name: i for i, name in enumerate(self.argument_names)}
        try:
            self._evaluate = _closure(tree, positions, 0)
        except RecursionError:
            raise TreeError("nested too deeply") from None

    def __call__(self, *values):
        return real_array(self._evaluate(values), values)

    def __reduce__(self):
        return CompiledTree, (self.argument_names, self.tree)


def real_array(result, values):
    """An expression's value as a float array broadcast over its arguments' shapes.

    Constant expressions broadcast too, and complex results of real branches (LambertW's
    principal branch) are returned as their real part.
    """
    if np.iscomplexobj(result):
        result = result.real
    if values:
        shape = np.broadcast_shapes(*(np.shape(v) for v in values))
        if np.shape(result) != shape:            # (broadcast_to costs more than the small arrays it is called on)
            result = np.broadcast_to(result, shape)
    return np.array(result, dtype=float)


def _closure(tree, positions, depth):
    if depth > MAX_DEPTH:
        raise TreeError("nested too deeply")
    if not isinstance(tree, list) or not tree or not isinstance(tree[0], str):
        raise TreeError("bad expression")
    head, *rest = tree
    if head in ("Symbol", "Integer", "Rational", "Float", "Constant"):
        return _leaf(head, rest, positions)
    children = [_closure(child, positions, depth + 1) for child in rest]
    if not children:
        raise TreeError(f"{head} without arguments")
    if head == "Add":
        return lambda v: reduce(lambda a, b: a + b, (c(v) for c in children))
    if head == "Mul":
        return _product(rest, children)
    if head == "Pow":
        return _power(rest, children)
    if head == "Piecewise":
        if not all(isinstance(r, list) and r and r[0] == "ExprCondPair" for r in rest):
            raise TreeError("Piecewise of something other than pairs")
        return lambda v: _select(*(c(v) for c in children))
    if head == "ExprCondPair":
        if len(children) != 2:
            raise TreeError("ExprCondPair needs a value and a condition")
        return lambda v: (children[0](v), children[1](v))
    function = FUNCTIONS.get(head)
    if function is None:
        raise TreeError(f"unknown expression class {head!r}")
    return lambda v: function(*(c(v) for c in children))


def _leaf(head, rest, positions):
    if head == "Symbol":
        if len(rest) != 2 or not isinstance(rest[0], str) or rest[0] not in positions:
            raise TreeError(f"symbol {rest[:1]!r} is not an argument")
        position = positions[rest[0]]
        return lambda v: v[position]
    value = _number(head, rest)
    return lambda v: value


def _number(head, rest):
    if head == "Integer" and len(rest) == 1:
        value = _integer(rest[0])
        return value if abs(value) <= LARGEST_EXACT else float(value)
    if head == "Rational" and len(rest) == 2:
        return float(Fraction(_integer(rest[0]), _integer(rest[1])))
    if head == "Float" and len(rest) == 1 and isinstance(rest[0], str):
        prefix = "Float('"
        digits = rest[0][len(prefix):].partition("'")[0] if rest[0].startswith(prefix) else ""
        try:
            return float(digits)
        except ValueError:
            raise TreeError("bad float") from None
    if head == "Constant" and len(rest) == 1 and rest[0] in CONSTANTS:
        return CONSTANTS[rest[0]]
    raise TreeError(f"bad {head}")


def _integer(text):
    if not isinstance(text, str) or len(text) > 2000 or not text.lstrip("-").isdigit():
        raise TreeError("bad integer")
    return int(text)


def _product(rest, children):
    """A product, with a leading -1 as negation (as numpy code would write it)."""
    if rest[0] == ["Integer", "-1"] and len(children) > 1:
        others = children[1:]
        return lambda v: -reduce(lambda a, b: a * b, (c(v) for c in others))
    return lambda v: reduce(lambda a, b: a * b, (c(v) for c in children))


def _power(rest, children):
    """A power; exponents 1/2, -1/2 and -1 as sqrt and reciprocals, as numpy code would write them."""
    if len(children) != 2:
        raise TreeError("Pow needs a base and an exponent")
    base, exponent = children
    if rest[1] == ["Rational", "1", "2"]:
        return lambda v: np.sqrt(base(v))
    if rest[1] == ["Rational", "-1", "2"]:
        return lambda v: 1 / np.sqrt(base(v))
    if rest[1] == ["Integer", "-1"]:
        return lambda v: 1 / base(v)
    return lambda v: base(v) ** exponent(v)


def with_safe_logs(tree):
    """The tree with each product c * log(b) written xlogy(c, b), so that 0 * log(0) is 0.

    Densities evaluated on the parameter space's boundary (a probability of 0 or
    1 with no data there) then give 0 where the product vanishes.
    """
    if not isinstance(tree, list) or not tree or tree[0] in ("Symbol", "Integer", "Rational", "Float",
                                                              "Constant"):
        return tree
    head, *rest = tree
    rest = [with_safe_logs(child) for child in rest]
    logs = [child for child in rest if isinstance(child, list) and child and child[0] == "log"]
    if head == "Mul" and len(logs) == 1:
        others = [child for child in rest if child is not logs[0]]
        factor = others[0] if len(others) == 1 else ["Mul", *others]
        return ["xlogy", factor, logs[0][1]]
    return [head, *rest]
