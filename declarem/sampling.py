"""Ancestral sampling from a declared model at given parameters (seeded)."""

import numpy as np
import sympy

from .derive.expfam import family_symbols
from .derive.lambdify import to_numpy
from .errors import InitError
from .expressions import parse_expression

GRID_POINTS = 20001
MAX_DISCRETE = 100000


def sample_rows(model, n_rows, params, seed=0):
    """Draw ``n_rows`` rows; see ``Model.sample``.

    Returns
    -------
    dict of str to ndarray
        Latent and observed nodes, vector nodes split into their columns.
    """
    if isinstance(n_rows, bool) or not isinstance(n_rows, (int, np.integer)) or n_rows < 1:
        raise InitError(f"the number of rows to sample must be a positive integer, found {n_rows!r}")
    compiled = model.compiled
    from .em import check_init
    given, free = check_init(compiled, params, where="params")
    pairs, free_names = compiled.required()
    missing = [f"{node}.{p}" for node, p in pairs if p not in given.get(node, {})]
    missing += [n for n in free_names if n not in free]
    if missing:
        raise InitError(f"params: sampling needs every parameter; missing {', '.join(missing)}")
    internal = compiled.to_internal({**given, **free}, {})
    rng = np.random.default_rng(seed)
    drawn = {}
    for name, factor in compiled.factors.items():
        node = model.nodes[name]
        sets = _set_index(factor, node, drawn, n_rows)
        drawn[name] = _draw(factor, node, internal[name], sets, rng)
    columns = {}
    for name, values in drawn.items():
        node = model.nodes[name]
        if node.dim == 1 and not node.columns:
            columns[name] = values.reshape(n_rows)
        else:
            names = node.columns or [f"{name}_{i}" for i in range(node.dim)]
            for j, column in enumerate(names):
                columns[column] = values.reshape(n_rows, node.dim)[:, j]
    return columns


def _set_index(factor, node, drawn, n_rows):
    index = np.zeros(n_rows, dtype=np.intp)
    for parent, size in zip(node.parents, factor.parent_sizes):
        index = index * size + drawn[parent]
    return index


def _draw(factor, node, params, sets, rng):
    family = node.family
    n_rows = len(sets)
    if family.kind == "table":
        return np.asarray(node.table)[sets]
    if family.kind == "indicator":
        cumulative = np.cumsum(params["probs"][sets], axis=1)
        uniform = rng.random(n_rows) * cumulative[:, -1]
        return np.minimum((uniform[:, None] >= cumulative).sum(axis=1), node.k - 1)
    if family.kind == "gaussian" or "cov" in params:
        chol = np.linalg.cholesky(params["cov"])
        noise = rng.standard_normal((n_rows, node.dim))
        return params["mean"][sets] + np.einsum("nij,nj->ni", chol[sets], noise)
    values = {name: np.broadcast_to(params[name].reshape(factor.n_sets, -1), (factor.n_sets, node.dim))[sets]
              for name in factor.param_names}
    constants = dict(node.constants)
    if family.sampler:
        return _draw_declared(family, values, constants, rng)
    return _draw_by_inversion(family, values, constants, rng)


def _draw_declared(family, values, constants, rng):
    method, *arguments = family.sampler
    _, param_symbols = family_symbols(family)
    symbols = {p.name: p for p in param_symbols}
    symbols.update({name: sympy.Symbol(name) for name in constants})
    names = list(symbols)
    inputs = [values[n] if n in values else np.full_like(next(iter(values.values())), constants[n], dtype=float)
              for n in names]
    evaluated = []
    for text in arguments:
        expression = parse_expression(text, symbols, f"family '{family.name}' sampler")
        result = to_numpy([symbols[n] for n in names], expression)(*inputs)
        evaluated.append(result.astype(int) if method in ("binomial",) and text in constants else result)
    if method == "binomial":
        evaluated[0] = np.rint(evaluated[0]).astype(np.int64)
    return getattr(rng, method)(*evaluated).astype(float)


def _draw_by_inversion(family, values, constants, rng):
    """Draw from a declared density by inverting its distribution function on a grid."""
    x, param_symbols = family_symbols(family)
    symbols = {"x": x, **{p.name: p for p in param_symbols}}
    logpdf = parse_expression(family.logpdf, symbols, f"family '{family.name}' logpdf")
    density = to_numpy([x] + list(param_symbols), logpdf)
    shape = next(iter(values.values())).shape
    stacked = np.column_stack([values[p.name].reshape(-1) for p in param_symbols])
    uniform = rng.random(stacked.shape[0])
    out = np.empty(stacked.shape[0])
    distinct, which = np.unique(stacked, axis=0, return_inverse=True)
    for index, point in enumerate(distinct):
        grid, cumulative = _distribution_function(family.support, density, point)
        members = which.reshape(-1) == index
        if family.support in DISCRETE:
            positions = np.minimum(np.searchsorted(cumulative, uniform[members]), len(grid) - 1)
            out[members] = grid[positions]
        else:
            out[members] = np.interp(uniform[members], cumulative, grid)
    return out.reshape(shape)


DISCRETE = ("integer", "nonnegative-integer", "positive-integer", "binary")


def _distribution_function(support, density, point):
    """A grid over the support and the distribution function on it, at one parameter point."""
    if support in DISCRETE:
        first = {"integer": -MAX_DISCRETE // 2, "nonnegative-integer": 0, "positive-integer": 1, "binary": 0}
        last = 2 if support == "binary" else first[support] + MAX_DISCRETE
        grid = np.arange(first[support], last, dtype=float)
        mass = _mass(density, grid, point)
        return grid, np.cumsum(mass) / mass.sum()
    grid = _continuous_grid(support, density, point)
    mass = _mass(density, grid, point)
    cumulative = np.concatenate([[0.0], np.cumsum((mass[1:] + mass[:-1]) / 2 * np.diff(grid))])
    return grid, cumulative / cumulative[-1]


def _mass(density, grid, point):
    with np.errstate(all="ignore"):
        mass = np.exp(density(grid, *[np.full_like(grid, v) for v in point]))
    return np.where(np.isfinite(mass), mass, 0.0)


def _continuous_grid(support, density, point):
    low = {"real": None, "positive": 0.0, "nonnegative": 0.0, "unit": 0.0}[support]
    high = 1.0 if support == "unit" else None
    if support == "unit":
        return np.linspace(1e-9, 1 - 1e-9, GRID_POINTS)
    span = 1.0
    for _ in range(60):
        lo = -span if low is None else max(low, 1e-12)
        grid = np.linspace(lo, span if high is None else high, GRID_POINTS)
        mass = _mass(density, grid, point)
        edge = mass[-1] if low is not None else max(mass[0], mass[-1])
        if mass.max() > 0 and edge < 1e-12 * mass.max():
            return grid
        span *= 2.0
    return grid
