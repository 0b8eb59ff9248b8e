"""Stored expressions evaluated with numpy, without sympy.

A derivation's numeric kernels are kept as expression trees in the form the
derivation cache writes (``derive.serial``): ``["Add", a, b]``,
``["Symbol", name, assumptions]``, ``["Integer", "3"]``, ... This module turns
such trees into a numpy callable by walking them once into a program: a list of
numpy calls in which each distinct subexpression is one call (``Program``). It
imports neither sympy nor the tree's source, so a process whose derivations are
all cached never imports sympy, and the cold and warm routes evaluate the same
trees the same way, to the last bit.

Only the heads in ``FUNCTIONS`` and the leaves below are accepted; anything else
raises ``TreeError``, and the caller treats the tree as absent.
"""

from fractions import Fraction
from functools import reduce
from operator import itemgetter

import numpy as np

# Integers beyond this are not int64 in numpy (log(100!) from a binomial's constants): they are
# evaluated as floats, which numpy's functions can take.
LARGEST_EXACT = 2 ** 53
# Derived trees are a few dozen levels deep; this bound keeps the walk far inside Python's recursion limit.
MAX_DEPTH = 300


class TreeError(ValueError):
    """A tree that is not an expression this module evaluates."""


class _Special:
    """A scipy.special function, imported when a program first runs (scipy.special is slow to import)."""

    def __init__(self, name):
        self.name = name
        self._function = None

    def resolve(self):
        """The scipy.special function itself."""
        if self._function is None:
            import scipy.special
            self._function = getattr(scipy.special, self.name)
        return self._function

    def __call__(self, *args):
        return self.resolve()(*args)


def _special(name):
    return _Special(name)


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


def compile_trees(argument_names, trees):
    """One numpy callable evaluating several trees of the same arguments, each shared part once.

    A Newton step's gradient and Hessian entries repeat most of their subexpressions;
    evaluated together, each distinct one is computed once.

    Returns
    -------
    callable
        ``f(*values) -> list of ndarray of float``, one per tree, each as ``compile_tree``
        would return it.
    """
    return CompiledTrees(argument_names, trees)


class CompiledTrees:
    """Trees compiled to one program; pickles as its trees and recompiles (no sympy) when loaded.

    A worker process receiving a compiled model so evaluates the very expressions the
    sending process derived, whatever its own derivation cache holds.
    """

    def __init__(self, argument_names, trees):
        self.argument_names = list(argument_names)
        self.trees = list(trees)
        self._program = Program(self.argument_names, self.trees)

    def __call__(self, *values):
        shape = _broadcast_shape(values)
        return [real_array(result, values, shape) for result in self._program.run(values)]

    def stacked(self, *values, axis=-1):
        """The trees' values stacked on ``axis`` into one new float array, as ``np.stack`` of ``self(*values)``.

        Stacking copies every value once: the per-tree copies ``__call__`` makes (its
        arrays must not share memory with the arguments) are left out.
        """
        shape = _broadcast_shape(values)
        results = self._program.run(values)
        if all(type(result) is np.ndarray and result.dtype == np.float64 and result.shape == shape
               for result in results):
            # The usual case: each value written into its place (np.stack's checks cost more than the copies).
            where = axis % (len(shape) + 1)
            stacked = np.empty(shape[:where] + (len(results),) + shape[where:])
            for i, result in enumerate(results):
                stacked[(slice(None),) * where + (i,)] = result
            return stacked
        stacked = np.stack([result if np.shape(result) == shape else np.broadcast_to(result, shape)
                            for result in results], axis=axis)
        if np.iscomplexobj(stacked):
            stacked = stacked.real
        return stacked.astype(float, copy=False)

    def __reduce__(self):
        return CompiledTrees, (self.argument_names, self.trees)


class CompiledTree(CompiledTrees):
    """One tree compiled to a program (see ``CompiledTrees``)."""

    def __init__(self, argument_names, tree):
        super().__init__(argument_names, [tree])
        self.tree = tree

    def __call__(self, *values):
        return real_array(self._program.run(values)[0], values)

    def __reduce__(self):
        return CompiledTree, (self.argument_names, self.tree)


def real_array(result, values, shape=None):
    """An expression's value as a float array broadcast over its arguments' shapes.

    Constant expressions broadcast too, and complex results of real branches (LambertW's
    principal branch) are returned as their real part. ``shape``: the arguments' broadcast
    shape, when the caller has it.
    """
    if type(result) is np.ndarray and result.dtype == np.float64 and shape is not None and result.shape == shape:
        return result.copy(order="K")   # the usual case, without the general route's few microseconds of tests
    if np.iscomplexobj(result):
        result = result.real
    if values:
        shape = _broadcast_shape(values) if shape is None else shape
        if np.shape(result) != shape:            # (broadcast_to costs more than the small arrays it is called on)
            result = np.broadcast_to(result, shape)
    return np.array(result, dtype=float)


def _broadcast_shape(values):
    """The shape the arguments broadcast to; () without arguments."""
    if not values:
        return ()
    if len(values) <= 32:
        return np.broadcast(*values).shape       # in C, without np.broadcast_shapes' per-shape arrays
    return np.broadcast_shapes(*(np.shape(v) for v in values))


class Program:
    """Trees as a list of steps over numbered values, each distinct subexpression one step.

    The values are the arguments, then the constants, then each step's result in
    order. Subexpressions are identified by their head and the nodes of their
    parts (hash-consing), so equal subtrees anywhere in any of the trees share one
    step. Every step applies the same numpy operation, to the same operands in the
    same order, as a walk of each tree would: the results are the same to the bit.
    """

    def __init__(self, argument_names, trees):
        self._positions = {name: i for i, name in enumerate(argument_names)}
        # Nodes in order of creation (operands before their uses): ("constant", value) or (function, operands).
        self._nodes = [None] * len(argument_names)
        self._known = {}
        try:
            outputs = [self._compile(tree, 0) for tree in trees]
        except RecursionError:
            raise TreeError("nested too deeply") from None
        nodes = self._nodes[len(argument_names):]
        constants = [i for i, node in enumerate(nodes, len(argument_names)) if node[0] == "constant"]
        steps = [i for i, node in enumerate(nodes, len(argument_names)) if node[0] != "constant"]
        place = {i: i for i in range(len(argument_names))}
        for node in constants + steps:
            place[node] = len(place)
        self.constants = tuple(self._nodes[i][1] for i in constants)
        self.steps = [(self._nodes[i][0], tuple(place[j] for j in self._nodes[i][1])) for i in steps]
        self.outputs = [place[i] for i in outputs]
        self._plan = None
        del self._nodes, self._known

    def run(self, values):
        """Each tree's value at the arguments ``values`` (a sequence, in order)."""
        if self._plan is None:
            self._plan = [_planned_step(function, operands) for function, operands in self.steps]
        held = list(values)
        held.extend(self.constants)
        for function, operand, operands in self._plan:
            held.append(function(held[operand]) if operands is None else function(*operands(held)))
        return [held[i] for i in self.outputs]

    def _node(self, key, node):
        """The node identified by ``key``, added as ``node`` when it is new."""
        found = self._known.get(key)
        if found is None:
            found = self._known[key] = len(self._nodes)
            self._nodes.append(node)
        return found

    def _compile(self, tree, depth):
        """The node of ``tree``'s value."""
        if depth > MAX_DEPTH:
            raise TreeError("nested too deeply")
        if not isinstance(tree, list) or not tree or not isinstance(tree[0], str):
            raise TreeError("bad expression")
        head, *rest = tree
        if head == "Symbol":
            if len(rest) != 2 or not isinstance(rest[0], str) or rest[0] not in self._positions:
                raise TreeError(f"symbol {rest[:1]!r} is not an argument")
            return self._positions[rest[0]]
        if head in ("Integer", "Rational", "Float", "Constant"):
            value = _number(head, rest)
            return self._node(("constant", type(value).__name__, repr(value)), ("constant", value))
        if not rest:
            raise TreeError(f"{head} without arguments")
        function, operands = self._operation(head, rest, depth)
        return self._node((function, operands), (function, operands))

    def _operation(self, head, rest, depth):
        """The function and operand nodes of one compound node."""
        if head == "Mul" and rest[0] == ["Integer", "-1"] and len(rest) > 1:
            return _negated_product, self._parts(rest[1:], depth)
        if head == "Pow":
            if len(rest) != 2:
                raise TreeError("Pow needs a base and an exponent")
            special = POWERS.get(_exponent_key(rest[1]))
            if special is not None:
                return special, self._parts(rest[:1], depth)
        if head == "Piecewise" and not all(isinstance(r, list) and r and r[0] == "ExprCondPair" for r in rest):
            raise TreeError("Piecewise of something other than pairs")
        if head == "ExprCondPair" and len(rest) != 2:
            raise TreeError("ExprCondPair needs a value and a condition")
        if head == "polygamma" and len(rest) == 2 and isinstance(rest[0], list) and rest[0][:1] == ["Integer"]:
            order = _number("Integer", rest[0][1:])
            if isinstance(order, int) and 0 <= order <= MAX_POLYGAMMA_ORDER:
                return _polygamma_of_order(order), self._parts(rest[1:], depth)
        function = OPERATIONS.get(head) or FUNCTIONS.get(head)
        if function is None:
            raise TreeError(f"unknown expression class {head!r}")
        return function, self._parts(rest, depth)

    def _parts(self, trees, depth):
        return tuple(self._compile(tree, depth + 1) for tree in trees)


def _planned_step(function, operands):
    """A step as ``run`` applies it: scipy.special functions resolved, a sum or product of two as the
    numpy operation ``a + b`` and ``a * b`` apply, and its operands fetched by one call:
    (function, the operand when there is one, else a getter of the operands as a tuple)."""
    if isinstance(function, _Special):
        function = function.resolve()
    elif len(operands) == 2 and function in BINARY:
        function = BINARY[function]
    if len(operands) == 1:
        return function, operands[0], None
    return function, None, itemgetter(*operands)


def _sum(*terms):
    total = terms[0]
    for term in terms[1:]:
        total = total + term
    return total


def _product(*factors):
    total = factors[0]
    for factor in factors[1:]:
        total = total * factor
    return total


def _negated_product(*factors):
    """A product with a leading -1, as negation (as numpy code would write it)."""
    return -_product(*factors)


def _power(base, exponent):
    return base ** exponent


def _expression_condition_pair(value, condition):
    return value, condition


def _exponent_key(tree):
    return tuple(tree) if isinstance(tree, list) and all(isinstance(t, str) for t in tree) else None


def _reciprocal(base):
    return 1 / base


def _reciprocal_sqrt(base):
    return 1 / np.sqrt(base)


#: Exponents 1/2, -1/2 and -1 as sqrt and reciprocals, as numpy code would write them.
POWERS = {("Rational", "1", "2"): np.sqrt, ("Rational", "-1", "2"): _reciprocal_sqrt,
          ("Integer", "-1"): _reciprocal}
OPERATIONS = {"Add": _sum, "Mul": _product, "Pow": _power, "Piecewise": _select,
              "ExprCondPair": _expression_condition_pair}
#: Sums and products of two operands as the numpy operations ``a + b`` and ``a * b`` apply.
BINARY = {_sum: np.add, _product: np.multiply}
#: polygamma(n, x) with a literal order up to this is scipy's own formula for that n, without its per-call dispatch.
MAX_POLYGAMMA_ORDER = 20


def _polygamma_of_order(order):
    """polygamma(order, x) as scipy.special.polygamma evaluates it, to the bit."""
    if order == 0:
        return POLYGAMMA_ORDERS.setdefault(0, _special("psi"))
    if order not in POLYGAMMA_ORDERS:
        zeta, gamma, factor = _special("zeta"), _special("gamma"), []

        def evaluate(x):
            if not factor:
                # scipy: (-1.0)**(n+1) * gamma(n+1.0) * zeta(n+1, x), multiplied left to right.
                factor.append((-1.0) ** (order + 1) * gamma(order + 1.0))
            return factor[0] * zeta(order + 1, x)
        POLYGAMMA_ORDERS[order] = evaluate
    return POLYGAMMA_ORDERS[order]


#: One function per order, so that equal subexpressions of different trees share one step.
POLYGAMMA_ORDERS = {}


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
