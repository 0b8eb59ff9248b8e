"""Properties of small engine parts that the fits rely on, checked against the plain numpy they replace."""

import numpy as np
import pytest

from declarem.families import gaussian
from declarem.inference.bilinear import _lexicographic_order


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
