"""Bad input through the Python API: one DeclaremError naming the file, node, column or row.

Each class of bad input (issue #8) has its tests here; the same classes through the command
line are in test_cli_hardening.py.
"""

import io
import json
import math
import os
import shutil
import textwrap
from pathlib import Path

import numpy as np
import pytest
from support import POISSON_SPEC, write
import scipy.sparse
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import declarem
from declarem import data as data_module
from declarem.data import node_data, read_csv, read_data, read_input, read_model_data
from declarem.errors import DataError, DeclaremError, InitError, OptionError, SpecError
from declarem.fit import Fit, atomic_output, checked_params
from declarem.spec import load_model, model_from_spec

ROOT = Path(__file__).resolve().parent.parent
MODELS = ROOT / "models"
FAST = settings(max_examples=40, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])

@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("hardening")


@pytest.fixture(scope="module")
def poisson(workdir):
    """The catalog's Poisson mixture, compiled once for the module."""
    model = declarem.load_model(MODELS / "poisson_mixture.toml")
    model.compiled
    return model


@pytest.fixture(scope="module")
def poisson_fit(poisson, workdir):
    fit = poisson.fit(MODELS / "poisson_mixture.csv", max_iter=5, tol=0, seed=0)
    path = workdir / "poisson_fit.json"
    fit.save(path)
    return path


@pytest.fixture(scope="module")
def gmm():
    return declarem.load_model(MODELS / "gmm.toml")


# --- 1. data and spec files -------------------------------------------------------------------------------

@pytest.mark.parametrize("content, fragment", [
    ("", "the file is empty"),
    ("count\n", "no data rows"),
    ("count\n\n\n", "no data rows"),
    ("\ncount\n1\n", "line 1 is empty"),
    ("count,,x\n1,2,3\n", "field 2 of the header has no column name"),
    ("count,count\n1,2\n", "column 'count' twice"),
    ("count\n1\n2,3\n", "line 3 has 2 fields"),
    ("count\n1\nabc\n", "line 3, column 'count': 'abc' is not a number"),
    ("count\n1\n\"2\x00\"\n", "line 3, column 'count': '2\\x00' is not a number"),
    (b"count\n1\ncaf\xe9\n", "line 3, column 4: byte 0xe9 is not UTF-8"),
    (b"count\n1\n\xff\xfe\x00\x01\n", "line 3, column 1: byte 0xff is not UTF-8"),
    (b"\xff\xfec\x00o\x00u\x00n\x00t\x00\n\x00", "line 1, column 1: byte 0xff is not UTF-8"),
])
def test_bad_csv_files_name_the_file(poisson, tmp_path, content, fragment):
    path = write(tmp_path / "bad.csv", content)
    with pytest.raises(DataError) as info:
        poisson.fit(path, max_iter=1)
    message = str(info.value)
    assert message.startswith(f"{path}:") and fragment in message, message
    assert "\n" not in message


def test_csv_with_a_byte_order_mark_reads_as_utf8(tmp_path):
    path = write(tmp_path / "bom.csv", b"\xef\xbb\xbfcount\n1\n2\n")
    assert list(read_csv(path)) == ["count"]


@pytest.mark.parametrize("holes", [False, True])
def test_a_file_of_numbers_reads_as_the_line_by_line_parse_reads_it(tmp_path, holes):
    """Every cell a number: one float() per cell through map (the fast path); with a hole anywhere, the
    line-by-line parse. Both read the same cells the same way: blank lines skipped, spaces, underscores,
    exponents, nan and inf as float() reads them."""
    rows = ["a,b", " 1 ,2.5", "", "1_000,-3e-2", "   ", "nan,inf", "7,8"]
    if holes:
        rows.append(",NA")
    path = write(tmp_path / "numbers.csv", "\n".join(rows) + "\n")
    table = read_csv(path)
    expected_a = [1.0, 1000.0, math.nan, 7.0] + ([math.nan] if holes else [])
    expected_b = [2.5, -0.03, math.inf, 8.0] + ([math.nan] if holes else [])
    np.testing.assert_array_equal(table["a"], expected_a)
    np.testing.assert_array_equal(table["b"], expected_b)
    assert data_module._all_numbers(iter([[" 1 ", "2"], ["", "3"]]), ["a", "b"]) is None
    assert data_module._all_numbers(iter([["1", "2", "3"]]), ["a", "b"]) is None


def test_numpy_reads_a_plain_file_of_numbers_to_the_values_float_reads():
    """A file with no quotes and only numbers is parsed by numpy (``_numbers_only``), about three times as fast
    as the csv module and float(): the same values to the bit, random doubles, subnormals, signed zeros and
    infinities among them; anything numpy refuses (underscores, NA, empty cells, ragged rows, quotes) is
    left to the slow parse (None)."""
    rng = np.random.default_rng(0)
    cells = [repr(float(v)) for v in rng.standard_normal(200) * 10.0 ** rng.integers(-300, 300, 200)]
    cells += ["5e-324", "-0", "0.1", " 3 ", "1e400", "-inf", "nan", "+.5", "1.7976931348623157e308"]
    text = "a,b\n" + "\n".join(f"{x},{y}" for x, y in zip(cells, reversed(cells))) + "\n"
    fast = data_module._numbers_only(text, 2)
    expected = np.array([[float(x), float(y)] for x, y in zip(cells, reversed(cells))])
    assert fast.shape == expected.shape and fast.tobytes() == expected.tobytes()
    for body in ["1_000,2", "1,NA", "1,", "1,2,3", '"1",2', "1,2\n3", "1,#2", "\n"]:
        assert data_module._numbers_only("a,b\n" + body + "\n", 2) is None, body


def test_csv_field_over_the_size_limit_is_a_data_error(tmp_path):
    path = write(tmp_path / "long.csv", "count\n\"" + "1" * 200_000 + "\"\n")
    with pytest.raises(DataError, match="not readable as CSV"):
        read_csv(path)


@pytest.mark.parametrize("special", ["/dev/zero", "/dev/urandom", "/dev/null"])
def test_device_files_are_refused_without_reading(poisson, special):
    if not os.path.exists(special):
        pytest.skip(f"no {special}")
    with pytest.raises(DataError, match=f"{special}: is a character device, not a data file"):
        poisson.fit(special, max_iter=1)
    with pytest.raises(SpecError, match=f"{special}: is a character device, not a spec file"):
        load_model(special)


def test_fifo_is_refused_without_opening(tmp_path, poisson):
    fifo = tmp_path / "pipe.csv"
    os.mkfifo(fifo)
    # Opening a FIFO with no writer blocks: the refusal must come from stat alone.
    with pytest.raises(DataError, match="named pipe"):
        read_csv(fifo)
    with pytest.raises(SpecError, match="named pipe"):
        load_model(fifo)


def test_directories_are_refused(tmp_path, poisson):
    with pytest.raises(DataError, match=f"{tmp_path}: is a directory, not a data file"):
        poisson.fit(tmp_path, max_iter=1)
    with pytest.raises(SpecError, match=f"{tmp_path}: is a directory, not a spec file"):
        load_model(tmp_path)
    npz_dir = tmp_path / "matrix.npz"
    npz_dir.mkdir()
    with pytest.raises(DataError, match="is a directory"):
        read_data(npz_dir, rows="doc", columns="word")


def test_spec_data_path_to_a_device_is_refused(tmp_path):
    spec = write(tmp_path / "zero.toml", POISSON_SPEC.replace('"counts.csv"', '"/dev/zero"'))
    model = load_model(spec)
    with pytest.raises(DataError, match="/dev/zero: is a character device"):
        read_model_data(model, declarem.spec.data_path(model))


@pytest.mark.parametrize("path, fragment", [
    ("{tmp}/file.csv/inner.csv", "cannot read the data file: Not a directory"),
    ("{tmp}/" + "a" * 5000 + ".csv", "cannot read the data file: File name too long"),
    ("{tmp}/nul\x00.csv", "cannot contain a NUL character"),
    ("{tmp}/missing.csv", "no such data file"),
])
def test_unreadable_paths_are_data_errors(tmp_path, path, fragment):
    write(tmp_path / "file.csv", "count\n1\n")
    with pytest.raises(DataError, match=fragment):
        read_csv(path.format(tmp=tmp_path))


def test_os_error_while_reading_names_the_file(tmp_path, monkeypatch):
    path = write(tmp_path / "locked.csv", "count\n1\n")
    real_open = open

    def refusing_open(file, *args, **kwargs):
        if os.fspath(file) == os.fspath(path):
            raise PermissionError(13, "Permission denied")
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr("builtins.open", refusing_open)
    with pytest.raises(DataError, match=f"{path}: cannot read the data file: Permission denied"):
        read_csv(path)
    with pytest.raises(SpecError, match="cannot read the spec file: Permission denied"):
        read_input(path, "spec file", SpecError)


@pytest.fixture(scope="module")
def npz_bytes():
    matrix = scipy.sparse.random(6, 9, density=0.4, format="csr", random_state=0)
    matrix.data = np.ceil(matrix.data * 5)
    buffer = io.BytesIO()
    scipy.sparse.save_npz(buffer, matrix)
    return buffer.getvalue()


def test_sparse_matrix_reads(tmp_path, npz_bytes):
    columns = read_data(write(tmp_path / "m.npz", npz_bytes), rows="doc", columns="word")
    assert set(columns) == {"doc", "word", "count"} and len(columns["count"]) > 0


@pytest.mark.parametrize("cut", [0, 1, 30, 100, -200, -22, -1])
def test_truncated_npz_is_a_data_error(tmp_path, npz_bytes, cut):
    path = write(tmp_path / "m.npz", npz_bytes[:cut])
    with pytest.raises(DataError, match=f"{path}: not a scipy sparse .npz matrix"):
        read_data(path, rows="doc", columns="word")


def test_npz_that_is_not_a_sparse_matrix(tmp_path):
    buffer = io.BytesIO()
    np.savez(buffer, a=np.arange(3))
    path = write(tmp_path / "dense.npz", buffer.getvalue())
    with pytest.raises(DataError, match="not a scipy sparse .npz matrix") as info:
        read_data(path, rows="doc", columns="word")
    assert "object at 0x" not in str(info.value)


@FAST
@given(edits=st.lists(st.tuples(st.integers(0, 10 ** 6), st.integers(0, 255)), min_size=1, max_size=4),
       cut=st.integers(0, 10 ** 6))
def test_damaged_npz_reads_or_is_a_data_error(tmp_path, npz_bytes, edits, cut):
    damaged = bytearray(npz_bytes[:max(1, cut % (len(npz_bytes) + 1))])
    for position, value in edits:
        damaged[position % len(damaged)] = value
    path = write(tmp_path / "damaged.npz", bytes(damaged))
    try:
        columns = read_data(path, rows="doc", columns="word")
    except DataError as exc:
        assert str(exc).startswith(f"{path}:")
    else:
        assert np.all(np.isfinite(columns["count"])) and np.all(columns["count"] >= 0)


@FAST
@given(content=st.binary(max_size=300))
def test_random_bytes_as_csv_read_or_raise_data_error(tmp_path, poisson, content):
    path = write(tmp_path / "random.csv", content)
    try:
        node_data(poisson, read_csv(path), source=str(path))
    except DataError as exc:
        assert str(exc).startswith(f"{path}:") and "\n" not in str(exc).strip()


@FAST
@given(content=st.text(alphabet=st.sampled_from(list("count,\n\r\"0123456789.-e nai\x00\t")), max_size=80))
def test_random_csv_text_reads_or_raises_data_error(tmp_path, poisson, content):
    path = write(tmp_path / "random.csv", content)
    try:
        checked = node_data(poisson, read_csv(path), source=str(path))
    except DataError as exc:
        assert str(exc).startswith(f"{path}:")
    else:
        assert checked.n_rows > 0 and np.all(checked.values["count"] >= 0)


@pytest.mark.parametrize("content, fragment", [
    (b"[nodes.c]\nfamily = \"caf\xe9\"\n", "line 2, column 14: byte 0xe9 is not UTF-8"),
    (b"\x00\x01\x02binary", "not valid TOML"),
    (b"PK\x03\x04\x14\x00\x00\x00\x08\x00\xff\xfe", "line 1, column 11: byte 0xff is not UTF-8"),
    ("x = " + "[" * 5000 + "]" * 5000, "nested too deeply"),
    ("x = " + "{a = " * 3000 + "1" + "}" * 3000, "nested too deeply"),
    ("[nodes.c\nfamily=", "not valid TOML"),
    ("", "no [nodes.NAME] tables"),
])
def test_bad_spec_files_are_one_spec_error(tmp_path, content, fragment):
    path = write(tmp_path / "bad.toml", content)
    with pytest.raises(SpecError) as info:
        load_model(path)
    assert str(info.value).startswith(f"{path}:") and fragment in str(info.value), str(info.value)


@FAST
@given(content=st.binary(max_size=200))
def test_random_bytes_as_spec_load_or_raise_declarem_error(tmp_path, content):
    path = write(tmp_path / "random.toml", content)
    with pytest.raises(DeclaremError):
        load_model(path)


# --- 2. unknown keys and wrong types in the spec's tables ---------------------------------------------------

@pytest.mark.parametrize("edit, fragment", [
    (("[data]", "[data]\nweight = \"count\""), "unknown key 'weight' in [data]; did you mean 'weights'?"),
    (("[data]", "[data]\npth = \"x.csv\""), "unknown key 'pth' in [data]; did you mean 'path'?"),
    (("[data]", "[data]\nrow = \"doc\""), "unknown key 'row' in [data]; did you mean 'rows'?"),
    (("[data]", "[data]\ncolumn = \"word\""), "unknown key 'column' in [data]; did you mean 'columns'?"),
    (("[data]", "[data]\nformat = \"csv\""), "unknown key 'format' in [data]; allowed are path, weights"),
    (("[model]", "[model]\nnmae = \"x\""), "unknown key 'nmae' in [model]; did you mean 'name'?"),
    (("[model]", "[model]\ndescripton = \"x\""), "did you mean 'description'?"),
    (("[model]", "[model]\nauthor = \"x\""), "unknown key 'author' in [model]; allowed are name, description"),
    (("[nodes.z]", "[node.y]\nfamily = \"poisson\"\n[nodes.z]"), "unknown table [node]; did you mean [nodes]?"),
    (("[model]", "[familes]\n[model]"), "unknown table [familes]; did you mean [families]?"),
    (("[model]", "[parms]\n[model]"), "unknown table [parms]; did you mean [params]?"),
    (("[model]", "seed = 3\n[model]"), "unknown table [seed]; the tables are [model], [data]"),
    (("path = \"counts.csv\"", "path = 3"), "[data] path must be a string, found an integer 3"),
    (("path = \"counts.csv\"", "path = [\"a.csv\"]"), "[data] path must be a string, found a list"),
    (("path = \"counts.csv\"", "path = \"c.csv\"\nweights = 1.5"), "[data] weights must be a string"),
    (("path = \"counts.csv\"", "path = \"c.csv\"\nrows = true"), "[data] rows must be a string"),
    (("name = \"counts\"", "name = 5"), "[model] name must be a string, found an integer 5"),
    (("name = \"counts\"", "name = \"c\"\ndescription = {a = 1}"), "[model] description must be a string"),
    (("[model]", "params = 3\n[model]"), "[params] must be a table, found an integer"),
    (("[model]", "families = [1]\n[model]"), "[families] must be a table, found a list"),
    (("parents = [\"z\"]", "parents = [[\"z\"]]"), "'parents' must be a list of node names, found a list"),
    (("parents = [\"z\"]", "parents = [1]"), "'parents' must be a list of node names, found an integer 1"),
    (("parents = [\"z\"]", "parents = \"z\""), "'parents' must be a list of node names"),
])
def test_spec_tables_refuse_unknown_keys_and_wrong_types(tmp_path, edit, fragment):
    old, new = edit
    assert old in POISSON_SPEC
    path = write(tmp_path / "spec.toml", POISSON_SPEC.replace(old, new, 1))
    with pytest.raises(SpecError) as info:
        load_model(path)
    assert str(info.value).startswith(f"{path}:") and fragment in str(info.value), str(info.value)


def test_known_data_keys_load(tmp_path):
    text = POISSON_SPEC.replace("[data]", "[data]\nweights = \"n\"\nrows = \"z\"\ncolumns = \"c\"")
    model = load_model(write(tmp_path / "spec.toml", text))
    assert model.data_info["weights"] == "n"


@pytest.mark.parametrize("spec, fragment", [
    ([], "expected tables at the top level, found a list"),
    ({"nodes": 3}, "[nodes] must be a table"),
    ({"nodes": {}}, "no [nodes.NAME] tables"),
    ({"nodes": {"c": 3}}, "node 'c' must be a table [nodes.c], found an integer"),
    ({"nodes": {"c": {"family": "poisson"}}, "data": {"weight": "n"}}, "did you mean 'weights'?"),
    ({"nodes": {"c": {"family": "poisson"}}, "model": None}, "[model] must be a table, found null"),
])
def test_stored_declarations_are_checked_like_spec_files(spec, fragment):
    with pytest.raises(SpecError, match=".*".join(map(__import__("re").escape, fragment.split("*")))):
        model_from_spec(spec, source="fit.json")


# --- 3. integer data beyond float64's exact integers; odd arrays and weights --------------------------------

LIMIT = 2 ** 53 - 1


@pytest.mark.parametrize("value", [1e18, 2.0 ** 53, 2.0 ** 60, 1e300])
def test_counts_beyond_the_exact_integers_are_refused(poisson, value):
    counts = np.array([1.0, 3.0, value, 2.0])
    with pytest.raises(DataError) as info:
        node_data(poisson, {"count": counts}, source="counts.csv")
    message = str(info.value)
    assert "counts.csv: column 'count', row 2" in message and str(LIMIT) in message, message


def test_the_largest_exact_integer_is_accepted(poisson):
    checked = node_data(poisson, {"count": np.array([0.0, float(LIMIT)])})
    assert checked.values["count"][1] == LIMIT


def test_int64_counts_beyond_the_limit_are_refused_before_rounding(poisson):
    counts = np.array([1, 2 ** 62 + 1], dtype=np.int64)
    with pytest.raises(DataError, match="row 1: value 4.6.*e\\+18"):
        node_data(poisson, {"count": counts})


@pytest.mark.parametrize("family, extra, value", [
    ("geometric", "", 2.0 ** 54),
    ("binomial", "trials = 10", 2.0 ** 54),
    ("bernoulli", "", 2.0 ** 54),
])
def test_integer_supports_refuse_huge_values(tmp_path, family, extra, value):
    text = POISSON_SPEC.replace('family = "poisson"', f'family = "{family}"\n{extra}')
    model = load_model(write(tmp_path / "spec.toml", text))
    with pytest.raises(DataError, match="column 'c', row 0"):
        node_data(model, {"c": np.array([value, 1.0])})


def test_user_family_with_integer_support_refuses_huge_values(tmp_path):
    text = POISSON_SPEC.replace('family = "poisson"', 'family = "twos"') + textwrap.dedent("""
        [families.twos]
        logpdf = "x*log(l) - l - lgamma(x + 1)"
        support = "integer"
        params = { l = "positive" }
    """)
    model = load_model(write(tmp_path / "spec.toml", text))
    with pytest.raises(DataError, match="row 1: .*2\\*\\*53 - 1"):
        node_data(model, {"c": np.array([-3.0, -1e17])})


@pytest.mark.parametrize("column, fragment", [
    (np.array([1 + 2j, 3 + 0j]), "holds complex128 values; expected real numbers"),
    (np.array(["2020-01-01", "2020-01-02"], dtype="M8[D]"), "holds datetime64[D] values"),
    (np.array([10 ** 400, 1], dtype=object), "column 'count' is not numeric"),
    (np.array(["1", "x"]), "column 'count' is not numeric"),
])
def test_columns_that_are_not_real_numbers_are_refused(poisson, column, fragment):
    with pytest.raises(DataError, match=fragment.replace("[", "\\[").replace("]", "\\]")):
        node_data(poisson, {"count": column})


def test_ragged_column_is_a_data_error(poisson):
    with pytest.raises(DataError, match="column 'count' is not an array of numbers"):
        node_data(poisson, {"count": [[1, 2], [3]]})


def test_vector_columns_of_unequal_length_are_refused(gmm):
    with pytest.raises(DataError, match="column 'x_1' has 2 rows; column 'x_0' has 3"):
        node_data(gmm, {"x_0": [0.0, 1.0, 2.0], "x_1": [0.0, 1.0]})
    with pytest.raises(DataError, match="column 'x_1' has shape \\(2, 1\\)"):
        node_data(gmm, {"x_0": [0.0, 1.0], "x_1": [[0.0], [1.0]]})


@pytest.mark.parametrize("weights, fragment", [
    (["a", "b", "c"], "column 'weights' is not numeric"),
    ({"a": 1}, "column 'weights' is not numeric"),
    ([1.0, np.nan, 1.0], "row 1: weight nan must be finite"),
    ([1.0, np.inf, 1.0], "row 1: weight inf must be finite"),
    ([1.0, -1.0, 1.0], "row 1: weight -1 must be finite and >= 0"),
    ([1e308, 1e308, 1e308], "sum to inf, more than 2\\*\\*53 - 1"),
    ([1e16, 1.0, 1.0], "sum to 1e\\+16, more than 2\\*\\*53 - 1"),
    ([1e-320, 0.0, 0.0], "too small to divide by"),
    ([0.0, 0.0, 0.0], "sum to zero"),
    ([1.0, 2.0], "shape \\(2,\\); expected \\(3,\\)"),
])
def test_absurd_weights_are_refused(poisson, weights, fragment):
    with pytest.raises(DataError, match=fragment):
        node_data(poisson, {"count": np.array([1.0, 2.0, 3.0])}, weights=weights, source="counts.csv")


def test_weights_column_of_text_is_refused(poisson):
    with pytest.raises(DataError, match="column 'n' is not numeric"):
        node_data(poisson, {"count": [1.0, 2.0], "n": np.array(["1", "many"])}, weights="n")


# --- 4. fit files and parameter files -----------------------------------------------------------------------

def tampered(path, workdir, edit, name="tampered.json"):
    stored = json.loads(Path(path).read_text())
    edit(stored)
    out = workdir / name
    out.write_text(json.dumps(stored, allow_nan=True))
    return out


def set_in(keys, value):
    def edit(stored):
        target = stored
        for key in keys[:-1]:
            target = target[key]
        target[keys[-1]] = value
    return edit


def delete(keys):
    def edit(stored):
        target = stored
        for key in keys[:-1]:
            target = target[key]
        del target[keys[-1]]
    return edit


@pytest.mark.parametrize("edit, fragment", [
    (set_in(["params", "z", "probs"], [-5.0, 3.0, 3.0]), "'z.probs' rows must be probabilities summing to 1"),
    (set_in(["params", "z", "probs"], [0.5, 0.5]), "'z.probs' has shape (2,); expected (3,)"),
    (set_in(["params", "z", "probs"], [[0.2, 0.3, 0.5]]), "'z.probs' has shape (1, 3)"),
    (set_in(["params", "z", "probs"], ["0.2", "x", "0.5"]), "'z.probs' is not numeric"),
    (set_in(["params", "z", "probs"], [0.2, [0.3], 0.5]), "'z.probs' is not numeric"),
    (set_in(["params", "z", "probs"], {"a": 1}), "'z.probs' is not numeric"),
    (set_in(["params", "count", "rate"], [1.0, float("nan"), 3.0]), "'count.rate' has non-finite values"),
    (set_in(["params", "count", "rate"], [1.0, float("inf"), 3.0]), "'count.rate' has non-finite values"),
    (set_in(["params", "count", "rate"], [1.0, -2.0, 3.0]), "'count.rate' must be >= 0"),
    (set_in(["params", "count", "rate"], 7), "'count.rate' has shape ()"),
    (set_in(["params", "count", "scale"], [1.0, 2.0, 3.0]), "node 'count' has no parameter 'scale'"),
    (set_in(["params", "count"], [1.0, 2.0, 3.0]), "'count' must map parameter names to arrays"),
    (set_in(["params", "ghost"], {"p": 1}), "'ghost' is not a node or free parameter"),
    (delete(["params", "count"]), "parameters missing: count.rate"),
    (delete(["params", "z", "probs"]), "parameters missing: z.probs"),
    (set_in(["params"], [1, 2]), "'params' must be a JSON object"),
    (set_in(["loglik"], float("nan")), "'loglik' must be a finite number, found nan"),
    (set_in(["loglik"], "-3.0"), "'loglik' must be a finite number, found a string"),
    (set_in(["loglik"], True), "'loglik' must be a finite number, found True"),
    (set_in(["history"], []), "'history' must be a non-empty list"),
    (set_in(["history"], [1.0, "x"]), "'history[1]' must be a finite number"),
    (set_in(["history"], [1.0, float("-inf")]), "'history[1]' must be a finite number, found -inf"),
    (set_in(["history"], 3.0), "'history' must be a non-empty list of numbers, found a number"),
    (set_in(["n_iter"], -1), "'n_iter' must be an integer >= 0"),
    (set_in(["n_iter"], 2.5), "'n_iter' must be an integer >= 0"),
    (set_in(["n_iter"], True), "'n_iter' must be an integer >= 0"),
    (set_in(["converged"], "yes"), "'converged' must be true or false"),
    (set_in(["hard"], 1), "'hard' must be true or false"),
    (set_in(["n_observations"], 0), "'n_observations' must be positive"),
    (set_in(["n_observations"], None), "'n_observations' must be a finite number, found null"),
    (set_in(["log_prior"], float("inf")), "'log_prior' must be a finite number"),
    (set_in(["bic"], "low"), "'bic' must be a finite number"),
    (delete(["loglik"]), "not a fit: no 'loglik'"),
])
def test_tampered_fit_files_are_refused(poisson, poisson_fit, workdir, edit, fragment):
    path = tampered(poisson_fit, workdir, edit)
    for model in (poisson, None):
        with pytest.raises(DeclaremError) as info:
            Fit.load(path, model=model)
        assert str(info.value).startswith(f"{path}:") and fragment in str(info.value), str(info.value)


@pytest.mark.parametrize("content, fragment", [
    ("[" * 100_000 + "]" * 100_000, "JSON nested too deeply"),
    ("{\"a\": " * 100_000 + "1" + "}" * 100_000, "JSON nested too deeply"),
    ("[1, 2]", "expected a JSON object"),
    ("3", "expected a JSON object"),
    ("\"fit\"", "expected a JSON object"),
    ("null", "expected a JSON object"),
    ("", "not valid JSON"),
    ("{\"loglik\": 1e999999}", "not a fit: no 'params'"),
    ("{\"params\": {\"count\": {\"rate\": [1" + "0" * 400 + "]}}}", "too large for a 64-bit float"),
    ("{\"n\": 1" + "0" * 5000 + "}", "not valid JSON"),
    (b"{\"loglik\": \"caf\xe9\"}", "line 1, column 16: byte 0xe9 is not UTF-8"),
])
def test_fit_files_that_are_not_fits_are_refused(poisson, workdir, content, fragment):
    path = write(workdir / "notafit.json", content)
    with pytest.raises(DeclaremError) as info:
        Fit.load(path, model=poisson)
    assert str(info.value).startswith(f"{path}:") and fragment in str(info.value), str(info.value)


def test_fit_without_a_model_declaration_needs_the_model(poisson_fit, workdir):
    path = tampered(poisson_fit, workdir, delete(["model"]))
    with pytest.raises(DataError, match="stores no model declaration"):
        Fit.load(path)
    assert Fit.load(path, model=declarem.load_model(MODELS / "poisson_mixture.toml")).n_iter == 5


def test_fit_with_a_tampered_declaration_is_a_spec_error(poisson_fit, workdir):
    path = tampered(poisson_fit, workdir, set_in(["model", "data"], {"weight": "n"}))
    with pytest.raises(SpecError, match=f"{path}: unknown key 'weight' in \\[data\\]"):
        Fit.load(path)


def test_fit_file_round_trip_keeps_every_value(poisson, poisson_fit):
    loaded = Fit.load(poisson_fit, model=poisson)
    again = Fit.load(poisson_fit)
    stored = json.loads(Path(poisson_fit).read_text())
    assert loaded.loglik == stored["loglik"] and loaded.history == stored["history"]
    for node, params in stored["params"].items():
        for name, value in params.items():
            np.testing.assert_array_equal(loaded.params[node][name], value)
            np.testing.assert_array_equal(again.params[node][name], value)


def test_fit_of_a_model_with_free_parameters_round_trips(tmp_path):
    model = declarem.load_model(MODELS / "genetic_linkage.toml")
    fit = model.fit(MODELS / "genetic_linkage.csv", max_iter=3, tol=0)
    path = tmp_path / "linkage.json"
    fit.save(path)
    loaded = Fit.load(path)
    assert loaded.params.keys() == fit.params.keys()
    assert loaded.params["theta"] == fit.params["theta"]
    stored = json.loads(path.read_text())
    stored["theta"] = 0.5
    stored["params"]["theta"] = 1.5
    write(path, json.dumps(stored))
    with pytest.raises(InitError, match=f"{path}: free parameter 'theta' = 1.5 is outside its domain"):
        Fit.load(path)


JSON_LEAVES = st.one_of(st.none(), st.booleans(), st.integers(-10 ** 20, 10 ** 20),
                        st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=4))
JSON_VALUES = st.recursive(JSON_LEAVES, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.sampled_from(["z", "count", "probs", "rate", "x"]), inner,
                                                 max_size=3)), max_leaves=12)


@FAST
@given(where=st.sampled_from([["params", "z", "probs"], ["params", "count", "rate"], ["params", "z"],
                              ["params"], ["loglik"], ["history"], ["n_iter"], ["converged"],
                              ["n_observations"], ["model"], ["model", "nodes"]]),
       value=JSON_VALUES)
def test_random_json_in_a_fit_file_loads_valid_or_raises(poisson, poisson_fit, workdir, where, value):
    path = tampered(poisson_fit, workdir, set_in(where, value), name="random.json")
    try:
        fit = Fit.load(path, model=poisson if where[0] != "model" else None)
    except DeclaremError as exc:
        assert str(exc).startswith(f"{path}:"), str(exc)
    else:
        # Whatever loads is a valid, complete set of parameters and finite diagnostics.
        checked_params(poisson, fit.params, "reloaded", complete=True)
        assert math.isfinite(fit.loglik) and all(math.isfinite(v) for v in fit.history)


@FAST
@given(value=JSON_VALUES)
def test_random_json_as_a_whole_fit_file_raises_declarem_error(poisson, workdir, value):
    path = write(workdir / "whole.json", json.dumps(value, allow_nan=True))
    with pytest.raises(DeclaremError):
        Fit.load(path, model=poisson)


def test_checked_params_may_be_partial_for_an_init(poisson):
    assert set(checked_params(poisson, {"count": {"rate": [1.0, 2.0, 3.0]}}, "init.json")) == {"count"}
    with pytest.raises(InitError, match="init.json: 'count.rate' has non-finite values"):
        checked_params(poisson, {"count": {"rate": [1.0, np.nan, 3.0]}}, "init.json")


def test_top_refuses_a_bad_count(poisson, poisson_fit):
    fit = Fit.load(poisson_fit, model=poisson)
    for n in (0, -1, 1.5, True):
        with pytest.raises(OptionError, match="n must be a positive integer"):
            fit.top("z", n=n)
    with pytest.raises(DataError, match="'count' is not a categorical node"):
        fit.top("count")
    assert len(fit.top("z", n=2)) == 2


# --- 6. writing: atomic, and unwritable paths ---------------------------------------------------------------

def leftovers(directory):
    return [p.name for p in Path(directory).iterdir() if p.name.endswith(".tmp")]


def test_save_replaces_atomically_and_keeps_the_mode(poisson, poisson_fit, tmp_path):
    fit = Fit.load(poisson_fit, model=poisson)
    path = write(tmp_path / "fit.json", "old")
    os.chmod(path, 0o640)
    fit.save(path)
    assert json.loads(path.read_text())["loglik"] == fit.loglik
    assert (os.stat(path).st_mode & 0o777) == 0o640
    assert leftovers(tmp_path) == []


def no_space(*args, **kwargs):
    raise OSError(28, "No space left on device")


@pytest.mark.parametrize("failing", ["fsync", "fchmod", "replace"])
def test_failed_save_leaves_the_previous_file(poisson, poisson_fit, tmp_path, monkeypatch, failing):
    fit = Fit.load(poisson_fit, model=poisson)
    path = write(tmp_path / "fit.json", "previous content")
    monkeypatch.setattr(os, failing, no_space)
    with pytest.raises(OptionError, match=f"{path}: cannot write: No space left on device"):
        fit.save(path)
    monkeypatch.undo()
    assert path.read_text() == "previous content"
    assert leftovers(tmp_path) == []


def test_failed_write_leaves_the_previous_file(tmp_path):
    path = write(tmp_path / "out.csv", "previous")
    with pytest.raises(OptionError, match=f"{path}: cannot write: No space left on device"):
        with atomic_output(path) as handle:
            handle.write("partial")
            no_space()
    assert path.read_text() == "previous" and leftovers(tmp_path) == []


def test_interrupted_output_leaves_the_previous_file(tmp_path):
    path = write(tmp_path / "out.csv", "previous")
    with pytest.raises(KeyboardInterrupt):
        with atomic_output(path) as handle:
            handle.write("partial")
            raise KeyboardInterrupt
    assert path.read_text() == "previous" and leftovers(tmp_path) == []


def test_save_through_a_symlink_writes_the_target(poisson, poisson_fit, tmp_path):
    fit = Fit.load(poisson_fit, model=poisson)
    target = write(tmp_path / "target.json", "old")
    link = tmp_path / "link.json"
    link.symlink_to(target)
    fit.save(link)
    assert link.is_symlink() and json.loads(target.read_text())["n_iter"] == fit.n_iter


@pytest.mark.parametrize("where, fragment", [
    ("{tmp}/missing/fit.json", "directory {tmp}/missing does not exist"),
    ("{tmp}", "is a directory"),
    ("{tmp}/file.txt/fit.json", "cannot write"),
])
def test_save_to_an_unwritable_path_names_it(poisson, poisson_fit, tmp_path, where, fragment):
    write(tmp_path / "file.txt", "x")
    fit = Fit.load(poisson_fit, model=poisson)
    path = where.format(tmp=tmp_path)
    with pytest.raises(OptionError, match=fragment.format(tmp=tmp_path)) as info:
        fit.save(path)
    assert str(info.value).startswith(path)


def test_save_to_a_device_writes_in_place(poisson, poisson_fit):
    if not os.path.exists("/dev/null"):
        pytest.skip("no /dev/null")
    Fit.load(poisson_fit, model=poisson).save("/dev/null")
    assert Path("/dev/null").is_char_device()


def test_permission_denied_names_the_path(poisson, poisson_fit, tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    os.chmod(locked, 0o500)
    try:
        if os.access(locked, os.W_OK):
            pytest.skip("running with permission to write anywhere (root)")
        with pytest.raises(OptionError, match=f"{locked}/fit.json: cannot write: cannot create a file in "
                                              f"{locked}: Permission denied"):
            Fit.load(poisson_fit, model=poisson).save(locked / "fit.json")
    finally:
        os.chmod(locked, 0o700)
        shutil.rmtree(locked)


def test_read_input_refuses_a_swapped_special_file(tmp_path, monkeypatch):
    path = write(tmp_path / "data.csv", "count\n1\n")
    real_fstat = os.fstat

    def fstat_of_a_fifo(descriptor):
        result = real_fstat(descriptor)
        return os.stat_result((0o010644,) + tuple(result)[1:])

    monkeypatch.setattr(data_module.os, "fstat", fstat_of_a_fifo)
    with pytest.raises(DataError, match="named pipe"):
        read_input(path, "data file")
