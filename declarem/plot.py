"""Pictures of a fit: the model's graph, the objective, densities, scatters, category bars, decoded paths.

``Fit.plot`` and ``declarem plot`` draw here. Which panels a model gets follows from its structure,
never from its name or a family's name:

- ``graph``: every model; plates for the rows and for each node's parameter sets, a chain
  unrolled a few steps.
- ``objective``: every fit; ``fit.history`` per iteration.
- ``density``: an observed node on a numeric support (not a category, not 0/1), one panel per
  column; the fitted density (a probability mass function on an integer support) over a histogram
  of the data, the whole mixture and each parameter set weighted by its probability.
- ``scatter``: an observed vector normal node (one with a ``covariance``); its first two columns
  (or the two given) with an ellipse per parameter set from its mean and covariance.
- ``categories``: a categorical node that is a latent root (mixing weights), a chain (transitions)
  or a child of a latent node (emissions, a topic's words), as bars of ``fit.top``; an observed
  0/1 node's probability of a 1 per column and parameter set.
- ``path``: a chain's decoded state path (``fit.decode``) over the observed series.
- ``regression``: a node with continuous parents; its values against its first covariate column,
  with each parameter set's fitted linear parameter (the inverse link of intercept + coef . u, the
  other covariate columns at their data means) as a curve.

Densities come from the fit's own machinery (``Fit.row_loglik`` with the parents fixed as labels
and the other columns missing), so a user family is drawn exactly as it is fitted. matplotlib is
imported here only when a picture is drawn, and figures are ``matplotlib.figure.Figure`` objects
made without pyplot, so drawing never changes a notebook's backend.
"""

import io
import itertools
import math
import os

import numpy as np

from .errors import DeclaremError, OptionError

#: The panels, in the order an overview shows them.
KINDS = ("graph", "objective", "density", "scatter", "regression", "categories", "path")
#: Picture formats by file suffix.
FORMATS = {".png": "png", ".svg": "svg", ".pdf": "pdf"}
#: Metadata that would make two drawings of the same fit differ (dates, version strings).
_STABLE_METADATA = {"png": {"Software": None}, "svg": {"Date": None, "Creator": None},
                    "pdf": {"CreationDate": None, "Producer": None, "Creator": None}}
#: Steps of a chain drawn in the graph panel.
UNROLLED_STEPS = 3
#: At most this many categories are drawn as grouped bars; above it, each parameter set's top ones.
GROUPED_CATEGORIES = 12
#: Categories listed per parameter set when a node has more than GROUPED_CATEGORIES.
TOP_CATEGORIES = 8
#: Parameter sets drawn for one node (the first ones, in the order of ``fit.top``).
MAX_SETS = 8
#: Columns of a vector node given a density panel each in an overview.
MAX_DENSITY_COLUMNS = 4
#: Observed columns drawn over a chain's decoded path.
MAX_SERIES = 3
#: Points of the grid a continuous density is drawn on.
GRID_POINTS = 400
#: Ellipses enclose this many standard deviations of a component (86% of a bivariate normal's mass).
ELLIPSE_SDS = 2.0
#: Inches per panel of a figure.
PANEL_SIZE = (5.2, 3.8)


class PlotDependencyError(DeclaremError):
    """matplotlib, needed to draw, is not installed."""


def _matplotlib():
    """Import matplotlib's Figure and patches, or say how to install them."""
    try:
        import matplotlib
        from matplotlib import patches
        from matplotlib.figure import Figure
    except ImportError:
        raise PlotDependencyError("drawing needs matplotlib, which is not installed; install it with "
                                  "pip install 'declarem[plot]'") from None
    return matplotlib, Figure, patches


# -- the data a picture is drawn from ----------------------------------------------------------------

class _Data:
    """Columns of the data with their row weights and, for a chain, its sequence lengths.

    Attributes
    ----------
    columns : dict of str to ndarray
    weights : ndarray of shape (n_rows,)
    lengths : list of int or None
    n_rows : int
    """

    def __init__(self, fit, data, lengths):
        from .data import as_columns, node_data, read_model_data, sequence_lengths
        model = fit.model
        if isinstance(data, (str, os.PathLike)):
            columns, weights = read_model_data(model, data)
            source = os.fspath(data)
        else:
            columns = as_columns(data)
            weights = model.data_info.get("weights")
            source = "data"
        if isinstance(weights, str) and weights not in columns:
            # Data without the spec's weights column is drawn unweighted: every row counts once.
            weights = None
        checked = node_data(model, columns, weights, source=source)
        self.columns = columns
        self.weights = checked.weights
        self.n_rows = checked.n_rows
        self.lengths = sequence_lengths(model, columns, lengths, checked.n_rows, source=source)
        self.source = source


def column_names(node):
    """The data columns of a node, in order (``x`` for a scalar node, ``x_0, x_1`` for a vector one)."""
    if node.columns:
        return list(node.columns)
    if node.dim == 1:
        return [node.name]
    return [f"{node.name}_{j}" for j in range(node.dim)]


def _first_present(values):
    """The first value that is not missing, or None."""
    values = np.asarray(values, dtype=float)
    present = np.flatnonzero(np.isfinite(values))
    return float(values[present[0]]) if len(present) else None


# -- densities through the fit's own likelihood ------------------------------------------------------

def _row_model_fit(fit, data):
    """A fit whose rows are independent: ``fit`` itself, or for a chain its one-step twin.

    The twin is the model with the lag edge removed: the chain node becomes a root whose
    probabilities are the chain's average state occupancy over the data's sequences, so its
    parameter sets weigh each emission density as often as the chain visits it.
    """
    from .fit import Fit
    from .model import Model
    model = fit.model
    if model.chain is None:
        return fit
    graph = model.graph.copy()
    del graph.nodes[model.chain]["lagged"]
    twin = Model(graph, source=model.source, base_dir=model.base_dir)
    params = dict(fit.params)
    params[model.chain] = {"probs": state_occupancy(fit, data.lengths)}
    return Fit(twin, params, fit.loglik, fit.history, fit.converged, fit.n_iter, fit.n_observations)


def state_occupancy(fit, lengths):
    """The chain's expected share of steps in each state, over sequences of the given lengths.

    Parameters
    ----------
    fit : Fit
    lengths : list of int

    Returns
    -------
    ndarray of shape (k,)
        The average over all steps of P(z_t) under ``start`` and ``probs``.
    """
    chain = fit.params[fit.model.chain]
    start, transition = np.asarray(chain["start"], float), np.asarray(chain["probs"], float)
    total = np.zeros_like(start)
    for length in lengths:
        marginal, summed = start.copy(), np.zeros_like(start)
        for step in range(length):
            summed += marginal
            following = marginal @ transition
            if np.allclose(following, marginal, rtol=0, atol=1e-15):
                # Stationary from here on: the remaining steps each add the same marginal.
                summed += following * (length - step - 1)
                break
            marginal = following
        total += summed
    return total / total.sum()


def indexing_parents(model, name):
    """A node's discrete parents, whose values index its parameter sets (continuous parents do not)."""
    return tuple(p for p in model.nodes[name].parents if model.nodes[p].is_discrete)


def parameter_sets(model, name):
    """The configurations of a node's discrete parents, in the order its parameters are indexed.

    Returns
    -------
    list of tuple of int
        ``[()]`` for a node without discrete parents.
    """
    sizes = [model.nodes[p].k for p in indexing_parents(model, name)]
    return list(itertools.product(*[range(size) for size in sizes]))


def set_label(model, name, config):
    """How a parameter set of node ``name`` is named: ``z = 1``, ``z = 1, g = 0``."""
    if model.nodes[name].chain:
        return f"{name}[t-1] = {config[0]}"
    return ", ".join(f"{p} = {v}" for p, v in zip(indexing_parents(model, name), config)) or name


def joint_log_density(fit, data, name, column, points, configs):
    """log p(column = x, parents = config) at each point and parameter set, and log p(parents = config).

    Every other column is missing on the rows asked about, so the fit integrates it out;
    the parents are fixed by label columns (latent parents) or values (observed ones).
    One row carrying a present value for every column goes first, since a column missing
    on every row is refused; its result is dropped.

    Parameters
    ----------
    fit : Fit
        A fit with independent rows (see ``_row_model_fit``).
    data : _Data
    name : str
        The node drawn.
    column : str
        Its data column drawn.
    points : ndarray of shape (n_points,)
    configs : list of tuple of int
        Parameter sets (``parameter_sets``).

    Returns
    -------
    joint : ndarray of shape (len(configs), n_points)
    total : ndarray of shape (n_points,)
        log p(column = x), the parents summed out.
    weights : ndarray of shape (len(configs),)
        log p(parents = config).
    """
    model = fit.model
    parents = indexing_parents(model, name)
    n_points, n_sets = len(points), len(configs)
    n_rows = 1 + n_sets * n_points + n_points + n_sets
    frame = {}
    for observed in model.observed:
        for label in column_names(model.nodes[observed]):
            anchor = _first_present(data.columns[label])
            if anchor is None:
                raise OptionError(f"{data.source}: column '{label}' of node '{observed}' has no values to draw "
                                  "from; give data with values in it")
            frame[label] = np.full(n_rows, np.nan)
            frame[label][0] = anchor
    grid_rows = slice(1, 1 + n_sets * n_points)
    total_rows = slice(1 + n_sets * n_points, 1 + n_sets * n_points + n_points)
    weight_rows = slice(1 + n_sets * n_points + n_points, n_rows)
    frame[column][grid_rows] = np.tile(points, n_sets)
    frame[column][total_rows] = points
    for index, parent in enumerate(parents):
        if parent not in frame:
            frame[parent] = np.full(n_rows, np.nan)
        values = np.array([config[index] for config in configs], dtype=float)
        frame[parent][grid_rows] = np.repeat(values, n_points)
        frame[parent][weight_rows] = values
    loglik = fit.row_loglik(frame)
    return (loglik[grid_rows].reshape(n_sets, n_points), loglik[total_rows], loglik[weight_rows])


def _lower_bound(support):
    return {"positive": 0.0, "nonnegative": 0.0, "unit": 0.0, "nonnegative-integer": 0,
            "positive-integer": 1, "binary": 0}.get(support)


def _upper_bound(support, node):
    if support in ("unit", "binary"):
        return 1
    bound = node.family.upper_bound
    return dict(node.constants).get(bound) if bound else None


def density_points(node, values):
    """Where a node's density is drawn: integers on a discrete support, a grid otherwise.

    The grid runs a quarter of the data's range beyond it on each side, stays inside the
    support, and is refined geometrically towards a bound of the support, where a density
    such as the exponential's changes fastest.

    Returns
    -------
    points : ndarray
    discrete : bool
    """
    from .data import INTEGER_SUPPORTS
    support = node.family.support
    low, high = float(np.min(values)), float(np.max(values))
    span = high - low if high > low else max(abs(high), 1.0)
    lower, upper = _lower_bound(support), _upper_bound(support, node)
    if support in INTEGER_SUPPORTS:
        first = math.floor(low - span / 2 - 3) if lower is None else lower
        last = math.ceil(high + max(span / 4, 3 * math.sqrt(max(high, 1.0))) + 3) if upper is None else upper
        first = max(first, lower) if lower is not None else first
        return np.arange(first, last + 1, dtype=float), True
    start, stop = low - span / 4, high + span / 4
    pieces = []
    if lower is not None and start <= lower:
        start = lower + span * 1e-6
        pieces.append(np.geomspace(span * 1e-6, span, GRID_POINTS // 2) + lower)
    if upper is not None and stop >= upper:
        stop = upper - span * 1e-6
        pieces.append(upper - np.geomspace(span * 1e-6, span, GRID_POINTS // 2))
    pieces.append(np.linspace(start, stop, GRID_POINTS))
    return np.unique(np.concatenate(pieces)), False


# -- which panels a model gets ----------------------------------------------------------------------

def _discrete_parents(model, name):
    """Whether all of a node's parents are discrete (no covariate enters it)."""
    node = model.nodes[name]
    return not node.covariates and all(model.nodes[p].is_discrete for p in node.parents)


def _density_nodes(model):
    return [name for name in model.observed
            if not model.nodes[name].is_discrete and model.nodes[name].family.support != "binary"
            and model.nodes[name].family.kind != "covariate" and _discrete_parents(model, name)]


def _regression_nodes(model):
    return [name for name in model.observed if model.nodes[name].covariates]


def _scatter_nodes(model):
    return [name for name in model.observed if model.nodes[name].covariance is not None
            and model.nodes[name].dim >= 2 and _discrete_parents(model, name)]


def _is_binary(model, name):
    node = model.nodes[name]
    return not node.latent and node.family.support == "binary" and _discrete_parents(model, name)


def _category_nodes(fit, overview):
    """Categorical nodes with probabilities worth drawing, and observed 0/1 nodes.

    An overview keeps latent roots (mixing weights), chains (transitions) and children of a
    latent node (emissions); asked for by kind, every categorical node with probabilities.
    """
    model = fit.model
    chosen = []
    for name, node in model.nodes.items():
        if _is_binary(model, name):
            chosen.append(name)
            continue
        params = fit.params.get(name)
        if node.family.kind != "indicator" or not isinstance(params, dict) or "probs" not in params:
            continue
        latent_parent = any(model.nodes[p].latent for p in node.parents)
        if not overview or (node.latent and not node.parents) or node.chain or latent_parent:
            chosen.append(name)
    return chosen


def panels(fit, kind=None, node=None, has_data=True, columns=None):
    """The panels to draw: a list of (kind, node, column), node and column None where they do not apply.

    Parameters
    ----------
    fit : Fit
    kind : str or None
        One of ``KINDS``, or None for the overview (every panel that applies).
    node : str or None
        Only this node's panels.
    has_data : bool
        Without data only the graph, the objective and the category panels can be drawn.
    columns : sequence of str, optional
        For ``scatter``, the two columns to draw.

    Raises
    ------
    OptionError
        For an unknown kind or node, a panel that does not apply, or one that needs data.
    """
    model = fit.model
    if kind is not None and kind not in KINDS:
        raise OptionError(f"unknown picture kind {kind!r}; choose one of {', '.join(KINDS)}")
    if node is not None and node not in model.nodes:
        raise OptionError(f"model '{model.name}' has no node '{node}'; its nodes are {', '.join(model.nodes)}")
    overview = kind is None
    chosen = [("graph", None, None), ("objective", None, None)]
    scatter = [(n, None) for n in _scatter_nodes(model)]
    density = []
    for name in _density_nodes(model):
        if overview and (name, None) in scatter:
            continue
        limit = MAX_DENSITY_COLUMNS if overview and node is None else None
        density += [(name, c) for c in column_names(model.nodes[name])[:limit]]
    data_panels = [("density", n, c) for n, c in density] + [("scatter", n, c) for n, c in scatter]
    data_panels += [("regression", n, None) for n in _regression_nodes(model)]
    if model.chain is not None:
        data_panels.append(("path", model.chain, None))
    categories = []
    for name in _category_nodes(fit, overview and node is None):
        # A 0/1 node's probabilities are read through the data's columns (binary_probabilities).
        (data_panels if _is_binary(model, name) else categories).append(("categories", name, None))
    if has_data:
        chosen += data_panels
    chosen += categories
    kinds = {name: index for index, name in enumerate(KINDS)}
    nodes = {name: index for index, name in enumerate(model.nodes)}
    chosen.sort(key=lambda panel: (kinds[panel[0]], nodes.get(panel[1], -1)))
    if node is not None:
        chosen = [p for p in chosen if p[1] == node or (p[0] == "graph" and kind == "graph")
                  or (p[0] == "objective" and kind == "objective")]
    if overview:
        return chosen
    picked = [p for p in chosen if p[0] == kind]
    if not picked:
        needs_data = any(p[0] == kind and (node is None or p[1] == node) for p in data_panels)
        if needs_data:
            raise OptionError(f"a {kind} picture is drawn over the data; give data (fit.plot(data=...), "
                              "or --data PATH)")
        where = f"node '{node}' of model '{model.name}'" if node else f"model '{model.name}'"
        raise OptionError(f"{where} has nothing to draw as a {kind} picture; {_what_applies(kind)}")
    if kind == "scatter" and columns is not None:
        picked = [(k, n, tuple(columns)) for k, n, _ in picked]
    return picked


def _what_applies(kind):
    return {
        "density": "it applies to observed nodes on a numeric support (counts, real numbers)",
        "scatter": "it applies to observed vector normal nodes (dim >= 2)",
        "regression": "it applies to nodes with continuous parents (covariates)",
        "categories": "it applies to categorical nodes and observed 0/1 nodes",
        "path": "it applies to models with a chain (a latent node lagged on itself)",
    }.get(kind, "")


# -- the entry point ---------------------------------------------------------------------------------

def plot_fit(fit, kind=None, data=None, lengths=None, ax=None, node=None, labels=None, columns=None):
    """Draw a fit; see ``Fit.plot``.

    Returns
    -------
    matplotlib.figure.Figure
    """
    _, Figure, _ = _matplotlib()
    labels = _checked_labels(fit, labels)
    table = _Data(fit, data, lengths) if data is not None else None
    if lengths is not None and table is None:
        raise OptionError("lengths apply to the data: give data too")
    if columns is not None:
        columns = _checked_columns(fit, node, columns)
    chosen = panels(fit, kind, node, has_data=table is not None, columns=columns)
    if ax is not None:
        if kind is None or len(chosen) != 1:
            raise OptionError("ax takes one panel: give kind (and node, where the model has several nodes of "
                              f"that kind); this one has {len(chosen)}")
        _draw(chosen[0], ax, fit, table, labels)
        return ax.figure
    count = len(chosen)
    ncols = 1 if count == 1 else 2
    nrows = math.ceil(count / ncols)
    heights = [max(_rows_needed(fit, chosen[r * ncols:(r + 1) * ncols], labels)) for r in range(nrows)]
    figure = Figure(figsize=(PANEL_SIZE[0] * ncols, PANEL_SIZE[1] * sum(heights)), layout="constrained")
    grid = figure.add_gridspec(nrows, ncols, height_ratios=heights)
    for index, panel in enumerate(chosen):
        axes = figure.add_subplot(grid[index // ncols, index % ncols])
        _draw(panel, axes, fit, table, labels)
    if kind is None:
        figure.suptitle(f"{fit.model.name}: fitted by EM", fontsize=12)
    return figure


def _rows_needed(fit, row, labels):
    """Height of a row of panels, in panel heights: a long list of top categories takes more."""
    needed = [1.0]
    for kind, name, _ in row:
        if kind == "categories" and not _is_binary(fit.model, name) and _listed(fit, name):
            sets = min(len(_sets_of(fit, name)), MAX_SETS)
            needed.append(max(1.0, sets * TOP_CATEGORIES / 24))
    return needed


def _checked_labels(fit, labels):
    if labels is None:
        return {}
    if not hasattr(labels, "items"):
        raise OptionError("labels must map a categorical node to its category names, e.g. {'word': vocabulary}")
    for name in labels:
        if name not in fit.model.nodes or fit.model.nodes[name].k is None:
            raise OptionError(f"labels given for '{name}', which is not a categorical node of model "
                              f"'{fit.model.name}'")
    return {name: [str(label) for label in values] for name, values in labels.items()}


def _checked_columns(fit, node, columns):
    model = fit.model
    if isinstance(columns, str) or len(columns) != 2:
        raise OptionError(f"columns must name two columns of a vector normal node, found {columns!r}")
    owners = [n for n in _scatter_nodes(model) if set(columns) <= set(column_names(model.nodes[n]))]
    if node is not None:
        owners = [n for n in owners if n == node]
    if not owners:
        raise OptionError(f"columns {', '.join(columns)} are not two columns of one vector normal node of model "
                          f"'{model.name}'")
    return tuple(columns)


def _draw(panel, axes, fit, data, labels):
    kind, name, column = panel
    if kind == "graph":
        draw_graph(axes, fit)
    elif kind == "objective":
        draw_objective(axes, fit)
    elif kind == "density":
        draw_density(axes, fit, data, name, column)
    elif kind == "scatter":
        draw_scatter(axes, fit, data, name, column)
    elif kind == "regression":
        draw_regression(axes, fit, data, name)
    elif kind == "categories":
        draw_categories(axes, fit, name, labels.get(name), data)
    else:
        draw_path(axes, fit, data)


def save_figure(figure, path):
    """Write a figure to ``path`` in the format its suffix names, atomically and reproducibly.

    Dates and version strings are left out, and SVG ids are seeded, so the same fit drawn
    twice by the same matplotlib gives the same bytes.

    Raises
    ------
    OptionError
        Naming the path, for an unknown suffix or a path that cannot be written.
    """
    from .fit import atomic_output
    matplotlib, _, _ = _matplotlib()
    file_format = picture_format(path)
    buffer = io.BytesIO()
    with matplotlib.rc_context({"svg.hashsalt": "declarem", "svg.fonttype": "none"}):
        figure.savefig(buffer, format=file_format, metadata=_STABLE_METADATA[file_format], dpi=100)
    with atomic_output(path, binary=True) as handle:
        handle.write(buffer.getvalue())

def picture_format(path):
    """The format a picture path's suffix names (``png``, ``svg``, ``pdf``), or OptionError naming it."""
    suffix = os.path.splitext(os.fspath(path))[1].lower()
    if suffix not in FORMATS:
        shown = f"suffix '{suffix}'" if suffix else "no suffix"
        raise OptionError(f"{os.fspath(path)}: {shown} names no picture format declarem writes; end the file "
                          f"name in {', '.join(list(FORMATS)[:-1])} or {list(FORMATS)[-1]}")
    return FORMATS[suffix]


# -- the panels --------------------------------------------------------------------------------------

def _colour(index):
    return f"C{index % 10}"


def _layers(model):
    """Each node's depth in the within-step graph: 0 for a root, one more than its deepest parent."""
    depth = {}
    for name, node in model.nodes.items():
        depth[name] = 1 + max((depth[p] for p in node.parents + node.covariates), default=-1)
    return depth


def draw_graph(axes, fit):
    """The model as a directed graphical model, in plate notation.

    Latent nodes are white circles, observed ones grey, deterministic ones doubled. Every
    row is one draw of the nodes inside the rows plate; a chain is unrolled for
    ``UNROLLED_STEPS`` steps instead. Each node's parameters are a black dot outside the
    rows plate (above a root, below a leaf, right of the others), in a plate of its
    parameter sets when it has several (one per value of its parents); free parameters
    are dots left of it, pointing at the nodes written in them.
    """
    _, _, patches = _matplotlib()
    model = fit.model
    depth = _layers(model)
    layers = {}
    for name in model.nodes:
        layers.setdefault(depth[name], []).append(name)
    widest = max(len(names) for names in layers.values())
    steps = UNROLLED_STEPS if model.chain else 1
    step_width = 1.9 * widest + 0.8
    position, circles = {}, {}
    for step in range(steps):
        for level, names in layers.items():
            for index, name in enumerate(names):
                x = step * step_width + (index - (len(names) - 1) / 2) * 1.9
                position[name, step] = (x, -1.9 * level)
    for (name, step), (x, y) in position.items():
        circles[name, step] = _draw_node(axes, patches, model, name, step, x, y)
    for (name, step), circle in circles.items():
        for parent in model.nodes[name].parents + model.nodes[name].covariates:
            _arrow(axes, patches, circles[parent, step], circle)
        if model.nodes[name].chain and step > 0:
            _arrow(axes, patches, circles[name, step - 1], circle)
    xs = [x for x, _ in position.values()]
    ys = [y for _, y in position.values()]
    left, right = min(xs) - 1.1, max(xs) + 1.1
    plate_text = "one sequence: steps 1, 2, 3, ..." if model.chain else f"N = {fit.n_observations:g} rows"
    # Wide enough for its label.
    widen = max(0.0, (CHARACTER_WIDTH * len(plate_text) + 0.4) - (right - left)) / 2
    left, right = left - widen, right + widen
    bottom, top = min(ys) - 1.25, max(ys) + 0.75
    if model.chain:
        x, y = circles[model.chain, steps - 1].center
        axes.annotate("", xy=(x + 1.2, y), xytext=(x + NODE_RADIUS, y),
                      arrowprops={"arrowstyle": "-|>", "color": "black", "linestyle": "--"})
        axes.text(x + 1.3, y, "...", ha="left", va="center", fontsize=11)
        right += 0.8
    axes.add_patch(patches.FancyBboxPatch((left, bottom), right - left, top - bottom,
                                          boxstyle="round,pad=0,rounding_size=0.15", facecolor="none",
                                          edgecolor="0.35", linewidth=1.0, gid="plate:rows"))
    axes.text(right - 0.1, bottom + 0.06, plate_text, ha="right", va="bottom", fontsize=6.5, color="0.3")
    box = _draw_parameters(axes, patches, fit, circles, depth, (left, right, bottom, top))
    axes.set_xlim(box[0] - 0.2, box[1] + 0.2)
    axes.set_ylim(box[2] - 0.2, box[3] + 0.2)
    axes.set_aspect("equal")
    axes.axis("off")
    axes.set_title("model graph", fontsize=10)


#: Radius of a node's circle in the graph panel, in the graph's units (1.9 between neighbours).
NODE_RADIUS = 0.42
#: Approximate width of one character of the graph's small text, in the graph's units.
CHARACTER_WIDTH = 0.1


def _draw_node(axes, patches, model, name, step, x, y):
    """One node of the graph: its circle, its name (and step), and under the first copy its family."""
    node = model.nodes[name]
    suffix = f"[{step + 1}]" if model.chain else ""
    circle = patches.Circle((x, y), NODE_RADIUS, facecolor="white" if node.latent else "0.82",
                            edgecolor="black", linewidth=1.2, zorder=3, gid=f"node:{name}{suffix}")
    axes.add_patch(circle)
    if node.family.kind == "table":
        axes.add_patch(patches.Circle((x, y), NODE_RADIUS * 0.8, facecolor="none", edgecolor="black",
                                      linewidth=0.8, zorder=4))
    label = name + suffix
    axes.text(x, y, label, ha="center", va="center", fontsize=9 if len(label) <= 4 else 7 if len(label) <= 6 else 5.5,
              zorder=5, gid=f"label:{name}")
    if step == 0:
        axes.text(x, y - NODE_RADIUS - 0.06, _family_text(node), ha="center", va="top", fontsize=6, color="0.25",
                  zorder=4, bbox={"facecolor": "white", "edgecolor": "none", "pad": 0.3})
    return circle


def _family_text(node):
    """A node's family in a few characters: ``categorical(3)``, ``normal(2, full)``, ``binomial(10)``."""
    details = []
    if node.k is not None and node.family.kind != "table":
        details.append(str(node.k))
    if node.dim > 1:
        details.append(str(node.dim))
        if node.covariance:
            details.append(node.covariance)
    details += [f"{value:g}" for _, value in node.constants]
    return node.family.name + (f"({', '.join(details)})" if details else "")


def _arrow(axes, patches, source, target):
    axes.add_patch(patches.FancyArrowPatch(source.center, target.center, patchA=source, patchB=target,
                                           arrowstyle="-|>", mutation_scale=11, linewidth=1.0, color="black",
                                           zorder=2))


def _draw_parameters(axes, patches, fit, circles, depth, plate):
    """Each node's parameters as a dot in a plate of its parameter sets; free parameters as dots.

    A root's parameters go above the rows plate, a leaf's below it, the others' right of it,
    each pointing at the node's first copy (a chain's first step); free parameters go left.

    Returns
    -------
    tuple of float
        The drawing's extent (left, right, bottom, top).
    """
    model = fit.model
    left, right, bottom, top = plate
    extent = [left, right, bottom, top]
    deepest = max(depth.values())
    owners = [name for name in model.nodes if isinstance(fit.params.get(name), dict) and fit.params[name]
              and model.nodes[name].probs is None]
    beside = 0
    for name in owners:
        x, y = circles[name, 0].center
        text = ", ".join(fit.params[name])
        width = max(0.45 + CHARACTER_WIDTH * len(text), 0.95)
        if depth[name] == 0:
            spot = (x - 0.2, top + 0.75)
        elif depth[name] == deepest:
            spot = (x - 0.2, bottom - 0.75)
        else:
            spot = (right + 0.6, y + 0.9 * beside)
            beside += 1
        _parameter_plate(axes, patches, spot, text, len(_sets_of(fit, name)), f"params:{name}",
                         circles[name, 0])
        extent = [min(extent[0], spot[0] - 0.3), max(extent[1], spot[0] + width),
                  min(extent[2], spot[1] - 0.45), max(extent[3], spot[1] + 0.45)]
    free = [name for name, value in fit.params.items() if not isinstance(value, dict)]
    for index, name in enumerate(free):
        spot = (left - 0.6, top - 0.5 - 0.7 * index)
        dot = patches.Circle(spot, 0.09, facecolor="black", zorder=4, gid=f"params:{name}")
        axes.add_patch(dot)
        axes.text(spot[0] - 0.2, spot[1], name, ha="right", va="center", fontsize=8)
        extent[0] = min(extent[0], spot[0] - 0.3 - CHARACTER_WIDTH * 1.3 * len(name))
        extent[2] = min(extent[2], spot[1] - 0.3)
        for target, node in model.nodes.items():
            if node.probs and any(symbol.name == name for e in node.probs for symbol in e.free_symbols):
                _arrow(axes, patches, dot, circles[target, 0])
    return tuple(extent)


def _parameter_plate(axes, patches, spot, text, sets, gid, target):
    """A parameter dot at ``spot`` named ``text``, in a plate of ``sets`` sets when there are several."""
    x, y = spot
    dot = patches.Circle((x, y + 0.08), 0.09, facecolor="black", zorder=4, gid=gid)
    axes.add_patch(dot)
    axes.text(x + 0.2, y + 0.08, text, ha="left", va="center", fontsize=6.5)
    if sets > 1:
        width = max(0.45 + CHARACTER_WIDTH * len(text), 0.95)
        axes.add_patch(patches.Rectangle((x - 0.25, y - 0.4), width, 0.8, facecolor="none", edgecolor="0.35",
                                         linewidth=0.8))
        axes.text(x - 0.25 + width - 0.05, y - 0.36, f"{sets} sets", ha="right", va="bottom", fontsize=5.5,
                  color="0.3")
    _arrow(axes, patches, dot, target)


def _sets_of(fit, name):
    """A node's parameter sets: its parents' configurations, or for a chain its previous states."""
    model = fit.model
    if model.nodes[name].chain:
        return [(state,) for state in range(model.nodes[name].k)]
    return parameter_sets(model, name)


def draw_objective(axes, fit):
    """The EM objective after 0, 1, ..., n_iter iterations (``fit.history``)."""
    history = np.asarray(fit.history, dtype=float)
    steps = np.arange(len(history))
    axes.plot(steps, history, color="C0", marker="o" if len(history) <= 30 else None, markersize=3,
              linewidth=1.4, gid="objective")
    what = "complete-data objective (hard EM)" if fit.hard else \
        "log-likelihood + log prior" if fit.log_prior else "log-likelihood"
    axes.set_xlabel("iteration")
    axes.set_ylabel(what)
    axes.ticklabel_format(axis="y", useOffset=False, style="plain")
    state = "converged" if fit.converged else "stopped at max_iter"
    axes.set_title("objective per iteration", fontsize=10)
    axes.text(0.98, 0.04, f"{state} after {fit.n_iter} iterations\nfinal {history[-1]:.10g}", ha="right",
              va="bottom", fontsize=8, transform=axes.transAxes)
    axes.grid(alpha=0.3)


def _histogram(values, weights, discrete, points):
    """A weighted histogram of the present values: per integer on a discrete support, a density otherwise."""
    if discrete:
        counts = np.array([weights[values == point].sum() for point in points])
        return points, counts / weights.sum()
    edges = np.histogram_bin_edges(values, bins="auto")
    if len(edges) > 61:
        edges = np.linspace(edges[0], edges[-1], 61)
    density, edges = np.histogram(values, bins=edges, weights=weights, density=True)
    return edges, density


def draw_density(axes, fit, data, name, column):
    """The fitted density of one column over a histogram of the data.

    The total curve is the model's marginal density of the column; one curve per
    parameter set is that set's density times its probability, so the curves sum to
    the total and each integrates (sums, on an integer support) to its set's weight.
    """
    model = fit.model
    node = model.nodes[name]
    raw = np.asarray(data.columns[column], dtype=float)
    present = np.isfinite(raw)
    values, weights = raw[present], data.weights[present]
    points, discrete = density_points(node, values)
    row_fit = _row_model_fit(fit, data)
    configs = parameter_sets(model, name)
    joint, total, log_weights = joint_log_density(row_fit, data, name, column, points, configs)
    edges, heights = _histogram(values, weights, discrete, points)
    if discrete:
        axes.bar(edges, heights, width=0.8, color="0.8", edgecolor="0.6", label="data", gid="histogram")
    else:
        axes.stairs(heights, edges, fill=True, color="0.85", edgecolor="0.6", label="data", gid="histogram")
    # Markers show where a mass function lives; past a few dozen points they would only blur the line.
    style = {"marker": "o", "markersize": 3} if discrete and len(points) <= 30 else {}
    if node.parents and len(configs) <= 10:
        for index, config in enumerate(configs):
            weight = math.exp(log_weights[index])
            axes.plot(points, np.exp(joint[index]), color=_colour(index), linewidth=1.2,
                      label=f"{set_label(model, name, config)} (weight {weight:.3f})",
                      gid=f"density:{index}", **style)
    axes.plot(points, np.exp(total), color="black", linewidth=1.6, label="fitted model", gid="density:total",
              **style)
    if not discrete:
        # A long right tail (durations, sizes) would squeeze the body of the data into one corner.
        order = np.argsort(values)
        cumulative = np.cumsum(weights[order]) / weights.sum()
        far = values[order][min(np.searchsorted(cumulative, 0.995), len(values) - 1)]
        if far < points[-1] and (far - points[0]) < 0.5 * (points[-1] - points[0]):
            axes.set_xlim(points[0], far + 0.1 * (far - points[0]))
    missing = int((~present).sum())
    axes.set_xlabel(column + (f" ({missing} missing, not shown)" if missing else ""))
    axes.set_ylabel("probability" if discrete else "density")
    axes.set_title(f"{column}: fitted {'probabilities' if discrete else 'density'} over the data", fontsize=10)
    axes.legend(fontsize=7, frameon=False)


def covariate_columns(model, name):
    """The data columns of a node's continuous parents, in ``parents`` order (the columns of ``coef``)."""
    return [column for parent in model.nodes[name].covariates for column in column_names(model.nodes[parent])]


def regression_curves(fit, name, columns, grid):
    """Each parameter set's linear parameter along the first covariate column, the others at their means.

    Parameters
    ----------
    fit : Fit
    name : str
        A node with continuous parents.
    columns : mapping of str to ndarray
        The covariate columns' data (their means fix the columns not drawn).
    grid : ndarray of shape (n_points,)
        Values of the first covariate column.

    Returns
    -------
    ndarray of shape (n_sets, n_points)
    """
    model = fit.model
    factor = model.compiled.factors[name]
    names = covariate_columns(model, name)
    means = np.array([np.nanmean(np.asarray(columns[c], dtype=float)) for c in names])
    covariates = np.tile(means, (len(grid), 1))
    covariates[:, 0] = grid
    params = fit.params[name]
    intercept = np.asarray(params["intercept"], dtype=float).reshape(-1)
    coef = np.asarray(params["coef"], dtype=float).reshape(len(intercept), -1)
    predictor = intercept[:, None] + coef @ covariates.T
    with np.errstate(all="ignore"):
        return np.broadcast_to(factor.kernels.inverse(predictor), predictor.shape)


def draw_regression(axes, fit, data, name):
    """A node's values against its first covariate column, with each parameter set's fitted curve."""
    model = fit.model
    names = covariate_columns(model, name)
    u = np.asarray(data.columns[names[0]], dtype=float)
    y = np.asarray(data.columns[column_names(model.nodes[name])[0]], dtype=float)
    present = np.isfinite(u) & np.isfinite(y)
    axes.scatter(u[present], y[present], s=6, color="0.55", alpha=0.6, linewidths=0, label="data",
                 gid="regression:data", rasterized=True)
    grid = np.linspace(np.min(u[present]), np.max(u[present]), GRID_POINTS)
    curves = regression_curves(fit, name, data.columns, grid)
    configs = parameter_sets(model, name)
    linear = model.compiled.factors[name].kernels.linear
    for index, config in enumerate(configs[:MAX_SETS]):
        axes.plot(grid, curves[index], color=_colour(index), linewidth=1.6,
                  label=f"{set_label(model, name, config)}: fitted {linear}", gid=f"regression:{index}")
    others = f" (other covariates at their means: {', '.join(names[1:])})" if len(names) > 1 else ""
    axes.set_xlabel(names[0] + others)
    axes.set_ylabel(name)
    axes.set_title(f"{name}: fitted {linear} against {names[0]}", fontsize=10)
    axes.legend(fontsize=7, frameon=False)


def _covariances(fit, name):
    """Each parameter set's mean and covariance matrix, from the normal's ``mean`` and ``cov`` or ``var``.

    Returns
    -------
    means : ndarray of shape (n_sets, dim)
    covariances : ndarray of shape (n_sets, dim, dim)
    """
    node = fit.model.nodes[name]
    params = fit.params[name]
    shape = tuple(fit.model.nodes[p].k for p in indexing_parents(fit.model, name))
    means = np.asarray(params["mean"], dtype=float).reshape(-1, node.dim)
    if "cov" in params:
        matrices = np.broadcast_to(np.asarray(params["cov"], dtype=float), shape + (node.dim, node.dim))
    else:
        variances = np.asarray(params["var"], dtype=float)
        if variances.shape == shape:
            # One variance shared by every column (spherical).
            variances = variances[..., None] * np.ones(node.dim)
        matrices = np.broadcast_to(variances, shape + (node.dim,))[..., None] * np.eye(node.dim)
    return means, np.asarray(matrices).reshape(-1, node.dim, node.dim)


def ellipse_geometry(mean, covariance, sds=ELLIPSE_SDS):
    """Centre, width, height and angle (degrees) of the ellipse ``sds`` standard deviations out.

    Parameters
    ----------
    mean : ndarray of shape (2,)
    covariance : ndarray of shape (2, 2)

    Returns
    -------
    tuple
        ``(centre, width, height, angle)``: width along the covariance's leading eigenvector.
    """
    values, vectors = np.linalg.eigh(covariance)
    width, height = 2 * sds * np.sqrt(values[1]), 2 * sds * np.sqrt(values[0])
    angle = math.degrees(math.atan2(vectors[1, 1], vectors[0, 1]))
    return tuple(mean), width, height, angle


def draw_scatter(axes, fit, data, name, pair=None):
    """Two columns of a vector normal node, coloured by each row's most probable parameter set, with an
    ellipse per set ``ELLIPSE_SDS`` standard deviations out (86% of its mass) around its mean."""
    _, _, patches = _matplotlib()
    model = fit.model
    node = model.nodes[name]
    names = column_names(node)
    pair = pair or tuple(names[:2])
    index = [names.index(c) for c in pair]
    x, y = (np.asarray(data.columns[c], dtype=float) for c in pair)
    present = np.isfinite(x) & np.isfinite(y)
    configs = parameter_sets(model, name)
    colours = "0.4"
    latent_parents = [p for p in node.parents if model.nodes[p].latent]
    if len(latent_parents) == 1 and len(configs) <= 10:
        decoded = fit.decode(data.columns, lengths=data.lengths)[latent_parents[0]]
        colours = [_colour(int(c)) for c in decoded[present]]
    # Points as one raster layer: a vector file stays small however many rows there are.
    axes.scatter(x[present], y[present], s=6, c=colours, alpha=0.5, linewidths=0, gid="points", rasterized=True)
    means, covariances = _covariances(fit, name)
    for set_index, config in enumerate(configs[:MAX_SETS * 2]):
        mean = means[set_index][index]
        covariance = covariances[set_index][np.ix_(index, index)]
        centre, width, height, angle = ellipse_geometry(mean, covariance)
        axes.add_patch(patches.Ellipse(centre, width, height, angle=angle, facecolor="none",
                                       edgecolor=_colour(set_index), linewidth=1.6, gid=f"ellipse:{set_index}",
                                       label=set_label(model, name, config) if node.parents else name))
        axes.plot([centre[0]], [centre[1]], marker="x", color="black", markersize=6, gid=f"mean:{set_index}")
    axes.set_xlabel(pair[0])
    axes.set_ylabel(pair[1])
    missing = int((~present).sum())
    shown = f"; {missing} rows with a missing value not shown" if missing else ""
    axes.set_title(f"{name}: data and {ELLIPSE_SDS:g}-sd ellipses{shown}", fontsize=10)
    axes.legend(fontsize=7, frameon=False)


def _listed(fit, name):
    """Whether a categorical node's bars are top-n lists per set (else one group per category)."""
    return fit.model.nodes[name].k > GROUPED_CATEGORIES or len(_sets_of(fit, name)) > MAX_SETS


def draw_categories(axes, fit, name, labels=None, data=None):
    """Category probabilities per parameter set, read from ``fit.top``.

    Up to ``GROUPED_CATEGORIES`` categories: every category, a bar per set side by side.
    More (a topic's words): each set's ``TOP_CATEGORIES`` most probable, as horizontal
    bars one block per set. An observed 0/1 node: its probability of a 1 per column.
    """
    model = fit.model
    if _is_binary(model, name):
        _draw_binary(axes, fit, name, data)
        return
    sets = _sets_of(fit, name)
    node = model.nodes[name]
    listed = _listed(fit, name)
    entries = fit.top(name, n=TOP_CATEGORIES if listed else node.k, labels=labels)
    if not node.parents and not node.chain:
        entries = [entries]
    entries = entries[:MAX_SETS]
    shown = sets[:MAX_SETS]
    if listed:
        _draw_top_lists(axes, fit, name, entries, shown, len(sets))
        return
    names = labels or [str(j) for j in range(node.k)]
    width = 0.8 / len(shown)
    for set_index, (config, listing) in enumerate(zip(shown, entries)):
        probability = dict(listing)
        heights = [probability[label] for label in (labels or range(node.k))]
        offsets = np.arange(node.k) - 0.4 + width * (set_index + 0.5)
        label = set_label(model, name, config) if (node.parents or node.chain) else None
        axes.bar(offsets, heights, width=width * 0.95, color=_colour(set_index) if label else "C0",
                 label=label, gid=f"bars:{set_index}")
    axes.set_xticks(np.arange(node.k), names, fontsize=8, rotation=90 if max(map(len, names)) > 3 else 0)
    axes.set_xlabel(f"{name} = category")
    axes.set_ylabel("probability")
    title = f"P({name} | {', '.join(node.parents)})" if node.parents else \
        f"P({name}[t] | {name}[t-1])" if node.chain else f"P({name})"
    axes.set_title(title, fontsize=10)
    if node.parents or node.chain:
        axes.legend(fontsize=7, frameon=False)


def _draw_top_lists(axes, fit, name, entries, shown, n_sets):
    """Each set's most probable categories as a block of horizontal bars, the most probable on top."""
    model = fit.model
    ticks, tick_labels, position = [], [], 0.0
    for set_index, (config, listing) in enumerate(zip(shown, entries)):
        rows = position - np.arange(len(listing))
        axes.barh(rows, [p for _, p in listing], height=0.8, color=_colour(set_index),
                  label=set_label(model, name, config), gid=f"bars:{set_index}")
        ticks += list(rows)
        tick_labels += [str(label) for label, _ in listing]
        position = rows[-1] - 1.6
    axes.set_yticks(ticks, tick_labels, fontsize=7)
    axes.set_xlabel("probability")
    more = f" (first {len(shown)} of {n_sets} sets)" if n_sets > len(shown) else ""
    parents = ", ".join(model.nodes[name].parents) or f"{name}[t-1]"
    axes.set_title(f"most probable {name} per value of {parents}{more}", fontsize=10)
    axes.legend(fontsize=7, frameon=False, loc="lower right")


def _draw_binary(axes, fit, name, data):
    """P(column = 1 | parents) per column of an observed 0/1 node, through the fit's likelihood."""
    model = fit.model
    names = column_names(model.nodes[name])
    configs = parameter_sets(model, name)[:MAX_SETS]
    probabilities = binary_probabilities(fit, name, data, configs)
    width = 0.8 / len(configs)
    for set_index, config in enumerate(configs):
        offsets = np.arange(len(names)) - 0.4 + width * (set_index + 0.5)
        axes.bar(offsets, probabilities[set_index], width=width * 0.95, color=_colour(set_index),
                 label=set_label(model, name, config) if config else None, gid=f"bars:{set_index}")
    axes.set_xticks(np.arange(len(names)), names, fontsize=8, rotation=90 if len(names) > 4 else 0)
    axes.set_ylabel("probability of a 1")
    axes.set_ylim(0, 1)
    axes.set_title(f"P({name} = 1" + (f" | {', '.join(model.nodes[name].parents)})" if configs[0] else ")"),
                   fontsize=10)
    if configs[0]:
        axes.legend(fontsize=7, frameon=False)


def binary_probabilities(fit, name, data, configs):
    """P(column = 1 | parents = config) for each column of a 0/1 node: p(1, config) / p(config).

    Returns
    -------
    ndarray of shape (len(configs), n_columns)
    """
    if data is None:
        raise OptionError(f"the probabilities of node '{name}' are drawn through the data's columns; give data "
                          "(fit.plot(data=...), or --data PATH)")
    row_fit = _row_model_fit(fit, data)
    result = []
    for column in column_names(fit.model.nodes[name]):
        joint, _, log_weights = joint_log_density(row_fit, data, name, column, np.array([1.0]), configs)
        result.append(np.exp(joint[:, 0] - log_weights))
    return np.array(result).T


def draw_path(axes, fit, data):
    """A chain's decoded state path (Viterbi, ``fit.decode``) over the observed series.

    The observed columns are drawn against the step in the lower part, on a background
    coloured by the decoded state; the path itself is a step line in the upper part, on
    the right axis.
    """
    model = fit.model
    chain = model.chain
    decoded = fit.decode(data.columns, lengths=data.lengths)[chain]
    steps = np.arange(len(decoded))
    changes = np.flatnonzero(np.diff(decoded)) + 1
    starts = np.concatenate([[0], changes])
    stops = np.concatenate([changes, [len(decoded)]])
    for start, stop in zip(starts, stops):
        axes.axvspan(start - 0.5, stop - 0.5, color=_colour(int(decoded[start])), alpha=0.15, linewidth=0)
    series = [c for n in model.observed if n != chain for c in column_names(model.nodes[n])][:MAX_SERIES]
    low, high = math.inf, -math.inf
    for index, column in enumerate(series):
        values = np.asarray(data.columns[column], dtype=float)
        axes.plot(steps, values, color=("0.1", "0.45", "0.7")[index], linewidth=0.8 if len(steps) <= 300 else 0.5,
                  marker="." if len(steps) <= 300 else None, markersize=3, gid=f"series:{column}",
                  rasterized=len(steps) > 300)
        if np.isfinite(values).any():
            low, high = min(low, np.nanmin(values)), max(high, np.nanmax(values))
    if low < high:
        # The series takes the lower 60% of the panel; the path the upper part.
        axes.set_ylim(low - 0.05 * (high - low), high + 0.75 * (high - low))
    for boundary in np.cumsum(data.lengths)[:-1]:
        axes.axvline(boundary - 0.5, color="black", linestyle=":", linewidth=1)
    axes.set_xlim(-0.5, len(steps) - 0.5)
    axes.set_xlabel("step (background: decoded state)")
    axes.set_ylabel(", ".join(series))
    path_axes = axes.twinx()
    path_axes.step(steps, decoded, where="mid", color="black", linewidth=1.0, gid=f"path:{chain}")
    k = model.nodes[chain].k
    path_axes.set_yticks(range(k))
    path_axes.set_ylim(-0.5 - 1.7 * (k - 0.5), k - 0.5)
    path_axes.set_ylabel(f"decoded {chain}")
    axes.set_title(f"decoded path of {chain} (Viterbi) over the series", fontsize=10)
