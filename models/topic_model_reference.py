"""Hand-coded EM for the lecture's topic model (Hennig, Probabilistic ML, lecture 21), in plain numpy.

The reference that declarem's derived updates for ``models/topic_model.toml`` are held against. It imports
nothing from declarem: every line comes from the lecture's formulas.

Model (D documents, K topics, V words; token i of document d):
    pi_d    ~ Dirichlet(alpha)                  topic proportions of document d   (topic.probs, D x K)
    theta_k ~ Dirichlet(beta)                   word distribution of topic k      (word.probs,  K x V)
    c_di    ~ Categorical(pi_d)                 latent topic of the token
    w_di    ~ Categorical(theta_{c_di})         the observed word
and, as a side factor that does not interact with the others, the document index of each token is
Categorical(doc.probs), whose ML estimate is each document's share of the tokens.

E-step (the lecture's gamma-tilde):
    gamma_dik = pi_dk theta_{k, w_di} / sum_k' pi_dk' theta_{k', w_di}
Hard (classification) EM replaces it by the indicator of argmax_k (log pi_dk + log theta_{k, w_di}).

M-step (Lagrange multipliers for sum_k pi_dk = 1 and sum_v theta_kv = 1; the Dirichlet priors add their
pseudo-counts alpha - 1 and beta - 1, giving the MAP estimate; pass alpha=None / beta=None for no prior):
    n_dk = sum_i gamma_dik
    n_kv = sum_{d,i: w_di = v} gamma_dik
    pi_dk    = (alpha - 1 + n_dk) / sum_k' (alpha - 1 + n_dk')
    theta_kv = (beta - 1 + n_kv) / sum_v' (beta - 1 + n_kv')
With alpha = beta = 1 this is maximum likelihood, the lecture's pi_dk = gamma_d.k / gamma_d.. and
theta_kv = sum I(w = v) gamma / sum gamma.

Data are the non-zero cells of a document-term matrix: ``data["doc"]``, ``data["word"]`` and
``data["count"]`` (the cell's count; the c identical tokens of a cell share one gamma, so every sum over
tokens is a count-weighted sum over cells). Everything is vectorised over cells and accumulated with
``np.bincount``: the cost is O(cells x K) and no D x V array is formed. A document or topic with no
expected tokens and no pseudo-counts (a 0/0 row) keeps its previous parameters.

    step(data, params) -> params          one EM iteration, the ``declarem compare`` reference interface
    objective(data, params) -> float      log-likelihood plus log prior (what fit.history records)
"""

import os
import tomllib

import numpy as np
from scipy.special import gammaln

SPEC = os.path.join(os.path.dirname(os.path.abspath(__file__)), "topic_model.toml")


def spec_priors(path=SPEC):
    """(alpha, beta): the Dirichlet concentrations the spec declares on topic and word (None if none)."""
    with open(path, "rb") as handle:
        nodes = tomllib.load(handle)["nodes"]

    def concentration(node):
        prior = nodes[node].get("prior") or {}
        return float(prior["dirichlet"]) if "dirichlet" in prior else None

    return concentration("topic"), concentration("word")


ALPHA, BETA = spec_priors()


def _cells(data):
    doc = np.asarray(data["doc"]).astype(np.intp)
    word = np.asarray(data["word"]).astype(np.intp)
    count = np.asarray(data["count"], dtype=float) if "count" in data else np.ones(len(doc))
    return doc, word, count


def responsibilities(data, params, hard=False):
    """gamma (n_cells, K): each cell's posterior over topics (one-hot at the best topic with ``hard``)."""
    doc, word, _ = _cells(data)
    pi = np.asarray(params["topic"]["probs"], dtype=float)
    theta = np.asarray(params["word"]["probs"], dtype=float)
    if hard:
        with np.errstate(divide="ignore"):
            score = np.log(pi)[doc] + np.log(theta).T[word]
        gamma = np.zeros_like(score)
        gamma[np.arange(len(score)), np.argmax(score, axis=1)] = 1.0
        return gamma
    gamma = pi[doc] * theta.T[word]                  # pi_dk theta_{k, w}, one row per cell
    gamma /= gamma.sum(axis=1, keepdims=True)
    return gamma


def step(data, params, alpha=ALPHA, beta=BETA, hard=False):
    """One EM iteration of the lecture's updates; returns new parameters in ``fit.params`` form."""
    doc, word, count = _cells(data)
    pi = np.asarray(params["topic"]["probs"], dtype=float)
    theta = np.asarray(params["word"]["probs"], dtype=float)
    n_docs, n_topics = pi.shape
    n_words = theta.shape[1]

    weighted = responsibilities(data, params, hard) * count[:, None]   # count_dv * gamma_dvk
    topics = np.arange(n_topics)
    n_dk = np.bincount((doc[:, None] * n_topics + topics).ravel(), weights=weighted.ravel(),
                       minlength=n_docs * n_topics).reshape(n_docs, n_topics)
    n_vk = np.bincount((word[:, None] * n_topics + topics).ravel(), weights=weighted.ravel(),
                       minlength=n_words * n_topics).reshape(n_words, n_topics)

    new_pi = _normalised_rows(_pseudo(alpha) + n_dk, pi)
    new_theta = _normalised_rows(_pseudo(beta) + n_vk.T, theta)
    tokens = np.bincount(doc, weights=count, minlength=n_docs)
    return {"doc": {"probs": tokens / tokens.sum()},
            "topic": {"probs": new_pi},
            "word": {"probs": new_theta}}


def _pseudo(concentration):
    """The pseudo-count a - 1 of a Dirichlet(a) prior; 0 without a prior (None): maximum likelihood."""
    return 0.0 if concentration is None else concentration - 1.0


def _normalised_rows(numerator, old):
    total = numerator.sum(axis=1, keepdims=True)
    empty = total[:, 0] <= 0
    with np.errstate(invalid="ignore", divide="ignore"):
        new = numerator / total
    new[empty] = old[empty]
    return new


def loglik(data, params):
    """Observed-data log-likelihood: sum over cells of count * log(p(doc) sum_k pi_dk theta_{k, w})."""
    doc, word, count = _cells(data)
    pi = np.asarray(params["topic"]["probs"], dtype=float)
    theta = np.asarray(params["word"]["probs"], dtype=float)
    share = np.asarray(params["doc"]["probs"], dtype=float)
    per_cell = np.log((pi[doc] * theta.T[word]).sum(axis=1)) + np.log(share[doc])
    return float(np.dot(count, per_cell))


def log_prior(params, alpha=ALPHA, beta=BETA):
    """log prod_d Dir(pi_d; alpha) + log prod_k Dir(theta_k; beta), normalising constants included.

    A concentration of None means no prior on that node (no term).
    """
    total = 0.0
    for probs, a in ((params["topic"]["probs"], alpha), (params["word"]["probs"], beta)):
        if a is None:
            continue
        probs = np.asarray(probs, dtype=float)
        rows, k = probs.shape
        total += rows * (gammaln(k * a) - k * gammaln(a))
        if a != 1.0:
            total += (a - 1.0) * float(np.log(probs).sum())
    return total


def objective(data, params, alpha=ALPHA, beta=BETA):
    """The MAP-EM objective: log-likelihood plus log prior."""
    return loglik(data, params) + log_prior(params, alpha, beta)


def run(data, params, n_iter, alpha=ALPHA, beta=BETA, hard=False):
    """``n_iter`` iterations of ``step``; returns the parameters and the objective after each."""
    history = [objective(data, params, alpha, beta)]
    for _ in range(n_iter):
        params = step(data, params, alpha, beta, hard)
        history.append(objective(data, params, alpha, beta))
    return params, history
