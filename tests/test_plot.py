"""Pictures of real fits (``fit.plot``, ``declarem plot``) draw what the fit holds.

Each figure is drawn from a fit of a catalog model on its bundled data, and what it draws is read back
from the matplotlib artists and held against the fit by an independent route: a density curve against
the family's own density (scipy) times the mixing weight, and its integral against that weight; an
ellipse against the covariance's eigen-decomposition; bars against ``fit.top`` and the parameters; the
objective against ``fit.history``; the path against ``fit.decode``. The command line writes real PNG,
SVG and PDF files and refuses a suffix it cannot write.
"""

import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

import declarem
from declarem.data import read_model_data
from declarem.errors import ConvergenceWarning, OptionError
from declarem.fit import Fit
from declarem.plot import PlotDependencyError, panels, save_figure, state_occupancy
from support import load_file, run_cli

ROOT = Path(__file__).resolve().parent.parent
MODELS = ROOT / "models"
FITS = {}


def fitted(name, max_iter=30):
    """A seeded fit of models/NAME.toml on its bundled data, with the data's path (one fit per session)."""
    if name not in FITS:
        model = declarem.load_model(str(MODELS / f"{name}.toml"))
        source = str(MODELS / model.data_info["path"])
        columns, weights = read_model_data(model, source)
        with warnings.catch_warnings():
            # Small max_iter keeps the tests fast; what is drawn is held against the fit as it stands.
            warnings.simplefilter("ignore", ConvergenceWarning)
            FITS[name] = model.fit(columns, weights=weights, max_iter=max_iter, tol=1e-6, seed=0), source
    return FITS[name]


def drawn(figure, gid):
    """Every artist of a figure with this gid, in drawing order (the bars of one bar chart share one)."""
    return [artist for axes in figure.axes for artist in [*axes.lines, *axes.patches, *axes.collections]
            if artist.get_gid() == gid]


def artists(figure, gid_prefix):
    """The artists of a figure whose gid starts with ``gid_prefix`` (one each), by gid."""
    found = {}
    for axes in figure.axes:
        for artist in [*axes.lines, *axes.patches, *axes.collections]:
            gid = artist.get_gid()
            if gid and gid.startswith(gid_prefix):
                assert gid not in found, f"two artists with gid {gid}"
                found[gid] = artist
    return found


def integral(line, discrete=False):
    """The area under a drawn density (trapezoid over its grid), or the sum of a drawn mass function."""
    x, y = np.asarray(line.get_xdata(), float), np.asarray(line.get_ydata(), float)
    return y.sum() if discrete else np.trapezoid(y, x)


# -- densities ---------------------------------------------------------------------------------------

def test_gaussian_mixture_density_is_each_component_times_its_weight():
    fit, source = fitted("gmm")
    figure = fit.plot(kind="density", data=source, node="x")
    weights, means, covs = fit.params["z"]["probs"], fit.params["x"]["mean"], fit.params["x"]["cov"]
    by_axes = {axes.get_xlabel(): axes for axes in figure.axes}
    assert set(by_axes) == {"x_0", "x_1"}
    for column in (0, 1):
        lines = {line.get_gid(): line for line in by_axes[f"x_{column}"].lines}
        total = lines["density:total"]
        x = np.asarray(total.get_xdata())
        expected_sum = np.zeros_like(x)
        for j in range(3):
            drawn = lines[f"density:{j}"]
            expected = weights[j] * stats.norm.pdf(x, means[j, column], np.sqrt(covs[j, column, column]))
            np.testing.assert_allclose(drawn.get_ydata(), expected, rtol=1e-7, atol=1e-12)
            assert integral(drawn) == pytest.approx(weights[j], abs=1e-4)
            expected_sum += expected
        np.testing.assert_allclose(total.get_ydata(), expected_sum, rtol=1e-7, atol=1e-12)
        assert integral(total) == pytest.approx(1.0, abs=1e-4)


def test_histogram_under_a_density_is_the_data():
    fit, source = fitted("gmm")
    figure = fit.plot(kind="density", data=source, node="x")
    data = np.genfromtxt(source, delimiter=",", names=True)["x_0"]
    axes = next(a for a in figure.axes if a.get_xlabel() == "x_0")
    histogram, = (patch for patch in axes.patches if patch.get_gid() == "histogram")
    heights, edges, _ = histogram.get_data()
    counts, _ = np.histogram(data, bins=edges)
    np.testing.assert_allclose(heights * np.diff(edges) * len(data), counts, rtol=1e-9)


def test_exponential_density_near_its_bound_integrates_to_the_weights():
    fit, source = fitted("exponential_mixture")
    figure = fit.plot(kind="density", data=source)
    lines = artists(figure, "density:")
    x = np.asarray(lines["density:total"].get_xdata())
    assert x.min() > 0
    for j, (weight, rate) in enumerate(zip(fit.params["z"]["probs"], fit.params["duration"]["rate"])):
        np.testing.assert_allclose(lines[f"density:{j}"].get_ydata(), weight * rate * np.exp(-rate * x), rtol=1e-7)
        assert integral(lines[f"density:{j}"]) == pytest.approx(weight, abs=2e-3)
    assert integral(lines["density:total"]) == pytest.approx(1.0, abs=2e-3)


def test_weighted_counts_draw_a_mass_function_over_the_weighted_frequencies():
    fit, source = fitted("hasselblad")
    figure = fit.plot(kind="density", data=source)
    lines = artists(figure, "density:")
    points = np.asarray(lines["density:total"].get_xdata())
    np.testing.assert_array_equal(points, np.arange(len(points)))
    for j, (weight, rate) in enumerate(zip(fit.params["z"]["probs"], fit.params["deaths"]["rate"])):
        np.testing.assert_allclose(lines[f"density:{j}"].get_ydata(), weight * stats.poisson.pmf(points, rate),
                                   rtol=1e-9, atol=1e-15)
        assert integral(lines[f"density:{j}"], discrete=True) == pytest.approx(weight, abs=1e-9)
    table = np.genfromtxt(source, delimiter=",", names=True)
    frequencies = np.zeros(len(points))
    frequencies[table["deaths"].astype(int)] = table["count"] / table["count"].sum()
    np.testing.assert_allclose([bar.get_height() for bar in drawn(figure, "histogram")], frequencies)


def test_chain_emissions_are_weighted_by_the_chains_occupancy():
    fit, source = fitted("earthquakes_hmm2")
    figure = fit.plot(kind="density", data=source)
    lines = artists(figure, "density:")
    start, transition = fit.params["z"]["start"], fit.params["z"]["probs"]
    n_rows = len(np.genfromtxt(source, delimiter=",", names=True))
    occupancy = np.mean([start @ np.linalg.matrix_power(transition, t) for t in range(n_rows)], axis=0)
    np.testing.assert_allclose(state_occupancy(fit, [n_rows]), occupancy, rtol=1e-10)
    points = np.asarray(lines["density:total"].get_xdata())
    for j, rate in enumerate(fit.params["count"]["rate"]):
        np.testing.assert_allclose(lines[f"density:{j}"].get_ydata(),
                                   occupancy[j] * stats.poisson.pmf(points, rate), rtol=1e-9, atol=1e-15)
    assert integral(lines["density:total"], discrete=True) == pytest.approx(1.0, abs=1e-9)


# -- scatter, categories, objective, path, graph -----------------------------------------------------

def test_ellipses_sit_on_the_means_with_axes_from_the_covariance():
    fit, source = fitted("gmm")
    figure = fit.plot(kind="scatter", data=source)
    ellipses = artists(figure, "ellipse:")
    assert len(ellipses) == 3
    for j in range(3):
        ellipse = ellipses[f"ellipse:{j}"]
        mean, cov = fit.params["x"]["mean"][j], fit.params["x"]["cov"][j]
        np.testing.assert_allclose(ellipse.center, mean, rtol=1e-12)
        values, vectors = np.linalg.eigh(cov)
        assert ellipse.width == pytest.approx(4 * np.sqrt(values[1]), rel=1e-12)
        assert ellipse.height == pytest.approx(4 * np.sqrt(values[0]), rel=1e-12)
        direction = np.array([np.cos(np.radians(ellipse.angle)), np.sin(np.radians(ellipse.angle))])
        assert abs(direction @ vectors[:, 1]) == pytest.approx(1.0, abs=1e-12)


def test_scatter_of_chosen_columns_uses_their_covariance_block():
    fit, source = fitted("penguins")
    pair = ("bill_length_mm", "flipper_length_mm")
    figure = fit.plot(kind="scatter", data=source, columns=pair)
    assert (figure.axes[0].get_xlabel(), figure.axes[0].get_ylabel()) == pair
    for j, ellipse in sorted(artists(figure, "ellipse:").items()):
        index = int(j.split(":")[1])
        np.testing.assert_allclose(ellipse.center, fit.params["size"]["mean"][index][[0, 2]])
        block = fit.params["size"]["cov"][index][np.ix_([0, 2], [0, 2])]
        assert ellipse.width * ellipse.height == pytest.approx(16 * np.sqrt(np.linalg.det(block)), rel=1e-10)


def test_category_bars_are_fit_top():
    fit, source = fitted("latent_class")
    figure = fit.plot(kind="categories", node="q3")
    listed = fit.top("q3", n=4)
    for j in range(3):
        heights = [bar.get_height() for bar in drawn(figure, f"bars:{j}")]
        expected = dict(listed[j])
        np.testing.assert_allclose(heights, [expected[c] for c in range(4)], rtol=1e-12)
        np.testing.assert_allclose(heights, fit.params["q3"]["probs"][j], rtol=1e-12)


def test_a_topics_top_words_are_bars_labelled_with_the_words():
    fit, source = fitted("topic_model", max_iter=3)
    vocabulary = (MODELS / "topic_model_vocab.txt").read_text().splitlines()
    figure = fit.plot(kind="categories", node="word", labels={"word": vocabulary})
    axes = figure.axes[0]
    listed = fit.top("word", n=8, labels=vocabulary)
    words = [label.get_text() for label in axes.get_yticklabels()]
    assert words == [word for topic in listed for word, _ in topic]
    for j, topic in enumerate(listed):
        widths = [bar.get_width() for bar in drawn(figure, f"bars:{j}")]
        np.testing.assert_allclose(widths, [p for _, p in topic], rtol=1e-12)


def test_zero_one_columns_draw_their_probability_of_a_one():
    fit, source = fitted("bernoulli_mixture")
    figure = fit.plot(kind="categories", node="answers", data=source)
    for j in range(3):
        heights = [bar.get_height() for bar in drawn(figure, f"bars:{j}")]
        np.testing.assert_allclose(heights, fit.params["answers"]["p"][j], rtol=1e-9)


def test_objective_line_is_the_history():
    fit, _ = fitted("gmm")
    line, = drawn(fit.plot(kind="objective"), "objective")
    np.testing.assert_array_equal(line.get_ydata(), fit.history)
    np.testing.assert_array_equal(line.get_xdata(), np.arange(fit.n_iter + 1))


def test_path_is_the_decoded_path_and_marks_sequence_boundaries():
    fit, source = fitted("earthquakes_hmm2")
    columns, _ = read_model_data(fit.model, source)
    lengths = [50, 57]
    figure = fit.plot(kind="path", data=source, lengths=lengths)
    path, = drawn(figure, "path:z")
    np.testing.assert_array_equal(path.get_ydata(), fit.decode(columns, lengths=lengths)["z"])
    series, = drawn(figure, "series:count")
    np.testing.assert_array_equal(series.get_ydata(), columns["count"])
    boundaries = [line.get_xdata()[0] for line in figure.axes[0].lines if line.get_linestyle() == ":"]
    assert boundaries == [49.5]


def test_graph_labels_every_node_and_unrolls_a_chain():
    fit, _ = fitted("latent_class")
    figure = fit.plot(kind="graph")
    texts = {text.get_text() for text in figure.axes[0].texts}
    assert set(fit.model.nodes) <= texts
    assert set(artists(figure, "params:")) == {f"params:{name}" for name in fit.model.nodes}
    chain, _ = fitted("earthquakes_hmm2")
    circles = artists(chain.plot(kind="graph"), "node:")
    assert set(circles) == {f"node:{name}[{step}]" for name in ("z", "count") for step in (1, 2, 3)}


def test_graph_draws_free_parameters_pointing_at_their_node():
    fit, _ = fitted("genetic_linkage")
    figure = fit.plot(kind="graph")
    assert "params:theta" in artists(figure, "params:")
    assert "params:z" not in artists(figure, "params:")     # z's probabilities are written in theta
    assert {"z", "x", "theta"} <= {text.get_text() for text in figure.axes[0].texts}


# -- regressions ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("name, response, inverse_link", [
    ("regression_mixture", "y", lambda predictor: predictor),
    ("poisson_regression", "count", np.exp),
])
def test_regression_curves_are_each_sets_fitted_linear_parameter(name, response, inverse_link):
    fit, source = fitted(name)
    assert ("regression", response, None) in panels(fit)
    assert not any(p[0] == "density" for p in panels(fit))          # neither the covariate nor the response
    figure = fit.plot(kind="regression", data=source)
    curves = artists(figure, "regression:")
    params = fit.params[response]
    for index in range(2):
        line = curves[f"regression:{index}"]
        u = np.asarray(line.get_xdata(), float)
        expected = inverse_link(params["intercept"][index] + params["coef"][index, 0] * u)
        np.testing.assert_allclose(line.get_ydata(), expected, rtol=1e-12)
    points = curves["regression:data"].get_offsets()
    columns, _ = read_model_data(fit.model, source)
    np.testing.assert_array_equal(points[:, 0], columns["u"])
    np.testing.assert_array_equal(points[:, 1], columns[response])
    texts = {text.get_text() for text in fit.plot(kind="graph").axes[0].texts}
    assert {"u", "z", response} <= texts


# -- which panels, and how they are asked for --------------------------------------------------------

def test_panels_follow_the_models_structure():
    gmm, _ = fitted("gmm")
    assert panels(gmm) == [("graph", None, None), ("objective", None, None), ("scatter", "x", None),
                           ("categories", "z", None)]
    chain, _ = fitted("earthquakes_hmm2")
    assert [p[0] for p in panels(chain)] == ["graph", "objective", "density", "categories", "path"]
    assert [p[0] for p in panels(chain, has_data=False)] == ["graph", "objective", "categories"]
    topics, _ = fitted("topic_model", max_iter=3)
    assert panels(topics) == [("graph", None, None), ("objective", None, None), ("categories", "word", None)]


def test_overview_draws_every_panel_into_one_figure():
    fit, source = fitted("gmm")
    figure = fit.plot(data=source)
    titles = [axes.get_title() for axes in figure.axes]
    assert titles == ["model graph", "objective per iteration", "x: data and 2-sd ellipses", "P(z)"]


def test_a_panel_draws_into_the_users_axes():
    from matplotlib.figure import Figure
    fit, _ = fitted("gmm")
    figure = Figure()
    axes = figure.add_subplot()
    assert fit.plot(kind="objective", ax=axes) is figure
    assert axes.lines[0].get_gid() == "objective"
    with pytest.raises(OptionError, match="ax takes one panel"):
        fit.plot(ax=axes)


def test_panels_that_do_not_apply_or_lack_data_are_refused_by_name():
    fit, source = fitted("gmm")
    with pytest.raises(OptionError, match="give data"):
        fit.plot(kind="scatter")
    with pytest.raises(OptionError, match="nothing to draw as a path picture.*chain"):
        fit.plot(kind="path", data=source)
    with pytest.raises(OptionError, match="no node 'y'"):
        fit.plot(node="y")
    with pytest.raises(OptionError, match="unknown picture kind 'pie'"):
        fit.plot(kind="pie")
    with pytest.raises(OptionError, match="not two columns"):
        fit.plot(kind="scatter", data=source, columns=("x_0", "y"))


def test_a_saved_and_loaded_fit_draws_the_same(tmp_path):
    fit, source = fitted("gmm")
    fit.save(tmp_path / "fit.json")
    loaded = Fit.load(tmp_path / "fit.json")
    first = drawn(fit.plot(kind="density", data=source, node="x"), "density:total")
    second = drawn(loaded.plot(kind="density", data=source, node="x"), "density:total")
    assert len(first) == len(second) == 2
    for one, other in zip(first, second):
        np.testing.assert_array_equal(one.get_ydata(), other.get_ydata())


def test_the_same_fit_saves_to_the_same_svg_bytes(tmp_path):
    fit, _ = fitted("gmm")
    figure = fit.plot(kind="objective")
    save_figure(figure, tmp_path / "a.svg")
    save_figure(figure, tmp_path / "b.svg")
    assert (tmp_path / "a.svg").read_bytes() == (tmp_path / "b.svg").read_bytes()


# -- without matplotlib, and at import -------------------------------------------------------------

def test_importing_declarem_does_not_import_matplotlib():
    code = ("import sys, declarem, declarem.plot, declarem.fit, declarem.cli; "
            "sys.exit('matplotlib' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", code], cwd=ROOT).returncode == 0


def test_without_matplotlib_the_error_says_how_to_install_it(monkeypatch, tmp_path):
    fit, _ = fitted("gmm")
    fit.save(tmp_path / "fit.json")
    for name in [m for m in sys.modules if m == "matplotlib" or m.startswith("matplotlib.")]:
        monkeypatch.setitem(sys.modules, name, None)
    with pytest.raises(PlotDependencyError, match=r"pip install 'declarem\[plot\]'"):
        fit.plot(kind="objective")
    result = run_cli("plot", MODELS / "gmm.toml", "--fit", tmp_path / "fit.json", "--out", tmp_path / "p.png")
    assert result.returncode == 2 and "pip install 'declarem[plot]'" in result.stderr


# -- the command line --------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def gmm_fit_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("plot") / "gmm.json"
    fitted("gmm")[0].save(path)
    return path


@pytest.mark.parametrize("suffix, magic", [(".png", b"\x89PNG\r\n\x1a\n"), (".svg", b"<svg"), (".pdf", b"%PDF")])
def test_command_line_writes_the_picture_its_suffix_names(suffix, magic, gmm_fit_file, tmp_path):
    out = tmp_path / f"gmm{suffix}"
    # The overview once (PNG); one panel each for the other formats, which costs less to write.
    arguments = {".png": [], ".svg": ["--kind", "scatter"], ".pdf": ["--kind", "objective"]}[suffix]
    result = run_cli("plot", MODELS / "gmm.toml", "--fit", gmm_fit_file, "--out", out, *arguments)
    assert result.returncode == 0, result.stderr
    content = out.read_bytes()
    if suffix == ".svg":
        assert magic in content[:2000] and content.rstrip().endswith(b"</svg>")
    else:
        assert content.startswith(magic)


def test_command_line_refuses_an_unknown_suffix(gmm_fit_file, tmp_path):
    result = run_cli("plot", MODELS / "gmm.toml", "--fit", gmm_fit_file, "--out", tmp_path / "gmm.jpg")
    assert result.returncode == 2
    assert "gmm.jpg" in result.stderr and "'.jpg'" in result.stderr and ".png" in result.stderr
    assert not (tmp_path / "gmm.jpg").exists()


def test_command_line_labels_and_kind_errors(gmm_fit_file, tmp_path):
    out = tmp_path / "p.png"
    result = run_cli("plot", MODELS / "gmm.toml", "--fit", gmm_fit_file, "--out", out, "--labels", "z")
    assert result.returncode == 2 and "NODE=FILE" in result.stderr
    result = run_cli("plot", MODELS / "gmm.toml", "--fit", gmm_fit_file, "--out", out, "--kind", "path")
    assert result.returncode == 2 and "chain" in result.stderr
    labels = tmp_path / "names.txt"
    labels.write_text("small\nmiddle\nlarge\n")
    result = run_cli("plot", MODELS / "gmm.toml", "--fit", gmm_fit_file, "--out", out, "--kind", "categories",
                     "--labels", f"z={labels}")
    assert result.returncode == 0, result.stderr
    assert out.read_bytes().startswith(b"\x89PNG")


# -- the catalog pages show the pictures -------------------------------------------------------------

def test_every_catalog_page_shows_its_picture():
    generator = load_file(ROOT / "docs" / "generate_models.py")
    for spec in MODELS.glob("*.toml"):
        page = (ROOT / "docs" / "models" / f"{spec.stem}.md").read_text()
        link = generator.picture_link(spec.stem)
        assert link in page
        target = ROOT / "docs" / "models" / generator.picture_path(spec.stem)
        assert target.is_file() and target.read_bytes().lstrip().startswith((b"<?xml", b"<svg"))
