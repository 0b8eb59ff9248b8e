"""Parameters as users give them and as the EM loop moves them: validation and flattening.

One home for checking a user's ``init`` (or a saved fit's parameters) against a
compiled model, used by the EM loop, sampling and SQUAREM alike.
"""

import numbers

import numpy as np

from .errors import InitError, OptionError
from .tables import shown, type_name


def as_float_array(value, label, where):
    """A user-given parameter value as a float array, refusing what only looks numeric.

    Strings ("0.5"), booleans, ragged lists and integers beyond the float range are
    refused, not converted: numpy would read "0.5" as 0.5 and True as 1.

    Parameters
    ----------
    value : array-like
    label : str
        The parameter, for messages (``"x.mean"``).
    where : str
        Where the value came from (``"init"``, a file).

    Returns
    -------
    ndarray of float
    """
    bad = _first_non_number(value)
    if bad is not None:
        found = f"{bad.dtype.name} values" if isinstance(bad, np.ndarray) else f"{type_name(bad)} {shown(bad, 40)}"
        raise InitError(f"{where}: '{label}' is not numeric: found {found} where a number belongs")
    try:
        raw = np.asarray(value)
    except (ValueError, TypeError, OverflowError):
        raise InitError(f"{where}: '{label}' is not numeric: not a number or a regular array of numbers") from None
    try:
        array = raw.astype(float)
    except (ValueError, TypeError, OverflowError):
        raise InitError(f"{where}: '{label}' is not numeric: a number too large for a float") from None
    return array


def _first_non_number(value):
    """The first entry of (nested lists of) a parameter value that is not a real number, or None.

    numpy would read the string "0.5" as 0.5 and ``true`` as 1; in a parameter that is
    a mistake. The walk keeps its own stack, so any depth of nesting is safe.
    """
    pending = [value]
    while pending:
        item = pending.pop()
        if isinstance(item, (list, tuple)):
            pending.extend(item)
        elif isinstance(item, np.ndarray):
            if item.dtype.kind == "O":
                pending.extend(item.ravel().tolist())
            elif item.dtype.kind not in "iuf":
                return item
        elif isinstance(item, (bool, np.bool_)) or not isinstance(item, numbers.Real):
            return item
    return None


def parameters_of(value):
    """Parameters as given: a mapping, or a Fit (its fitted parameters), wherever parameters are taken."""
    from .fit import Fit
    return value.params if isinstance(value, Fit) else value


def seed_sequence(seed, what="seed"):
    """A ``numpy.random.SeedSequence`` from a seed: None (fresh entropy), an integer >= 0, or a Generator.

    A Generator gives one draw, so a caller's stream advances as it does for scikit-learn's
    ``random_state``.
    """
    if seed is None:
        return np.random.SeedSequence()
    if isinstance(seed, np.random.Generator):
        return np.random.SeedSequence(int(seed.integers(2 ** 63)))
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise OptionError(f"{what} must be None, an integer >= 0 or a numpy Generator, found {seed!r}")
    return np.random.SeedSequence(int(seed))


def check_init(compiled, init, where="init", closed=False):
    """Validate a user ``init`` mapping (or parameters read from a fit).

    Parameters
    ----------
    compiled : CompiledModel
    init : mapping or None
        ``{node: {param: array}}`` with free parameters at the top level.
    where : str
        Where the parameters came from, for messages.
    closed : bool
        Accept the boundary of each domain (p = 0 or 1, a rate of 0): a fit may end
        there, but EM started there could never leave it.

    Returns
    -------
    nodes : dict
        ``{node: {param: array}}`` in the user's shapes.
    free : dict
        ``{free parameter: float}``.
    """
    if init is None:
        return {}, {}
    init = parameters_of(init)
    if not hasattr(init, "items"):
        raise InitError(f"{where}: expected a mapping of node to parameters, found {type(init).__name__}")
    checked, free, implied = {}, {}, {}
    for node, params in init.items():
        if node in compiled.free_names:
            free[node] = params
            continue
        if getattr(compiled.factors.get(node), "expressed", False):
            implied[node] = params
            continue
        if node not in compiled.factors:
            known = list(compiled.factors) + compiled.free_names
            raise InitError(f"{where}: '{node}' is not a node or free parameter of the model; known: "
                            f"{', '.join(known)}")
        if not hasattr(params, "items"):
            raise InitError(f"{where}: '{node}' must map parameter names to arrays")
        factor = compiled.factors[node]
        checked[node] = {name: factor.check_param(name, value, where, closed)
                         for name, value in params.items()}
    if free:
        free = compiled.block.check(free, where, closed)
    _check_implied(compiled, implied, free, where)
    return checked, free


def _check_implied(compiled, implied, free, where):
    """Probabilities written in free parameters may be given (a saved fit has them) if they agree."""
    if not implied:
        return
    if compiled.free_names and set(compiled.free_names) - set(free):
        node = next(iter(implied))
        raise InitError(f"{where}: the probs of node '{node}' are expressions in free parameters; "
                        "give those parameters (top-level entries of init) instead")
    computed = compiled.block.probs(free)
    for node, params in implied.items():
        if not hasattr(params, "keys"):
            raise InitError(f"{where}: node '{node}' must map to its parameters ({{\"probs\": [...]}}), found "
                            f"{type_name(params)}")
        given = as_float_array(params.get("probs"), f"{node}.probs", where)
        if set(params) - {"probs"} or given.shape != computed[node][0].shape or \
                not np.allclose(given, computed[node][0], rtol=1e-9, atol=1e-12):
            raise InitError(f"{where}: the probs of node '{node}' disagree with the free parameters given; "
                            "give only the free parameters")


def params_vector(params):
    """``flatten_params(params)[0]``, the parameters as one vector of shape (n_values,), without building the
    rebuilder (the convergence monitor takes one at every iteration)."""
    pieces = []
    for value in params.values():
        if isinstance(value, dict):
            pieces.extend(np.ravel(array) for array in value.values())
        else:
            pieces.append(np.ravel(value))
    return np.concatenate(pieces).astype(float, copy=False) if pieces else np.zeros(0)


def flatten_params(params):
    """Internal parameters as one float vector, and a function that rebuilds them.

    Parameters
    ----------
    params : dict
        ``{node: {param: array}}`` with free parameters as top-level scalars.

    Returns
    -------
    vector : ndarray of shape (n_values,)
    rebuild : callable
        ``rebuild(vector)`` returns parameters of the same structure.
    """
    layout = []
    for name, value in params.items():
        if isinstance(value, dict):
            if not value:
                layout.append((name, {}, None))  # a factor without parameters (deterministic)
            for param, array in value.items():
                layout.append((name, param, np.shape(array)))
        else:
            layout.append((name, None, ()))
    vector = params_vector(params)

    def rebuild(flat):
        out, position = {}, 0
        for name, param, shape in layout:
            if shape is None:
                out[name] = {}
                continue
            size = int(np.prod(shape, dtype=int))
            chunk = flat[position:position + size].reshape(shape)
            position += size
            if param is None:
                out[name] = np.asarray(chunk.reshape(()))
            else:
                out.setdefault(name, {})[param] = chunk.copy()
        return out

    return vector, rebuild
