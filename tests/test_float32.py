"""float32 sufficient statistics: the same fit as float64 to float32's accuracy, in half the memory."""

import numpy as np
import pytest

import declarem
from declarem.data import node_data
from declarem.errors import DataError, OptionError
from declarem.inference.rows import prepare_rows
from support import gaussian_mixture


def _gmm(n_rows=30_000, dim=8, k=4, covariance="full", seed=31):
    return gaussian_mixture(n_rows, k, dim, covariance=covariance, seed=seed)


@pytest.mark.parametrize("covariance, missing", [("full", 0.0), ("diag", 0.0), ("full", 0.1)])
def test_a_float32_fit_agrees_with_float64(covariance, missing, recwarn):
    model, data = _gmm(covariance=covariance)
    if missing:
        data["x"][np.random.default_rng(32).random(data["x"].shape) < missing] = np.nan
    wide = model.fit(data, max_iter=15, tol=0, seed=1)
    narrow = model.fit(data, max_iter=15, tol=0, seed=1, dtype="float32")
    assert narrow.loglik == pytest.approx(wide.loglik, rel=1e-6)
    assert narrow.loglik != wide.loglik                  # the products really ran in float32
    for name, value in wide.params["x"].items():
        np.testing.assert_allclose(narrow.params["x"][name], value, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(narrow.params["z"]["probs"], wide.params["z"]["probs"], rtol=1e-4)
    # Falls of the objective within float32's rounding are not reported as trouble.
    assert not [w for w in recwarn if "objective fell" in str(w.message)]


def test_float32_statistics_take_half_the_memory_and_streaming_gives_the_same_fit():
    model, data = _gmm()
    wide = prepare_rows(model.compiled, node_data(model, data))
    narrow = prepare_rows(model.compiled, node_data(model, data), dtype=np.float32)
    assert narrow.factors["x"].statistics.dtype == np.float32
    assert narrow.factors["x"].statistics.nbytes * 2 == wide.factors["x"].statistics.nbytes
    stored = model.fit(data, max_iter=5, tol=0, dtype="float32")
    streamed = model.fit(data, max_iter=5, tol=0, dtype="float32", memory_budget=0)
    assert stored.loglik == streamed.loglik


@pytest.mark.parametrize("dtype", ["float16", "int32", "not a dtype", np.complex128])
def test_dtype_is_float64_or_float32(dtype):
    model, data = _gmm(n_rows=100)
    with pytest.raises(OptionError, match="dtype must be 'float64' or 'float32'"):
        model.fit(data, max_iter=1, dtype=dtype)


def test_values_whose_statistics_overflow_float32_name_the_row():
    model, data = _gmm(n_rows=200)
    data["x"][17, 3] = 3e19                            # its square overflows float32, not float64
    with pytest.raises(DataError, match=r"node 'x', row 17: .* overflow float32 .*dtype float64"):
        model.fit(data, max_iter=1, dtype="float32")


def test_the_command_line_fits_in_float32(tmp_path, capsys):
    from declarem.cli import main
    spec = tmp_path / "gmm.toml"
    spec.write_text('[nodes.z]\nfamily = "categorical"\nlatent = true\nk = 2\n\n'
                    '[nodes.x]\nfamily = "normal"\nparents = ["z"]\n')
    data = tmp_path / "x.csv"
    values = np.concatenate([np.random.default_rng(0).normal(size=100), 5 + np.random.default_rng(1).normal(size=100)])
    data.write_text("x\n" + "\n".join(str(float(v)) for v in values) + "\n")
    out = tmp_path / "fit.json"
    assert main(["fit", str(spec), "--data", str(data), "--dtype", "float32", "--quiet", "--out", str(out)]) == 0
    narrow = declarem.Fit.load(str(out))
    assert main(["fit", str(spec), "--data", str(data), "--quiet", "--out", str(out)]) == 0
    assert narrow.loglik == pytest.approx(declarem.Fit.load(str(out)).loglik, rel=1e-6)
