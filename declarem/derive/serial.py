"""Derivations as plain JSON data, and back, with nothing that can run code.

The on-disk cache stores derivations in this form. Reading one back builds only
objects from fixed whitelists: sympy expression nodes of the classes in
``EXPRESSION_CLASSES`` (symbols with a whitelisted set of assumptions, exact
numbers, a few constants) and the derivation dataclasses in ``RECORDS``.
Anything else in the data is refused with ``FormatError``, so a tampered entry
can at worst be refused, never executed. Writing refuses what it cannot
represent the same way, and the caller then does not cache.
"""

import dataclasses

import sympy

from .expfam import ExpFamForm
from .free import FreeSolution
from .general import GeneralSolution
from .regression import RegressionSolution
from .scalar import ScalarSolution
from .simplex import SimplexSolution

#: sympy classes an expression may be built of, by name; each is rebuilt as cls(*args).
EXPRESSION_CLASSES = {cls.__name__: cls for cls in (
    sympy.Add, sympy.Mul, sympy.Pow, sympy.log, sympy.exp, sympy.loggamma, sympy.gamma, sympy.polygamma,
    sympy.digamma, sympy.LambertW, sympy.Abs, sympy.sign, sympy.sin, sympy.cos, sympy.tanh, sympy.re,
    sympy.im, sympy.Piecewise, sympy.functions.elementary.piecewise.ExprCondPair, sympy.And, sympy.Or,
    sympy.Not, sympy.StrictLessThan, sympy.LessThan, sympy.StrictGreaterThan, sympy.GreaterThan,
    sympy.Equality, sympy.Unequality, sympy.Max, sympy.Min, sympy.floor, sympy.ceiling, sympy.factorial,
    sympy.binomial, sympy.erf, sympy.erfc, sympy.lowergamma, sympy.uppergamma, sympy.zeta, sympy.harmonic,
    sympy.beta, sympy.asinh, sympy.atanh, sympy.sinh, sympy.cosh, sympy.atan, sympy.tan)}
#: Named constants and singletons, stored by name.
CONSTANTS = {"pi": sympy.pi, "E": sympy.E, "EulerGamma": sympy.EulerGamma, "I": sympy.I, "oo": sympy.oo,
             "-oo": -sympy.oo, "zoo": sympy.zoo, "nan": sympy.nan, "true": sympy.true, "false": sympy.false}
ASSUMPTIONS = ("real", "positive", "nonnegative", "negative", "nonpositive", "integer", "finite", "zero",
               "nonzero", "commutative", "extended_real", "complex", "extended_positive",
               "extended_nonnegative", "extended_negative", "extended_nonpositive", "extended_nonzero",
               "infinite", "hermitian", "imaginary", "rational", "irrational",
               "algebraic", "transcendental", "prime", "composite", "even", "odd", "noninteger")
#: The derivation records, by name, each rebuilt from its fields.
RECORDS = {cls.__name__: cls for cls in (ScalarSolution, SimplexSolution, FreeSolution, ExpFamForm,
                                         RegressionSolution, GeneralSolution)}
MAX_DEPTH = 2000


class FormatError(ValueError):
    """Data that is not a derivation this module writes."""


def to_data(value):
    """A derivation (records, expressions, containers, numbers, text) as JSON-ready data."""
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, int):
        return {"int": str(value)}
    if isinstance(value, float):
        return {"float": repr(value)}
    if isinstance(value, sympy.Basic):
        return {"expr": _expression_to_data(value)}
    if dataclasses.is_dataclass(value) and type(value).__name__ in RECORDS \
            and RECORDS[type(value).__name__] is type(value):
        return {"record": type(value).__name__,
                "fields": {f.name: to_data(getattr(value, f.name)) for f in dataclasses.fields(value)}}
    if isinstance(value, tuple):
        return {"tuple": [to_data(v) for v in value]}
    if isinstance(value, list):
        return {"list": [to_data(v) for v in value]}
    if isinstance(value, dict):
        return {"dict": [[to_data(k), to_data(v)] for k, v in value.items()]}
    raise FormatError(f"cannot store a {type(value).__name__}")


def from_data(data, depth=0):
    """Rebuild what ``to_data`` wrote; raise FormatError for anything else."""
    if depth > MAX_DEPTH:
        raise FormatError("nested too deeply")
    if data is None or isinstance(data, (bool, str)):
        return data
    if not isinstance(data, dict) or len(data) not in (1, 2):
        raise FormatError(f"unexpected {type(data).__name__}")
    if "record" in data:
        cls = RECORDS.get(data["record"]) if isinstance(data["record"], str) else None
        fields = data.get("fields")
        if cls is None or not isinstance(fields, dict) or \
                set(fields) != {f.name for f in dataclasses.fields(cls)}:
            raise FormatError("unknown record")
        return cls(**{name: from_data(value, depth + 1) for name, value in fields.items()})
    (tag, content), = data.items()
    if tag == "int" and isinstance(content, str):
        return int(_integer_text(content))
    if tag == "float" and isinstance(content, str):
        try:
            return float(content)
        except ValueError:
            raise FormatError("bad float") from None
    if tag == "expr":
        return _expression_from_data(content, depth + 1)
    if tag in ("tuple", "list") and isinstance(content, list):
        items = [from_data(v, depth + 1) for v in content]
        return tuple(items) if tag == "tuple" else items
    if tag == "dict" and isinstance(content, list):
        if not all(isinstance(pair, list) and len(pair) == 2 for pair in content):
            raise FormatError("bad mapping")
        return {from_data(k, depth + 1): from_data(v, depth + 1) for k, v in content}
    raise FormatError(f"unknown tag {tag!r}")


def _expression_to_data(expression):
    if isinstance(expression, sympy.Symbol):
        if type(expression) is not sympy.Symbol:
            raise FormatError(f"cannot store a {type(expression).__name__}")
        assumptions = {k: v for k, v in expression.assumptions0.items() if k in ASSUMPTIONS}
        return ["Symbol", expression.name, assumptions]
    if isinstance(expression, sympy.Integer):
        return ["Integer", str(int(expression))]
    if isinstance(expression, sympy.Rational):
        return ["Rational", str(expression.p), str(expression.q)]
    if isinstance(expression, sympy.Float):
        return ["Float", sympy.srepr(expression)]
    for name, constant in CONSTANTS.items():
        if expression is constant:
            return ["Constant", name]
    name = type(expression).__name__
    if EXPRESSION_CLASSES.get(name) is not type(expression):
        raise FormatError(f"cannot store the expression class {name}")
    return [name, *[_expression_to_data(a) for a in expression.args]]


def _expression_from_data(data, depth):
    if depth > MAX_DEPTH:
        raise FormatError("nested too deeply")
    if not isinstance(data, list) or not data or not isinstance(data[0], str):
        raise FormatError("bad expression")
    head, *rest = data
    if head == "Symbol":
        if len(rest) != 2 or not isinstance(rest[0], str) or not isinstance(rest[1], dict) or \
                not all(k in ASSUMPTIONS and isinstance(v, bool) for k, v in rest[1].items()):
            raise FormatError("bad symbol")
        return sympy.Symbol(rest[0], **rest[1])
    if head == "Integer" and len(rest) == 1:
        return sympy.Integer(_integer_text(rest[0]))
    if head == "Rational" and len(rest) == 2:
        return sympy.Rational(_integer_text(rest[0]), _integer_text(rest[1]))
    if head == "Float" and len(rest) == 1:
        return _float_from_srepr(rest[0])
    if head == "Constant" and len(rest) == 1 and rest[0] in CONSTANTS:
        return CONSTANTS[rest[0]]
    cls = EXPRESSION_CLASSES.get(head)
    if cls is None:
        raise FormatError(f"unknown expression class {head!r}")
    args = [_expression_from_data(a, depth + 1) for a in rest]
    try:
        try:
            return cls(*args, evaluate=False)
        except TypeError:
            return cls(*args)  # classes without an evaluate flag (ExprCondPair) are already canonical
    except (TypeError, ValueError) as exc:
        raise FormatError(f"cannot build {head}: {exc}") from None


def _integer_text(text):
    if not isinstance(text, str) or len(text) > 2000 or not text.lstrip("-").isdigit():
        raise FormatError("bad integer")
    return int(text)


def _float_from_srepr(text):
    """Float('digits', precision=N), as sympy.srepr writes it, parsed without evaluation."""
    prefix, suffix = "Float('", ")"
    if not isinstance(text, str) or not text.startswith(prefix) or not text.endswith(suffix):
        raise FormatError("bad float")
    digits, _, precision = text[len(prefix):-1].partition("', precision=")
    try:
        return sympy.Float(digits, precision=int(precision))
    except (ValueError, TypeError):
        raise FormatError("bad float") from None
