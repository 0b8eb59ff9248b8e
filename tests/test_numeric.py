"""The one Newton solver every numeric M-step goes through (declarem.numeric.NewtonProblem).

Held against closed-form maximisers, per parameter set and in every domain; it never ends below its
start, caps its steps where a full gradient step would leave the region where the objective means
anything, and weighs rows without weight as nothing (not 0 * inf).
"""

import numpy as np
import pytest

from declarem.numeric import MAX_STEP, NewtonProblem, maximize_rows, weighted_sum


def _gamma_shape_problem(mean_log, log_mean):
    """A gamma's shape k by profile likelihood in u = log k: f(k) = k log k - k log mean - lgamma(k) + (k-1) E[log x] - k."""
    from scipy.special import gammaln, polygamma, psi

    def objective(u, sets):
        k = np.exp(u[:, 0])
        return k * (u[:, 0] - log_mean[sets]) - gammaln(k) + (k - 1) * mean_log[sets] - k

    def gradient(u, sets):
        k = np.exp(u[:, 0])
        return (k * (u[:, 0] + 1 - log_mean[sets] - psi(k) + mean_log[sets] - 1))[:, None]

    def hessian(u, sets):
        k = np.exp(u[:, 0])
        g = k * (u[:, 0] + 1 - log_mean[sets] - psi(k) + mean_log[sets] - 1)
        return (g + k * (1 - k * polygamma(1, k)))[:, None, None]

    return NewtonProblem(["positive"], objective, lambda u, s: (objective(u, s), gradient(u, s), hessian(u, s)))


def test_each_set_reaches_its_own_maximiser():
    rng = np.random.default_rng(0)
    shapes = np.array([0.3, 1.0, 4.0, 40.0])
    samples = [rng.gamma(k, 2.0, 200_000) for k in shapes]
    mean_log = np.array([np.mean(np.log(s)) for s in samples])
    log_mean = np.array([np.log(np.mean(s)) for s in samples])
    problem = _gamma_shape_problem(mean_log, log_mean)
    found = problem.solve(np.ones((4, 1)))[:, 0]
    # The maximiser solves log k - psi(k) = log mean - E[log x]; check that equation directly.
    from scipy.special import psi
    np.testing.assert_allclose(np.log(found) - psi(found), log_mean - mean_log, rtol=1e-10)
    np.testing.assert_allclose(found, shapes, rtol=0.05)


@pytest.mark.parametrize("domain, target", [("real", -3.5), ("positive", 0.02), ("unit", 0.999)])
def test_domains_map_to_and_from_unconstrained_variables(domain, target):
    """A concave objective in the parameter, solved through the domain's map, lands on its maximiser."""
    from declarem.numeric import FROM_DOMAIN, TO_DOMAIN
    centre = FROM_DOMAIN[domain](np.array([target]))[0]
    problem = NewtonProblem([domain], lambda u, s: -(u[:, 0] - centre) ** 2,
                            lambda u, s: (-(u[:, 0] - centre) ** 2, (-2 * (u[:, 0] - centre))[:, None],
                                          np.full((len(s), 1, 1), -2.0)))
    start = TO_DOMAIN[domain](np.array([[0.0], [5.0]]))
    np.testing.assert_allclose(problem.solve(start)[:, 0], target, rtol=1e-12)


def test_never_ends_below_its_start_and_caps_its_steps():
    """Where the Hessian is not negative definite, a capped gradient step is taken, and accepted only if it raises."""
    visited = []

    def objective(u, sets):
        visited.append(u.copy())
        return -np.log1p(np.exp(-u[:, 0])) - 1e-3 * u[:, 0] ** 2   # flat for large u: a tiny gradient far out

    def gradient(u, sets):
        return (1 / (1 + np.exp(u[:, 0])) - 2e-3 * u[:, 0])[:, None] * 1e6   # scaled up: a huge raw step

    def hessian(u, sets):
        return np.full((len(sets), 1, 1), 1.0)                                 # not negative definite

    problem = NewtonProblem(["real"], objective, lambda u, s: (objective(u, s), gradient(u, s), hessian(u, s)))
    start = np.array([[-2.0]])
    found = problem.solve(start)
    trials = np.concatenate(visited)[:, 0]
    assert objective(found, np.arange(1))[0] >= objective(start, np.arange(1))[0]
    assert np.abs(trials - start[0, 0]).max() > MAX_STEP          # it did travel, in several steps
    assert np.abs(np.diff(trials)).max() <= MAX_STEP + 1e-12


def test_non_finite_starts_begin_at_the_domains_centre():
    problem = NewtonProblem(["positive", "unit"], lambda u, s: -(u ** 2).sum(axis=1),
                            lambda u, s: (-(u ** 2).sum(axis=1), -2 * u,
                                          np.broadcast_to(-2 * np.eye(2), (len(s), 2, 2))))
    assert np.array_equal(problem.unconstrained([[np.nan, 0.0]]), [[0.0, 0.0]])
    np.testing.assert_allclose(problem.solve([[np.inf, np.nan]]), [[1.0, 0.5]])


def test_rows_without_weight_add_nothing():
    weights = np.array([[1.0, 0.0, 2.0]])
    terms = np.array([[1.0, -np.inf, 3.0]])
    assert weighted_sum(weights, terms).tolist() == [7.0]
    stacked = np.stack([terms, 2 * terms], axis=-1)
    assert weighted_sum(weights, stacked).tolist() == [[7.0, 14.0]]
    # Every weight positive: the caller may skip the guard, and gets the same sums to the bit.
    rng = np.random.default_rng(3)
    positive, many = rng.random((2, 50)) + 0.1, rng.normal(size=(2, 50, 3))
    guarded, unguarded = weighted_sum(positive, many), weighted_sum(positive, many, all_positive=True)
    assert guarded.tobytes() == unguarded.tobytes()


def test_one_evaluation_per_newton_step_and_none_for_a_step_below_the_tolerance():
    """Each iteration evaluates the objective and its derivatives once, at its trial point; a row whose step is
    already below the tolerance takes it without another evaluation (on a quadratic, Newton lands in one step)."""
    calls = {"objective": 0, "derivatives": 0}
    centre = np.array([1.5, -0.25])

    def objective(u, s):
        calls["objective"] += 1
        return -((u - centre[s, None]) ** 2).sum(axis=1)

    def derivatives(u, s):
        calls["derivatives"] += 1
        return (-((u - centre[s, None]) ** 2).sum(axis=1), -2 * (u - centre[s, None]),
                np.full((len(s), 1, 1), -2.0))

    problem = NewtonProblem(["real"], objective, derivatives)
    found = problem.solve(np.array([[0.0], [3.0]]))
    np.testing.assert_allclose(found[:, 0], centre, rtol=1e-15)
    # At the start, at the first step's trial point; the second step is zero: no evaluation.
    assert calls == {"objective": 0, "derivatives": 2}


def test_a_newton_step_below_the_root_of_the_tolerance_ends_the_row_unevaluated():
    """Warm-started within sqrt(tol) of the optimum, a row costs one evaluation (at its start), and Newton's
    quadratic convergence leaves it within tol; a row started far away still gets its trial evaluations."""
    calls = {"derivatives": 0}
    target = np.array([2.0, 5.0])

    def objective(u, s):
        return target[s] * u[:, 0] - np.exp(u[:, 0])      # concave, not quadratic; maximum at log(target)

    def derivatives(u, s):
        calls["derivatives"] += 1
        e = np.exp(u[:, 0])
        return objective(u, s), (target[s] - e)[:, None], -e[:, None, None]

    near = np.log(target)[:, None] + np.array([[3e-7], [-5e-7]])
    found, converged = maximize_rows(objective, derivatives, near)
    assert calls["derivatives"] == 1 and converged.all()
    np.testing.assert_allclose(found[:, 0], np.log(target), rtol=0, atol=1e-12)
    calls["derivatives"] = 0
    found, converged = maximize_rows(objective, derivatives, np.zeros((2, 1)))
    assert calls["derivatives"] > 2 and converged.all()
    # The last step was up to sqrt(tol) (1 + |u|) = 2.6e-6 long: the error is of order its square.
    np.testing.assert_allclose(found[:, 0], np.log(target), rtol=0, atol=1e-11)


def test_whole_array_steps_land_where_the_per_row_steps_do_to_the_bit():
    """While every row takes its full Newton step, ``maximize_rows`` steps whole arrays; a start with one row
    out of play (non-finite) takes the per-row route throughout. Both routes visit the same points and end
    on the same bits, with rows that need their steps halved and rows that finish at different iterations."""
    target = np.array([2.0, 5.0, 0.0, 0.0, 1.0])
    centre = np.array([0.0, 0.0, 0.3, -2.0, 0.0])
    curved = np.array([True, True, False, False, True])     # target u - e^u; else -sqrt(1 + (u - centre)^2)
    visits = []

    def parts(u, s):
        visits.extend(zip(s.tolist(), u[:, 0].tolist()))
        e, d = np.exp(u[:, 0]), u[:, 0] - centre[s]
        root = np.sqrt(1 + d ** 2)
        value = np.where(curved[s], target[s] * u[:, 0] - e, -root)
        gradient = np.where(curved[s], target[s] - e, -d / root)
        hessian = np.where(curved[s], -e, -1 / root ** 3)
        return value, gradient[:, None], hessian[:, None, None]

    def objective(u, s):
        return parts(u, s)[0]

    def derivatives(u, s):
        with np.errstate(invalid="ignore"):
            return parts(u, s)

    def visited(row):
        return [u for r, u in visits if r == row]

    # Newton overshoots -sqrt(1 + d^2) from |d| > 1: those rows' steps are halved.
    start = np.array([[0.0], [3.0], [1.8], [-0.5]])
    whole, whole_converged = maximize_rows(objective, derivatives, start)
    whole_visits = [visited(row) for row in range(4)]
    visits.clear()
    per_row, per_row_converged = maximize_rows(objective, derivatives, np.vstack([start, [[np.nan]]]))
    assert [visited(row) for row in range(4)] == whole_visits
    assert whole.tobytes() == per_row[:4].tobytes()
    assert np.array_equal(whole_converged, per_row_converged[:4]) and whole_converged.all()
    assert not per_row_converged[4]
    # Row 2's first step was halved: a point visited between its start and its full step's trial point.
    assert whole_visits[2][:2] == [1.8, 1.8 - MAX_STEP] and whole_visits[2][2] == 1.8 - MAX_STEP / 2
    assert len({len(v) for v in whole_visits}) > 1
    np.testing.assert_allclose(whole[:, 0], [np.log(2.0), np.log(5.0), 0.3, -2.0], atol=1e-10)
