"""The hand-coded Poisson HMM reference (models/poisson_hmm_reference.py) and the earthquake series it is
meant for (models/earthquakes.csv), ahead of chains in declarem (issue #9).

The reference is held against: brute-force enumeration of every path on tiny chains, the rise of the
log-likelihood at every single step, the figures Zucchini & MacDonald print for EM on this series
("Hidden Markov Models for Time Series", 2009, Tables 4.1 and 4.2, iterations 0, 1, 2, 30, 50 and the
limit), and, where installed, hmmlearn's PoissonHMM after 10 iterations from the same start.
"""

import csv
import itertools
import math
from pathlib import Path

import numpy as np
import pytest

from support import load_file

ROOT = Path(__file__).resolve().parent.parent
MODELS = ROOT / "models"


ref = load_file(MODELS / "poisson_hmm_reference.py")


def _earthquakes():
    with open(MODELS / "earthquakes.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    return np.array([int(row["year"]) for row in rows]), np.array([float(row["count"]) for row in rows])


YEARS, COUNTS = _earthquakes()
DATA = {"count": COUNTS}


def _params(start, probs, rate):
    return {"z": {"start": np.asarray(start, float), "probs": np.asarray(probs, float)},
            "count": {"rate": np.asarray(rate, float)}}


def _random_params(rng, k, low, high):
    return _params(rng.dirichlet(np.ones(k)), rng.dirichlet(np.ones(k), size=k),
                   np.sort(rng.uniform(low, high, size=k)))


def _iterate(data, params, n, lengths=None):
    for _ in range(n):
        params = ref.step(data, params, lengths=lengths)
    return params


# ---------------------------------------------------------------------------------------------
# The data
# ---------------------------------------------------------------------------------------------

def test_earthquake_series_is_the_published_one():
    """107 annual counts 1900-2006; Zucchini & MacDonald print mean 19.364 and variance 51.573."""
    assert YEARS.tolist() == list(range(1900, 2007))
    assert len(COUNTS) == 107 and np.all(COUNTS == np.round(COUNTS)) and COUNTS.min() >= 0
    assert COUNTS.sum() == 2072
    assert round(COUNTS.mean(), 3) == 19.364
    assert round(COUNTS.var(ddof=1), 3) == 51.573
    assert COUNTS[:5].tolist() == [13, 14, 8, 10, 16] and COUNTS[-5:].tolist() == [13, 15, 16, 11, 11]
    assert YEARS[COUNTS.argmax()] == 1943 and COUNTS.max() == 41


# ---------------------------------------------------------------------------------------------
# Brute force over all k^T paths
# ---------------------------------------------------------------------------------------------

def _pmf(x, rate):
    """Pois(x; rate), from the standard library (scipy.stats would double this file's import time)."""
    return math.exp(x * math.log(rate) - rate - math.lgamma(x + 1))


def _brute_force(x_sequences, params):
    """Log-likelihood and the EM update from the posterior over every path of every sequence."""
    start = params["z"]["start"]
    probs = params["z"]["probs"]
    rate = params["count"]["rate"]
    k = len(rate)
    first = np.zeros(k)
    pairs = np.zeros((k, k))
    visits = np.zeros(k)
    weighted = np.zeros(k)
    total = 0.0
    for x in x_sequences:
        paths = list(itertools.product(range(k), repeat=len(x)))
        joint = []
        for path in paths:
            p = start[path[0]] * _pmf(x[0], rate[path[0]])
            for t in range(1, len(x)):
                p *= probs[path[t - 1], path[t]] * _pmf(x[t], rate[path[t]])
            joint.append(p)
        joint = np.array(joint)
        evidence = joint.sum()
        total += np.log(evidence)
        for path, p in zip(paths, joint / evidence):
            first[path[0]] += p
            for t in range(1, len(x)):
                pairs[path[t - 1], path[t]] += p
            for t, state in enumerate(path):
                visits[state] += p
                weighted[state] += p * x[t]
    update = _params(first / len(x_sequences), pairs / pairs.sum(axis=1, keepdims=True), weighted / visits)
    return total, update


def _assert_params_close(mine, theirs, rtol):
    for node, values in theirs.items():
        for name, value in values.items():
            np.testing.assert_allclose(mine[node][name], value, rtol=rtol, atol=0, err_msg=f"{node}.{name}")


@pytest.mark.parametrize("lengths", [None, [4, 3, 1]])
def test_update_equals_brute_force_over_all_paths(lengths):
    """k = 2, T = 4 (and three sequences of lengths 4, 3, 1): the posterior-based update and the
    log-likelihood equal those from enumerating every path."""
    rng = np.random.default_rng(9)
    for _ in range(3):
        params = _random_params(rng, 2, 1.0, 8.0)
        n_rows = 4 if lengths is None else sum(lengths)
        x = rng.poisson(4.0, size=n_rows).astype(float)
        bounds = np.cumsum([0] + (lengths or [n_rows]))
        sequences = [x[a:b] for a, b in zip(bounds[:-1], bounds[1:])]
        total, update = _brute_force(sequences, params)
        assert ref.loglik({"count": x}, params, lengths=lengths) == pytest.approx(total, rel=1e-12)
        _assert_params_close(ref.step({"count": x}, params, lengths=lengths), update, rtol=1e-10)


def test_brute_force_with_three_states_and_large_counts():
    """Counts large enough that unscaled emission densities are tiny (about 1e-40): scaling keeps the
    update exact."""
    params = _params([0.2, 0.5, 0.3], [[0.6, 0.3, 0.1], [0.2, 0.5, 0.3], [0.1, 0.2, 0.7]], [150.0, 200.0, 260.0])
    x = np.array([140.0, 210.0, 330.0, 250.0])
    total, update = _brute_force([x], params)
    assert ref.loglik({"count": x}, params) == pytest.approx(total, rel=1e-12)
    _assert_params_close(ref.step({"count": x}, params), update, rtol=1e-9)


# ---------------------------------------------------------------------------------------------
# Monotone likelihood
# ---------------------------------------------------------------------------------------------

def _synthetic(seed, lengths):
    rng = np.random.default_rng(seed)
    probs = np.array([[0.85, 0.1, 0.05], [0.1, 0.8, 0.1], [0.05, 0.15, 0.8]])
    rate = np.array([2.0, 7.0, 15.0])
    counts = []
    for n in lengths:
        state = rng.integers(3)
        for _ in range(n):
            counts.append(rng.poisson(rate[state]))
            state = rng.choice(3, p=probs[state])
    return {"count": np.array(counts, dtype=float)}


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("k", [2, 3])
def test_every_step_raises_the_loglik(seed, k):
    """From seeded random starts, no single step lowers the log-likelihood (beyond rounding), on the
    earthquakes and on several synthetic sequences of unequal length."""
    rng = np.random.default_rng(100 * k + seed)
    lengths = [30, 55, 12, 40]
    for data, these_lengths in ((DATA, None), (_synthetic(seed, lengths), lengths)):
        x = data["count"]
        params = _random_params(rng, k, max(x.min(), 0.5), x.max())
        previous = ref.loglik(data, params, lengths=these_lengths)
        for iteration in range(25):
            params = ref.step(data, params, lengths=these_lengths)
            current = ref.loglik(data, params, lengths=these_lengths)
            assert current >= previous - 1e-10 * abs(previous), (iteration, previous, current)
            previous = current
        assert np.allclose(params["z"]["start"].sum(), 1) and np.allclose(params["z"]["probs"].sum(axis=1), 1)


# ---------------------------------------------------------------------------------------------
# Zucchini & MacDonald (2009), Tables 4.1 and 4.2: EM on the earthquakes, printed digits
# ---------------------------------------------------------------------------------------------

# iteration: (gamma_12, gamma_21, lambda_1, lambda_2, delta_1, -log L), as printed in Table 4.1
TABLE_4_1 = {
    0: (0.100000, 0.10000, 10.000, 30.000, 0.50000, 413.27542),
    1: (0.138816, 0.11622, 13.742, 24.169, 0.99963, 343.76023),
    2: (0.115510, 0.10079, 14.090, 24.061, 1.00000, 343.13618),
    30: (0.071653, 0.11895, 15.419, 26.014, 1.00000, 341.87871),
    50: (0.071626, 0.11903, 15.421, 26.018, 1.00000, 341.87870),
}
TABLE_4_1_DIGITS = (6, 5, 3, 3, 5, 5)

# iteration: (lambda_1, lambda_2, lambda_3, delta_1, delta_2, -log L), as printed in Table 4.2
TABLE_4_2 = {
    0: (10.000, 20.000, 30.000, 0.33333, 0.33333, 342.90781),
    1: (11.699, 19.030, 29.741, 0.92471, 0.07487, 332.12143),
    2: (12.265, 19.078, 29.581, 0.99588, 0.00412, 330.63689),
    30: (13.134, 19.713, 29.710, 1.00000, 0.00000, 328.52748),
}
TABLE_4_2_DIGITS = (3, 3, 3, 5, 5, 5)


def _check_printed(row, printed, digits):
    for got, want, places in zip(row, printed, digits):
        assert round(got, places) == pytest.approx(want, abs=1e-12), (row, printed)


def test_two_state_em_matches_table_4_1():
    params = _params([0.5, 0.5], [[0.9, 0.1], [0.1, 0.9]], [10.0, 30.0])
    done = 0
    for iteration in sorted(TABLE_4_1):
        params = _iterate(DATA, params, iteration - done)
        done = iteration
        probs, rate, start = params["z"]["probs"], params["count"]["rate"], params["z"]["start"]
        row = (probs[0, 1], probs[1, 0], rate[0], rate[1], start[0], -ref.loglik(DATA, params))
        _check_printed(row, TABLE_4_1[iteration], TABLE_4_1_DIGITS)
    converged = _iterate(DATA, params, 150)          # Table 4.1's "convergence" row equals iteration 50
    probs, rate, start = converged["z"]["probs"], converged["count"]["rate"], converged["z"]["start"]
    row = (probs[0, 1], probs[1, 0], rate[0], rate[1], start[0], -ref.loglik(DATA, converged))
    _check_printed(row, TABLE_4_1[50], TABLE_4_1_DIGITS)


def test_three_state_em_matches_table_4_2():
    params = _params(np.full(3, 1 / 3), [[0.8, 0.1, 0.1], [0.1, 0.8, 0.1], [0.1, 0.1, 0.8]], [10.0, 20.0, 30.0])
    done = 0
    for iteration in sorted(TABLE_4_2):
        params = _iterate(DATA, params, iteration - done)
        done = iteration
        rate, start = params["count"]["rate"], params["z"]["start"]
        row = (*rate, start[0], start[1], -ref.loglik(DATA, params))
        _check_printed(row, TABLE_4_2[iteration], TABLE_4_2_DIGITS)
    # the fitted transition matrix printed alongside Table 4.2, to 4 places
    printed = [[0.9393, 0.0321, 0.0286], [0.0404, 0.9064, 0.0532], [0.0000, 0.1903, 0.8097]]
    assert np.round(_iterate(DATA, params, 150)["z"]["probs"], 4).tolist() == printed


def test_stationary_two_state_fit_has_the_printed_likelihood():
    """Table 4.1's last row: the fit with the start tied to the stationary law (by direct maximisation,
    not this EM) has -log L = 342.31827; at its printed, rounded parameters the likelihood agrees."""
    params = _params([0.66082, 1 - 0.66082], [[1 - 0.065961, 0.065961], [0.12851, 1 - 0.12851]], [15.472, 26.125])
    assert -ref.loglik(DATA, params) == pytest.approx(342.31827, abs=1e-4)


def test_lengths_must_cover_the_rows():
    params = _params([0.5, 0.5], [[0.9, 0.1], [0.1, 0.9]], [10.0, 30.0])
    with pytest.raises(ValueError, match="sum to the 107 rows"):
        ref.step(DATA, params, lengths=[50, 50])
    with pytest.raises(ValueError, match="positive"):
        ref.loglik(DATA, params, lengths=[107, 0])


# ---------------------------------------------------------------------------------------------
# hmmlearn (optional: not installed in CI)
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("case", ["earthquakes_k2", "earthquakes_k3", "synthetic_k3_lengths"])
def test_ten_steps_equal_hmmlearn(case):
    """hmmlearn's fit(n_iter=10, tol=0) does 10 E-steps each followed by an M-step, so its parameters are
    those after 10 updates (its monitor's last log-likelihood is the one before the 10th update)."""
    hmm = pytest.importorskip("hmmlearn.hmm")
    if case == "earthquakes_k2":
        data, lengths = DATA, None
        params = _params([0.5, 0.5], [[0.9, 0.1], [0.1, 0.9]], [10.0, 30.0])
    elif case == "earthquakes_k3":
        data, lengths = DATA, None
        params = _params(np.full(3, 1 / 3), [[0.8, 0.1, 0.1], [0.1, 0.8, 0.1], [0.1, 0.1, 0.8]], [10.0, 20.0, 30.0])
    else:
        lengths = [60, 143, 25, 97, 40]
        data = _synthetic(1, lengths)
        params = _params([0.4, 0.35, 0.25], [[0.7, 0.2, 0.1], [0.15, 0.7, 0.15], [0.1, 0.2, 0.7]], [1.0, 5.0, 12.0])
    k = len(params["count"]["rate"])
    model = hmm.PoissonHMM(n_components=k, init_params="", params="stl", implementation="scaling",
                           tol=0, n_iter=10)
    model.startprob_ = params["z"]["start"].copy()
    model.transmat_ = params["z"]["probs"].copy()
    model.lambdas_ = params["count"]["rate"][:, None].copy()
    observed = data["count"].astype(int)[:, None]
    model.fit(observed, lengths)
    assert model.monitor_.iter == 10
    nine = _iterate(data, params, 9, lengths)
    ten = ref.step(data, nine, lengths=lengths)
    assert model.monitor_.history[-1] == pytest.approx(ref.loglik(data, nine, lengths=lengths), rel=1e-10)
    # start probabilities that underflow towards 0 (about 1e-80 here) are compared absolutely
    np.testing.assert_allclose(ten["z"]["start"], model.startprob_, rtol=1e-10, atol=1e-14)
    np.testing.assert_allclose(ten["z"]["probs"], model.transmat_, rtol=1e-10, atol=0)
    np.testing.assert_allclose(ten["count"]["rate"], model.lambdas_[:, 0], rtol=1e-10, atol=0)
