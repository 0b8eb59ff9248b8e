"""A family's derivation in numeric form: named expression trees, compiled to numpy, cached.

The derivation (``declarem.derive``, sympy) runs once per declaration. What the
E- and M-steps need from it is a handful of expressions: statistics, natural
parameters, log-partition, the closed-form updates and the numeric M-step's
objective with its gradient and Hessian. This module keeps those as expression
trees (``evaluate``) under their argument names, and stores them in the
derivation cache beside the derivation itself. A process that finds them there
compiles the trees with numpy and never imports sympy; one that does not derives
(importing sympy then) and writes them. Both evaluate the same trees.

The sympy records (``ScalarSolution``, ``SimplexSolution``) stay available as
each kernel's ``solution``, derived or loaded on first access, for ``derive``.
"""

import functools

import numpy as np

from .diskcache import cached_json
from .errors import FamilyError, NotExponentialFamily
from .evaluate import TreeError, compile_tree, compile_trees, with_safe_logs
from .families.builtin import PRIOR_TABLE
from .numeric import FROM_DOMAIN, NewtonProblem

#: Bumped when the kernels' stored form changes.
KERNEL_FORMAT = "1"


def _tree(expression):
    from .derive.serial import _expression_to_data
    return _expression_to_data(expression)


def _names(symbols):
    return [s.name for s in symbols]


def _strings(value, where):
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise TreeError(f"{where}: expected a list of names")
    return value


class NewtonDerivatives:
    """An objective, its gradient and its Hessian as one program (they share most subexpressions).

    Parameters
    ----------
    argument_names : sequence of str
    profile : tree
        The objective.
    gradient : list of trees, length n
    hessian : list of n lists of n trees
    """

    def __init__(self, argument_names, profile, gradient, hessian):
        self.n_vars = len(gradient)
        self._trees = compile_trees(argument_names, [profile, *gradient, *(h for row in hessian for h in row)])

    def __call__(self, *values, axis=-1):
        """The objective and its derivatives stacked on ``axis`` (by default last: (..., 1 + n + n * n))."""
        return self._trees.stacked(*values, axis=axis)

    def split(self, stacked):
        """The objective (...), gradient (..., n) and Hessian (..., n, n) of a stacked (..., 1 + n + n * n)."""
        n = self.n_vars
        return stacked[..., 0], stacked[..., 1:1 + n], stacked[..., 1 + n:].reshape(stacked.shape[:-1] + (n, n))


class NumericSolver:
    """Newton's method on a scalar family's objective, vectorised over parameter sets.

    Parameters
    ----------
    plan : mapping
        The numeric form of a ``ScalarSolution``: names of the means, of the
        numeric parameters and of their unconstrained variables, the domains,
        and trees of the closed forms, the profile objective, its gradient and
        Hessian (see ``solver_plan``).
    """

    def __init__(self, plan):
        self.numeric = _strings(plan["numeric"], "numeric")
        self.domains = dict(plan["domains"])
        # Under a prior the objective, the closed forms and the derivatives also take the set's weight W.
        self.weight = plan.get("weight")
        weight = [] if self.weight is None else _strings([self.weight], "weight")
        means = _strings(plan["means"], "means") + weight
        unconstrained = _strings(plan["unconstrained"], "unconstrained")
        arguments = unconstrained + means
        if len(plan["gradient"]) != len(self.numeric) or len(plan["hessian"]) != len(self.numeric) or \
                any(len(row) != len(self.numeric) for row in plan["hessian"]):
            raise TreeError("gradient or Hessian does not match the numeric parameters")
        self._objective = compile_tree(arguments, plan["profile"]) if self.numeric else None
        self._derivatives = NewtonDerivatives(arguments, plan["profile"], plan["gradient"], plan["hessian"]) \
            if self.numeric else None
        self._closed = {name: compile_tree(means + self.numeric, tree) for name, tree in plan["closed"].items()}
        if any(self.domains.get(name) not in FROM_DOMAIN for name in self.numeric):
            raise TreeError("a numeric parameter without a domain")

    @classmethod
    def from_solution(cls, solution, solve_all=False):
        """The solver of a derived ``ScalarSolution``; ``solve_all=True`` solves every parameter numerically
        (the closed forms' numeric twin, for checks)."""
        return cls(solver_plan(solution, solve_all))

    @property
    def closed(self):
        """Names of the parameters in closed form."""
        return list(self._closed)

    def solve(self, means, start, weights=None):
        """Parameters maximising the objective for each set.

        Parameters
        ----------
        means : ndarray of shape (n_sets, n_statistics)
        start : mapping of name to ndarray of shape (n_sets,)
            Where the numeric search starts (the previous parameters).
        weights : ndarray of shape (n_sets,), optional
            Each set's total weight; used under a prior (MAP), where it scales the prior against the data.

        Returns
        -------
        dict of name to ndarray of shape (n_sets,)
        """
        columns = [means[:, j] for j in range(means.shape[1])]
        if self.weight is not None:
            columns.append(np.broadcast_to(np.ones(len(means)) if weights is None else
                                           np.asarray(weights, dtype=float), (len(means),)))
        found = {}
        if self.numeric:
            def arguments(u, sets):
                return [u[:, i] for i in range(u.shape[1])] + [c[sets] for c in columns]

            problem = NewtonProblem(
                [self.domains[name] for name in self.numeric],
                lambda u, sets: self._objective(*arguments(u, sets)),
                lambda u, sets: self._derivatives.split(self._derivatives(*arguments(u, sets))))
            solved = problem.solve(np.column_stack([np.broadcast_to(np.asarray(start[name], dtype=float),
                                                                    (len(means),)) for name in self.numeric]))
            found.update({name: solved[:, i] for i, name in enumerate(self.numeric)})
        numeric_values = [found[name] for name in self.numeric]
        for name, function in self._closed.items():
            with np.errstate(all="ignore"):
                found[name] = function(*columns, *numeric_values)
        return found


def solver_plan(solution, solve_all=False):
    """The numeric form of a ``ScalarSolution``'s M-step (see ``NumericSolver``)."""
    if solve_all and solution.closed:
        from .derive.scalar import numeric_twin
        solution = numeric_twin(solution)
    from .derive.scalar import WEIGHT
    return {"means": _names(solution.means), "numeric": _names(solution.numeric),
            "weight": WEIGHT.name if solution.prior is not None else None,
            "unconstrained": _names(solution.unconstrained),
            "domains": {p.name: domain for p, domain in solution.domains.items()},
            "closed": {p.name: _tree(e) for p, e in solution.closed.items()},
            "profile": _tree(solution.profile) if solution.numeric else None,
            "gradient": [_tree(g) for g in solution.gradient],
            "hessian": [[_tree(h) for h in row] for row in solution.hessian]}


def _scalar_plan(solution):
    """Everything a scalar factor evaluates, as named trees: the kernels' stored form."""
    form = solution.form
    return {"format": KERNEL_FORMAT, "x": form.x.name, "params": _names(form.params),
            "statistics": [_tree(t) for t in form.statistics], "base": _tree(form.base),
            "natural": [_tree(eta) for eta in form.natural], "log_partition": _tree(form.log_partition),
            "poolable": {p.name: _tree(e) for p, e in solution.poolable.items()},
            "boundary": with_safe_logs(_tree(form.logpdf - form.base)),
            "prior": None if solution.prior is None else _tree(solution.prior),
            "solver": solver_plan(solution)}


def compile_scalar_plan(plan):
    """A scalar family's stored plan compiled: the attributes of ``ScalarKernels``.

    Raises
    ------
    TreeError
        When the plan is not one this version writes (the entry is then derived again).
    """
    _check_format(plan)
    if "not_exponential_family" in plan:
        if not isinstance(plan["not_exponential_family"], str):
            raise TreeError("bad kernel plan: the refusal is not a message")
        return {"not_exponential_family": plan["not_exponential_family"]}
    try:
        x, params = plan["x"], _strings(plan["params"], "params")
        means = _strings(plan["solver"]["means"], "means")
        return {"param_names": params, "statistic_count": len(plan["statistics"]),
                "poolable": set(plan["poolable"]),
                "statistics": [compile_tree([x], t) for t in plan["statistics"]],
                "base": compile_tree([x], plan["base"]),
                "log_partition": compile_tree(params, plan["log_partition"]),
                # The E-step's tables in one program: eta's components, then A.
                "natural_and_log_partition": compile_trees(params, plan["natural"] + [plan["log_partition"]]),
                "solver": NumericSolver(plan["solver"]),
                "pooled": {name: compile_tree(means, e) for name, e in plan["poolable"].items()},
                "boundary_log_density": compile_tree([x] + params, plan["boundary"]),
                "log_prior": None if plan["prior"] is None else compile_tree(params, plan["prior"])}
    except (KeyError, TypeError, AttributeError) as exc:
        raise TreeError(f"bad kernel plan: {exc}") from None


def compile_simplex_plan(plan):
    """A probability vector's stored plan compiled: the attributes of ``SimplexKernels``."""
    _check_format(plan)
    try:
        compiled = {"numerator": compile_tree(["count", "pseudo"], plan["numerator"])}
        if "prior_element" in plan:
            compiled["prior_element"] = compile_tree(["p", "pseudo"], plan["prior_element"])
        return compiled
    except (KeyError, TypeError) as exc:
        raise TreeError(f"bad kernel plan: {exc}") from None


def compile_regression_plan(plan):
    """A linear-predictor plan compiled: the attributes of ``RegressionKernels``."""
    _check_format(plan)
    try:
        arguments = [plan["x"], plan["predictor"]] + _strings(plan["others"], "others")
        if not isinstance(plan["quadratic"], bool):
            raise TreeError("bad kernel plan: 'quadratic' is not a boolean")
        if not isinstance(plan["linear"], str):
            raise TreeError("bad kernel plan: 'linear' is not a name")
        return {"others": plan["others"], "quadratic": plan["quadratic"], "linear": plan["linear"],
                "inverse": compile_tree([plan["predictor"]], plan["inverse"]),
                "log_density": compile_tree(arguments, plan["log_density"]),
                "first": compile_tree(arguments, plan["first"]),
                "second": compile_tree(arguments, plan["second"]),
                "weighted_means": {name: compile_tree(arguments, tree)
                                   for name, tree in plan["weighted_means"].items()}}
    except (KeyError, TypeError) as exc:
        raise TreeError(f"bad kernel plan: {exc}") from None


def compile_general_plan(plan):
    """A non-exponential family's plan compiled: the attributes of ``GeneralKernels``."""
    _check_format(plan)
    try:
        x, params = plan["x"], _strings(plan["params"], "params")
        means, numeric = _strings(plan["means"], "means"), _strings(plan["numeric"], "numeric")
        unconstrained = _strings(plan["unconstrained"], "unconstrained")
        domains = dict(plan["domains"])
        if set(domains) != set(params) or any(d not in FROM_DOMAIN for d in domains.values()) or \
                len(unconstrained) != len(numeric) or not set(numeric) <= set(params):
            raise TreeError("bad kernel plan: parameters, domains and numeric ones do not match")
        profile_arguments = [x] + unconstrained + means
        compiled = {"params": params, "domains": domains, "numeric": numeric, "means": means,
                    "log_density": compile_tree([x] + params, plan["log_density"]),
                    "functions": [compile_tree([x], f) for f in plan["functions"]],
                    "closed": {name: compile_tree(means + numeric, tree) for name, tree in plan["closed"].items()},
                    "profile": compile_tree(profile_arguments, plan["profile"])}
        if len(compiled["functions"]) != len(means) or len(plan["gradient"]) != len(numeric) or \
                len(plan["hessian"]) != len(numeric) or any(len(row) != len(numeric) for row in plan["hessian"]) or \
                set(compiled["closed"]) | set(numeric) != set(params):
            raise TreeError("bad kernel plan: its parts do not match")
        compiled["derivatives"] = NewtonDerivatives(profile_arguments, plan["profile"], plan["gradient"],
                                                    plan["hessian"])
        return compiled
    except (KeyError, TypeError, AttributeError) as exc:
        raise TreeError(f"bad kernel plan: {exc}") from None


#: How each kind of stored kernel plan is read back.
PLAN_READERS = {"scalar-kernels": compile_scalar_plan, "simplex-kernels": compile_simplex_plan,
                "regression-kernels": compile_regression_plan, "general-kernels": compile_general_plan}


def _load_or_derive(kind, key, derive, required=()):
    """The compiled kernels of (kind, key): from the cache, else from ``derive() -> (plan, storable)``.

    A stored plan without each of the ``required`` kernels is derived again.
    """
    compile_plan = PLAN_READERS[kind]
    found = {}

    def read(plan):
        compiled = compile_plan(plan)
        if any(name not in compiled for name in required):
            raise TreeError(f"a plan without {', '.join(required)}")
        found.update(compiled)
        return plan

    plan = cached_json(kind, key, derive, read)
    return found or compile_plan(plan)


class _Kernels:
    """What kernels share: they pickle as their numeric plan; the sympy ``solution`` stays behind.

    A process that loads pickled kernels (a dask worker) so needs neither sympy nor the
    derivation cache, and evaluates the sender's very trees.
    """

    def __getstate__(self):
        return {key: value for key, value in self.__dict__.items() if key != "solution"}


class ScalarKernels(_Kernels):
    """A scalar family's derivation as numpy callables; built once per declaration.

    Attributes
    ----------
    param_names : list of str
    statistic_count : int
    poolable : set of str
        Parameters whose update is a weighted mean of a function of the means
        (they may be tied across columns or parent values).
    statistics : list of callable
        ``T_j(x)``.
    base : callable
        ``log h(x)``.
    natural_and_log_partition : callable
        ``[eta_1, ..., eta_m, A](*params)``, one program.
    log_partition : callable
        ``A(*params)``.
    solver : NumericSolver
    pooled : dict of str to callable
        ``phi(*means)`` of each poolable parameter.
    boundary_log_density : callable
        ``log p(x | *params) - log h(x)`` with ``0 * log 0 = 0``.
    log_prior : callable or None
        The declared log prior density of ``*params`` (MAP), or None.
    """

    def __init__(self, family, constants, prior=None):
        self.family, self.constants, self.prior = family, constants, prior
        key = _key(family, constants) + ("" if prior is None else repr(prior))
        self.__dict__.update(_load_or_derive("scalar-kernels", key, self._derive))
        if "not_exponential_family" in self.__dict__:
            raise NotExponentialFamily(self.not_exponential_family)

    def _derive(self):
        try:
            solution = self.solution
        except NotExponentialFamily as exc:
            # Stored too: a later process learns the route without sympy.
            plan = {"format": KERNEL_FORMAT, "not_exponential_family": str(exc)}
            return plan, plan
        plan = _scalar_plan(solution)
        return plan, (None if solution.provisional else plan)

    @functools.cached_property
    def solution(self):
        """The derived ``ScalarSolution`` (sympy), for ``derive`` and the reports."""
        from .derive import scalar_solution
        try:
            return scalar_solution(self.family, self.constants, self.prior)
        except FamilyError as exc:
            raise type(exc)(str(exc)) from None


@functools.lru_cache(maxsize=None)
def scalar_kernels(family, constants, prior=None):
    """The kernels of a scalar family with these constants (and log prior text, for MAP), one per process."""
    return ScalarKernels(family, constants, prior)


class SimplexKernels(_Kernels):
    """A probability vector's derived update (and its prior's log-density) as numpy callables.

    Attributes
    ----------
    prior : mapping or None
        The prior's entry in ``PRIOR_TABLE``.
    numerator : callable
        ``u(count, pseudo)``: each probability is proportional to it.
    prior_element : callable
        With a prior only. ``f(p, pseudo)``: one category's log prior term (its
        normaliser apart), with ``0 * log 0 = 0``.
    prior_normaliser : callable
        With a prior only: the prior's log normaliser of a concentration array.
    """

    def __init__(self, family, prior_name):
        self.family = family
        self.prior = PRIOR_TABLE[prior_name] if prior_name else None
        key = repr((_key(family, ()), prior_name))
        required = ("prior_element",) if self.prior else ()
        self.__dict__.update(_load_or_derive("simplex-kernels", key, self._derive, required))
        if self.prior:
            self.prior_normaliser = self.prior["log_normaliser"]

    def _derive(self):
        solution = self.solution
        rename = {solution.count: "count", solution.pseudo: "pseudo"}
        plan = {"format": KERNEL_FORMAT, "numerator": _tree(_renamed(solution.numerator, rename))}
        if self.prior:
            element = solution.element_objective - solution.element_objective.subs(solution.pseudo, 1)
            p = next(s for s in element.free_symbols if s.name == "p")
            rename[p] = "p"
            plan["prior_element"] = with_safe_logs(_tree(_renamed(element, rename)))
        return plan, plan

    @functools.cached_property
    def solution(self):
        """The derived ``SimplexSolution`` (sympy), for ``derive`` and the reports."""
        from .derive import simplex_solution
        return simplex_solution(self.family, self.prior["element_logpdf"] if self.prior else None)


class RegressionKernels(_Kernels):
    """A family's log-density in its linear predictor, as numpy callables (continuous parents).

    Attributes
    ----------
    linear : str
        The parameter the linear predictor sets.
    inverse : callable
        The inverse link: the linear parameter at a predictor value.
    others : list of str
        The family's parameters other than the linear one.
    log_density : callable
        ``l(x, lambda, *others) - log h(x)``.
    first, second : callable
        Its first and second derivatives in lambda, same arguments.
    weighted_means : dict of str to callable
        ``phi(x, lambda, *others)`` of each other parameter: its update is the weighted mean of phi.
    quadratic : bool
        The log-density is quadratic in lambda: (intercept, coef) solve in closed form.
    base : callable
        ``log h(x)``.
    """

    def __init__(self, family, constants):
        self.family, self.constants = family, constants
        self.__dict__.update(_load_or_derive("regression-kernels", _key(family, constants) + repr(family.linear),
                                             self._derive))
        self.base = scalar_kernels(family, constants).base

    def _derive(self):
        solution = self.solution
        plan = {"format": KERNEL_FORMAT, "x": solution.x.name, "predictor": solution.predictor.name,
                "others": _names(solution.others), "quadratic": bool(solution.quadratic),
                "linear": solution.linear.name, "inverse": _tree(solution.inverse),
                "log_density": _tree(solution.log_density),
                "first": _tree(solution.first),
                "second": _tree(solution.second),
                "weighted_means": {p.name: _tree(e) for p, e in solution.weighted_means.items()}}
        return plan, plan

    @functools.cached_property
    def solution(self):
        """The derived ``RegressionSolution`` (sympy), for ``derive`` and the reports."""
        from .derive import regression_solution
        try:
            return regression_solution(self.family, self.constants)
        except FamilyError as exc:
            raise type(exc)(str(exc)) from None


@functools.lru_cache(maxsize=None)
def regression_kernels(family, constants):
    """The linear-predictor kernels of a family with these constants (one per process)."""
    return RegressionKernels(family, constants)


class GeneralKernels(_Kernels):
    """A non-exponential family's generalised-EM M-step and log-density, as numpy callables.

    Attributes
    ----------
    params : list of str
    domains : dict of str to str
    numeric : list of str
        Parameters found by Newton's method (in unconstrained coordinates).
    means : list of str
        Names of the weighted means E[f_k] the closed forms use.
    functions : list of callable
        f_k(x), one per mean.
    closed : dict of str to callable
        Closed-form parameters, of (*means, *numeric).
    log_density : callable
        ``log p(x | *params)``.
    profile : callable
        The per-row Newton objective, of (x, *unconstrained, *means).
    derivatives : NewtonDerivatives
        The same objective with its gradient and Hessian, stacked on a last axis.
    """

    def __init__(self, family, constants):
        self.family, self.constants = family, constants
        self.__dict__.update(_load_or_derive("general-kernels", _key(family, constants), self._derive))

    def _derive(self):
        solution = self.solution
        tree = _tree
        plan = {"format": KERNEL_FORMAT, "x": solution.x.name, "params": _names(solution.params),
                "domains": {p.name: d for p, d in solution.domains.items()}, "numeric": _names(solution.numeric),
                "unconstrained": _names(solution.unconstrained), "means": _names(solution.means),
                "functions": [tree(f) for f in solution.functions],
                "closed": {p.name: tree(e) for p, e in solution.closed.items()},
                "log_density": tree(solution.logpdf), "profile": tree(solution.profile),
                "gradient": [tree(g) for g in solution.gradient],
                "hessian": [[tree(h) for h in row] for row in solution.hessian]}
        return plan, (None if solution.provisional else plan)

    @functools.cached_property
    def solution(self):
        """The derived ``GeneralSolution`` (sympy), for ``derive`` and the reports."""
        from .derive import general_solution
        try:
            return general_solution(self.family, self.constants)
        except FamilyError as exc:
            raise type(exc)(str(exc)) from None


@functools.lru_cache(maxsize=None)
def general_kernels(family, constants):
    """The generalised-EM kernels of a non-exponential family with these constants (one per process)."""
    return GeneralKernels(family, constants)


def _renamed(expression, names):
    """The expression with the given symbols renamed (the trees' arguments are named)."""
    import sympy
    return expression.xreplace({s: sympy.Symbol(name, **s.assumptions0) for s, name in names.items()
                                if s.name != name})


@functools.lru_cache(maxsize=None)
def simplex_kernels(family, prior_name=None):
    """The kernels of an indicator family's probability vector under a prior (one per process)."""
    return SimplexKernels(family, prior_name)


def _check_format(plan):
    if not isinstance(plan, dict) or plan.get("format") != KERNEL_FORMAT:
        raise TreeError("not a kernel plan of this format")


def _key(family, constants):
    """What a family's kernels depend on: its declaration and constants, and the kernels' format."""
    declaration = (family.name, family.kind, family.logpdf, family.support, family.params, family.constants,
                   family.upper_bound)
    return repr((KERNEL_FORMAT, declaration, constants))
