"""Fit: the result of EM, its diagnostics, and an exact JSON round trip."""

import contextlib
import json
import math
import numbers
import os
import stat
import tempfile

import numpy as np

from .errors import DataError, OptionError


class Fit:
    """A fitted model.

    Attributes
    ----------
    model : Model
    params : dict
        ``{node: {param: ndarray}}``, shapes as the contract gives them; free
        parameters from ``[params]`` at the top level as floats.
    loglik : float
        Observed-data log-likelihood at ``params`` (weighted sum over rows).
    history : list of float
        The EM objective at the parameters after 0, 1, ..., n_iter iterations;
        non-decreasing. ``history[-1]`` is the objective at ``params``.
    converged : bool
    n_iter : int
        Number of EM iterations (M-steps) run.
    n_observations : float
        Total row weight (the number of rows when unweighted), used by BIC.
    hard : bool
        Whether classification EM produced it (then history holds the
        complete-data objective at the chosen configurations).
    log_prior : float
        The log prior density at ``params`` (0 without priors); the objective
        in ``history`` is ``loglik + log_prior`` under MAP-EM.
    n_missing : int
        Missing cells of the observed nodes in the data fitted (integrated out).
    n_missing_rows : int
        Rows of that data with at least one missing observed value.
    """

    def __init__(self, model, params, loglik, history, converged, n_iter, n_observations, hard=False,
                 log_prior=0.0, n_missing=0, n_missing_rows=0):
        self.n_missing = int(n_missing)
        self.n_missing_rows = int(n_missing_rows)
        self.model = model
        self.params = params
        self.loglik = loglik
        self.history = list(history)
        self.converged = bool(converged)
        self.n_iter = int(n_iter)
        self.n_observations = float(n_observations)
        self.hard = bool(hard)
        self.log_prior = float(log_prior)
        # Where an online fit left off (``online.OnlineState``), for ``partial_fit``; None otherwise.
        self.online_state = None
        # For a fit of dask data: the largest peak resident memory (bytes) of a process that ran its E-steps.
        self.peak_memory = None

    @property
    def n_parameters(self):
        """Number of free parameters (probability rows count k - 1, symmetric matrices d(d+1)/2)."""
        return self.model.compiled.n_free()

    def bic(self):
        """Bayesian information criterion, -2 loglik + n_parameters log(n); lower is better."""
        return -2.0 * self.loglik + self.n_parameters * math.log(self.n_observations)

    def aic(self):
        """Akaike information criterion, -2 loglik + 2 n_parameters; lower is better."""
        return -2.0 * self.loglik + 2.0 * self.n_parameters

    def _engine(self, data, weights, lengths=None):
        """The E-step engine over ``data``, and the fitted parameters in its internal form."""
        from .data import missing_parents_as_latent, node_data, sequence_lengths
        from .distributed import is_dask_data
        if is_dask_data(data):
            from .errors import OptionError
            raise OptionError("posteriors and decoded paths are computed for data in memory: give a partition "
                              "or a computed DataFrame (per partition: data.map_partitions(lambda part: "
                              "pandas.DataFrame(fit.posterior(part)['z'])) for a latent node z)")
        from .inference import engine_for, prepare_rows
        checked = node_data(self.model, data, weights)
        lengths = sequence_lengths(self.model, data, lengths, checked.n_rows)
        model, checked = missing_parents_as_latent(self.model, checked)
        compiled = model.compiled
        rows = prepare_rows(compiled, checked)
        return engine_for(compiled, rows, lengths), compiled.to_internal(self.params, rows.shifts)

    def partial_fit(self, data, weights=None):
        """One step of online EM on a new batch of rows; returns a new Fit (this one is unchanged).

        Continues an online fit (``model.fit(..., method="online")``) from its running
        statistics: the batch's expected statistics at these parameters enter with weight
        ``(t + 1) ** -step`` (the t-th batch taken, t = 1, 2, ...), scaled as if it were a data set
        of this fit's size, and the M-step follows (``declarem.online``).

        Parameters
        ----------
        data : mapping or DataFrame
            The batch, in the columns of a fit.
        weights : array-like or str, optional

        Returns
        -------
        Fit
            Its ``loglik`` and ``n_observations`` are the batch's, at the new parameters;
            ``history`` is this fit's with the batch's objective appended; ``n_iter`` counts
            the step.
        """
        from .data import node_data
        from .em import mstep
        from .errors import OptionError
        from .inference import engine_for, prepare_rows
        from .online import partial_step
        state = self.online_state
        if state is None:
            raise OptionError("partial_fit continues an online fit, which carries its running statistics: fit with "
                              "method='online' (a fit by batch EM, or loaded from a file, carries none; start "
                              "one with model.fit(batch, method='online', init=fit))")
        compiled = self.model.compiled
        checked = node_data(self.model, data, weights)
        engine = engine_for(compiled, prepare_rows(compiled, checked, shifts=state.shifts))
        params, new_state = partial_step(state, engine, compiled.to_internal(self.params, state.shifts), self.hard,
                                         mstep)
        _, loglik = engine.expected_statistics(params)
        log_prior = compiled.log_prior(params)
        fit = Fit(model=self.model, params=compiled.to_external(params, state.shifts), loglik=float(loglik),
                  history=self.history + [float(loglik + log_prior)], converged=False, n_iter=self.n_iter + 1,
                  n_observations=engine.n_observations, hard=self.hard, log_prior=log_prior,
                  n_missing=checked.n_missing, n_missing_rows=checked.n_missing_rows)
        fit.online_state = new_state
        return fit

    def posterior(self, data, weights=None, lengths=None):
        """Posterior marginals of the latent nodes for each row of ``data`` (for a chain, per step).

        Returns
        -------
        dict of str to ndarray of shape (n_rows, k)
        """
        engine, params = self._engine(data, weights, lengths)
        marginals, _ = engine.posterior_marginals(params)
        return marginals

    def decode(self, data, lengths=None):
        """The most probable configuration of the latent nodes, read off per node.

        For a chain, the most probable joint path of each sequence (Viterbi), over all
        latent nodes of a step together; otherwise each row's most probable joint
        configuration.

        Parameters
        ----------
        data : mapping, DataFrame or path
        lengths : sequence of int, optional
            Rows per sequence, for a model with a chain.

        Returns
        -------
        dict of str to ndarray of int, shape (n_rows,)
        """
        engine, params = self._engine(data, None, lengths)
        return engine.most_probable(params)

    def row_loglik(self, data):
        """Each row's observed-data log-likelihood at the fitted parameters, base measures included.

        Returns
        -------
        ndarray of shape (n_rows,)
            Summed with row weights, ``score``. Missing values are integrated out.

        Raises
        ------
        OptionError
            For a model with a chain: its likelihood belongs to whole sequences, not rows.
        """
        if self.model.chain is not None:
            raise OptionError("row_loglik: a chain's likelihood belongs to whole sequences, not rows; "
                              "use score(data, lengths=...)")
        engine, params = self._engine(data, None)
        _, per_row = engine.posterior_marginals(params)
        per_row = np.array(per_row, dtype=float)
        for name, factor in engine.compiled.factors.items():
            view = engine.rows.factors[name]
            if view.values is not None:
                per_row += factor.base(view.values, view.missing)
        return per_row

    def score(self, data, weights=None, lengths=None):
        """Observed-data log-likelihood of ``data`` at the fitted parameters (weighted sum)."""
        engine, params = self._engine(data, weights, lengths)
        return float(engine.expected_statistics(params)[1])

    def sample(self, n_rows, seed=0, lengths=None):
        """Draw rows from the fitted model: ``model.sample(n_rows, fit.params, ...)``.

        Returns
        -------
        dict of str to ndarray
            One column per data column, latent nodes included.
        """
        return self.model.sample(n_rows, self.params, seed=seed, lengths=lengths)

    def top(self, node, n=10, labels=None):
        """The most probable categories of a categorical node, for each value of its parents.

        For the topic model, ``top("word")`` gives the top words of each topic and
        ``top("topic")`` the main topics of each document.

        Parameters
        ----------
        node : str
            A categorical node.
        n : int
            How many categories per parameter set.
        labels : sequence of str, optional
            A name per category (a vocabulary); default: the category numbers.

        Returns
        -------
        list of list of (label, probability)
            One list per parameter set, in the order of the flattened parent values
            (a single list when the node has no parents).
        """
        if isinstance(n, bool) or not isinstance(n, numbers.Integral) or n < 1:
            raise OptionError(f"n must be a positive integer, found {n!r}")
        if not isinstance(node, str) or not isinstance(self.params.get(node), dict) \
                or "probs" not in self.params[node]:
            raise DataError(f"'{node}' is not a categorical node of the model")
        probs = np.asarray(self.params[node]["probs"])
        k = probs.shape[-1]
        if labels is not None and len(labels) != k:
            raise DataError(f"{len(labels)} labels given for node '{node}' with {k} categories")
        names = list(labels) if labels is not None else list(range(k))
        rows = probs.reshape(-1, k)
        order = np.argsort(-rows, axis=1, kind="stable")[:, :n]
        listed = [[(names[j], float(row[j])) for j in top] for row, top in zip(rows, order)]
        return listed[0] if probs.ndim == 1 else listed

    def plot(self, kind=None, data=None, lengths=None, ax=None, node=None, labels=None, columns=None):
        """Draw the fit (needs matplotlib: ``pip install 'declarem[plot]'``).

        Parameters
        ----------
        kind : {None, "graph", "objective", "density", "scatter", "categories", "path"}
            One kind of panel; None draws an overview of every panel that applies to the model.
        data : mapping, DataFrame or path, optional
            The data drawn under densities, scatters and paths (those panels need it).
        lengths : sequence of int, optional
            Rows per sequence, for a model with a chain.
        ax : matplotlib.axes.Axes, optional
            Draw one panel (a ``kind``, and a ``node`` where several apply) into these axes.
        node : str, optional
            Only this node's panels.
        labels : mapping of str to sequence of str, optional
            Category names per categorical node, e.g. ``{"word": vocabulary}``.
        columns : pair of str, optional
            The two columns of a vector normal node a scatter draws (default its first two).

        Returns
        -------
        matplotlib.figure.Figure
            Made without pyplot; save it with ``savefig`` or show it in a notebook.
        """
        from .plot import plot_fit
        return plot_fit(self, kind=kind, data=data, lengths=lengths, ax=ax, node=node, labels=labels,
                        columns=columns)

    def to_dict(self):
        """The result as plain JSON types: loglik, n_iter, converged, history, params, model."""
        return {
            "loglik": self.loglik,
            "n_iter": self.n_iter,
            "converged": self.converged,
            "history": list(self.history),
            "n_observations": self.n_observations,
            "hard": self.hard,
            "log_prior": self.log_prior,
            "n_missing": self.n_missing,
            "n_missing_rows": self.n_missing_rows,
            "bic": self.bic(),
            "aic": self.aic(),
            "params": {node: {name: np.asarray(value).tolist() for name, value in params.items()}
                       if isinstance(params, dict) else float(params)
                       for node, params in self.params.items()},
            "model": self.model.to_spec(),
        }

    def save(self, path):
        """Write the fit as JSON; floats are written exactly (shortest round-trip repr).

        The file is replaced atomically: a failure leaves what was at ``path`` before.

        Raises
        ------
        OptionError
            Naming ``path`` when it cannot be written (missing directory, a
            directory, permission denied, disk full).
        """
        text = json.dumps(self.to_dict(), indent=1, allow_nan=True)
        with atomic_output(path) as handle:
            handle.write(text)

    @classmethod
    def load(cls, path, model=None):
        """Read a fit written by ``save``, and check every value in it against the model.

        Parameters
        ----------
        path : str or os.PathLike
        model : Model, optional
            Default: the model rebuilt from the declaration stored in the fit.

        Raises
        ------
        DeclaremError
            Naming the file, for a file that is not a fit, or one whose parameters
            are missing, of the wrong shape, outside their domains or not finite,
            or whose loglik, history and counts are not numbers of the right kind.
        """
        from .spec import model_from_spec
        path = os.fspath(path)
        stored = read_json(path, "fit file", DataError)
        if not isinstance(stored, dict):
            raise DataError(f"{path}: expected a JSON object (a fit written by `declarem fit --out`), found "
                            f"{_json_type(stored)}")
        missing = [key for key in FIT_KEYS if key not in stored]
        if missing:
            raise DataError(f"{path}: not a fit: no {', '.join(repr(k) for k in missing)}; write fits with "
                            "`declarem fit --out` or Fit.save")
        if model is None:
            if "model" not in stored:
                raise DataError(f"{path}: the fit stores no model declaration; pass the model "
                                "(Fit.load(path, model=...))")
            model = model_from_spec(stored["model"], source=path)
        params = checked_params(model, stored["params"], path, complete=True)
        history = stored["history"]
        if not isinstance(history, list) or not history:
            raise DataError(f"{path}: 'history' must be a non-empty list of numbers, found {_json_type(history)}")
        history = [_finite(value, f"history[{i}]", path) for i, value in enumerate(history)]
        n_iter = stored["n_iter"]
        if isinstance(n_iter, bool) or not isinstance(n_iter, int) or n_iter < 0:
            raise DataError(f"{path}: 'n_iter' must be an integer >= 0, found {_json_type(n_iter)} {n_iter!r:.40}")
        for key in ("converged", "hard"):
            if not isinstance(stored.get(key, False), bool):
                raise DataError(f"{path}: '{key}' must be true or false, found {_json_type(stored[key])}")
        n_observations = _finite(stored["n_observations"], "n_observations", path)
        if n_observations <= 0:
            raise DataError(f"{path}: 'n_observations' must be positive, found {n_observations!r}")
        for key in ("n_missing", "n_missing_rows"):
            value = stored.get(key, 0)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise DataError(f"{path}: '{key}' must be an integer >= 0, found {_json_type(value)} {value!r:.40}")
        for key in ("bic", "aic"):
            # Recomputed from loglik on use; a stored value must still be a number.
            if key in stored:
                _finite(stored[key], key, path)
        return cls(model=model, params=params, loglik=_finite(stored["loglik"], "loglik", path), history=history,
                   converged=stored["converged"], n_iter=n_iter, n_observations=n_observations,
                   hard=stored.get("hard", False), log_prior=_finite(stored.get("log_prior", 0.0), "log_prior", path),
                   n_missing=stored.get("n_missing", 0), n_missing_rows=stored.get("n_missing_rows", 0))

    def _repr_html_(self):
        from .notebook import fit_html
        return fit_html(self)

    def __repr__(self):
        return (f"Fit(model={self.model.name!r}, loglik={self.loglik:.6g}, n_iter={self.n_iter}, "
                f"converged={self.converged})")


# Integers in a JSON input beyond this do not fit a 64-bit float (numpy would raise OverflowError).
MAX_FLOAT_INT = int(np.finfo(float).max)
# Entries every fit file has; ``hard``, ``log_prior``, ``bic``, ``aic`` and ``model`` are optional.
FIT_KEYS = ("params", "loglik", "history", "n_iter", "converged", "n_observations")


def _json_type(value):
    """The JSON name of a parsed value's type, for messages."""
    names = {dict: "an object", list: "an array", str: "a string", bool: "true/false", int: "a number",
             float: "a number", type(None): "null"}
    return names.get(type(value), type(value).__name__)


def _finite(value, label, path):
    """A JSON number as a finite float, or DataError naming the entry."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        shown = repr(value) if isinstance(value, (int, float)) else _json_type(value)
        raise DataError(f"{path}: '{label}' must be a finite number, found {shown:.40}")
    return float(value)


def checked_params(model, params, path, complete=False):
    """Parameters read from a JSON file, validated against the model.

    Every entry is checked for its shape, domain and finiteness (``check_init``).

    Parameters
    ----------
    model : Model
    params : object
        Parsed JSON; must be ``{node: {param: nested list}}`` with free parameters
        as numbers at the top level.
    path : str
        The file, named in every message.
    complete : bool
        Require every parameter of the model (a fit, or parameters to sample from);
        such parameters may lie on the boundary of their domains (p = 0 or 1).

    Returns
    -------
    dict
        ``{node: {param: ndarray}}`` plus free parameters as floats; with
        ``complete``, also the probabilities of nodes written in free parameters.
    """
    from .params import check_init
    if not isinstance(params, dict):
        raise DataError(f"{path}: 'params' must be a JSON object of node -> parameter -> array, found "
                        f"{_json_type(params)}")
    compiled = model.compiled
    # A fit may end on the boundary of a domain (p = 1 when every row is a success): parameters
    # used as they are accept it; a starting point for EM, which could never leave it, does not.
    given, free = check_init(compiled, params, where=path, closed=complete)
    if not complete:
        return {**given, **free}
    pairs, free_names = compiled.required()
    missing = [f"{node}.{p}" for node, p in pairs if p not in given.get(node, {})]
    missing += [name for name in free_names if name not in free]
    if missing:
        raise DataError(f"{path}: parameters missing: {', '.join(missing)}; the model needs every parameter")
    checked = {**given, **free}
    if compiled.block:
        # Probabilities written in free parameters follow from them (check_init held any stored ones equal).
        external = compiled.to_external(compiled.to_internal(checked, {}), {})
        for name, factor in compiled.factors.items():
            if getattr(factor, "expressed", False):
                checked[name] = external[name]
    return {name: checked[name] for name in [*params, *checked] if name in checked}


def read_json(path, what, error):
    """Parse a JSON input file, naming the file in every error.

    Parameters
    ----------
    path : str
    what : str
        What the file should be ("fit file", "parameter file").
    error : type
        The DeclaremError subclass to raise.

    Returns
    -------
    object
        The parsed JSON; integers too large for a float are refused here, since
        every number in a parameter file becomes a float.
    """
    from .data import decode_text, read_input

    def parse_int(text):
        number = int(text)
        if abs(number) > MAX_FLOAT_INT:
            raise error(f"{path}: the number {text[:20]}... is too large for a 64-bit float")
        return number

    text = decode_text(read_input(path, what, error), path, what, error)
    try:
        return json.loads(text, parse_int=parse_int)
    except RecursionError:
        raise error(f"{path}: not a {what}: JSON nested too deeply") from None
    except ValueError as exc:
        # JSONDecodeError, and int() refusing a number with thousands of digits.
        raise error(f"{path}: not valid JSON: {exc}") from None


def check_output_path(path):
    """Refuse an output path that cannot be written, before any work is spent on the output.

    Parameters
    ----------
    path : str or os.PathLike

    Returns
    -------
    target : str
        The path to write (a symbolic link resolved to the file it names).
    special : bool
        True for an existing non-regular file (``/dev/null``, a FIFO), which is
        written in place: only a regular file can be replaced atomically.

    Raises
    ------
    OptionError
        Naming the path: a directory, a missing directory, no permission.
    """
    path = os.fspath(path)
    if "\0" in path:
        raise OptionError(f"{path!r}: a path cannot contain a NUL character")
    target = os.path.realpath(path)
    try:
        info = os.stat(target)
    except FileNotFoundError:
        info = None
    except OSError as exc:
        raise OptionError(f"{path}: cannot write: {exc.strerror or exc}") from None
    if info is not None and stat.S_ISDIR(info.st_mode):
        raise OptionError(f"{path}: is a directory; give the path of a file to write")
    if info is not None and not stat.S_ISREG(info.st_mode):
        if not os.access(target, os.W_OK):
            raise OptionError(f"{path}: cannot write: permission denied")
        return target, True
    directory = os.path.dirname(target)
    if not os.path.isdir(directory):
        raise OptionError(f"{path}: cannot write: directory {directory} does not exist; create it first")
    # Only creating a file tells for sure (read-only mounts, /proc, quotas): try it now, not after the work.
    try:
        descriptor, probe = tempfile.mkstemp(dir=directory, prefix=f".{os.path.basename(target)}.", suffix=".tmp")
    except OSError as exc:
        raise OptionError(f"{path}: cannot write: cannot create a file in {directory}: {exc.strerror or exc}") \
            from None
    os.close(descriptor)
    _remove(probe)
    return target, False


@contextlib.contextmanager
def atomic_output(path, newline=None, binary=False):
    """A text (or binary) handle whose content replaces ``path`` only once it is complete.

    The text goes to a temporary file in the same directory, which is flushed to
    disk and then renamed over ``path``; on any failure the temporary file is
    removed and whatever was at ``path`` before is left as it was.

    Parameters
    ----------
    path : str or os.PathLike
    newline : str, optional
        As for ``open`` (``""`` for the csv module).
    binary : bool
        Yield a handle for bytes (a picture) instead of UTF-8 text.

    Yields
    ------
    file object
        Open for writing text (UTF-8), or bytes.

    Raises
    ------
    OptionError
        Naming ``path`` when it cannot be written.
    """
    path = os.fspath(path)
    target, special = check_output_path(path)
    opened = {"mode": "wb"} if binary else {"mode": "w", "encoding": "utf-8", "newline": newline}
    if special:
        try:
            with open(target, **opened) as handle:
                yield handle
        except OSError as exc:
            raise OptionError(f"{path}: cannot write: {exc.strerror or exc}") from None
        return
    try:
        mode = stat.S_IMODE(os.stat(target).st_mode)
    except FileNotFoundError:
        mode = 0o666 & ~_umask()
    except OSError as exc:
        raise OptionError(f"{path}: cannot write: {exc.strerror or exc}") from None
    directory = os.path.dirname(target)
    try:
        descriptor, temporary = tempfile.mkstemp(dir=directory, prefix=f".{os.path.basename(target)}.",
                                                 suffix=".tmp")
    except OSError as exc:
        raise OptionError(f"{path}: cannot write: cannot create a file in {directory}: {exc.strerror or exc}") \
            from None
    try:
        with os.fdopen(descriptor, **opened) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
            os.fchmod(handle.fileno(), mode)
        os.replace(temporary, target)
    except OSError as exc:
        _remove(temporary)
        raise OptionError(f"{path}: cannot write: {exc.strerror or exc}") from None
    except BaseException:
        # Interrupted or failed while producing the content: leave no partial file behind.
        _remove(temporary)
        raise
    _sync_directory(directory)


def _remove(path):
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


def _sync_directory(directory):
    """Flush the rename to disk where the system allows fsync on a directory."""
    try:
        descriptor = os.open(directory, os.O_RDONLY)
    except OSError:
        # Not every system opens a directory for reading; the rename has happened regardless.
        return
    try:
        os.fsync(descriptor)
    except OSError:
        # Some file systems refuse fsync on a directory; the rename itself has happened.
        pass
    finally:
        os.close(descriptor)


def _umask():
    """The process's umask, read without changing it where /proc says it."""
    try:
        with open("/proc/self/status") as handle:
            for line in handle:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        # No /proc/self/status (not Linux, or a kernel before 4.7): ask the umask itself below.
        pass
    current = os.umask(0o022)
    os.umask(current)
    return current
