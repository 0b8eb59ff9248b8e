"""Properties of small engine parts that the fits rely on, checked against the plain numpy they replace."""

import numpy as np
import pytest

from declarem.families import gaussian
from declarem.inference.bilinear import _lexicographic_order
from support import gaussian_mixture


@pytest.mark.parametrize("sorted_by", [None, "major", "both"])
@pytest.mark.parametrize("sizes", [(7, 30), (70_000, 30)])
def test_lexicographic_order_is_lexsort(sorted_by, sizes):
    rng = np.random.default_rng(11)
    for _ in range(50):
        n = int(rng.integers(0, 400))
        major, minor = rng.integers(0, sizes[0], n), rng.integers(0, sizes[1], n)
        if sorted_by == "major":
            major = np.sort(major)
        elif sorted_by == "both":
            order = np.lexsort((minor, major))
            major, minor = major[order], minor[order]
        assert np.array_equal(_lexicographic_order(major, minor, sizes), np.lexsort((minor, major)))


@pytest.mark.parametrize("n_rows", [0, 1, 8191, 8192, 20_000])
def test_normal_statistics_are_x_and_its_upper_products(n_rows):
    rng = np.random.default_rng(12)
    x = rng.normal(size=(n_rows, 5))
    rows, cols = np.triu_indices(5)
    expected = np.concatenate([x, x[:, rows] * x[:, cols]], axis=1)
    assert np.array_equal(gaussian.statistics(x), expected)


def _gmm_with_holes(n_rows, k, share_missing, seed):
    model, data = gaussian_mixture(n_rows, k, 4, share_missing=share_missing, seed=seed)
    return model, data["x"]


def test_rows_with_jointly_missing_coordinates_take_larger_chunks_and_the_same_statistics():
    from declarem.data import node_data
    from declarem.inference import enumeration
    from declarem.inference.rows import CONDITIONAL_CHUNK_CELLS, chunk_rows_for, prepare_rows

    model, x = _gmm_with_holes(40_000, 3, 0.15, seed=13)
    compiled = model.compiled
    rows = prepare_rows(compiled, node_data(model, {"x": x}))
    assert rows.chunk_rows == 4 * enumeration.CHUNK_ROWS
    complete = prepare_rows(compiled, node_data(model, {"x": np.nan_to_num(x)}))
    assert complete.chunk_rows == enumeration.CHUNK_ROWS
    wide, _ = _gmm_with_holes(10, 32, 0.15, seed=13)
    assert chunk_rows_for(wide.compiled, {"x": rows.factors["x"].missing}) == max(enumeration.CHUNK_ROWS, CONDITIONAL_CHUNK_CELLS // 32) == 16384
    fit = model.fit({"x": x}, max_iter=2, seed=0)
    params = compiled.to_internal(fit.params, rows.shifts)
    stats, loglik = enumeration.expected_statistics(compiled, rows, params)
    small_stats, small_loglik = enumeration.expected_statistics(compiled, rows, params, chunk_rows=3000)
    assert loglik == pytest.approx(small_loglik, rel=1e-12)
    for name in stats.sums:
        np.testing.assert_allclose(stats.sums[name], small_stats.sums[name], rtol=1e-11)
