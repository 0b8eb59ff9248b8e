"""Stored expression trees evaluated without sympy: equal to sympy's lambdify, and refusing what is not a tree.

The kernels a fit uses are compiled from trees (``declarem.evaluate``) in both the deriving and the
warm process; these tests hold that evaluator against sympy's own numpy printer on every expression
the families' derivations produce, and against hand-written numpy on the functions a user may write.
"""

import numpy as np
import pytest
import sympy

from declarem.derive import scalar_solution
from declarem.derive.lambdify import to_numpy
from declarem.derive.serial import _expression_to_data as to_tree
from declarem.evaluate import TreeError, compile_tree, compile_trees, with_safe_logs
from declarem.families import FamilyRegistry, family_from_table
from declarem.kernels import NumericSolver, scalar_kernels

REGISTRY = FamilyRegistry()
SCALAR_FAMILIES = ["bernoulli", "binomial", "poisson", "exponential", "geometric", "normal", "gamma", "beta"]
USER_FAMILIES = {
    "lindley": {"logpdf": "2*log(t) - log(1 + t) + log(1 + x) - t*x", "support": "positive",
                "params": {"t": "positive"}},
    "waves": {"logpdf": "x*log(r) - r - lgamma(x + 1) + sin(r) - sin(r) + digamma(1 + r) - digamma(1 + r)",
              "support": "nonnegative-integer", "params": {"r": "positive"}},
}
CONSTANTS = {"binomial": (("trials", 30),)}
DOMAIN_DRAWS = {"real": lambda rng, n: rng.normal(0, 2, n), "positive": lambda rng, n: rng.gamma(2.0, 1.5, n),
                "unit": lambda rng, n: rng.uniform(0.02, 0.98, n)}


def _family(name):
    if name in USER_FAMILIES:
        return family_from_table(name, USER_FAMILIES[name], "test")
    return REGISTRY.families[name]


def _draw(symbol, rng, n):
    """Values where a symbol is defined: positive symbols positive, others real."""
    if symbol.is_positive:
        return rng.gamma(2.0, 1.5, n)
    return rng.normal(0.5, 1.0, n)


def _expressions(solution):
    """Every expression of a derivation a fit evaluates, with its arguments."""
    form = solution.form
    yield [form.x], form.base
    for statistic in form.statistics:
        yield [form.x], statistic
    for eta in form.natural:
        yield list(form.params), eta
    yield list(form.params), form.log_partition
    means = list(solution.means)
    for expression in solution.closed.values():
        yield means + list(solution.numeric), expression
    if solution.numeric:
        arguments = list(solution.unconstrained) + means
        yield arguments, solution.profile
        for g in solution.gradient:
            yield arguments, g
        for row in solution.hessian:
            for h in row:
                yield arguments, h


@pytest.mark.parametrize("name", SCALAR_FAMILIES + sorted(USER_FAMILIES))
def test_trees_evaluate_as_sympy_lambdify_does(name):
    rng = np.random.default_rng(7)
    solution = scalar_solution(_family(name), CONSTANTS.get(name, ()))
    checked = 0
    for arguments, expression in _expressions(solution):
        values = []
        for symbol in arguments:
            if symbol.is_integer:
                values.append(rng.integers(1, 9, 50).astype(float))
            elif symbol.name.startswith("E[") and "log(1 - x)" in symbol.name:
                values.append(np.log(rng.uniform(0.05, 0.5, 50)))
            else:
                values.append(_draw(symbol, rng, 50))
        with np.errstate(all="ignore"):
            expected = to_numpy(arguments, expression)(*values)
            found = compile_tree([a.name for a in arguments], to_tree(expression))(*values)
        both = np.isfinite(expected)
        assert np.array_equal(both, np.isfinite(found)), (name, expression)
        np.testing.assert_allclose(found[both], expected[both], rtol=1e-13, atol=1e-300, err_msg=str(expression))
        checked += 1
    assert checked >= 4


@pytest.mark.parametrize("name", ["gamma", "beta", "poisson", "normal"])
def test_derived_and_stored_solvers_agree(name):
    """The M-step compiled from trees equals the numeric twin of the closed forms, from a far start."""
    solution = scalar_solution(_family(name))
    rng = np.random.default_rng(3)
    kernels = scalar_kernels(_family(name), ())
    params = {p: DOMAIN_DRAWS[solution.domains[p]](rng, 6) for p in solution.form.params}
    # Moments of the family at those parameters, through the log-partition's derivatives (sympy).
    gradient = [sympy.diff(solution.form.log_partition, p) for p in solution.form.params]
    jacobian = sympy.Matrix([[sympy.diff(eta, p) for p in solution.form.params] for eta in solution.form.natural])
    mean_expressions = list(jacobian.T.solve(sympy.Matrix(gradient))) if jacobian.shape[0] == jacobian.shape[1] \
        else None
    if mean_expressions is None:
        pytest.skip("statistics outnumber parameters")
    means = np.column_stack([to_numpy(list(solution.form.params), m)(*params.values()) for m in mean_expressions])
    start = {p.name: np.full(6, 1.0 if solution.domains[p] != "unit" else 0.5) for p in solution.form.params}
    found = kernels.solver.solve(means, start)
    twin = NumericSolver.from_solution(solution, solve_all=True).solve(means, start)
    for p in solution.form.params:
        np.testing.assert_allclose(found[p.name], params[p], rtol=1e-7)
        np.testing.assert_allclose(twin[p.name], params[p], rtol=1e-7)


def test_functions_a_user_may_write_equal_numpy():
    x, y = sympy.symbols("x y", positive=True)
    cases = [
        (sympy.sqrt(x) + 1 / sympy.sqrt(y), lambda a, b: np.sqrt(a) + 1 / np.sqrt(b)),
        (sympy.Abs(x - y) * sympy.sign(x - y), lambda a, b: np.abs(a - b) * np.sign(a - b)),
        (sympy.cos(x) * sympy.tanh(y) - x ** 3 / y, lambda a, b: np.cos(a) * np.tanh(b) - a ** 3 / b),
        (sympy.Max(x, y) - sympy.Min(x, y), lambda a, b: np.abs(a - b)),
        (sympy.Piecewise((x, x < y), (y, True)), lambda a, b: np.minimum(a, b)),
        (sympy.pi * x + sympy.E * y + sympy.Rational(1, 3), lambda a, b: np.pi * a + np.e * b + 1 / 3),
    ]
    rng = np.random.default_rng(11)
    a, b = rng.gamma(2.0, 1.0, 40), rng.gamma(2.0, 1.0, 40)
    for expression, numpy_form in cases:
        found = compile_tree(["x", "y"], to_tree(expression))(a, b)
        np.testing.assert_allclose(found, numpy_form(a, b), rtol=1e-14, err_msg=str(expression))


def test_constants_broadcast_and_large_integers_are_floats():
    x = sympy.Symbol("x")
    constant = compile_tree(["x"], to_tree(sympy.Integer(3)))(np.zeros((2, 3)))
    assert constant.shape == (2, 3) and np.all(constant == 3.0)
    huge = sympy.factorial(30) * x
    np.testing.assert_allclose(compile_tree(["x"], to_tree(huge))(np.array([2.0])), [2.0 * float(sympy.factorial(30))])


def test_safe_logs_make_zero_times_log_zero_vanish():
    p, x = sympy.symbols("p x", positive=True)
    tree = with_safe_logs(to_tree(x * sympy.log(p) + (1 - x) * sympy.log(1 - p)))
    evaluate = compile_tree(["x", "p"], tree)
    np.testing.assert_array_equal(evaluate(np.array([1.0, 0.0]), np.array([1.0, 0.0])), [0.0, 0.0])
    np.testing.assert_allclose(evaluate(np.array([1.0]), np.array([0.25])), [np.log(0.25)])


@pytest.mark.parametrize("tree", [
    ["__import__", ["Symbol", "os", {}]],
    ["Symbol", "y", {}],                     # not an argument
    ["Integer", "9" * 5000],
    ["Float", "1e5"],
    ["Constant", "__class__"],
    ["Add"],
    ["Pow", ["Symbol", "x", {}]],
    ["Piecewise", ["Symbol", "x", {}]],
    "x",
    [],
    [["Symbol", "x", {}]],
])
def test_what_is_not_a_tree_is_refused(tree):
    with pytest.raises(TreeError):
        compile_tree(["x"], tree)


def test_deep_trees_are_refused_not_overflowed():
    tree = ["Symbol", "x", {}]
    for _ in range(3000):
        tree = ["exp", tree]
    with pytest.raises(TreeError):
        compile_tree(["x"], tree)


def _walked(tree, values, names):
    """The tree evaluated by a plain recursive walk, operand by operand (the reference for shared steps)."""
    import scipy.special
    head, *rest = tree
    if head == "Symbol":
        return values[names.index(rest[0])]
    if head == "Integer":
        return int(rest[0])
    parts = [_walked(child, values, names) for child in rest]
    if head == "Add":
        total = parts[0]
        for part in parts[1:]:
            total = total + part
        return total
    if head == "Mul":
        negate = rest[0] == ["Integer", "-1"] and len(parts) > 1
        total = parts[1] if negate else parts[0]
        for part in parts[2 if negate else 1:]:
            total = total * part
        return -total if negate else total
    if head == "Pow":
        return 1 / parts[0] if rest[1] == ["Integer", "-1"] else parts[0] ** parts[1]
    return {"log": np.log, "exp": np.exp, "loggamma": scipy.special.gammaln,
            "polygamma": scipy.special.polygamma}[head](*parts)


def test_trees_compiled_together_share_steps_and_equal_each_alone_to_the_bit():
    """A Newton objective, gradient and Hessian compiled together compute each shared subexpression once,
    and every result equals the tree walked on its own, bit for bit (polygamma of a literal order included)."""
    x, r, m = sympy.symbols("x u_r E[x]", positive=True)
    e = sympy.exp(r)
    objective = sympy.loggamma(x + e) - sympy.loggamma(e) + e * sympy.log(1 - m / (m + e)) + x * sympy.log(m / (m + e))
    gradient = sympy.diff(objective, r)
    hessian = sympy.diff(gradient, r)
    trees = [to_tree(t) for t in (objective, gradient, hessian)]
    names = ["x", "u_r", "E[x]"]
    rng = np.random.default_rng(5)
    values = [np.arange(40.0), rng.normal(0, 1, (3, 1)), rng.gamma(2.0, 2.0, (3, 1))]
    together = compile_trees(names, trees)
    found = together(*values)
    for tree, value in zip(trees, found):
        with np.errstate(all="ignore"):
            expected = np.broadcast_to(_walked(tree, values, names), (3, 40))
        assert value.shape == (3, 40)
        np.testing.assert_array_equal(value, expected)
        np.testing.assert_array_equal(compile_tree(names, tree)(*values), value)
    alone = sum(len(compile_tree(names, tree)._program.steps) for tree in trees)
    assert len(together._program.steps) < 0.7 * alone
    assert "polygamma" in str(trees[2])


def test_trees_compiled_together_pickle_as_their_trees():
    import pickle
    x = sympy.Symbol("x", positive=True)
    together = compile_trees(["x"], [to_tree(sympy.log(x)), to_tree(x ** 2)])
    restored = pickle.loads(pickle.dumps(together))
    assert restored.trees == together.trees
    np.testing.assert_array_equal(restored(np.array([2.0]))[1], [4.0])


@pytest.mark.parametrize("axis", [0, 1, -1])
def test_stacked_values_equal_the_stack_of_each(axis):
    """``stacked`` writes each tree's value into one array (or stacks them, when a value is a constant or an
    argument of another shape): the same array as np.stack of the values one by one."""
    x, y = sympy.symbols("x y", positive=True)
    values = [np.linspace(1.0, 2.0, 5), np.array([[1.0], [2.5]])]
    for expressions in ((x * y, sympy.log(x) + y), (x * y, sympy.Integer(0), x)):
        trees = compile_trees(["x", "y"], [to_tree(e) for e in expressions])
        expected = np.stack(trees(*values), axis=axis)
        found = trees.stacked(*values, axis=axis)
        assert found.dtype == np.float64 and found.tobytes() == expected.tobytes() and found.shape == expected.shape
