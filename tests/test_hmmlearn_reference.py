"""Chains against hmmlearn from the same start: Gaussian (every covariance type), categorical and Poisson
emissions, several sequences of unequal length; 10 EM iterations to 1e-8 relative, and the Viterbi path."""

import networkx as nx
import numpy as np
import pytest
from hmmlearn import hmm

import declarem

LENGTHS = [120, 75, 160, 45]
K, D = 3, 2


def _chain(child_attributes):
    graph = nx.DiGraph()
    graph.add_node("z", family="categorical", latent=True, k=K)
    graph.add_edge("z", "z", lag=1)
    graph.add_node("x", **child_attributes)
    graph.add_edge("z", "x")
    return declarem.Model(graph)


def _start(rng):
    start = rng.dirichlet(np.ones(K) * 3)
    probs = rng.dirichlet(np.ones(K) * 2, size=K) + np.eye(K) * 2
    return start, probs / probs.sum(axis=1, keepdims=True)


def _gaussian_data(rng):
    truth = hmm.GaussianHMM(n_components=K, covariance_type="full", random_state=1)
    truth.startprob_ = np.array([0.6, 0.3, 0.1])
    truth.transmat_ = np.array([[0.8, 0.15, 0.05], [0.1, 0.8, 0.1], [0.2, 0.2, 0.6]])
    truth.means_ = np.array([[0.0, 0.0], [3.0, 1.0], [-2.0, 4.0]])
    truth.covars_ = np.array([[[1.0, 0.3], [0.3, 0.6]], [[0.5, 0.0], [0.0, 1.5]], [[1.2, -0.4], [-0.4, 0.8]]])
    return truth.sample(sum(LENGTHS), random_state=int(rng.integers(2**31)))[0]


COVARIANCES = {
    "full": lambda rng: np.array([np.cov(rng.normal(size=(50, D)).T) + np.eye(D) for _ in range(K)]),
    "diag": lambda rng: 0.5 + rng.random((K, D)),
    "spherical": lambda rng: 0.5 + rng.random(K),
    "tied": lambda rng: np.cov(rng.normal(size=(50, D)).T) + np.eye(D),
}


@pytest.mark.parametrize("covariance_type", ["full", "diag", "spherical", "tied"])
def test_gaussian_hmm_equals_hmmlearn(covariance_type):
    rng = np.random.default_rng(11)
    x = _gaussian_data(rng)
    start, probs = _start(rng)
    means = x[rng.choice(len(x), K, replace=False)]
    covars = COVARIANCES[covariance_type](rng)
    peer = hmm.GaussianHMM(n_components=K, covariance_type=covariance_type, init_params="", params="stmc",
                           n_iter=10, tol=0, covars_prior=0.0, min_covar=0.0, implementation="scaling")
    peer.startprob_, peer.transmat_, peer.means_, peer.covars_ = start, probs, means, covars
    # declarem names a covariance matrix (full, tied) cov and variances (diag, spherical) var.
    init = {"z": {"start": start, "probs": probs},
            "x": {"mean": means, ("cov" if covariance_type in ("full", "tied") else "var"): covars}}
    peer.fit(x, LENGTHS)
    model = _chain({"family": "normal", "dim": D, "covariance": covariance_type})
    data = {"x_0": x[:, 0], "x_1": x[:, 1]}
    fit = model.fit(data, init=init, max_iter=10, tol=0, reg_covar=0, lengths=LENGTHS)
    np.testing.assert_allclose(fit.params["z"]["start"], peer.startprob_, rtol=1e-8, atol=1e-12)
    np.testing.assert_allclose(fit.params["z"]["probs"], peer.transmat_, rtol=1e-8)
    np.testing.assert_allclose(fit.params["x"]["mean"], peer.means_, rtol=1e-8)
    fitted_cov = fit.params["x"]["cov"] if "cov" in fit.params["x"] else fit.params["x"]["var"]
    # hmmlearn keeps a spherical variance repeated over the dimensions.
    expected = peer.covars_ if covariance_type != "spherical" else np.asarray(peer._covars_).reshape(K, -1)[:, 0]
    if covariance_type == "diag":
        expected = np.array([np.diag(c) for c in peer.covars_])
    if covariance_type == "tied":
        expected = peer.covars_[0]
    np.testing.assert_allclose(fitted_cov, expected, rtol=1e-8)
    assert fit.loglik == pytest.approx(peer.score(x, LENGTHS), rel=1e-10)
    _, path = peer.decode(x, LENGTHS, algorithm="viterbi")
    assert np.array_equal(fit.decode(data, lengths=LENGTHS)["z"], path)


def test_categorical_hmm_equals_hmmlearn():
    rng = np.random.default_rng(4)
    symbols = 6
    truth = hmm.CategoricalHMM(n_components=K, random_state=2)
    truth.startprob_ = np.array([0.5, 0.3, 0.2])
    truth.transmat_ = np.array([[0.7, 0.2, 0.1], [0.15, 0.7, 0.15], [0.1, 0.3, 0.6]])
    truth.emissionprob_ = rng.dirichlet(np.ones(symbols), size=K)
    x = truth.sample(sum(LENGTHS), random_state=int(rng.integers(2**31)))[0]
    start, probs = _start(rng)
    emission = rng.dirichlet(np.ones(symbols) * 2, size=K)
    peer = hmm.CategoricalHMM(n_components=K, init_params="", params="ste", n_iter=10, tol=0,
                              implementation="scaling")
    peer.startprob_, peer.transmat_, peer.emissionprob_ = start, probs, emission
    peer.n_features = symbols
    peer.fit(x, LENGTHS)
    model = _chain({"family": "categorical", "k": symbols})
    data = {"x": x[:, 0]}
    fit = model.fit(data, init={"z": {"start": start, "probs": probs}, "x": {"probs": emission}},
                    max_iter=10, tol=0, lengths=LENGTHS)
    np.testing.assert_allclose(fit.params["z"]["probs"], peer.transmat_, rtol=1e-8)
    np.testing.assert_allclose(fit.params["x"]["probs"], peer.emissionprob_, rtol=1e-8)
    np.testing.assert_allclose(fit.params["z"]["start"], peer.startprob_, rtol=1e-8, atol=1e-12)
    _, path = peer.decode(x, LENGTHS, algorithm="viterbi")
    assert np.array_equal(fit.decode(data, lengths=LENGTHS)["z"], path)


def test_poisson_hmm_equals_hmmlearn():
    rng = np.random.default_rng(8)
    rates = np.array([2.0, 9.0, 25.0])
    states = rng.integers(0, K, size=sum(LENGTHS))
    x = rng.poisson(rates[states])[:, None]
    start, probs = _start(rng)
    lambdas = np.array([[1.0], [10.0], [20.0]])
    peer = hmm.PoissonHMM(n_components=K, init_params="", params="stl", n_iter=10, tol=0,
                          implementation="scaling", lambdas_prior=0.0, lambdas_weight=0.0)
    peer.startprob_, peer.transmat_, peer.lambdas_ = start, probs, lambdas
    peer.fit(x, LENGTHS)
    graph = nx.DiGraph()
    graph.add_node("z", family="categorical", latent=True, k=K, lagged=["z"])
    graph.add_node("count", family="poisson")
    graph.add_edge("z", "count")
    data = {"count": x[:, 0]}
    fit = declarem.Model(graph).fit(data, init={"z": {"start": start, "probs": probs},
                                                "count": {"rate": lambdas[:, 0]}},
                                    max_iter=10, tol=0, lengths=LENGTHS)
    np.testing.assert_allclose(fit.params["count"]["rate"], peer.lambdas_[:, 0], rtol=1e-8)
    np.testing.assert_allclose(fit.params["z"]["probs"], peer.transmat_, rtol=1e-8)
    _, path = peer.decode(x, LENGTHS, algorithm="viterbi")
    assert np.array_equal(fit.decode(data, lengths=LENGTHS)["z"], path)
