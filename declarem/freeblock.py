"""Free parameters: the derived M-step of parameters that a model's probabilities are written in.

Probabilities declared as expressions in named parameters (``probs = ["p*q", ...]``,
textbook problems such as the ABO blood groups) are tied across nodes through
those parameters; their M-step is derived jointly (``derive.free``), and this
module evaluates it. It needs sympy at run time, so models without free
parameters never import it.
"""

import functools

import numpy as np
import sympy

from .derive import warn_if_provisional
from .derive.cache import cached
from .derive.free import solve_free
from .derive.lambdify import to_numpy
from .errors import InitError
from .numeric import FROM_DOMAIN, NewtonProblem
from .params import as_float_array


class FreeBlock:
    """The model's free parameters: their derived M-step over the nodes whose probs use them."""

    def __init__(self, model):
        symbols = model.free_symbols()
        self.names = list(model.free_params)
        self.domains = dict(model.free_params)
        self.groups = {group: tuple(members) for group, members in model.simplex_groups.items()}
        self.nodes = [name for name, node in model.nodes.items() if node.probs is not None]
        params = tuple(symbols[n] for n in self.names)
        self._params = params
        self._probs_expressions = {n: list(model.nodes[n].probs) for n in self.nodes}
        self.solution = None
        if params:
            key = (params, tuple((symbols[n], d) for n, d in self.domains.items()),
                   tuple((g, tuple(symbols[m] for m in ms)) for g, ms in self.groups.items()),
                   tuple((n, model.nodes[n].probs) for n in self.nodes))
            self.solution = free_solution(key)
        # else: constant probabilities (fixed by the declaration), nothing to estimate.
        self._compile()

    def _compile(self):
        """The derivation's numpy callables (also rebuilt, not re-derived, when a pickled block loads)."""
        self._probs = {n: sympy.lambdify(list(self._params), e, modules=["scipy", "numpy"])
                       for n, e in self._probs_expressions.items()}
        self._numeric = None
        if self.solution is None:
            return
        counts = list(self.solution.counts.values())
        self._count_keys = list(self.solution.counts)
        self._closed = {p.name: to_numpy(counts, e) for p, e in self.solution.closed.items()} \
            if self.solution.closed else None

    def __getstate__(self):
        return {key: value for key, value in self.__dict__.items() if key not in ("_probs", "_closed", "_numeric")}

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._compile()

    def n_free(self):
        return sum(1 for d in self.domains.values() if d != "simplex") + \
            sum(len(members) - 1 for members in self.groups.values())

    def probs(self, values):
        """Each member node's probabilities, shape (1, k), at free-parameter values."""
        arguments = [np.asarray(values[n], dtype=float) for n in self.names]
        return {n: np.array([float(v) for v in f(*arguments)]).reshape(1, -1) for n, f in self._probs.items()}

    def solve(self, stats, old):
        """New free-parameter values from the member nodes' expected counts."""
        if not self.names:
            return {}
        counts = [np.array([stats.sums[node][0, j]]) for node, j in self._count_keys]
        if self._closed is not None:
            with np.errstate(all="ignore"):
                new = {n: float(f(*counts)[0]) for n, f in self._closed.items()}
            if all(np.isfinite(v) for v in new.values()):
                return new
        start = self._unconstrained(old)
        if self._numeric is None:
            self._numeric = self._numeric_kernels()
        objective, gradient, hessian, to_params = self._numeric

        def arguments(u):
            return [u[:, i] for i in range(u.shape[1])] + counts

        # The coordinates are unconstrained already (simplex groups in additive log-ratios): all "real".
        def derivatives(u, _):
            values = arguments(u)
            return (objective(*values), np.column_stack([g(*values) for g in gradient]),
                    np.stack([np.column_stack([h(*values) for h in row]) for row in hessian], axis=1))

        problem = NewtonProblem(["real"] * len(start), lambda u, _: objective(*arguments(u)), derivatives)
        u = problem.solve(start[None, :])
        return {n: float(f(*u[0])) for n, f in to_params.items()}

    def _numeric_kernels(self):
        """The Newton problem as numpy callables, built on first need (a closed form rarely needs it)."""
        solution = self.solution
        counts = list(solution.counts.values())
        arguments = list(solution.unconstrained) + counts
        return (to_numpy(arguments, solution.profile),
                [to_numpy(arguments, g) for g in solution.gradient],
                [[to_numpy(arguments, h) for h in row] for row in solution.hessian],
                {p.name: to_numpy(list(solution.unconstrained), solution.to_params[p]) for p in self._params})

    def _unconstrained(self, old):
        coordinates = []
        for p in self.solution.unconstrained:
            name = p.name[2:]
            value = None if old is None else float(old[name])
            domain = self.domains[name]
            if domain == "simplex":
                group = next(ms for ms in self.groups.values() if name in ms)
                last = None if old is None else float(old[group[-1]])
                coordinates.append(0.0 if old is None else np.log(value / last))
            elif value is None:
                coordinates.append(0.0)
            else:
                coordinates.append(float(FROM_DOMAIN[domain](value)))
        return np.array(coordinates)

    def check(self, values, where, closed=False):
        """Validate user-given free parameters (closed: boundary allowed); return them as floats."""
        checked = {}
        for name, value in values.items():
            array = as_float_array(value, name, where)
            if array.shape != ():
                raise InitError(f"{where}: free parameter '{name}' must be a single number, found shape "
                                f"{array.shape}")
            number = float(array)
            domain = self.domains[name]
            inside = 0 <= number <= 1 if closed else 0 < number < 1
            bad = {"real": not np.isfinite(number), "positive": not (number >= 0 if closed else number > 0),
                   "unit": not inside, "simplex": not inside}[domain] or not np.isfinite(number)
            if bad:
                raise InitError(f"{where}: free parameter '{name}' = {number!r} is outside its domain ({domain})")
            checked[name] = number
        for group, members in self.groups.items():
            given = [m for m in members if m in checked]
            if given and len(given) != len(members):
                raise InitError(f"{where}: give all of {', '.join(members)} (simplex '{group}') or none")
            if given and abs(sum(checked[m] for m in members) - 1.0) > 1e-9:
                raise InitError(f"{where}: {', '.join(members)} (simplex '{group}') must sum to 1")
        return checked


@functools.lru_cache(maxsize=None)
def free_solution(key):
    params, domains, groups, probs = key
    solution = cached("free", sympy.srepr(key),
                      lambda: solve_free(params, dict(domains), {g: ms for g, ms in groups},
                                         {n: list(e) for n, e in probs}))
    warn_if_provisional("the free parameters", solution)
    return solution
