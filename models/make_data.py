"""Generate the catalog's bundled data sets from known "true" parameters.

    python models/make_data.py               # (re)write models/*.csv and models/true_params.json
    python models/make_data.py --bootstrap 200
        # parametric bootstrap: refit each model on fresh samples of the same size with the
        # independent numpy EM below and print the standard deviation of every parameter
        # (the numbers tests/test_catalog.py uses to size its recovery tolerances)

Everything here is plain numpy/scipy and does not import declarem, so that it can serve as an
independent reference: `component_logpdf` evaluates log p(x | z = k) for every row and component,
`loglik` the observed-data log-likelihood, and `hand_em` runs textbook EM with hand-written M-steps.

Each model has a fixed seed, so rerunning the script reproduces the committed files byte for byte.
The latent label z is never written to the CSV files: it is what EM has to recover.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
from scipy import optimize, special

HERE = Path(__file__).resolve().parent


# ---------------------------------------------------------------------------------------------
# The generated models: true parameters, sample size, seed, and the observed nodes' layout.
# Observed nodes are (node, family, columns, extra); params follow declarem's contract names and
# shapes with the leading axis indexed by the latent node z.
# ---------------------------------------------------------------------------------------------

MODELS: dict[str, dict] = {
    "gmm": {
        "seed": 20261101,
        "n": 900,
        "nodes": [("x", "normal_full", ["x_0", "x_1"], {})],
        "true": {
            "z": {"probs": [0.5, 0.3, 0.2]},
            "x": {
                "mean": [[0.0, 0.0], [6.0, 5.0], [-5.0, 6.0]],
                "cov": [
                    [[2.0, 0.6], [0.6, 1.0]],
                    [[1.0, -0.5], [-0.5, 1.5]],
                    [[1.5, 0.0], [0.0, 0.5]],
                ],
            },
        },
    },
    "poisson_mixture": {
        "seed": 20261102,
        "n": 2000,
        "nodes": [("count", "poisson", ["count"], {})],
        "true": {
            "z": {"probs": [0.45, 0.35, 0.2]},
            "count": {"rate": [1.0, 8.0, 25.0]},
        },
    },
    "bernoulli_mixture": {
        # Every pair of profiles differs on at least 4 of the 8 items; with profiles that differ on
        # only 2 items the ML estimate of a component's p often sits on the boundary (0 or 1).
        "seed": 20261103,
        "n": 2000,
        "nodes": [("answers", "bernoulli", [f"item_{j}" for j in range(1, 9)], {})],
        "true": {
            "z": {"probs": [0.4, 0.35, 0.25]},
            "answers": {
                "p": [
                    [0.8, 0.8, 0.8, 0.8, 0.2, 0.2, 0.2, 0.2],
                    [0.2, 0.2, 0.2, 0.2, 0.8, 0.8, 0.8, 0.8],
                    [0.8, 0.2, 0.8, 0.2, 0.8, 0.2, 0.8, 0.2],
                ]
            },
        },
    },
    "exponential_mixture": {
        "seed": 20261105,
        "n": 3000,
        "nodes": [("duration", "exponential", ["duration"], {})],
        "true": {
            "z": {"probs": [0.6, 0.4]},
            "duration": {"rate": [2.0, 0.1]},
        },
    },
    "gamma_mixture": {
        "seed": 20261106,
        "n": 2000,
        "nodes": [("size", "gamma", ["size"], {})],
        "true": {
            "z": {"probs": [0.55, 0.45]},
            "size": {"shape": [3.0, 12.0], "rate": [3.0, 1.5]},
        },
    },
    "latent_class": {
        "seed": 20261107,
        "n": 3000,
        "nodes": [
            ("q1", "categorical", ["q1"], {"k": 2}),
            ("q2", "categorical", ["q2"], {"k": 3}),
            ("q3", "categorical", ["q3"], {"k": 4}),
            ("q4", "categorical", ["q4"], {"k": 2}),
            ("q5", "categorical", ["q5"], {"k": 3}),
        ],
        "true": {
            "z": {"probs": [0.5, 0.3, 0.2]},
            "q1": {"probs": [[0.9, 0.1], [0.2, 0.8], [0.5, 0.5]]},
            "q2": {"probs": [[0.7, 0.2, 0.1], [0.1, 0.2, 0.7], [0.1, 0.8, 0.1]]},
            "q3": {
                "probs": [
                    [0.6, 0.2, 0.1, 0.1],
                    [0.1, 0.1, 0.2, 0.6],
                    [0.1, 0.6, 0.2, 0.1],
                ]
            },
            "q4": {"probs": [[0.8, 0.2], [0.8, 0.2], [0.1, 0.9]]},
            "q5": {"probs": [[0.2, 0.6, 0.2], [0.7, 0.2, 0.1], [0.1, 0.1, 0.8]]},
        },
    },
}

# The two-coins data are the published ones (Do & Batzoglou 2008), not generated: five sets of
# ten tosses, heads counts below, coin identity latent.
TWO_COINS = {
    "nodes": [("heads", "binomial", ["heads"], {"trials": 10})],
    "heads": [5, 9, 8, 4, 7],
}


# ---------------------------------------------------------------------------------------------
# Sampling
# ---------------------------------------------------------------------------------------------

def _as_arrays(params: dict) -> dict:
    return {node: {k: np.asarray(v, dtype=float) for k, v in p.items()} for node, p in params.items()}


def sample(name: str, n: int, rng: np.random.Generator, params: dict | None = None):
    """Draw n rows of model `name`; returns (z, {column: 1-D array})."""
    spec = MODELS[name]
    params = _as_arrays(params or spec["true"])
    w = params["z"]["probs"]
    z = rng.choice(len(w), size=n, p=w)
    cols: dict[str, np.ndarray] = {}
    for node, fam, columns, extra in spec["nodes"]:
        p = params[node]
        if fam == "normal_full":
            mean, cov = p["mean"], p["cov"]
            x = np.empty((n, mean.shape[1]))
            for k in range(len(w)):
                idx = np.flatnonzero(z == k)
                x[idx] = rng.multivariate_normal(mean[k], cov[k], size=idx.size)
            for j, c in enumerate(columns):
                cols[c] = x[:, j]
        elif fam == "poisson":
            cols[columns[0]] = rng.poisson(p["rate"][z])
        elif fam == "bernoulli":
            x = (rng.random((n, len(columns))) < p["p"][z]).astype(int)
            for j, c in enumerate(columns):
                cols[c] = x[:, j]
        elif fam == "exponential":
            cols[columns[0]] = rng.exponential(1.0 / p["rate"][z])
        elif fam == "gamma":
            cols[columns[0]] = rng.gamma(p["shape"][z], 1.0 / p["rate"][z])
        elif fam == "categorical":
            probs = p["probs"][z]                                   # (n, k)
            u = rng.random(n)[:, None]
            cols[columns[0]] = (u > np.cumsum(probs, axis=1)).sum(axis=1).clip(0, extra["k"] - 1)
        else:  # pragma: no cover
            raise ValueError(fam)
    return z, cols


# ---------------------------------------------------------------------------------------------
# Independent reference: component log-densities, log-likelihood, hand-written EM
# ---------------------------------------------------------------------------------------------

def _node_matrix(cols: dict, columns: list[str]) -> np.ndarray:
    return np.column_stack([np.asarray(cols[c], dtype=float) for c in columns])


def component_logpdf(nodes, params: dict, cols: dict) -> np.ndarray:
    """(N, K) array of log p(observed row | z = k) (all observed nodes, conditionally independent)."""
    params = _as_arrays(params)
    K = params["z"]["probs"].shape[0]
    total = 0.0
    for node, fam, columns, extra in nodes:
        p = params[node]
        X = _node_matrix(cols, columns)
        if fam == "normal_full":
            mean, cov = p["mean"], p["cov"]
            D = mean.shape[1]
            out = np.empty((X.shape[0], K))
            for k in range(K):
                L = np.linalg.cholesky(cov[k])
                sol = np.linalg.solve(L, (X - mean[k]).T)
                out[:, k] = (-0.5 * (sol**2).sum(0) - np.log(np.diag(L)).sum()
                             - 0.5 * D * np.log(2 * np.pi))
        elif fam == "poisson":
            x = X[:, 0][:, None]
            out = x * np.log(p["rate"]) - p["rate"] - special.gammaln(x + 1)
        elif fam == "bernoulli":
            out = X @ np.log(p["p"]).T + (1 - X) @ np.log1p(-p["p"]).T
        elif fam == "binomial":
            x, m = X[:, 0][:, None], extra["trials"]
            out = (special.gammaln(m + 1) - special.gammaln(x + 1) - special.gammaln(m - x + 1)
                   + x * np.log(p["p"]) + (m - x) * np.log1p(-p["p"]))
        elif fam == "exponential":
            out = np.log(p["rate"]) - X[:, 0][:, None] * p["rate"]
        elif fam == "gamma":
            x = X[:, 0][:, None]
            a, b = p["shape"], p["rate"]
            out = a * np.log(b) - special.gammaln(a) + (a - 1) * np.log(x) - b * x
        elif fam == "categorical":
            out = np.log(p["probs"]).T[X[:, 0].astype(int)]          # (N, K)
        else:  # pragma: no cover
            raise ValueError(fam)
        total = total + out
    return total


def loglik(nodes, params: dict, cols: dict) -> float:
    """Observed-data log-likelihood sum_i log sum_k pi_k p(x_i | z_i = k)."""
    lp = component_logpdf(nodes, params, cols) + np.log(np.asarray(params["z"]["probs"], float))
    return float(special.logsumexp(lp, axis=1).sum())


def _gamma_shape(mean_x: np.ndarray, mean_logx: np.ndarray) -> np.ndarray:
    """Solve log(a) - digamma(a) = log(mean_x) - mean_logx (> 0 by Jensen) for each component."""
    s = np.log(mean_x) - mean_logx
    out = np.empty_like(s)
    for k, sk in enumerate(s):
        f = lambda a: np.log(a) - special.digamma(a) - sk       # noqa: E731  (decreasing in a)
        out[k] = optimize.brentq(f, 1e-8, 1e8, xtol=1e-14, rtol=1e-14)
    return out


def m_step(nodes, R: np.ndarray, cols: dict, fixed_probs: bool = False, old=None) -> dict:
    """Exact ML M-step given responsibilities R (N, K)."""
    Nk = R.sum(0)
    new: dict = {"z": {"probs": Nk / Nk.sum() if not fixed_probs else old["z"]["probs"]}}
    for node, fam, columns, extra in nodes:
        X = _node_matrix(cols, columns)
        if fam == "normal_full":
            mean = (R.T @ X) / Nk[:, None]
            cov = np.empty((len(Nk), X.shape[1], X.shape[1]))
            for k in range(len(Nk)):
                d = X - mean[k]
                cov[k] = (R[:, k, None] * d).T @ d / Nk[k]
            new[node] = {"mean": mean, "cov": cov}
        elif fam in ("poisson", "bernoulli"):
            m = (R.T @ X) / Nk[:, None]
            # (clip p away from 0 and 1 so a boundary estimate does not turn into NaN)
            new[node] = {"rate": m[:, 0]} if fam == "poisson" else {"p": m.clip(1e-12, 1 - 1e-12)}
        elif fam == "binomial":
            p = (R.T @ X)[:, 0] / (Nk * extra["trials"])
            new[node] = {"p": p.clip(1e-12, 1 - 1e-12)}
        elif fam == "exponential":
            new[node] = {"rate": Nk / (R.T @ X)[:, 0]}
        elif fam == "gamma":
            mx = (R.T @ X)[:, 0] / Nk
            mlx = (R.T @ np.log(X))[:, 0] / Nk
            a = _gamma_shape(mx, mlx)
            new[node] = {"shape": a, "rate": a / mx}
        elif fam == "categorical":
            onehot = np.eye(extra["k"])[X[:, 0].astype(int)]
            c = R.T @ onehot
            new[node] = {"probs": c / c.sum(1, keepdims=True)}
    return new


def hand_em(nodes, cols: dict, init: dict, max_iter: int = 5000, tol: float = 1e-12,
            fixed_probs: bool = False):
    """Textbook EM from `init`; returns (params, loglik history). tol is on the relative change."""
    params = _as_arrays(init)
    hist = []
    for it in range(max_iter + 1):
        lp = component_logpdf(nodes, params, cols) + np.log(params["z"]["probs"])
        norm = special.logsumexp(lp, axis=1, keepdims=True)
        hist.append(float(norm.sum()))
        if it == max_iter or (it > 0 and abs(hist[-1] - hist[-2]) <= tol * abs(hist[-1])):
            break
        params = m_step(nodes, np.exp(lp - norm), cols, fixed_probs=fixed_probs, old=params)
    return params, hist


# ---------------------------------------------------------------------------------------------
# Writing files
# ---------------------------------------------------------------------------------------------

def _fmt(v) -> str:
    if isinstance(v, (int, np.integer)):
        return str(int(v))
    return f"{float(v):.6g}"


def write_csv(path: Path, cols: dict) -> None:
    names = list(cols)
    rows = zip(*(cols[c] for c in names))
    int_cols = [np.issubdtype(np.asarray(cols[c]).dtype, np.integer) for c in names]
    with open(path, "w", newline="\n") as fh:
        fh.write(",".join(names) + "\n")
        for row in rows:
            fh.write(",".join(str(int(v)) if ic else _fmt(v) for v, ic in zip(row, int_cols)) + "\n")


def read_csv(path: Path) -> dict:
    """Read one of the bundled CSVs back (numeric, header row) as {column: 1-D array}."""
    arr = np.genfromtxt(path, delimiter=",", names=True, dtype=None, encoding="utf-8")
    return {name: np.asarray(arr[name]) for name in arr.dtype.names}


def generate() -> None:
    true_params = {}
    for name, spec in MODELS.items():
        rng = np.random.default_rng(spec["seed"])
        _, cols = sample(name, spec["n"], rng)
        write_csv(HERE / f"{name}.csv", cols)
        true_params[name] = spec["true"]
        print(f"wrote models/{name}.csv ({spec['n']} rows, columns {', '.join(cols)})")
    write_csv(HERE / "two_coins.csv", {"heads": np.array(TWO_COINS["heads"])})
    print("wrote models/two_coins.csv (the five published sets of ten tosses)")
    with open(HERE / "true_params.json", "w") as fh:
        json.dump(true_params, fh, indent=1)
        fh.write("\n")
    print("wrote models/true_params.json")


def bootstrap(reps: int) -> dict:
    """Parametric bootstrap SDs of the ML estimates, refitting from the true parameters."""
    result = {}
    for name, spec in MODELS.items():
        rng = np.random.default_rng(spec["seed"] + 7919)
        draws: dict = {}
        for _ in range(reps):
            _, cols = sample(name, spec["n"], rng)
            est, _ = hand_em(spec["nodes"], cols, spec["true"], tol=1e-11)
            for node, ps in est.items():
                for pname, v in ps.items():
                    draws.setdefault(node, {}).setdefault(pname, []).append(np.asarray(v))
        result[name] = {node: {p: np.std(np.stack(v), axis=0, ddof=1).round(4).tolist()
                               for p, v in ps.items()} for node, ps in draws.items()}
    return result


if __name__ == "__main__":
    if len(sys.argv) >= 2 and sys.argv[1] == "--bootstrap":
        reps = int(sys.argv[2]) if len(sys.argv) > 2 else 200
        print(json.dumps(bootstrap(reps), indent=1))
    else:
        generate()
