"""The whitelist parser: legal expressions parse; hostile text fails fast and runs nothing."""

import time

import pytest
import sympy

from declarem.errors import DeclaremError, ExpressionError
from declarem.expressions import parse_expression

X, L = sympy.symbols("x l")
SYMBOLS = {"x": X, "l": L}


def test_parses_a_log_density():
    parsed = parse_expression("x*log(l) - l - lgamma(x + 1) - log(1 - exp(-l))", SYMBOLS)
    expected = X * sympy.log(L) - L - sympy.loggamma(X + 1) - sympy.log(1 - sympy.exp(-L))
    assert sympy.simplify(parsed - expected) == 0


def test_numbers_are_exact():
    assert parse_expression("0.5*x", SYMBOLS) == sympy.Rational(1, 2) * X
    assert parse_expression("2**-1", SYMBOLS) == sympy.Rational(1, 2)


HOSTILE = [
    "__import__('os').system('echo pwned')",
    "x.__class__.__bases__",
    "().__class__",
    "lambda: 1",
    "9**9**9**9",
    "(" * 200 + "x" + ")" * 200,
    "-" * 3000 + "x",
    "x if l else 1",
    "[x for x in range(10)]",
    "open('/etc/passwd')",
    "eval('1')",
    "exp(x, y=1)",
    "x; import os",
    "f'{x}'",
    "x @ l",
    "'text'",
    "y",
    "1e999",
    "log",
]


@pytest.mark.parametrize("text", HOSTILE)
def test_hostile_expressions_fail_quickly(text, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    started = time.perf_counter()
    with pytest.raises(ExpressionError) as info:
        parse_expression(text, SYMBOLS, where="spec.toml: family 'evil'")
    assert time.perf_counter() - started < 1.0
    assert isinstance(info.value, DeclaremError)
    assert "spec.toml: family 'evil'" in str(info.value)
    assert not list(tmp_path.iterdir())


def test_no_eval_or_sympify_on_text(monkeypatch):
    def forbidden(*args, **kwargs):
        raise AssertionError("raw text reached eval/sympify")

    monkeypatch.setattr(sympy, "sympify", forbidden)
    monkeypatch.setattr("builtins.eval", forbidden)
    assert parse_expression("exp(-l)*x", SYMBOLS) == sympy.exp(-L) * X


def test_long_sums_parse():
    assert parse_expression(" + ".join(["x"] * 100), SYMBOLS) == 100 * X
