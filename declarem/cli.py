"""The command line: the only module that prints or exits.

Exit status: 0 success; 2 a user error (bad spec, data or option), reported in
one line that names the file, node or column; 1 anything else.
"""

import argparse
import contextlib
import csv
import json
import math
import os
import sys
import time
import warnings

import numpy as np

from .errors import DeclaremError, OptionError


class _Help(argparse.HelpFormatter):
    """Help that shows each option's default (where it has one and the help does not say it)."""

    def _get_help_string(self, action):
        text = action.help or ""
        if action.option_strings and action.default is not None and action.default is not False \
                and action.default != argparse.SUPPRESS and "default" not in text:
            text += " (default: %(default)s)"
        return text


class _Parser(argparse.ArgumentParser):
    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", _Help)
        super().__init__(*args, **kwargs)

    def error(self, message):
        raise OptionError(f"{self.prog}: {message}")


def _finite_float(text):
    """An argparse type: a float that is a number (argparse's ``float`` takes "nan" and "inf")."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid number: {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, found {text!r}")
    return value


# Where /proc/meminfo does not say how much memory is available, sampling assumes this many bytes.


def _parser():
    from . import __version__
    parser = _Parser(prog="declarem", description="EM derived from a declared model.")
    parser.add_argument("--version", action="version", version=f"declarem {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser, metavar="COMMAND")

    fit = commands.add_parser("fit", help="fit a model by EM: a summary on a terminal, else the result as JSON")
    fit.add_argument("spec", help="the model's TOML spec file")
    fit.add_argument("--data", help="CSV with a header row, or a sparse count matrix (.npz); or part files "
                                     "fitted with dask: a glob pattern ('parts/*.parquet'), a directory of "
                                     "Parquet files, a Parquet file (default: the spec's [data] path)")
    fit.add_argument("--scheduler", help="fit the data with dask: 'threads', 'processes' (a local cluster, "
                                         "started for the fit) or a dask scheduler's address (default: dask's "
                                         "default scheduler for part files; data in memory otherwise)")
    fit.add_argument("--out", help="write the JSON result here (default: a summary on standard output when it "
                                   "is a terminal, else the JSON)")
    fit.add_argument("--json", action="store_true", help="write the JSON result to standard output, even on a "
                                                         "terminal")
    fit.add_argument("--max-iter", type=int, help="EM iterations at most, per restart (default: the spec's "
                     "[fit] max_iter, else 1000)")
    fit.add_argument("--tol", type=_finite_float,
                     help="stop when the objective's relative change falls below this (default: the spec's "
                          "[fit] tol, else 1e-08)")
    fit.add_argument("--seed", type=int, default=0, help="seeds the initialisation")
    fit.add_argument("--restarts", type=int, help="seeded starts; the best fit is kept (default: the spec's "
                     "[fit] restarts, else 1)")
    fit.add_argument("--reg-covar", type=_finite_float,
                     help="added to the diagonal of normal covariances in the M-step (default: the spec's "
                          "[fit] reg_covar, else 1e-06)")
    fit.add_argument("--weights", help="data column of row weights (default: the spec's [data] weights)")
    fit.add_argument("--init", help="JSON file of initial parameters ({node: {param: list}}) or a fit")
    fit.add_argument("--hard", action="store_true", help="classification (hard) EM")
    fit.add_argument("--accelerate", choices=["squarem", "none"],
                     help="squarem extrapolates the EM map; none is plain EM (default: the spec's [fit] "
                          "accelerate, else plain EM)")
    fit.add_argument("--threads", type=int, help="threads the E-step runs its chunks of rows on, each with one "
                     "BLAS thread (default: $DECLAREM_THREADS, else the cores this process may use); the result "
                     "does not depend on it")
    fit.add_argument("--dtype", choices=["float64", "float32"],
                     help="of the stored sufficient statistics; float32 halves their memory and the E-step's "
                          "products' time, sums stay float64 (default float64)")
    progress = fit.add_mutually_exclusive_group()
    progress.add_argument("--quiet", action="store_true", help="no progress on standard error")
    progress.add_argument("--verbose", action="store_true", help="a progress line per iteration, also on a "
                                                                 "terminal (where one line updates in place)")

    derive = commands.add_parser("derive", help="show the derived E-step statistics and M-step updates")
    derive.add_argument("spec", help="the model's TOML spec file")
    derive.add_argument("--latex", action="store_true", help="print a LaTeX document instead of text")

    check = commands.add_parser("check", help="validate a spec (and its data) and compile its derivation")
    check.add_argument("spec", help="the model's TOML spec file")
    check.add_argument("--data", help="also check this data file against the model (default: the spec's [data] "
                                      "path, if any)")

    sample = commands.add_parser("sample", help="draw seeded synthetic data from a spec and parameters")
    sample.add_argument("spec", help="the model's TOML spec file")
    sample.add_argument("--params", required=True, help="JSON of parameters ({node: {param: list}}) or a fit")
    sample.add_argument("--n", type=int, required=True, help="number of rows")
    sample.add_argument("--seed", type=int, default=0, help="seeds the draws")
    sample.add_argument("--out", help="CSV path (default: standard output)")
    sample.add_argument("--observed-only", action="store_true", help="leave out latent columns")
    sample.add_argument("--lengths", help="for a model with a chain: rows per sequence, e.g. 100,50,50 "
                        "(default: one sequence of --n rows)")
    compare = commands.add_parser("compare", help="hold a hand-coded EM update against the derived one")
    compare.add_argument("spec", help="the model's TOML spec file")
    compare.add_argument("--reference", required=True, help="FILE.py[:FUNCTION], a function "
                         "step(data, params) -> params (default name: step)")
    compare.add_argument("--data", help="data file (default: the spec's [data] path)")
    compare.add_argument("--init", help="JSON of starting parameters (default: the seeded initialisation)")
    compare.add_argument("--iterations", type=int, default=10, help="EM iterations to hold the updates against")
    compare.add_argument("--rtol", type=_finite_float, default=1e-8, help="relative tolerance on each parameter")
    compare.add_argument("--atol", type=_finite_float, default=1e-10, help="absolute tolerance on each parameter")
    compare.add_argument("--reg-covar", type=_finite_float, default=0.0,
                         help="regulariser of the derived update (default 0: the exact update)")
    compare.add_argument("--seed", type=int, default=0, help="seeds the initialisation")
    compare.add_argument("--weights", help="data column of row weights (default: the spec's [data] weights)")

    decode = commands.add_parser("decode", help="most probable latent values of each row (Viterbi path for "
                                 "a chain), as CSV")
    decode.add_argument("spec", help="the model's TOML spec file")
    decode.add_argument("--fit", required=True, help="a fit written by `declarem fit --out`")
    decode.add_argument("--data", help="data file (default: the spec's [data] path)")
    decode.add_argument("--out", help="CSV path (default: standard output)")

    top = commands.add_parser("top", help="most probable categories of a categorical node, per parent value")
    top.add_argument("spec", help="the model's TOML spec file")
    top.add_argument("--fit", required=True, help="a fit written by `declarem fit --out`")
    top.add_argument("--node", help="categorical node (default: the first observed categorical child)")
    top.add_argument("--n", type=int, default=10, help="categories to list per parent value")
    top.add_argument("--labels", help="text file with one label per category (a vocabulary)")

    plot = commands.add_parser("plot", help="draw a fit: graph, objective, densities, scatters, categories, "
                               "decoded paths (needs matplotlib)")
    plot.add_argument("spec", help="the model's TOML spec file")
    plot.add_argument("--fit", required=True, help="a fit written by `declarem fit --out`")
    plot.add_argument("--data", help="data file drawn under densities, scatters and paths (default: the spec's "
                                     "[data] path, if any)")
    plot.add_argument("--out", required=True, help="picture to write; its suffix picks the format: .png, .svg or "
                                                   ".pdf")
    plot.add_argument("--kind", choices=["graph", "objective", "density", "scatter", "regression", "categories", "path"],
                      help="draw one kind of panel (default: an overview of every panel that applies)")
    plot.add_argument("--node", help="draw only this node's panels")
    plot.add_argument("--labels", action="append", metavar="NODE=FILE",
                      help="category names of a categorical node, one per line (a vocabulary); repeatable")
    plot.add_argument("--columns", help="for a scatter: two columns of a vector normal node, e.g. x_0,x_2 "
                                        "(default: its first two)")
    plot.add_argument("--lengths", help="for a model with a chain: rows per sequence, e.g. 100,50,50 (default: "
                                        "the spec's [data] sequence column, else one sequence)")
    return parser


def main(argv=None):
    """Run the command line; returns the exit status (the console script exits with it)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv:
        # A bare `declarem` lists the commands.
        _parser().print_help()
        return 0
    try:
        try:
            args = _parser().parse_args(argv)
        except SystemExit as done:
            # --help and --version print and stop here: a status, not an exit, for callers of main.
            return int(done.code or 0)
        return _COMMANDS[args.command](args)
    except DeclaremError as exc:
        print(f"declarem: error: {_one_line(str(exc))}", file=sys.stderr)
        return 2
    except MemoryError:
        # Estimates refuse what clearly cannot fit; this catches what slips past them.
        print("declarem: error: out of memory: the model or the data is too large for the memory "
              "available; reduce the nodes' 'k', the dimensions or the number of rows", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("declarem: interrupted", file=sys.stderr)
        return 1
    except BrokenPipeError:
        # The reader of standard output went away (as `| head` does): stop quietly.
        sys.stdout = open(os.devnull, "w")
        return 0


def _one_line(message):
    """The message on one line, with characters a terminal would act on shown as escapes.

    Messages quote file contents (column names, cells), which may hold control
    characters or line separators.
    """
    words = " ".join(message.split())
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in words)


def _load(spec):
    from .spec import load_model
    return load_model(spec)


def _data_source(model, path):
    from .spec import data_path
    source = path or data_path(model)
    if source is None:
        raise OptionError(f"{model.source}: no data: give --data PATH or a [data] path in the spec")
    return source


def _read_params(path, model, complete=False):
    """Parameters from a JSON file ({node: {param: list}}, or a fit), checked against the model.

    Parameters
    ----------
    path : str
    model : Model
    complete : bool
        Require every parameter (sampling); otherwise some may be left out (an init).
    """
    from .fit import checked_params, read_json
    stored = read_json(path, "parameter file", OptionError)
    if isinstance(stored, dict) and "params" in stored and isinstance(stored["params"], dict):
        stored = stored["params"]
    if not isinstance(stored, dict):
        raise OptionError(f"{path}: expected a JSON object of node -> parameter -> array")
    return checked_params(model, stored, path, complete=complete)


def _fit(args):
    from .data import read_model_data
    from .fit import check_output_path
    model = _load(args.spec)
    if args.out:
        # Refuse an unwritable --out before the fit, not after it.
        check_output_path(args.out)
    source = _data_source(model, args.data)
    from . import distributed
    if args.scheduler or distributed.is_parts_path(source):
        columns, spec_weights = distributed.read_parts(source), model.data_info.get("weights")
        where = distributed.scheduler(args.scheduler)
    else:
        columns, spec_weights = read_model_data(model, source)
        where = contextlib.nullcontext()
    weights = args.weights or spec_weights
    init = _read_params(args.init, model) if args.init else None
    progress = None if args.quiet else _Progress(sys.stderr, verbose=args.verbose)
    from .em import fit_model
    from .errors import ConvergenceWarning
    try:
        with where, warnings.catch_warnings():
            # The summary line below says "stopped at max-iter" itself.
            warnings.simplefilter("ignore", ConvergenceWarning)
            fit = fit_model(model, columns, weights=weights, init=init, max_iter=args.max_iter, tol=args.tol,
                            seed=args.seed, restarts=args.restarts, reg_covar=args.reg_covar, hard=args.hard,
                            progress=progress, source=source, accelerate=args.accelerate, threads=args.threads,
                            dtype=args.dtype)
    finally:
        if progress is not None:
            progress.close()
    if progress is not None:
        state = "converged" if fit.converged else "stopped at max-iter"
        print(f"{state} after {fit.n_iter} iterations in {progress.elapsed():.2f} s; loglik {fit.loglik:.10g}, "
              f"BIC {fit.bic():.6g}", file=sys.stderr)
        if fit.n_missing:
            print(f"{fit.n_missing} missing values in {fit.n_missing_rows} rows, integrated out (none dropped)",
                  file=sys.stderr)
        if fit.peak_memory is not None:
            print(f"peak memory of a process running the E-steps: {fit.peak_memory / 2 ** 20:.0f} MiB",
                  file=sys.stderr)
    if args.out:
        fit.save(args.out)
    elif args.json or not sys.stdout.isatty():
        json.dump(fit.to_dict(), sys.stdout, indent=1)
        sys.stdout.write("\n")
    else:
        print(_summary(fit))
    return 0


class _Progress:
    """A fit's progress on standard error: iteration, objective, its relative change (as ``--tol`` measures
    it) and the time since the restart began.

    On a terminal one line is rewritten in place (``verbose``: a line per iteration); elsewhere (a log
    file, a pipe) a line per iteration. With several restarts, a header for each and which one won.
    """

    def __init__(self, stream, verbose=False):
        self.stream = stream
        self.in_place = stream.isatty() and not verbose
        self.begun = self.restart_begun = time.perf_counter()
        self.restarts = 1
        self.open_line = False
        self.width = 0

    def __call__(self, iteration, objective, change):
        relative = change / abs(objective) if objective else change
        line = (f"iter {iteration:5d}  objective {objective: .10g}  change {relative: .3e}  "
                f"{time.perf_counter() - self.restart_begun:7.2f} s")
        if self.in_place:
            # Padded over what a longer previous line left.
            self.stream.write("\r" + line.ljust(self.width))
            self.width = len(line)
            self.stream.flush()
            self.open_line = True
        else:
            print(line, file=self.stream)

    def restart(self, index, total):
        """A restart begins (0-based ``index`` of ``total``)."""
        self.close()
        self.restarts = total
        self.restart_begun = time.perf_counter()
        if total > 1:
            print(f"restart {index + 1} of {total}", file=self.stream)

    def chosen(self, index, objective):
        """The restart whose fit is kept."""
        self.close()
        if self.restarts > 1:
            print(f"restart {index + 1} of {self.restarts} kept: objective {objective:.10g}", file=self.stream)

    def close(self):
        if self.open_line:
            self.stream.write("\n")
            self.stream.flush()
            self.open_line = False
            self.width = 0

    def elapsed(self):
        return time.perf_counter() - self.begun


def _summary(fit):
    """A fit as a person reads it: state, log-likelihood, BIC and AIC, then every parameter."""
    state = "converged" if fit.converged else "stopped at max-iter (not converged)"
    lines = [f"model {fit.model.name!r}: {state} after {fit.n_iter} iterations",
             f"loglik {fit.loglik:.10g}   BIC {fit.bic():.8g}   AIC {fit.aic():.8g}   "
             f"({fit.n_observations:g} rows, {fit.n_parameters} free parameters)"]
    if fit.n_missing:
        lines.append(f"missing values: {fit.n_missing} cells in {fit.n_missing_rows} rows, integrated out")
    lines.append("parameters:")
    for node, params in fit.params.items():
        if not isinstance(params, dict):
            lines.append(f"  {node} = {float(params):.6g}")
            continue
        for name, value in params.items():
            text = np.array2string(np.asarray(value), precision=4, suppress_small=True, max_line_width=100,
                                   threshold=60)
            label = f"  {node}.{name} = "
            indented = (label + text.replace("\n", "\n" + " " * len(label))).split("\n")
            lines.extend(line.rstrip() for line in indented)
    lines.append("(--json or --out FIT.json for the full result as JSON)")
    return "\n".join(lines)


def _derive(args):
    derivation = _load(args.spec).derive()
    print(derivation.to_latex() if args.latex else str(derivation))
    return 0


def _check(args):
    model = _load(args.spec)
    compiled = model.compiled
    print(f"{model.source}: model '{model.name}' is valid")
    for name, factor in compiled.factors.items():
        node = model.nodes[name]
        shapes = ", ".join(f"{p} {factor.external_shape(spec)}" for p, spec in factor.params.items())
        role = "latent" if node.latent else "observed"
        print(f"  {name}: {node.family.name} ({role}); " + (f"parameters {shapes}" if shapes else "no parameters"))
    derivation = model.derive()
    status = ", ".join(f"{n}: {d.status}" for n, d in derivation.nodes.items())
    print(f"  M-steps: {status}")
    source = args.data or (model.data_info.get("path") and _data_source(model, None))
    if source:
        from .data import node_data, read_model_data
        columns, weights = read_model_data(model, source)
        checked = node_data(model, columns, weights, source=source)
        print(f"  data {source}: {checked.n_rows} rows fit the model")
        if checked.missing:
            print(f"  missing values: {checked.n_missing} cells in {checked.n_missing_rows} rows "
                  "(integrated out in the fit, none dropped)")
            for name, holes in checked.missing.items():
                node = model.nodes[name]
                flat = holes.reshape(checked.n_rows, -1)
                labels = node.columns or ([name] if flat.shape[1] == 1 else [f"{name}_{j}" for j in range(flat.shape[1])])
                for label, count in zip(labels, flat.sum(axis=0)):
                    if count:
                        print(f"    column '{label}' (node '{name}'): {int(count)} missing")
        for name, labels in checked.labels.items():
            given = int((labels >= 0).sum())
            print(f"  column '{name}' labels latent node '{name}' on {given} of {checked.n_rows} rows")
    count = compiled.n_free()
    print(f"  {count} free parameter{'' if count == 1 else 's'}")
    return 0


def _sample(args):
    from .fit import check_output_path
    from .resources import check_sample_size
    if args.n < 1:
        raise OptionError(f"--n must be a positive number of rows, found {args.n}")
    if args.seed < 0:
        raise OptionError(f"--seed must be a non-negative integer, found {args.seed}")
    model = _load(args.spec)
    check_sample_size(model, args.n, label="--n ")
    if args.out:
        check_output_path(args.out)
    params = _read_params(args.params, model, complete=True)
    columns = model.sample(args.n, params, seed=args.seed, lengths=_lengths(args.lengths))
    if args.observed_only:
        columns = {k: v for k, v in columns.items() if k not in model.latent}
    _emit_csv(args.out, columns)
    return 0


def _emit_csv(out, columns):
    """Write named columns as CSV to ``out`` (atomically) or to standard output."""
    from .fit import atomic_output
    names = list(columns)
    table = np.column_stack([np.asarray(columns[n], dtype=float) for n in names])
    if out:
        with atomic_output(out, newline="") as handle:
            _write_csv(handle, names, table)
    else:
        _write_csv(sys.stdout, names, table)


def _write_csv(handle, names, table):
    writer = csv.writer(handle)
    writer.writerow(names)
    for row in table:
        writer.writerow([_format(v) for v in row])


def _format(value):
    if math.isfinite(value) and value == int(value) and abs(value) < 1e15:
        return str(int(value))
    return repr(float(value))


def _compare(args):
    from .compare import compare, load_reference
    from .data import read_model_data
    model = _load(args.spec)
    source = _data_source(model, args.data)
    columns, weights = read_model_data(model, source)
    # A directory or device as the reference would fail inside importlib (or never return): refuse it here.
    reference = load_reference(args.reference)
    init = _read_params(args.init, model) if args.init else None
    result = compare(model, columns, reference, init=init, iterations=args.iterations,
                     reg_covar=args.reg_covar, seed=args.seed, weights=args.weights or weights, rtol=args.rtol,
                     atol=args.atol, source=source)
    print("\n".join(result.table()))
    return 0 if result.agree else 1


def _lengths(text):
    """``--lengths 100,50,50`` as a list of integers, or None."""
    if text is None:
        return None
    try:
        return [int(part) for part in text.split(",")]
    except ValueError:
        raise OptionError(f"--lengths must be integers separated by commas, found {text!r}") from None


def _decode(args):
    from .data import read_model_data
    from .fit import Fit, check_output_path
    model = _load(args.spec)
    if not model.latent:
        raise OptionError(f"{model.source}: the model has no latent node to decode")
    fit = Fit.load(args.fit, model=model)
    source = _data_source(model, args.data)
    if args.out:
        check_output_path(args.out)
    columns, _ = read_model_data(model, source)
    _emit_csv(args.out, fit.decode(columns))
    return 0


def _top(args):
    from .fit import Fit
    model = _load(args.spec)
    fit = Fit.load(args.fit, model=model)
    node = args.node or next((n for n in model.observed if model.nodes[n].is_discrete and model.nodes[n].parents),
                             None)
    if node is None:
        raise OptionError(f"{model.source}: no observed categorical node with parents; name one with --node")
    if node not in model.nodes or not model.nodes[node].is_discrete:
        raise OptionError(f"{model.source}: --node {node} is not a categorical node of the model")
    if args.n < 1:
        raise OptionError(f"--n must be a positive integer, found {args.n}")
    labels = None
    if args.labels:
        from .data import decode_text, read_input
        text = decode_text(read_input(args.labels, "labels file", OptionError), args.labels, "labels file",
                           OptionError)
        labels = text.splitlines()
    listed = fit.top(node, n=args.n, labels=labels)
    parents = model.nodes[node].parents
    if not parents:
        listed = [listed]
    sizes = [model.nodes[p].k for p in parents]
    for index, entries in enumerate(listed):
        values = np.unravel_index(index, sizes) if sizes else ()
        where = ", ".join(f"{p} = {v}" for p, v in zip(parents, values)) or node
        shown = "  ".join(f"{label} {prob:.4f}" for label, prob in entries)
        print(f"{where}: {shown}")
    return 0


def _plot(args):
    from .data import decode_text, read_input
    from .fit import Fit, check_output_path
    from .plot import picture_format, plot_fit, save_figure
    # A bad --out is refused before the fit and the data are read.
    picture_format(args.out)
    check_output_path(args.out)
    model = _load(args.spec)
    fit = Fit.load(args.fit, model=model)
    source = args.data or (model.data_info.get("path") and _data_source(model, None))
    labels = {}
    for entry in args.labels or []:
        node, separator, path = entry.partition("=")
        if not separator or not node or not path:
            raise OptionError(f"--labels {entry!r}: give NODE=FILE, e.g. word=vocabulary.txt")
        text = decode_text(read_input(path, "labels file", OptionError), path, "labels file", OptionError)
        labels[node] = text.splitlines()
    columns = None
    if args.columns is not None:
        columns = [part.strip() for part in args.columns.split(",")]
    figure = plot_fit(fit, kind=args.kind, data=source or None, lengths=_lengths(args.lengths), node=args.node,
                      labels=labels or None, columns=columns)
    save_figure(figure, args.out)
    return 0


_COMMANDS = {"fit": _fit, "derive": _derive, "check": _check, "sample": _sample, "top": _top,
             "compare": _compare, "decode": _decode, "plot": _plot}


if __name__ == "__main__":
    sys.exit(main())
