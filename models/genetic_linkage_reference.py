"""Hand-coded EM for the genetic-linkage example of Dempster, Laird and Rubin (1977), Section 1.

A. P. Dempster, N. M. Laird and D. B. Rubin, "Maximum likelihood from incomplete data via the EM
algorithm", J. R. Statist. Soc. B 39(1):1-38, 1977. The reference for ``models/genetic_linkage.toml``:

    declarem compare models/genetic_linkage.toml --reference models/genetic_linkage_reference.py

Observed counts y = (y1, y2, y3, y4) with cell probabilities (1/2 + theta/4, (1-theta)/4, (1-theta)/4,
theta/4) (the paper's pi is theta here). The complete data split y1 = x1 + x2 over cells 1/2 and theta/4.

E-step, the paper's (1.4):  x2 = y1 (theta/4) / (1/2 + theta/4)
M-step, the paper's (1.5):  theta' = (x2 + y4) / (x2 + y2 + y3 + y4)

Data as in models/genetic_linkage.csv: ``data["x"]`` the observed category (0..3) of each row and
``data["count"]`` its count (without a count column every row counts once).

    step(data, params) -> params          one EM iteration, the ``declarem compare`` interface
    loglik(data, params) -> float         sum_j y_j log P(category j), the objective declarem reports
    mle(counts) -> float                  the maximum-likelihood estimate, the root of a quadratic
"""

import numpy as np


def counts(data):
    """y = (y1, y2, y3, y4): the total count of each observed category."""
    x = np.asarray(data["x"]).astype(np.intp)
    weight = np.asarray(data["count"], dtype=float) if "count" in data else np.ones(len(x))
    return np.bincount(x, weights=weight, minlength=4)


def cell_probs(theta):
    """The five complete-data cells (1/2, theta/4, (1-theta)/4, (1-theta)/4, theta/4): z.probs."""
    return np.array([0.5, theta / 4, (1 - theta) / 4, (1 - theta) / 4, theta / 4])


def step(data, params):
    """One iteration of (1.4) and (1.5); returns ``{"theta": ..., "z": {"probs": ...}}``."""
    y1, y2, y3, y4 = counts(data)
    theta = float(params["theta"])
    x2 = y1 * (theta / 4) / (0.5 + theta / 4)
    new = (x2 + y4) / (x2 + y2 + y3 + y4)
    return {"theta": float(new), "z": {"probs": cell_probs(new)}}


def loglik(data, params):
    y = counts(data)
    theta = float(params["theta"])
    return float(np.dot(y, np.log([0.5 + theta / 4, (1 - theta) / 4, (1 - theta) / 4, theta / 4])))


def mle(y):
    """The root in (0, 1) of n theta^2 - (y1 - 2 y2 - 2 y3 - y4) theta - 2 y4 = 0, where the score of the
    observed-data likelihood vanishes; for y = (125, 18, 20, 34) it is (15 + sqrt(53809)) / 394."""
    y1, y2, y3, y4 = (float(v) for v in y)
    n = y1 + y2 + y3 + y4
    b = y1 - 2 * (y2 + y3) - y4
    return (b + np.sqrt(b * b + 8 * n * y4)) / (2 * n)
