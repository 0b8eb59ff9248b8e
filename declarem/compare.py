"""Derived versus hand-coded: run a reference update beside the derived one and measure the gap.

A reference is a Python function ``step(data, params) -> params``: ``data`` maps
column names to arrays, ``params`` has the nested form of ``fit.params``, and it
returns the parameters after one EM iteration. Both updates start from the same
parameters and run their own trajectories; after every iteration each parameter's
largest absolute and relative difference is recorded, with both objectives.
"""

import importlib.util
from dataclasses import dataclass, field

import numpy as np

from .data import missing_parents_as_latent, check_regular_file, node_data, sequence_lengths
from .em import initial_params, mstep
from .errors import OptionError, ReferenceUpdateError
from .inference import engine_for, prepare_rows
from .params import check_init, seed_sequence


@dataclass
class Comparison:
    """The outcome of ``compare``.

    Attributes
    ----------
    names : list of str
        Parameter names, ``node.param`` or a free parameter's name.
    absolute, relative : ndarray of shape (iterations, n_parameters)
        Largest absolute and relative difference per iteration and parameter.
    derived_objective, reference_objective : ndarray of shape (iterations + 1,)
        The objective (log-likelihood plus log prior) along each trajectory, from the start.
    rtol, atol : float
    """

    names: list
    absolute: np.ndarray
    relative: np.ndarray
    derived_objective: np.ndarray
    reference_objective: np.ndarray
    rtol: float
    atol: float
    within: np.ndarray = field(default=None)

    @property
    def agree(self):
        return bool(self.within.all())

    @property
    def reference_fell(self):
        """Iterations (1-based) at which the reference's objective fell, beyond rounding."""
        steps = np.diff(self.reference_objective)
        scale = 1e-10 * np.maximum(np.abs(self.reference_objective[1:]), 1.0)
        return [i + 1 for i in np.flatnonzero(steps < -scale)]

    def table(self):
        """The per-parameter table, as text lines."""
        lines = []
        width = max(len(n) for n in self.names)
        lines.append(f"{'parameter':<{width}}  iter  max abs diff  max rel diff  agree")
        for j, name in enumerate(self.names):
            for i in range(self.absolute.shape[0]):
                mark = "yes" if self.within[i, j] else "NO"
                lines.append(f"{name if i == 0 else '':<{width}}  {i + 1:4d}  {self.absolute[i, j]:12.3e}  "
                             f"{self.relative[i, j]:12.3e}  {mark}")
        lines.append("")
        lines.append(f"{'iter':>4}  {'derived objective':>22}  {'reference objective':>22}")
        for i, (a, b) in enumerate(zip(self.derived_objective, self.reference_objective)):
            lines.append(f"{i:4d}  {a:22.12f}  {b:22.12f}")
        fell = self.reference_fell
        lines.append("")
        lines.append("the reference's objective never fell" if not fell else
                     f"the reference's objective FELL at iteration(s) {', '.join(map(str, fell))}")
        lines.append(f"{'agree' if self.agree else 'DISAGREE'} within rtol {self.rtol:g}, atol {self.atol:g}")
        return lines


def load_reference(text):
    """Load ``FILE.py[:FUNCTION]`` (default function ``step``) and return the function."""
    path, _, function = text.partition(":")
    function = function or "step"
    check_regular_file(path, "reference file", OptionError)
    spec = importlib.util.spec_from_file_location(f"declarem_reference_{abs(hash(path))}", path)
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except Exception as exc:  # the user's file: any failure is reported as theirs
        raise ReferenceUpdateError(f"{path}: importing the reference failed: {type(exc).__name__}: {exc}") from None
    if not callable(getattr(module, function, None)):
        raise ReferenceUpdateError(f"{path}: no function '{function}' in the reference")
    return getattr(module, function)


def _flatten(compiled, external):
    values = {}
    for name, factor in compiled.factors.items():
        if getattr(factor, "expressed", False):
            continue
        for param in factor.params:
            values[f"{name}.{param}"] = np.asarray(external[name][param], dtype=float)
    for name in compiled.free_names:
        values[name] = np.asarray(external[name], dtype=float)
    return values


def compare(model, data, reference, init=None, iterations=10, reg_covar=0.0, seed=0, weights=None,
            rtol=1e-8, atol=1e-10, source="data", lengths=None):
    """Run the derived update and a reference update side by side from the same start.

    Parameters
    ----------
    model : Model
    data : mapping of str to array
        Passed to the reference as it is.
    reference : callable
        ``step(data, params) -> params``; for a chain over several sequences,
        ``step(data, params, lengths=[...]) -> params``.
    init : mapping, optional
        The start; anything not given comes from the seeded default initialisation.
    iterations : int
    reg_covar : float
        0 by default: the exact derived update is held against the reference.
    rtol, atol : float
        A difference is within tolerance when abs diff <= atol + rtol * |derived value|.
    lengths : list of int, optional
        Rows per sequence of a model with a chain, as for ``fit``; by default the spec's
        ``[data] sequence`` column, else one sequence.

    Returns
    -------
    Comparison
    """
    if isinstance(iterations, bool) or not isinstance(iterations, (int, np.integer)) or iterations < 1:
        raise OptionError(f"iterations must be a positive integer, found {iterations!r}")
    compiled = model.compiled
    if weights is None:
        weights = model.data_info.get("weights")
    checked = node_data(model, data, weights, source=source)
    lengths = sequence_lengths(model, data, lengths, checked.n_rows, source)
    fitted_model, checked = missing_parents_as_latent(model, checked)
    compiled = fitted_model.compiled
    rows = prepare_rows(compiled, checked)
    engine = engine_for(compiled, rows, lengths)
    sequences = {} if lengths is None or len(lengths) == 1 else {"lengths": list(lengths)}
    given = check_init(compiled, init)
    start = initial_params(engine, np.random.default_rng(seed_sequence(seed).spawn(1)[0]),
                           given, reg_covar)
    start_external = compiled.to_external(start, rows.shifts)

    def objective(internal):
        return engine.expected_statistics(internal)[1] + compiled.log_prior(internal)

    derived = start
    reference_external = start_external
    names = list(_flatten(compiled, start_external))
    absolute = np.zeros((iterations, len(names)))
    relative = np.zeros((iterations, len(names)))
    within = np.zeros((iterations, len(names)), dtype=bool)
    derived_objective = [objective(start)]
    reference_objective = [derived_objective[0]]
    for i in range(iterations):
        stats, _ = engine.expected_statistics(derived)
        derived = mstep(compiled, stats, derived, reg_covar)
        derived_objective.append(objective(derived))
        try:
            returned = reference({k: np.asarray(v) for k, v in data.items()}, _copy(reference_external), **sequences)
        except Exception as exc:  # the user's code: any failure is reported as theirs
            raise ReferenceUpdateError(f"the reference raised {type(exc).__name__} at iteration {i + 1}: {exc}") from None
        reference_external = _complete(compiled, returned, i + 1)
        reference_internal = compiled.to_internal(reference_external, rows.shifts)
        reference_objective.append(objective(reference_internal))
        ours = _flatten(compiled, compiled.to_external(derived, rows.shifts))
        theirs = _flatten(compiled, reference_external)
        for j, name in enumerate(names):
            gap = np.abs(ours[name] - theirs[name])
            absolute[i, j] = float(np.max(gap)) if gap.size else 0.0
            scale = np.abs(ours[name])
            with np.errstate(divide="ignore", invalid="ignore"):
                ratio = np.where(scale > 0, gap / scale, np.where(gap > 0, np.inf, 0.0))
            relative[i, j] = float(np.max(ratio)) if ratio.size else 0.0
            within[i, j] = bool(np.all(gap <= atol + rtol * scale))
    return Comparison(names=names, absolute=absolute, relative=relative,
                      derived_objective=np.array(derived_objective),
                      reference_objective=np.array(reference_objective), rtol=rtol, atol=atol, within=within)


def _copy(external):
    return {k: ({p: np.array(v, dtype=float) for p, v in value.items()} if isinstance(value, dict) else float(value))
            for k, value in external.items()}


def _complete(compiled, returned, iteration):
    """Check what the reference returned: every parameter, with the contract's shapes."""
    where = f"the reference's parameters after iteration {iteration}"
    if not hasattr(returned, "items"):
        raise ReferenceUpdateError(f"{where}: expected a mapping like fit.params, found {type(returned).__name__}")
    given, free = check_init(compiled, {k: v for k, v in returned.items()
                                        if not (k in compiled.factors and
                                                getattr(compiled.factors[k], "expressed", False))},
                             where=where)
    pairs, free_names = compiled.required()
    missing = [f"{node}.{p}" for node, p in pairs if p not in given.get(node, {})]
    missing += [n for n in free_names if n not in free]
    if missing:
        raise ReferenceUpdateError(f"{where}: missing {', '.join(missing)}")
    return {**given, **free}
