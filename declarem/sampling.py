"""Ancestral sampling from a declared model at given parameters (seeded).

Each compiled factor kind has its own sampler, chosen by the factor's class
(``_SAMPLERS``), never by a family's or a parameter's name:

- a deterministic node reads its ``table``; a categorical node inverts its
  probability row; a multivariate normal uses its Cholesky factor;
- a scalar family that declares a numpy ``sampler`` (every built-in scalar
  family) calls that ``numpy.random.Generator`` method, which is exact;
- a scalar family declared only by its log-density (a user family) is sampled
  exactly up to a stated accuracy, or refused with a ``FitError`` that says
  where and why:

  * continuous supports: inversion by UNU.RAN's PINV
    (``scipy.stats.sampling.NumericalInversePolynomial``) with u-resolution
    ``U_RESOLUTION = 1e-10``: each draw ``X`` is the quantile of its uniform
    ``U`` up to ``|U - F(X)| <= 1e-10`` (on the real line, plus the rounding of
    ``X`` to a float, as for any float draw). Positive and unit supports are
    inverted on the log and logit scale, where a pole at an end of the support
    (a Weibull with shape below 1) and a heavy right tail (a log-normal) become
    exponentially vanishing tails; every distribution is standardised to its
    mode and width first. Mass beyond the floats (below the smallest normal
    float, within one float step of 1 on the unit interval) must be under
    ``TAIL_MASS``. Each generator is then checked by adaptive quadrature of the
    declared density, independently of UNU.RAN: its quantiles at
    ``CHECK_QUANTILES`` must have distribution function values within
    ``CHECK_TOLERANCE = 1e-8``, and the density must integrate to 1 within
    ``NORMALISATION_TOLERANCE = 1e-6``;
  * discrete supports: the probability mass function is evaluated on a window
    of the support around its mode and inverted on its cumulative sums; the
    window is widened until the mass outside it is at most ``TAIL_MASS =
    1e-12`` of the mass inside, bounded by a staircase over points out to 2**53
    where the mass must keep falling (see ``_tail_is_bounded``), and holds at
    most ``MAX_DISCRETE`` values. The mass must sum to 1 within
    ``NORMALISATION_TOLERANCE``.

One generator is set up per distinct parameter point (at most ``MAX_POINTS``),
not per row, and draws are taken in a fixed order (parameter points sorted,
rows in order) from the one ``numpy.random.Generator`` seeded by ``seed``.
"""

import math
import warnings
from dataclasses import dataclass

import numpy as np
import scipy.integrate
import scipy.optimize
import scipy.special
import sympy
from scipy.stats import sampling as unuran

from .compiled import (CategoricalFactor, CovariateFactor, DeterministicFactor, GaussianFactor, GeneralFactor,
                       ScalarFactor)
from .derive.expfam import family_symbols
from .derive.lambdify import to_numpy
from .errors import FitError, InitError
from .expressions import parse_expression

#: The largest tolerated u-error |U - F(X)| of a continuous draw (UNU.RAN's u-resolution).
U_RESOLUTION = 1e-10
#: Quantiles at which a continuous generator is checked against quadrature of the density.
CHECK_QUANTILES = np.concatenate([[1e-9, 1e-6, 1e-3], np.linspace(0.05, 0.95, 19), [1 - 1e-3, 1 - 1e-6, 1 - 1e-9]])
#: The largest tolerated difference between a checked quantile's level and its quadrature value.
CHECK_TOLERANCE = 1e-8
#: The largest mass a discrete window may leave out, relative to the mass inside it.
TAIL_MASS = 1e-12
#: How far from 1 the declared density's total mass may be before sampling refuses it.
NORMALISATION_TOLERANCE = 1e-6
#: The most distinct parameter points of one node that get their own exact generator.
MAX_POINTS = 1000
#: The most support points a discrete window may hold.
MAX_DISCRETE = 2 ** 22
#: Log-density drop, below the mode, under which a density counts as vanished (e**-50 ~ 2e-22).
VANISHED = 50.0
#: Integers beyond 2**53 are not all representable as floats, so discrete checks stop there.
LARGEST_EXACT_INTEGER = 2.0 ** 53

DISCRETE = ("integer", "nonnegative-integer", "positive-integer", "binary")
#: The lowest value of each discrete support (None: unbounded below).
DISCRETE_LOW = {"integer": None, "nonnegative-integer": 0, "positive-integer": 1, "binary": 0}


def sample_rows(model, n_rows, params, seed=0, lengths=None):
    """Draw ``n_rows`` rows; see ``Model.sample``.

    Parameters
    ----------
    model : Model
    n_rows : int
    params : mapping
        ``{node: {param: array}}`` for every node, and free parameters by name.
    seed : int
    lengths : sequence of int, optional
        For a model with a chain: rows per sequence (default one sequence of n_rows).

    Returns
    -------
    dict of str to ndarray
        Latent and observed nodes, each of shape (n_rows,); vector nodes split
        into their columns.

    Raises
    ------
    InitError
        A parameter is missing, misshapen or outside its domain.
    FitError
        A user family cannot be sampled to the stated accuracy at the given
        parameters (the message says where and why).
    """
    if isinstance(n_rows, bool) or not isinstance(n_rows, (int, np.integer)) or n_rows < 1:
        raise InitError(f"the number of rows to sample must be a positive integer, found {n_rows!r}")
    compiled = model.compiled
    from .params import check_init, seed_sequence
    given, free = check_init(compiled, params, where="params", closed=True)
    pairs, free_names = compiled.required()
    missing = [f"{node}.{p}" for node, p in pairs if p not in given.get(node, {})]
    missing += [n for n in free_names if n not in free]
    if missing:
        raise InitError(f"params: sampling needs every parameter; missing {', '.join(missing)}")
    internal = compiled.to_internal({**given, **free}, {})
    from .data import sequence_lengths
    if lengths is not None:
        lengths = sequence_lengths(model, {}, lengths, n_rows)
    elif model.chain is not None:
        lengths = [n_rows]
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed_sequence(seed))
    drawn = {}
    for name, factor in compiled.factors.items():
        node = model.nodes[name]
        if node.chain:
            drawn[name] = _draw_chain(factor, internal[name], lengths, rng)
            continue
        sets = _set_index(factor, node, drawn, n_rows)
        if node.covariates:
            drawn[name] = _draw_regression(factor, node, internal[name], sets, rng, drawn)
            continue
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
    """Each row's parameter set (the flat index of its discrete parents' values), shape (n_rows,)."""
    index = np.zeros(n_rows, dtype=np.intp)
    for parent, size in zip(node.parents, factor.parent_sizes):
        index = index * size + drawn[parent]
    return index


def _draw(factor, node, params, sets, rng):
    """Draw one node's values for every row, with the sampler of its factor's kind."""
    for kind, sampler in _SAMPLERS:
        if isinstance(factor, kind):
            return sampler(factor, node, params, sets, rng)
    raise FitError(f"node '{node.name}': cannot sample family '{node.family.name}': its compiled factor "
                   "has no sampler")


def _draw_chain(factor, params, lengths, rng):
    """A chain's states, sequence by sequence: the first from ``start``, each next from its row of ``probs``.

    One uniform per row, drawn up front, so equal seeds give equal chains; the
    sequences advance together, one step at a time.

    Returns
    -------
    ndarray of int, shape (sum(lengths),)
    """
    lengths = np.asarray(lengths, dtype=np.intp)
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.intp)
    cumulative = np.cumsum(params["probs"], axis=1)
    uniform = rng.random(int(lengths.sum()))
    states = np.empty(int(lengths.sum()), dtype=np.intp)
    for t in range(int(lengths.max())):
        rows = starts[lengths > t] + t
        sets = np.zeros(len(rows), dtype=np.intp) if t == 0 else 1 + states[rows - 1]
        table = cumulative[sets]
        states[rows] = np.minimum((uniform[rows, None] * table[:, -1:] >= table).sum(axis=1), factor.k - 1)
    return states


def _draw_table(factor, node, params, sets, rng):
    """A deterministic node: its parent's category through ``table``, shape (n_rows,)."""
    return np.asarray(node.table)[sets]


def _draw_categorical(factor, node, params, sets, rng):
    """A categorical node: one uniform per row inverted on its probability row, shape (n_rows,)."""
    cumulative = np.cumsum(params["probs"][sets], axis=1)
    uniform = rng.random(len(sets)) * cumulative[:, -1]
    return np.minimum((uniform[:, None] >= cumulative).sum(axis=1), node.k - 1)


def _draw_gaussian(factor, node, params, sets, rng):
    """A multivariate normal node: mean plus Cholesky factor times standard normals, shape (n_rows, dim)."""
    chol = np.linalg.cholesky(params["cov"])
    noise = rng.standard_normal((len(sets), node.dim))
    return params["mean"][sets] + np.einsum("nij,nj->ni", chol[sets], noise)


def _draw_scalar(factor, node, params, sets, rng):
    """A scalar family on independent columns, shape (n_rows, dim)."""
    values = {name: np.broadcast_to(params[name].reshape(factor.n_sets, -1), (factor.n_sets, node.dim))[sets]
              for name in factor.param_names}
    constants = dict(node.constants)
    if node.family.sampler:
        try:
            return _draw_declared(node.family, values, constants, rng)
        except ValueError as exc:
            # numpy refuses parameters beyond its algorithms' range (a Poisson rate above ~1e19).
            raise FitError(f"node '{node.name}': cannot sample family '{node.family.name}' at these "
                           f"parameters: numpy says {exc}") from None
    return _draw_exact(node, values, constants, rng)


def _draw_covariate(factor, node, params, sets, rng):
    raise FitError(f"node '{node.name}' is a covariate, with no distribution to draw it from, so the nodes it is a "
                   f"parent of cannot be sampled without its values; declare '{node.name}' with a family (e.g. "
                   "normal) to sample the whole model")


def _draw_general(factor, node, params, sets, rng):
    """A family that is not an exponential family: its declared log-density inverted, shape (n_rows, 1)."""
    values = {name: np.asarray(params[name], dtype=float).reshape(factor.n_sets)[sets].reshape(-1, 1)
              for name in factor.param_names}
    return _draw_exact(node, values, dict(node.constants), rng)


def _draw_regression(factor, node, params, sets, rng, drawn):
    """A node with continuous parents: each row's linear parameter from its covariates, shape (n_rows, 1)."""
    n_rows = len(sets)
    covariates = np.column_stack([drawn[c].reshape(n_rows, -1) for c in node.covariates])
    intercept, coef, others = factor._per_set(params)
    predictor = intercept[sets] + np.einsum("nm,nm->n", covariates, coef[sets])
    kernels = factor.kernels
    with np.errstate(all="ignore"):
        values = {kernels.linear: kernels.inverse(predictor).reshape(n_rows, 1)}
    values.update({name: value[sets].reshape(n_rows, 1) for name, value in zip(kernels.others, others)})
    if node.family.sampler:
        try:
            return _draw_declared(node.family, values, dict(node.constants), rng)
        except ValueError as exc:
            raise FitError(f"node '{node.name}': cannot sample family '{node.family.name}' at these "
                           f"parameters: numpy says {exc}") from None
    return _draw_exact(node, values, dict(node.constants), rng)


_SAMPLERS = (
    (CovariateFactor, _draw_covariate),
    (DeterministicFactor, _draw_table),
    (CategoricalFactor, _draw_categorical),
    (GaussianFactor, _draw_gaussian),
    (GeneralFactor, _draw_general),
    (ScalarFactor, _draw_scalar),
)


def _draw_declared(family, values, constants, rng):
    """Draw with the family's declared ``numpy.random.Generator`` method.

    Parameters
    ----------
    family : Family
        With ``sampler = (method, *argument expressions)``.
    values : dict of str to ndarray
        Each parameter per row and column, shape (n_rows, dim).
    constants : dict of str to number
    rng : numpy.random.Generator

    Returns
    -------
    ndarray of shape (n_rows, dim)
    """
    method, *arguments = family.sampler
    _, param_symbols = family_symbols(family)
    symbols = {p.name: p for p in param_symbols}
    symbols.update({name: sympy.Symbol(name) for name in constants})
    names = list(symbols)
    shape = next(iter(values.values())).shape
    inputs = [values[n] if n in values else np.full(shape, float(constants[n])) for n in names]
    evaluated = []
    for text in arguments:
        expression = parse_expression(text, symbols, f"family '{family.name}' sampler")
        result = to_numpy([symbols[n] for n in names], expression)(*inputs)
        # Count arguments (binomial's trials) must reach numpy as integers; integral values of
        # any other argument convert to the same double inside numpy, so the draws are unchanged.
        integral = np.all(np.abs(result) < 2.0 ** 62) and np.array_equal(result, np.rint(result))
        evaluated.append(result.astype(np.int64) if integral else result)
    return getattr(rng, method)(*evaluated).astype(float)


class _Refused(Exception):
    """A distribution cannot be set up to the stated accuracy; carries the reason."""


def _draw_exact(node, values, constants, rng):
    """Draw from a family declared only by its log-density, exactly up to the stated accuracy.

    Parameters
    ----------
    node : Node
    values : dict of str to ndarray
        Each parameter per row and column, shape (n_rows, dim).
    constants : dict of str to number
    rng : numpy.random.Generator

    Returns
    -------
    ndarray of shape (n_rows, dim)

    Raises
    ------
    FitError
        Some parameter point's distribution cannot be sampled to the accuracy.
    """
    family = node.family
    density = _LogDensity(family, constants)
    shape = next(iter(values.values())).shape
    stacked = np.column_stack([values[name].reshape(-1) for name in family.param_names])
    distinct, which = np.unique(stacked, axis=0, return_inverse=True)
    which = which.reshape(-1)
    if len(distinct) > MAX_POINTS:
        raise FitError(f"node '{node.name}': cannot sample family '{family.name}' exactly: its parameters "
                       f"take {len(distinct)} distinct values, more than the {MAX_POINTS} that get their own "
                       "generator")
    setup = _discrete_generator if family.support in DISCRETE else _continuous_generator
    generators = []
    for point in distinct:
        try:
            generators.append(setup(density, point, rng))
        except _Refused as refusal:
            where = ", ".join(f"{name}={value:.6g}" for name, value in zip(family.param_names, point))
            raise FitError(f"node '{node.name}': cannot sample family '{family.name}' exactly at {where}: "
                           f"{refusal}") from None
    out = np.empty(len(stacked))
    for index, generate in enumerate(generators):
        members = np.flatnonzero(which == index)
        out[members] = generate(len(members))
    return out.reshape(shape)


class _LogDensity:
    """A user family's log-density as numpy callables of x and one parameter point.

    Arrays go through ``to_numpy``; single floats (UNU.RAN and quadrature ask
    for one point at a time, thousands of times) go straight to the lambdified
    function, which is some ten times faster. On the unit interval a second form
    in ``w = 1 - x`` keeps the precision of ``log(1 - x)`` near 1, where ``x``
    itself cannot be told from 1.
    """

    def __init__(self, family, constants):
        x, param_symbols = family_symbols(family)
        constant_symbols = {name: sympy.Symbol(name, positive=True) for name in constants}
        symbols = {"x": x, **{p.name: p for p in param_symbols}, **constant_symbols}
        logpdf = parse_expression(family.logpdf, symbols, f"family '{family.name}' logpdf")
        arguments = list(param_symbols) + list(constant_symbols.values())
        self.support = family.support
        self.constants = tuple(np.float64(value) for value in constants.values())
        forms = {"x": (x, logpdf)}
        if family.support == "unit":
            w = sympy.Symbol("w", positive=True)
            forms["complement"] = (w, logpdf.subs(x, 1 - w))
        self.vector = {name: to_numpy([variable] + arguments, expression)
                       for name, (variable, expression) in forms.items()}
        self.scalar = {name: sympy.lambdify([variable] + arguments, expression, modules=["scipy", "numpy"])
                       for name, (variable, expression) in forms.items()}

    def __call__(self, x, point, form="x"):
        """The log-density at ``x`` (an array), shape of ``x``, with NaN where it is not a number.

        ``form="complement"`` reads ``x`` as ``1 - x`` (unit support only).
        """
        with np.errstate(all="ignore"):
            return self.vector[form](x, *point, *self.constants)

    def at(self, x, point, form="x"):
        """The log-density at one float ``x``, as a float (call under ``np.errstate``)."""
        # numpy floats, not Python floats: overflow gives inf (as for arrays) instead of raising.
        value = self.scalar[form](np.float64(x), *point, *self.constants)
        # Real branches of complex-valued functions (LambertW) come back complex, as in to_numpy.
        return float(value.real if isinstance(value, complex) else value)


# -- continuous supports ------------------------------------------------------------------------

#: The range of z = log x (positive, nonnegative) and z = logit x (unit) whose x are normal floats
#: (full relative precision), on the unit interval also short of 1 by at least one float step.
_SMALLEST_LOG = float(np.log(np.finfo(float).smallest_normal))
_LARGEST_LOG = 709.78
_LAST_LOGIT = float(np.log1p(-2.0 ** -53) + 53 * np.log(2.0))
_DOMAINS = {"real": (-np.inf, np.inf), "positive": (_SMALLEST_LOG, _LARGEST_LOG),
            "nonnegative": (_SMALLEST_LOG, _LARGEST_LOG), "unit": (_SMALLEST_LOG, _LAST_LOGIT)}


class _Unconstrained:
    """A continuous distribution seen on the real line: z = x, log x, or logit x.

    On the log and logit scales a pole at an end of the support (x**(k - 1)
    with k < 1) becomes an exponentially vanishing tail, and a power-law tail
    towards infinity an exponential one. Outside ``domain`` no float x
    corresponds to z, and the density of z is zero there.
    """

    def __init__(self, density, point):
        self.density = density
        self.point = tuple(np.float64(value) for value in point)
        self.declared_support = density.support
        self.domain = _DOMAINS[density.support]

    def values(self, z):
        """Log-density of z (unnormalised), shape of ``z``; +inf marks a pole, NaN is kept."""
        z = np.asarray(z, dtype=float)
        with np.errstate(all="ignore"):
            if self.declared_support == "real":
                return self.density(z, self.point)
            if self.declared_support == "unit":
                # exp(log_expit) keeps x and 1 - x down to the smallest float, where expit underflows early.
                lower = self.density(np.exp(scipy.special.log_expit(z)), self.point)
                upper = self.density(np.exp(scipy.special.log_expit(-z)), self.point, "complement")
                jacobian = scipy.special.log_expit(z) + scipy.special.log_expit(-z)
                values = np.where(z <= 0, lower, upper) + jacobian
            else:
                values = self.density(np.exp(z), self.point) + z
        low, high = self.domain
        return np.where((z >= low) & (z <= high), values, -np.inf)

    def value(self, z):
        """Log-density of one float z, NaN read as -inf (call under ``np.errstate(all="ignore")``)."""
        low, high = self.domain
        if not low <= z <= high:
            return -math.inf
        if self.declared_support == "real":
            value = self.density.at(z, self.point)
        elif self.declared_support == "unit":
            jacobian = scipy.special.log_expit(z) + scipy.special.log_expit(-z)
            value = (self.density.at(math.exp(scipy.special.log_expit(z)), self.point) if z <= 0 else
                     self.density.at(math.exp(scipy.special.log_expit(-z)), self.point, "complement")) + jacobian
        else:
            value = self.density.at(math.exp(z), self.point) + z
        return -math.inf if math.isnan(value) else float(value)

    def to_support(self, z):
        """Map values of z to x, rounded into the open support, shape of ``z``."""
        if self.declared_support == "real":
            return z
        tiny = np.finfo(float).smallest_normal
        if self.declared_support == "unit":
            return np.clip(scipy.special.expit(z), tiny, np.nextafter(1.0, 0.0))
        x = np.exp(z)
        return np.maximum(x, tiny) if self.declared_support == "positive" else x

    def scan_grid(self):
        """Points of z spread over every scale of the domain, ends included, shape (n,)."""
        if self.declared_support == "real":
            return np.sinh(np.linspace(-690.0, 690.0, 8001))
        low, high = self.domain
        # Clipped: sinh(arcsinh(end)) may round just outside the domain.
        return np.clip(np.sinh(np.linspace(np.arcsinh(low), np.arcsinh(high), 4001)), low, high)

    def describe(self, z):
        """The x of a value of z, for messages."""
        return f"x = {float(self.to_support(np.asarray(z, dtype=float))):.6g}"


class _Standardised:
    """The density of y = (z - center) / scale, scaled to 1 at the mode: what UNU.RAN inverts.

    Standardising puts the bulk of every distribution near 0 with width about 1,
    whatever its location and spread, so that UNU.RAN's search for the tails
    starts at the right scale.
    """

    def __init__(self, target, center, scale, top):
        self.target = target
        self.center = center
        self.scale = scale
        self.top = top
        low, high = target.domain
        self.domain = ((low - center) / scale, (high - center) / scale)

    def logpdf(self, y):
        """UNU.RAN's callback: the log-density at one float y (call under ``np.errstate``)."""
        return self.target.value(self.center + self.scale * y) - self.top

    def density(self, y):
        """The density at one float y, for quadrature."""
        # Capped: above 1 only if the mode was missed, and then the quadrature check refuses anyway.
        return math.exp(min(self.logpdf(y), 700.0))

    def tail_density(self, t):
        """The density of t = asinh(y) at one float t: polynomial tails of y become exponential in t."""
        if abs(t) > 700.0:
            # sinh(t) is beyond the floats there.
            return 0.0
        log_cosh = abs(t) + math.log1p(math.exp(-2.0 * abs(t))) - math.log(2.0)
        return math.exp(min(self.logpdf(math.sinh(t)) + log_cosh, 700.0))

    def to_support(self, y):
        """Map values of y to x, shape of ``y``."""
        return self.target.to_support(self.center + self.scale * y)

    def describe(self, y):
        """The x of a value of y, for messages."""
        return self.target.describe(self.center + self.scale * y)


def _continuous_generator(density, point, rng):
    """Set up and check an exact inversion generator for one parameter point.

    Returns
    -------
    callable
        ``generate(m)`` returning m draws, shape (m,), from ``rng``.

    Raises
    ------
    _Refused
    """
    target = _Unconstrained(density, point)
    # The density is evaluated far into its tails, where log(0) and overflow are expected.
    with np.errstate(all="ignore"):
        grid = target.scan_grid()
        values = target.values(grid)
        center, top = _mode(target, grid, values)
        standard = _Standardised(target, center, _scale(target, grid, values, center, top), top)
        generator = _inversion(standard, rng)
        check = _quadrature(standard, generator)
    # The share of the mass in one floating point step of z at the mode.
    rounding = np.spacing(abs(center)) / (standard.scale * check.mass)
    if target.declared_support == "real":
        # z is x itself: its rounding is that of any float draw, not an error of the inversion, and
        # a density evaluated at float x is a staircase of that step, which quadrature sees too.
        tolerance = CHECK_TOLERANCE + 10.0 * rounding
    elif rounding > U_RESOLUTION:
        raise _Refused("it is too narrow to invert on the log scale in floating point "
                       f"(one rounding step of log x holds more than {U_RESOLUTION:g} of its mass)")
    else:
        tolerance = CHECK_TOLERANCE
    if check.error > tolerance / 10.0:
        raise _Refused(f"its density cannot be integrated to the accuracy (near {standard.describe(check.hardest)})")
    worst = int(np.argmax(np.abs(check.levels - CHECK_QUANTILES)))
    if abs(check.levels[worst] - CHECK_QUANTILES[worst]) > tolerance:
        raise _Refused(f"the inversion misses its accuracy: its quantile at level {CHECK_QUANTILES[worst]:.6g} "
                       f"has distribution function {check.levels[worst]:.12g} by quadrature")
    total = math.exp(min(top + math.log(standard.scale * check.mass), 700.0))
    if not abs(total - 1.0) <= NORMALISATION_TOLERANCE:
        raise _Refused(f"the declared density integrates to {total:.6g}, not 1, so it is not a probability "
                       "density at these parameters")

    def generate(m):
        return standard.to_support(generator.rvs(m))

    return generate


def _mode(target, grid, values):
    """A mode of the density of z and the log-density there, refusing shapes PINV cannot invert.

    Parameters
    ----------
    target : _Unconstrained
    grid : ndarray of shape (n,)
        Increasing points of z over the whole domain (``target.scan_grid()``).
    values : ndarray of shape (n,)
        The log-density of z there.

    Returns
    -------
    center : float
    top : float
        The log-density of z at ``center``.
    """
    if np.any(values == np.inf):
        raise _Refused(f"the density is unbounded (a pole) near {target.describe(grid[np.argmax(values == np.inf)])}")
    finite = np.where(np.isnan(values), -np.inf, values)
    if not np.any(np.isfinite(finite)):
        raise _Refused("the log-density is not finite anywhere on the support")
    best = int(np.argmax(finite))
    low, high = grid[max(best - 1, 0)], grid[min(best + 1, len(grid) - 1)]
    center, top = float(grid[best]), float(finite[best])
    # A unimodal density's mode lies between the grid neighbours of the grid's best point.
    refined = scipy.optimize.minimize_scalar(lambda z: -target.value(z), bounds=(low, high), method="bounded",
                                             options={"xatol": 1e-12 * max(1.0, abs(high - low))})
    if np.isfinite(refined.fun) and -refined.fun > top:
        center, top = float(refined.x), float(-refined.fun)
    if not np.isfinite(top):
        raise _Refused(f"the density is unbounded near {target.describe(center)}")
    # PINV needs the region where the density is not negligible to be connected.
    position = int(np.searchsorted(grid, center))
    grid = np.insert(grid, position, center)
    values = np.insert(values, position, top)
    alive = np.flatnonzero(values > top - VANISHED)
    for end, inward in ((0, 1), (len(grid) - 1, -1)):
        if alive[0] == end or alive[-1] == end:
            _check_cut(target, grid, values, top, end, inward)
    hull = values[alive[0]:alive[-1] + 1]
    if np.any(np.isnan(hull)):
        at = grid[alive[0] + int(np.argmax(np.isnan(hull)))]
        raise _Refused(f"the log-density is not a number at {target.describe(at)}")
    if len(alive) != alive[-1] - alive[0] + 1:
        gap = alive[int(np.argmax(np.diff(alive) > 1))]
        raise _Refused("the density has separated modes: it vanishes (below e**-50 of its peak) after "
                       f"{target.describe(grid[gap])} and rises again further on")
    return center, top


def _check_cut(target, grid, values, top, end, inward):
    """Refuse unless the mass beyond an end of the float range is below ``TAIL_MASS``.

    Where the density of z has not vanished at the end of the grid, the mass
    beyond the end is bounded by the density there over its rate of decay,
    assuming it keeps decaying exponentially (as a power x**(k - 1) at an end
    of the support does on the log and logit scales).
    """
    last, before = values[end], values[end + inward]
    rate = (before - last) / abs(grid[end + inward] - grid[end])
    finite = np.isfinite(values)
    spread = np.trapezoid(np.exp(np.where(finite, values - top, -np.inf)), grid)
    beyond = last - top - math.log(rate) if rate > 0 else math.inf
    if not np.isfinite(target.domain[0]) or beyond > math.log(TAIL_MASS * spread):
        raise _Refused(f"the density does not vanish towards {target.describe(grid[end])}, the end of the "
                       "floating point range: it is not normalisable, or too much of its mass lies beyond "
                       "the floats")


def _scale(target, grid, values, center, top):
    """Half the width of the region around the mode where the log-density is within 1 of its top.

    ``grid`` and ``values`` are the scan of ``_mode``, shape (n,) each.
    """
    values = np.where(np.isnan(values), -np.inf, values)
    ends = []
    for side in (-1.0, 1.0):
        outside = grid[(values < top - 1.0) & (side * (grid - center) > 0)]
        if len(outside) == 0:
            # It never falls that far before the end of its domain (a tail cut at the float range).
            ends.append(target.domain[0] if side < 0 else target.domain[1])
            continue
        far = outside.max() if side < 0 else outside.min()
        # Between the mode and the nearest grid point where the log-density has fallen by more than 1.
        try:
            ends.append(scipy.optimize.brentq(lambda z: target.value(z) - (top - 1.0), center, far, xtol=1e-300,
                                              maxiter=400))
        except (RuntimeError, ValueError):
            raise _Refused(f"its log-density is too irregular near its mode ({target.describe(center)}) to find "
                           "its width") from None
    return max((ends[1] - ends[0]) / 2.0, np.spacing(abs(center)) * 16)


def _inversion(standard, rng):
    """UNU.RAN's PINV generator for a standardised density, refusing on any complaint of UNU.RAN."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            generator = unuran.NumericalInversePolynomial(standard, center=0.0, domain=standard.domain,
                                                          u_resolution=U_RESOLUTION, random_state=rng)
        except unuran.UNURANError as exc:
            raise _Refused(f"UNU.RAN cannot invert it ({_unuran_reason(exc)})") from None
    complaints = [str(w.message) for w in caught if str(w.message).startswith("[objid:")]
    if complaints:
        raise _Refused(f"UNU.RAN cannot invert it to u-resolution {U_RESOLUTION:g} "
                       f"({_unuran_reason(complaints[0])})")
    return generator


def _unuran_reason(message):
    """UNU.RAN's message without its object id prefix."""
    text = str(message)
    return text.split(":", 2)[-1].strip() if text.startswith("[objid:") else text


@dataclass(frozen=True)
class _Quadrature:
    """What quadrature of a standardised density says about its generator.

    Attributes
    ----------
    mass : float
        The integral of the standardised density over its domain.
    levels : ndarray of shape (len(CHECK_QUANTILES),)
        The distribution function, by quadrature, at the generator's quantiles
        at ``CHECK_QUANTILES``.
    error : float
        Quadrature's error estimate relative to ``mass``.
    hardest : float
        A point (in y) of the piece with the largest error estimate.
    """

    mass: float
    levels: np.ndarray
    error: float
    hardest: float


def _quadrature(standard, generator):
    """Integrate the standardised density between the generator's quantiles, independently of UNU.RAN.

    The pieces run between the quantiles at ``CHECK_QUANTILES`` and over both
    tails to the ends of the domain (infinite tails in t = asinh(y), where
    power-law tails decay exponentially).

    Returns
    -------
    _Quadrature
    """
    edges = np.asarray(generator.ppf(CHECK_QUANTILES), dtype=float)
    if not np.all(np.isfinite(edges)) or np.any(np.diff(edges) < 0):
        raise _Refused("its inverse distribution function is not finite and increasing")
    bounds = np.concatenate([[standard.domain[0]], edges, [standard.domain[1]]])
    pieces, errors = [], []
    with warnings.catch_warnings():
        # quad warns of round-off where a density evaluated in floating point is not smooth at the
        # tolerance asked; its error estimates are held against the check's tolerance instead.
        warnings.simplefilter("ignore", scipy.integrate.IntegrationWarning)
        for low, high in zip(bounds[:-1], bounds[1:]):
            infinite = not (np.isfinite(low) and np.isfinite(high))
            function, a, b = ((standard.tail_density, np.arcsinh(low), np.arcsinh(high)) if infinite
                              else (standard.density, low, high))
            value, error = scipy.integrate.quad(function, a, b, epsabs=1e-13, epsrel=1e-10, limit=200)
            pieces.append(value)
            errors.append(error)
    mass = math.fsum(pieces)
    if not (np.isfinite(mass) and mass > 0):
        raise _Refused("its density is not normalisable (the integral is not a positive finite number)")
    hardest = int(np.argmax(errors))
    inside = bounds[hardest + 1] if not np.isfinite(bounds[hardest]) else bounds[hardest]
    return _Quadrature(mass=mass, levels=np.cumsum(pieces[:-1]) / mass, error=math.fsum(errors) / mass,
                       hardest=float(inside))


# -- discrete supports --------------------------------------------------------------------------

def _discrete_generator(density, point, rng):
    """Set up an exact inversion of a probability mass function for one parameter point.

    Returns
    -------
    callable
        ``generate(m)`` returning m draws, shape (m,), from ``rng``.

    Raises
    ------
    _Refused
    """
    low = DISCRETE_LOW[density.support]
    if density.support == "binary":
        support = np.array([0.0, 1.0])
        logmass = density(support, point)
    else:
        support, logmass = _window(density, point, low)
    if np.any(np.isnan(logmass)) or np.any(logmass == np.inf):
        bad = support[int(np.argmax(np.isnan(logmass) | (logmass == np.inf)))]
        raise _Refused(f"the log-mass is NaN or +inf at x = {bad:.0f}")
    scale = np.max(logmass)
    if not np.isfinite(scale):
        raise _Refused("the mass function is zero everywhere on the support")
    total = math.exp(scale) * math.fsum(np.exp(logmass - scale))
    if not abs(total - 1.0) <= NORMALISATION_TOLERANCE:
        raise _Refused(f"the declared mass function sums to {total:.6g}, not 1, so it is not a probability "
                       "distribution at these parameters")
    cumulative = np.cumsum(np.exp(logmass - scale))
    cumulative /= cumulative[-1]

    def generate(m):
        positions = np.searchsorted(cumulative, rng.random(m), side="right")
        return support[np.minimum(positions, len(support) - 1)]

    return generate


def _window(density, point, low):
    """A window of the support holding all but ``TAIL_MASS`` of the mass, and the log-mass on it.

    Returns
    -------
    support : ndarray of shape (n,)
        Consecutive integers (as floats).
    logmass : ndarray of shape (n,)
    """
    center = _discrete_mode(density, point, low)
    reach = {"left": 32.0, "right": 32.0}
    while True:
        first = center - reach["left"] if low is None else max(float(low), center - reach["left"])
        last = center + reach["right"]
        if last - first + 1 > MAX_DISCRETE or last > LARGEST_EXACT_INTEGER or first < -LARGEST_EXACT_INTEGER:
            raise _Refused(f"its tail mass cannot be bounded below {TAIL_MASS:g} within {MAX_DISCRETE} values "
                           f"of the support (from x = {first:.0f} to {last:.0f})")
        support = np.arange(first, last + 1.0)
        logmass = density(support, point)
        if np.any(np.isnan(logmass)):
            bad = support[int(np.argmax(np.isnan(logmass)))]
            raise _Refused(f"the log-mass is not a number at x = {bad:.0f}")
        total = scipy.special.logsumexp(logmass)
        middle = int(center - first)
        wider = []
        sides = {"right": (logmass[middle:], 1.0)}
        if low is None or first > low:
            sides["left"] = (logmass[middle::-1], -1.0)
        for side, (outward, step) in sides.items():
            edge = support[middle] + step * (len(outward) - 1)
            if not _tail_is_bounded(density, point, outward, edge, step, total, low):
                wider.append(side)
        if not wider:
            return support, logmass
        for side in wider:
            reach[side] *= 2.0


def _tail_is_bounded(density, point, outward, edge, step, total, low):
    """Whether the mass beyond ``edge`` (going by ``step``) is at most ``TAIL_MASS * exp(total)``.

    Parameters
    ----------
    density : _LogDensity
    point : ndarray of shape (n_params,)
    outward : ndarray of shape (m,)
        The log-mass from the window's centre out to ``edge``.
    edge : float
        The window's last support point on this side.
    step : float
        +1 for the right side, -1 for the left.
    total : float
        The log of the mass inside the window.
    low : int or None
        The support's lowest value.

    Notes
    -----
    The mass must be non-increasing over the window's outer quarter and at the
    points ``x_j = edge + step * 2**j`` out to 2**53; taking it to be
    non-increasing between them too, the tail is at most the staircase
    ``sum_j |x_(j+1) - x_j| p(x_j)``, plus ``|x_J| p(x_J)`` for the rest beyond
    the last point (where integers stop being floats). This holds for any tail
    that falls monotonically, whatever its shape, and bounds a geometric tail
    within a factor of about two; a power law with a heavy tail does not pass.
    """
    stretch = outward[-max(8, len(outward) // 4):]
    far = edge + step * 2.0 ** np.arange(0, 54)
    far = far[(np.abs(far) <= LARGEST_EXACT_INTEGER) & (far >= (-np.inf if low is None else low))]
    here = density(far, point)
    if stretch[-1] == -np.inf:
        # A support that ends (a hard upper bound): nothing further on may carry mass.
        if np.all(here == -np.inf):
            return True
        raise _Refused(f"the mass function vanishes at x = {edge:.0f} but not at every point beyond it")
    if not np.all(np.isfinite(stretch)) or np.any(np.isnan(here)):
        return False
    path = np.concatenate([stretch, here])
    finite = np.isfinite(path)
    # Only a rise larger than rounding counts; a mass that is zero (-inf) must stay zero.
    rises = np.diff(path[finite]) > 1e-9 * (1.0 + np.abs(path[finite][1:]))
    first_zero = len(finite) if np.all(finite) else int(np.argmin(finite))
    if np.any(rises) or np.any(finite[first_zero:]):
        return False
    if len(far) == 0:
        return True
    widths = np.abs(np.diff(np.append(far, 2.0 * far[-1])))
    with np.errstate(divide="ignore"):
        bound = scipy.special.logsumexp(here + np.log(widths))
    return bool(bound <= math.log(TAIL_MASS) + total)


def _discrete_mode(density, point, low):
    """An integer of the support near the mass function's mode (a starting centre for the window)."""
    steps = np.unique(np.concatenate([np.arange(64.0), np.round(2.0 ** np.arange(6.0, 53.0, 0.25))]))
    if low is None:
        candidates = np.concatenate([-steps[::-1], steps])
    else:
        candidates = low + steps
    values = density(candidates, point)
    if np.any(values == np.inf):
        bad = candidates[int(np.argmax(values == np.inf))]
        raise _Refused(f"the log-mass is +inf at x = {bad:.0f}")
    finite = np.where(np.isnan(values), -np.inf, values)
    if not np.any(np.isfinite(finite)):
        raise _Refused("the mass function is zero (or not a number) everywhere on the support")
    best = int(np.argmax(finite))
    left, right = candidates[max(best - 1, 0)], candidates[min(best + 1, len(candidates) - 1)]
    if right - left <= 2:
        return float(candidates[best])

    def negative(x):
        value = float(density(np.asarray(x), point))
        return math.inf if math.isnan(value) else -value

    # The log-mass of most declared families extends to real x (lgamma, powers), which lets a
    # bounded scalar search find the mode between grid points; only integers are kept.
    refined = scipy.optimize.minimize_scalar(negative, bounds=(left, right), method="bounded")
    options = np.array([candidates[best], math.floor(refined.x), math.ceil(refined.x)])
    options = options[(options >= left) & (options <= right)]
    scores = np.where(np.isnan(density(options, point)), -np.inf, density(options, point))
    return float(options[int(np.argmax(scores))])
