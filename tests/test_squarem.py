"""SQUAREM: the same optimum as plain EM in a fraction of the EM steps, never below the EM step."""

from pathlib import Path

import networkx as nx
import numpy as np
import pytest
import scipy.optimize
import scipy.stats

import declarem
from declarem.data import read_csv

ROOT = Path(__file__).resolve().parent.parent
START = {"z": {"probs": [0.3, 0.7]}, "deaths": {"rate": [1.0, 2.5]}}


def hasselblad_optimum(data):
    x, w = data["deaths"], data["count"]

    def negative(theta):
        weight = 1 / (1 + np.exp(-theta[0]))
        rates = np.exp(theta[1:])
        mixture = weight * scipy.stats.poisson.pmf(x, rates[0]) + (1 - weight) * scipy.stats.poisson.pmf(x, rates[1])
        return -np.dot(w, np.log(mixture))

    found = scipy.optimize.minimize(negative, [np.log(0.36 / 0.64), np.log(1.25), np.log(2.66)],
                                    method="Nelder-Mead", options={"xatol": 1e-10, "fatol": 1e-12, "maxiter": 20000})
    weight = 1 / (1 + np.exp(-found.x[0]))
    return -found.fun, np.array([weight, 1 - weight]), np.exp(found.x[1:])


def test_hasselblad_reaches_the_optimum_in_few_steps():
    model = declarem.load_model(ROOT / "models" / "hasselblad.toml")
    data = read_csv(ROOT / "models" / "hasselblad.csv")
    loglik, probs, rates = hasselblad_optimum(data)
    plain = model.fit(data, init=START, tol=1e-12, max_iter=100000, accelerate="none")
    fast = model.fit(data, init=START, tol=1e-12, max_iter=100000, accelerate="squarem")
    assert fast.converged and plain.converged
    assert fast.n_iter < plain.n_iter / 10
    assert fast.loglik == pytest.approx(loglik, rel=1e-11)
    np.testing.assert_allclose(fast.params["deaths"]["rate"], rates, rtol=1e-4)
    np.testing.assert_allclose(fast.params["z"]["probs"], probs, rtol=1e-4)
    assert fast.loglik >= plain.loglik - 1e-9
    assert np.all(np.diff(fast.history) >= 0)


def test_slow_gmm_same_optimum_fewer_steps():
    # Two heavily overlapping clusters: plain EM crawls. 100 rows per cluster keep it slow (over a thousand
    # steps; 300 rows took 7700 steps, most of this file's time) while SQUAREM needs about a tenth.
    rng = np.random.default_rng(4)
    x = np.concatenate([rng.normal(0, 1, (100, 2)), rng.normal(1.2, 1, (100, 2))])
    graph = nx.DiGraph()
    graph.add_node("z", family="categorical", latent=True, k=2)
    graph.add_node("x", family="normal", dim=2, covariance="full")
    graph.add_edge("z", "x")
    model = declarem.Model(graph)
    init = {"z": {"probs": [0.5, 0.5]}, "x": {"mean": [[-0.5, 0.0], [1.5, 1.0]], "cov": [np.eye(2), np.eye(2)]}}
    plain = model.fit({"x": x}, init=init, tol=1e-12, max_iter=20000, reg_covar=0)
    fast = model.fit({"x": x}, init=init, tol=1e-12, max_iter=20000, reg_covar=0, accelerate="squarem")
    assert plain.converged and plain.n_iter > 1000      # a slow problem for plain EM
    assert fast.converged and fast.n_iter < plain.n_iter / 2
    assert fast.loglik >= plain.loglik - 1e-7 * abs(plain.loglik)
    order = np.argsort(fast.params["x"]["mean"][:, 0])
    reference = np.argsort(plain.params["x"]["mean"][:, 0])
    np.testing.assert_allclose(fast.params["x"]["mean"][order], plain.params["x"]["mean"][reference], atol=2e-3)
    assert np.all(np.diff(fast.history) >= -1e-12 * np.abs(fast.history[1:]))


def test_forty_squarem_steps_end_above_forty_plain_ones():
    """Hasselblad's slow fit: SQUAREM's 40 EM steps end at least as high as plain EM's 40."""
    model = declarem.load_model(ROOT / "models" / "hasselblad.toml")
    data = read_csv(ROOT / "models" / "hasselblad.csv")
    fast = model.fit(data, init=START, tol=0, max_iter=40, accelerate="squarem")
    plain = model.fit(data, init=START, tol=0, max_iter=40, accelerate="none")
    assert fast.history[-1] >= plain.history[-1]
    assert fast.n_iter == 40


def test_unknown_accelerator_is_refused():
    model = declarem.load_model(ROOT / "models" / "hasselblad.toml")
    with pytest.raises(declarem.DeclaremError, match="accelerate"):
        model.fit(read_csv(ROOT / "models" / "hasselblad.csv"), accelerate="aitken")


def test_the_catalog_negbin_mixture_is_reported_converged_only_at_its_maximum():
    # The maximum found by direct maximisation (tests/test_gem_reference.py, models/randhie_mdvis_SOURCE.md).
    # Estimating the distance left from SQUAREM's jumps had it stop 3e-5 short in the proportions.
    model = declarem.load_model(ROOT / "models" / "negbin_mixture.toml")
    fit = model.fit(ROOT / "models" / "randhie_mdvis.csv", seed=0)
    assert fit.converged
    order = np.argsort(fit.params["z"]["probs"])[::-1]
    np.testing.assert_allclose(fit.params["z"]["probs"][order], [0.830798, 0.169202], atol=2e-6)
    np.testing.assert_allclose(fit.params["count"]["r"][order], [0.941147, 0.387298], atol=2e-6)
    np.testing.assert_allclose(fit.params["count"]["p"][order], [0.718958, 0.929209], atol=2e-6)


def test_one_quick_cycle_does_not_make_a_slow_squarem_run_converged():
    from declarem.monitor import ConvergenceMonitor
    monitor = ConvergenceMonitor(tol=1e-12)
    point = np.zeros(1)
    # Two cycles whose EM steps shrink at 0.99, then one whose steps shrink at 0.1 (fast directions first).
    for count, (first, second) in enumerate([(1e-5, 0.99e-5), (1e-6, 0.99e-6), (1e-6, 1e-7)]):
        steps = (point, point + first, point + first + second)
        converged = monitor.iteration(count + 1, -100.0 + 1e-13 * count, None, {"x": {"v": steps[2]}},
                                      em_steps=steps)
    # The last cycle alone says 1e-7 * 0.1 / 0.9, about 1e-8, under sqrt(tol) = 1e-6; the slowest rate says
    # 1e-7 * 0.99 / 0.01 = 9.9e-6, over it.
    assert monitor.remaining_distance == pytest.approx(1e-7 * 0.99 / 0.01, rel=1e-6)
    assert not converged


def _inside_domains(compiled, external):
    """Whether parameters lie in their declared domains, checked here from the specs alone."""
    for node, params in external.items():
        if node in compiled.free_names:
            continue
        specs = compiled.factors[node].params
        for name, value in params.items():
            spec, value = specs[name], np.asarray(value, dtype=float)
            if not np.all(np.isfinite(value)):
                return False
            if spec.symmetric:
                if not np.allclose(value, np.swapaxes(value, -1, -2)) or np.any(np.linalg.eigvalsh(value) <= 0):
                    return False
            elif spec.simplex:
                if np.any(value < 0) or not np.allclose(value.sum(axis=-1), 1.0, atol=1e-8):
                    return False
            elif spec.domain == "positive" and np.any(value <= 0):
                return False
            elif spec.domain == "unit" and np.any((value <= 0) | (value >= 1)):
                return False
    return True


@pytest.mark.filterwarnings("ignore:the fit stopped at max_iter")
@pytest.mark.parametrize("spec", ["gmm.toml", "poisson_mixture.toml", "gaussian_hmm.toml", "weibull_mixture.toml"])
def test_extrapolated_points_are_accepted_exactly_inside_the_domains(spec):
    """SQUAREM's domain check (Factor.in_domain) on affine combinations of two parameter points, as its
    extrapolations are: far enough out, rates and variances turn negative, probabilities leave [0, 1] and
    covariances stop being positive definite; the check agrees with the domains, point by point."""
    from declarem.squarem import _valid
    model = declarem.load_model(ROOT / "models" / spec)
    data = ROOT / "models" / model.data_info["path"]
    compiled = model.compiled
    shifts = {}
    first = compiled.to_internal(model.fit(data, seed=0, max_iter=3).params, shifts)
    # Another valid point: the components in the other order (each probability vector reversed).
    second = {name: {p: np.flip(v, axis=-1 if p == "probs" else 0) for p, v in values.items()}
              for name, values in first.items()}
    verdicts = []
    for step in np.linspace(-3.0, 4.0, 29):
        moved = {name: {p: np.asarray(v) + step * (np.asarray(second[name][p]) - np.asarray(v))
                        for p, v in values.items()}
                 for name, values in first.items()}
        expected = _inside_domains(compiled, compiled.to_external(moved, shifts))
        assert _valid(compiled, moved, shifts) == expected, step
        verdicts.append(expected)
    assert any(verdicts) and not all(verdicts)
