"""The whitelist parser: spec text -> sympy expression, and nothing else.

A spec file is untrusted text. Expressions are parsed with Python's ``ast``
module (which only builds a tree; it runs nothing) and every node of the tree is
checked against a short whitelist before a sympy expression is built from it.
Raw text never reaches ``eval``, ``exec`` or ``sympy.sympify``.
"""

import ast
import math

from .errors import ExpressionError

MAX_LENGTH = 2000
MAX_DEPTH = 60  # brackets and calls; chains such as a + b + c may be longer
MAX_TREE_DEPTH = 400
MAX_CONSTANT_DIGITS = 400
MAX_EXPONENT = 100
#: Bound on the number of terms the expression has when multiplied out (sympy's expand).
MAX_EXPANDED_TERMS = 5000
#: Largest constant argument of a special function, which sympy would evaluate exactly
#: (gamma(10**8) is a factorial with 800 million digits).
MAX_SPECIAL_ARGUMENT = 1000
SPECIAL = ("gamma", "lgamma", "digamma")

#: Function names of expressions, with the sympy function each builds.
FUNCTIONS = {"log": "log", "exp": "exp", "sqrt": "sqrt", "lgamma": "loggamma", "gamma": "gamma",
             "digamma": "digamma", "abs": "Abs", "sin": "sin", "cos": "cos", "tanh": "tanh"}
#: Constant names of expressions, with the sympy constant each is.
CONSTANTS = {"pi": "pi", "e": "E"}
#: Names an expression gives a meaning of its own: no parameter or node may take them.
RESERVED_NAMES = frozenset(FUNCTIONS) | frozenset(CONSTANTS)

_BINARY = {
    ast.Add: lambda a, b: a + b,
    ast.Sub: lambda a, b: a - b,
    ast.Mult: lambda a, b: a * b,
    ast.Div: lambda a, b: a / b,
    ast.Pow: lambda a, b: a**b,
}


def parse_expression(text, symbols, where="expression"):
    """Parse untrusted text into a sympy expression.

    Parameters
    ----------
    text : str or int or float
        The expression, e.g. ``"x*log(l) - l - lgamma(x + 1)"``.
    symbols : mapping of str to sympy.Symbol
        The names the expression may use besides the whitelisted functions and
        the constants ``pi`` and ``e``.
    where : str
        Where the text came from, for error messages (file, node, key).

    Returns
    -------
    sympy.Expr
    """
    import sympy
    if isinstance(text, bool):
        raise ExpressionError(f"{where}: expected an expression, found the boolean {text}")
    if isinstance(text, (int, float)):
        if isinstance(text, float) and not math.isfinite(text):
            raise ExpressionError(f"{where}: the number {text} is not finite")
        return sympy.nsimplify(text) if isinstance(text, float) else sympy.Integer(text)
    if not isinstance(text, str):
        raise ExpressionError(f"{where}: expected an expression string, found {type(text).__name__}")
    if len(text) > MAX_LENGTH:
        raise ExpressionError(f"{where}: expression is {len(text)} characters long; the limit is {MAX_LENGTH}")
    if _bracket_depth(text) > MAX_DEPTH:
        raise ExpressionError(f"{where}: expression nests deeper than {MAX_DEPTH} levels")
    try:
        tree = ast.parse(text.strip(), mode="eval")
    except (SyntaxError, ValueError, RecursionError, MemoryError) as exc:
        raise ExpressionError(f"{where}: cannot parse {text!r}: {exc}") from None
    try:
        expression = _Builder(symbols, where, text).build(tree.body, 0)
    except RecursionError:
        raise ExpressionError(f"{where}: expression is too deeply nested") from None
    if expanded_terms(expression) > MAX_EXPANDED_TERMS:
        raise ExpressionError(f"{where}: {text!r} multiplies out to more than {MAX_EXPANDED_TERMS} terms; "
                              "write it with fewer or smaller powers")
    return expression


def expanded_terms(expression):
    """An upper bound on the number of terms of ``expression`` multiplied out.

    Sums add, products multiply, and a sum of t terms raised to a positive
    integer power n has at most C(n + t - 1, t - 1) terms. The bound is exceeded
    as soon as any part exceeds it, so the work stays small.
    """
    if expression.is_Atom:
        return 1
    if expression.is_Add:
        return sum(expanded_terms(a) for a in expression.args)
    if expression.is_Mul:
        return math.prod(min(expanded_terms(a), MAX_EXPANDED_TERMS + 1) for a in expression.args)
    if expression.is_Pow:
        base = min(expanded_terms(expression.base), MAX_EXPANDED_TERMS + 1)
        expanded_terms(expression.exp)
        exponent = expression.exp
        if exponent.is_Integer and base > 1:
            n = abs(int(exponent))
            return math.comb(n + base - 1, base - 1) if n <= MAX_EXPONENT else MAX_EXPANDED_TERMS + 1
        return base
    for argument in expression.args:
        if expanded_terms(argument) > MAX_EXPANDED_TERMS:
            return MAX_EXPANDED_TERMS + 1
    return 1


def _bracket_depth(text):
    depth = deepest = 0
    for char in text:
        if char in "([{":
            depth += 1
            deepest = max(deepest, depth)
        elif char in ")]}":
            depth -= 1
    return deepest


class _Builder:
    """Walk a parsed tree, allowing only numbers, names, arithmetic and whitelisted calls."""

    def __init__(self, symbols, where, text):
        self.symbols = symbols
        self.where = where
        self.text = text

    def fail(self, what):
        raise ExpressionError(f"{self.where}: {what} in {self.text!r}; allowed are numbers, "
                              f"names ({', '.join(sorted(self.symbols)) or 'none'}), + - * / **, "
                              f"and the functions {', '.join(sorted(FUNCTIONS))}")

    def build(self, node, depth):
        if depth > MAX_TREE_DEPTH:
            raise ExpressionError(f"{self.where}: expression is deeper than {MAX_TREE_DEPTH} operations")
        if isinstance(node, ast.Constant):
            return self.constant(node.value)
        if isinstance(node, ast.Name):
            return self.name(node.id)
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
            operand = self.build(node.operand, depth + 1)
            return -operand if isinstance(node.op, ast.USub) else operand
        if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
            left = self.build(node.left, depth + 1)
            right = self.build(node.right, depth + 1)
            if isinstance(node.op, ast.Pow):
                self.check_power(left, right)
            return _BINARY[type(node.op)](left, right)
        if isinstance(node, ast.Call):
            return self.call(node, depth)
        self.fail(f"'{type(node).__name__}' is not allowed")

    def constant(self, value):
        import sympy
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            self.fail(f"the constant {value!r} is not a number")
        if isinstance(value, int):
            if len(str(abs(value))) > MAX_CONSTANT_DIGITS:
                self.fail("an integer constant is too long")
            return sympy.Integer(value)
        if not math.isfinite(value):
            self.fail(f"the number {value} is not finite")
        return sympy.Rational(repr(value)) if value != int(value) else sympy.Integer(int(value))

    def name(self, identifier):
        if identifier.startswith("_"):
            self.fail(f"the name '{identifier}' is not allowed")
        if identifier in self.symbols:
            return self.symbols[identifier]
        if identifier in CONSTANTS:
            import sympy
            return getattr(sympy, CONSTANTS[identifier])
        if identifier in FUNCTIONS:
            self.fail(f"the function '{identifier}' is used without arguments")
        self.fail(f"unknown name '{identifier}'")

    def call(self, node, depth):
        if not isinstance(node.func, ast.Name) or node.func.id not in FUNCTIONS:
            called = node.func.id if isinstance(node.func, ast.Name) else type(node.func).__name__
            self.fail(f"the call '{called}(...)' is not allowed")
        if node.keywords or len(node.args) != 1:
            self.fail(f"'{node.func.id}' takes exactly one positional argument")
        argument = self.build(node.args[0], depth + 1)
        if node.func.id in SPECIAL and argument.is_number and not _is_small(argument):
            self.fail(f"'{node.func.id}' of a constant larger than {MAX_SPECIAL_ARGUMENT} (sympy would "
                      "evaluate it exactly); write its value instead")
        import sympy
        return getattr(sympy, FUNCTIONS[node.func.id])(argument)

    def check_power(self, base, exponent):
        # Constant powers are evaluated eagerly by sympy; refuse ones too large to represent.
        if base.is_number and exponent.is_number:
            try:
                magnitude = abs(float(exponent)) * math.log10(max(abs(float(base)), 2.0))
            except (TypeError, OverflowError):
                self.fail("a constant power is too large")
            if magnitude > 300:
                self.fail("a constant power is too large")
        elif exponent.is_number and abs(exponent) > MAX_EXPONENT:
            self.fail(f"an exponent is larger than {MAX_EXPONENT}")


def _is_small(number):
    try:
        return abs(complex(number)) <= MAX_SPECIAL_ARGUMENT
    except (TypeError, OverflowError):
        return False
