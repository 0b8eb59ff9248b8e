"""Bad input through the command line: exit status 2 and exactly one line on standard error.

Each line starts with ``declarem: error:``, names the file, column or option, and no traceback
is shown. The same classes of input through the Python API are in test_input_hardening.py.
"""

import io
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from support import POISSON_SPEC, write
import scipy.sparse
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from declarem.cli import main

ROOT = Path(__file__).resolve().parent.parent
FAST = settings(max_examples=25, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])

MATRIX_SPEC = """
[data]
path = "matrix.npz"
rows = "doc"
columns = "word"

[nodes.doc]
family = "categorical"
k = 6

[nodes.topic]
family = "categorical"
latent = true
k = 2
parents = ["doc"]

[nodes.word]
family = "categorical"
k = 9
parents = ["topic"]
"""


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    """A directory with a Poisson mixture spec, its data and a fit of it."""
    directory = tmp_path_factory.mktemp("cli_hardening")
    (directory / "counts.toml").write_text(POISSON_SPEC)
    rng = np.random.default_rng(0)
    counts = rng.poisson(np.where(rng.random(200) < 0.5, 2.0, 12.0))
    (directory / "counts.csv").write_text("c\n" + "\n".join(str(v) for v in counts) + "\n")
    assert main(["fit", str(directory / "counts.toml"), "--out", str(directory / "fit.json"), "--max-iter", "5",
                 "--tol", "0", "--quiet"]) == 0
    return directory


@pytest.fixture
def spec(work):
    return work / "counts.toml"


@pytest.fixture
def fitted(work):
    return work / "fit.json"


def user_error(capsys, *argv):
    """Run the command line in-process; assert a user error shown in one line; return that line."""
    capsys.readouterr()
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    assert code == 2, (code, err)
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("declarem: error: ") and "Traceback" not in err
    assert all(c.isprintable() for c in lines[0]), lines[0]
    return lines[0]


def run(*args, cwd=ROOT, timeout=60):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    return subprocess.run([sys.executable, "-m", "declarem", *map(str, args)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)


# --- 1. data and spec files -------------------------------------------------------------------------------

@pytest.mark.parametrize("content, fragment", [
    ("", "the file is empty"),
    ("c\n", "the header has no data rows"),
    (b"c\n1\n\xe9t\xe9\n", "line 3, column 1: byte 0xe9 is not UTF-8"),
    (b"\x89PNG\r\n\x1a\n\x00\x00", "line 1, column 1: byte 0x89 is not UTF-8"),
    ("c\n1\nx\n", "line 3, column 'c': 'x' is not a number"),
    ("c,c\n1,1\n", "column 'c' twice"),
    ("\x1b[31mc\n1\n", "the data has columns \\x1b[31mc"),
])
@pytest.mark.parametrize("command", ["fit", "check"])
def test_bad_csv_is_one_line(capsys, spec, tmp_path, content, fragment, command):
    path = write(tmp_path / "bad.csv", content)
    line = user_error(capsys, command, spec, "--data", path, *(["--quiet"] if command == "fit" else []))
    assert str(path) in line and fragment in line, line


@pytest.mark.parametrize("special, fragment", [
    ("/dev/zero", "is a character device, not a data file"),
    ("/dev/urandom", "is a character device, not a data file"),
    ("{tmp}", "is a directory, not a data file"),
    ("{tmp}/missing.csv", "no such data file"),
    ("{tmp}/plain.csv/inner.csv", "cannot read the data file: Not a directory"),
])
def test_data_path_that_is_not_a_regular_file(capsys, spec, tmp_path, special, fragment):
    write(tmp_path / "plain.csv", "c\n1\n")
    path = special.format(tmp=tmp_path)
    if not os.path.exists(path.split("/plain.csv")[0].replace("/missing.csv", "")):
        pytest.skip(f"no {path}")
    line = user_error(capsys, "fit", spec, "--data", path, "--quiet")
    assert f"{path}: {fragment}" in line, line


def test_spec_data_path_to_dev_zero_is_refused_at_once(tmp_path):
    """The real program (python -m declarem), not the in-process main: one line, exit 2."""
    spec = write(tmp_path / "zero.toml", POISSON_SPEC.replace('"counts.csv"', '"/dev/zero"'))
    result = run("fit", spec, "--quiet", timeout=60)
    assert result.returncode == 2, result.stderr
    assert result.stderr.splitlines() == ["declarem: error: /dev/zero: is a character device, not a data file; "
                                          "give the path of a regular file"]


def test_fifo_as_data_or_spec_does_not_block(capsys, tmp_path, spec):
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)

    def hung(signum, frame):
        raise TimeoutError("opened the FIFO instead of refusing it")

    # Opening a FIFO with no writer blocks forever: an alarm turns that into a failure.
    previous = signal.signal(signal.SIGALRM, hung)
    signal.alarm(20)
    try:
        for args in (["check", fifo], ["fit", spec, "--data", fifo, "--quiet"], ["top", spec, "--fit", fifo],
                     ["sample", spec, "--params", fifo, "--n", "2"]):
            assert f"{fifo}: is a named pipe (FIFO)" in user_error(capsys, *args)
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


@pytest.fixture(scope="module")
def matrix_spec(work):
    matrix = scipy.sparse.random(6, 9, density=0.5, format="csr", random_state=1)
    matrix.data = np.ceil(matrix.data * 4)
    buffer = io.BytesIO()
    scipy.sparse.save_npz(buffer, matrix)
    write(work / "matrix.npz", buffer.getvalue())
    return write(work / "matrix.toml", MATRIX_SPEC)


@pytest.mark.parametrize("cut", [0, 10, 200, -30, -1])
def test_truncated_npz_is_one_line(capsys, matrix_spec, tmp_path, cut):
    damaged = write(tmp_path / "damaged.npz", (matrix_spec.parent / "matrix.npz").read_bytes()[:cut])
    line = user_error(capsys, "fit", matrix_spec, "--data", damaged, "--quiet")
    assert f"{damaged}: not a scipy sparse .npz matrix" in line


def test_matrix_spec_reads_its_npz(capsys, matrix_spec):
    assert main(["check", str(matrix_spec)]) == 0
    assert "rows fit the model" in capsys.readouterr().out


@pytest.mark.parametrize("content, fragment", [
    (b"[nodes.c]\nfamily = \"poisson\" # caf\xe9\n", "line 2, column 25: byte 0xe9 is not UTF-8"),
    (b"\x00\x01\x02\x03", "not valid TOML"),
    ("x = " + "[" * 3000 + "]" * 3000, "nested too deeply"),
    ("[nodes.c\n", "not valid TOML"),
    ("[data]\nweight = \"n\"\n[nodes.c]\nfamily = \"poisson\"\n", "unknown key 'weight' in [data]; did you mean "
                                                               "'weights'?"),
    ("[model]\nnmae = \"x\"\n[nodes.c]\nfamily = \"poisson\"\n", "did you mean 'name'?"),
    ("[node.c]\nfamily = \"poisson\"\n", "unknown table [node]; did you mean [nodes]?"),
    ("[data]\npath = 7\n[nodes.c]\nfamily = \"poisson\"\n", "[data] path must be a string"),
])
@pytest.mark.parametrize("command", ["check", "derive", "fit"])
def test_bad_spec_is_one_line(capsys, tmp_path, content, fragment, command):
    path = write(tmp_path / "bad.toml", content)
    line = user_error(capsys, command, path)
    assert f"{path}:" in line and fragment in line, line


@pytest.mark.parametrize("command", ["check", "derive"])
def test_spec_path_that_is_not_a_regular_file(capsys, tmp_path, command):
    assert "is a directory, not a spec file" in user_error(capsys, command, tmp_path)
    if os.path.exists("/dev/zero"):
        assert "/dev/zero: is a character device, not a spec file" in user_error(capsys, command, "/dev/zero")


@FAST
@given(content=st.binary(max_size=200))
def test_random_bytes_as_data_file(capsys, spec, tmp_path, content):
    path = write(tmp_path / "random.csv", content)
    capsys.readouterr()
    code = main(["check", str(spec), "--data", str(path)])
    out, err = capsys.readouterr()
    assert code in (0, 2), err
    if code == 2:
        assert len(err.splitlines()) == 1 and err.startswith("declarem: error: ") and str(path) in err


@FAST
@given(content=st.binary(max_size=200))
def test_random_bytes_as_spec_file(capsys, tmp_path, content):
    path = write(tmp_path / "random.toml", content)
    line = user_error(capsys, "check", path)
    assert str(path) in line


# --- 3. integer data beyond float64's exact integers; weights -----------------------------------------------

def test_count_beyond_the_exact_integers(capsys, spec, tmp_path):
    path = write(tmp_path / "big.csv", "c\n3\n1000000000000000000\n")
    line = user_error(capsys, "fit", spec, "--data", path, "--quiet")
    assert f"{path}: column 'c', row 1: value 1e+18" in line and "9007199254740991" in line


@pytest.mark.parametrize("weights, fragment", [
    (["1", "inf", "1"], "n, row 1: weight inf must be finite"),
    (["1", "nan", "1"], "n, row 1: weight nan must be finite"),
    (["1e308", "1e308", "1e308"], "n sum to inf"),
    (["1e16", "1", "1"], "more than 2**53 - 1"),
])
def test_absurd_weights_column(capsys, spec, tmp_path, weights, fragment):
    path = write(tmp_path / "weighted.csv", "c,n\n" + "\n".join(f"{i},{w}" for i, w in enumerate(weights)) + "\n")
    line = user_error(capsys, "fit", spec, "--data", path, "--weights", "n", "--quiet")
    assert str(path) in line and fragment in line, line


# --- 4. JSON inputs: --init, sample --params, top --fit ------------------------------------------------------

def tamper(fitted, tmp_path, edit, name="tampered.json"):
    stored = json.loads(Path(fitted).read_text())
    edit(stored)
    return write(tmp_path / name, json.dumps(stored, allow_nan=True))


def probs(value):
    def edit(stored):
        stored["params"]["z"]["probs"] = value
    return edit


def rates(value):
    def edit(stored):
        stored["params"]["c"]["rate"] = value
    return edit


TAMPERED = [
    (probs([-5.0, 6.0]), "'z.probs' rows must be probabilities summing to 1"),
    (probs([float("nan"), 0.5]), "'z.probs' has non-finite values"),
    (probs([float("inf"), 0.5]), "'z.probs' has non-finite values"),
    (probs([0.5, "0.5"]), "'z.probs' is not numeric"),
    (probs([0.2, 0.3, 0.5]), "'z.probs' has shape (3,); expected (2,)"),
    (rates([1.0, -1.0]), "'c.rate' must be"),
    (rates([1.0, 1e999]), "'c.rate' has non-finite values"),
    (rates({"a": [1.0]}), "'c.rate' is not numeric"),
]


@pytest.mark.parametrize("edit, fragment", TAMPERED)
def test_top_refuses_a_tampered_fit(capsys, spec, fitted, tmp_path, edit, fragment):
    path = tamper(fitted, tmp_path, edit)
    capsys.readouterr()
    assert main(["top", str(spec), "--fit", str(path), "--node", "z"]) == 2
    out, err = capsys.readouterr()
    assert out == "" and len(err.splitlines()) == 1 and f"{path}: {fragment}" in err, err


@pytest.mark.parametrize("edit, fragment", TAMPERED + [
    (lambda stored: stored["params"].pop("c"), "parameters missing: c.rate"),
])
def test_sample_refuses_bad_params(capsys, spec, fitted, tmp_path, edit, fragment):
    path = tamper(fitted, tmp_path, edit)
    line = user_error(capsys, "sample", spec, "--params", path, "--n", "5")
    assert f"{path}: {fragment}" in line, line


@pytest.mark.parametrize("edit, fragment", TAMPERED[:6])
def test_fit_init_refuses_bad_params(capsys, spec, fitted, tmp_path, edit, fragment):
    path = tamper(fitted, tmp_path, edit)
    line = user_error(capsys, "fit", spec, "--init", path, "--quiet")
    assert f"{path}: {fragment}" in line, line


@pytest.mark.parametrize("content, fragment", [
    ("[" * 50_000 + "]" * 50_000, "nested too deeply"),
    ("[1, 2, 3]", "expected a JSON object"),
    ("\"params\"", "expected a JSON object"),
    ("{\"c\": {\"rate\": [1" + "0" * 400 + ", 1]}}", "too large for a 64-bit float"),
    ("{\"c\": {\"rate\": [1, 2]}, ", "not valid JSON"),
    ("{\"ghost\": {\"p\": 1}}", "'ghost' is not a node or free parameter"),
    (b"{\"c\": \"\xff\"}", "byte 0xff is not UTF-8"),
])
@pytest.mark.parametrize("command", ["fit-init", "sample", "top"])
def test_json_that_is_not_parameters(capsys, spec, tmp_path, content, fragment, command):
    path = write(tmp_path / "params.json", content)
    argv = {"fit-init": ["fit", spec, "--init", path, "--quiet"],
            "sample": ["sample", spec, "--params", path, "--n", "3"],
            "top": ["top", spec, "--fit", path]}[command]
    line = user_error(capsys, *argv)
    if command == "top" and fragment == "'ghost' is not a node or free parameter":
        fragment = "not a fit: no 'params'"
    assert f"{path}:" in line and fragment in line, line


def test_partial_init_is_accepted(capsys, spec, tmp_path):
    path = write(tmp_path / "init.json", json.dumps({"c": {"rate": [1.0, 10.0]}}))
    assert main(["fit", str(spec), "--init", str(path), "--max-iter", "2", "--tol", "0", "--quiet"]) == 0
    assert json.loads(capsys.readouterr().out)["n_iter"] == 2


JSON_LEAVES = st.one_of(st.none(), st.booleans(), st.integers(-10 ** 6, 10 ** 6),
                        st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=3))
JSON_VALUES = st.recursive(JSON_LEAVES, lambda inner: st.one_of(
    st.lists(inner, max_size=3), st.dictionaries(st.sampled_from(["z", "c", "probs", "rate", "params"]), inner,
                                                 max_size=3)), max_leaves=10)


@FAST
@given(value=JSON_VALUES)
def test_random_json_as_sample_params(capsys, spec, tmp_path, value):
    path = write(tmp_path / "random.json", json.dumps(value, allow_nan=True))
    capsys.readouterr()
    code = main(["sample", str(spec), "--params", str(path), "--n", "2"])
    out, err = capsys.readouterr()
    assert code in (0, 2), err
    if code == 2:
        assert len(err.splitlines()) == 1 and err.startswith(f"declarem: error: {path}:"), err


# --- 5. sample --n -------------------------------------------------------------------------------------------

def test_sample_refuses_more_rows_than_memory(capsys, spec, fitted):
    line = user_error(capsys, "sample", spec, "--params", fitted, "--n", str(10 ** 12))
    assert "--n 1000000000000" in line and "TiB" in line and "memory available" in line, line


def test_sample_memory_limit_is_the_available_memory(capsys, spec, fitted, monkeypatch):
    monkeypatch.setattr("declarem.resources.available_memory", lambda: 10_000)
    line = user_error(capsys, "sample", spec, "--params", fitted, "--n", "1000")
    assert "--n 1000: sampling needs about" in line and "9.8 KiB of memory available" in line, line
    assert main(["sample", str(spec), "--params", str(fitted), "--n", "10"]) == 0


def test_available_memory_reads_proc_meminfo():
    from declarem.resources import available_memory
    available = available_memory()
    assert isinstance(available, int) and available > 0
    if os.path.exists("/proc/meminfo"):
        with open("/proc/meminfo") as handle:
            reported = next(int(line.split()[1]) for line in handle if line.startswith("MemAvailable:"))
        assert abs(available - 1024 * reported) < 2 ** 30


@pytest.mark.parametrize("n", ["0", "-3"])
def test_sample_refuses_no_rows(capsys, spec, fitted, n):
    assert f"--n must be a positive number of rows, found {n}" in user_error(
        capsys, "sample", spec, "--params", fitted, "--n", n)


@pytest.mark.parametrize("argv, fragment", [
    (["sample", "{spec}", "--params", "{fit}", "--n", "3", "--seed", "-1"], "--seed must be a non-negative"),
    (["sample", "{spec}", "--params", "{fit}", "--n", "1e3"], "argument --n: invalid int value"),
    (["fit", "{spec}", "--tol", "nan", "--quiet"], "argument --tol: must be a finite number, found 'nan'"),
    (["fit", "{spec}", "--reg-covar", "inf", "--quiet"], "argument --reg-covar: must be a finite number"),
    (["fit", "{spec}", "--tol", "small", "--quiet"], "argument --tol: invalid number: 'small'"),
    (["top", "{spec}", "--fit", "{fit}", "--node", "z", "--n", "0"], "--n must be a positive integer"),
])
def test_bad_options(capsys, spec, fitted, argv, fragment):
    line = user_error(capsys, *[a.format(spec=spec, fit=fitted) for a in argv])
    assert fragment in line, line


# --- 6. --out: unwritable paths, atomic replacement ---------------------------------------------------------

@pytest.mark.parametrize("where, fragment", [
    ("{tmp}/no/such/dir/out", "cannot write: directory {tmp}/no/such/dir does not exist"),
    ("{tmp}", "is a directory; give the path of a file to write"),
    ("{tmp}/plain.txt/out", "cannot write"),
    ("/proc/version", "cannot write"),
])
@pytest.mark.parametrize("command", ["fit", "sample"])
def test_unwritable_out_is_one_line(capsys, spec, fitted, tmp_path, where, fragment, command):
    write(tmp_path / "plain.txt", "x")
    out = where.format(tmp=tmp_path)
    if out.startswith("/proc") and not os.path.exists(out):
        pytest.skip("no /proc")
    argv = (["fit", spec, "--out", out] if command == "fit"
            else ["sample", spec, "--params", fitted, "--n", "3", "--out", out])
    # Without --quiet: the refusal comes before the fit, so no progress line precedes it.
    line = user_error(capsys, *argv)
    assert line.startswith(f"declarem: error: {out}: ") and fragment.format(tmp=tmp_path) in line, line


def leftovers(directory):
    return sorted(p.name for p in Path(directory).iterdir() if p.name.endswith(".tmp"))


def no_space(*args, **kwargs):
    raise OSError(28, "No space left on device")


@pytest.mark.parametrize("failing", ["fsync", "replace"])
@pytest.mark.parametrize("command", ["fit", "sample"])
def test_failed_write_keeps_the_previous_out(capsys, spec, fitted, tmp_path, monkeypatch, failing, command):
    out = write(tmp_path / "result.out", "previous result")
    argv = (["fit", spec, "--out", out, "--max-iter", "2", "--quiet"] if command == "fit"
            else ["sample", spec, "--params", fitted, "--n", "50", "--out", out])
    monkeypatch.setattr(os, failing, no_space)
    line = user_error(capsys, *argv)
    monkeypatch.undo()
    assert f"{out}: cannot write: No space left on device" in line
    assert out.read_text() == "previous result" and leftovers(tmp_path) == []


@pytest.mark.parametrize("command", ["fit", "sample"])
def test_out_is_replaced_whole(capsys, spec, fitted, tmp_path, command):
    out = write(tmp_path / "result.out", "previous result")
    argv = (["fit", spec, "--out", out, "--max-iter", "2", "--quiet"] if command == "fit"
            else ["sample", spec, "--params", fitted, "--n", "50", "--out", out])
    assert main([str(a) for a in argv]) == 0
    text = out.read_text()
    if command == "fit":
        assert json.loads(text)["n_iter"] == 2
    else:
        assert text.splitlines()[0] == "z,c" and len(text.splitlines()) == 51
    assert leftovers(tmp_path) == []


def test_sample_to_dev_null(capsys, spec, fitted):
    if not os.path.exists("/dev/null"):
        pytest.skip("no /dev/null")
    assert main(["sample", str(spec), "--params", str(fitted), "--n", "5", "--out", "/dev/null"]) == 0
    assert Path("/dev/null").is_char_device()


# --- 7. other unreadable inputs ------------------------------------------------------------------------------

@pytest.mark.parametrize("labels, fragment", [
    ("{tmp}", "is a directory, not a labels file"),
    ("{tmp}/latin1.txt", "line 2, column 4: byte 0xe9 is not UTF-8"),
    ("{tmp}/missing.txt", "no such labels file"),
])
def test_top_labels_that_cannot_be_read(capsys, spec, fitted, tmp_path, labels, fragment):
    write(tmp_path / "latin1.txt", b"one\ncaf\xe9\n")
    path = labels.format(tmp=tmp_path)
    line = user_error(capsys, "top", spec, "--fit", fitted, "--node", "z", "--labels", path)
    assert f"{path}: {fragment}" in line, line


def test_top_with_labels(capsys, spec, fitted, tmp_path):
    path = write(tmp_path / "labels.txt", "low\r\nhigh\r\n")
    assert main(["top", str(spec), "--fit", str(fitted), "--node", "z", "--labels", str(path)]) == 0
    out = capsys.readouterr().out
    assert "low" in out and "high" in out and "\r" not in out


@pytest.mark.parametrize("option", ["--init", "--params"])
def test_parameter_file_that_is_a_device_or_directory(capsys, spec, tmp_path, option):
    argv = ["fit", spec, "--quiet"] if option == "--init" else ["sample", spec, "--n", "3"]
    assert "is a directory, not a parameter file" in user_error(capsys, *argv, option, tmp_path)
    if os.path.exists("/dev/urandom"):
        assert "/dev/urandom: is a character device" in user_error(capsys, *argv, option, "/dev/urandom")


@pytest.mark.parametrize("reference, fragment", [
    ("{tmp}", "is a directory, not a reference file"),
    ("{tmp}:step", "is a directory, not a reference file"),
    ("/dev/zero", "is a character device, not a reference file"),
    ("{tmp}/missing.py", "no such reference file"),
])
def test_compare_reference_that_is_not_a_regular_file(capsys, spec, tmp_path, reference, fragment):
    path = reference.format(tmp=tmp_path)
    if path.startswith("/dev") and not os.path.exists(path):
        pytest.skip(f"no {path}")
    line = user_error(capsys, "compare", spec, "--reference", path)
    assert f"{path.partition(':')[0]}: {fragment}" in line, line
