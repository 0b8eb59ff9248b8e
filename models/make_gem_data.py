"""Write the catalog's data for generalised EM: real overdispersed counts and a Weibull mixture.

    python models/make_gem_data.py                       # both files, from the installed statsmodels
    python models/make_gem_data.py --statsmodels PATH    # PATH: a statsmodels wheel or package folder

The Weibull data needs nothing but numpy; without statsmodels the script writes it, says why it
wrote no counts, and exits with status 2.

Plain numpy and the standard library; it imports neither declarem nor statsmodels (it only reads
a file that statsmodels ships). Rerunning it reproduces the committed files byte for byte.

``models/randhie_mdvis.csv`` (20,190 rows, column ``count``)
    The number of face-to-face visits to a physician in a year (``mdvis``) of each person-year
    of the RAND Health Insurance Experiment, the only column taken from the data set
    ``statsmodels.datasets.randhie`` of the PyPI package statsmodels 0.15.0 (file
    ``statsmodels/datasets/randhie/randhie.csv``, SHA-256 ``RANDHIE_SHA256`` below), in its
    row order. statsmodels states of this data set: "This is in the public domain." (its
    ``COPYRIGHT``); statsmodels itself is BSD-3-Clause. The data set was used in Cameron, A. C.
    and Trivedi, P. K. (2005), *Microeconometrics: Methods and Applications*, Cambridge
    University Press, and obtained by statsmodels from the book's data page; statsmodels notes
    that it holds a subset of the original variables and varies slightly from the figures the
    book reports. The experiment: Newhouse, J. P. and the Insurance Experiment Group (1993),
    *Free for All? Lessons from the RAND Health Insurance Experiment*, Harvard University Press.
    Deb, P. and Trivedi, P. K. (2002), "The structure of demand for health care: latent class
    versus two-part models", *Journal of Health Economics* 21, 601-625, fit finite mixtures of
    negative binomials to these visits. Mean 2.8604, variance 20.288 (divided by n), 31.2 %
    zeros, maximum 77. Rows are person-years: most people were followed for several years, so
    rows of one person are not independent; the catalog treats them as a pooled sample, as a
    latent-class model without covariates does. See ``models/randhie_mdvis_SOURCE.md``.

    Without statsmodels installed, fetch its wheel (no dependencies needed) and pass it:
    ``pip download statsmodels==0.15.0 --no-deps -d /tmp/sm`` then
    ``python models/make_gem_data.py --statsmodels /tmp/sm/statsmodels-0.15.0-*.whl``.

``models/weibull_mixture.csv`` (seed 20261203, 500 rows, column ``x``)
    A two-component Weibull mixture with clearly different shapes: z ~ Categorical(probs),
    x | z = k ~ Weibull(shape k, scale lam), density (k / lam) (x / lam)^(k - 1)
    exp(-(x / lam)^k). True parameters:

    ========  =====  =====  =====
    z = k     probs  k      lam
    ========  =====  =====  =====
    0         0.4    0.8    1.0
    1         0.6    4.0    3.0
    ========  =====  =====  =====

    Component 0 is decreasing from x = 0 (a shape below 1: mean 1.133, standard deviation
    1.43), component 1 a near-symmetric hump at 2.72 (standard deviation 0.76); they overlap
    between 1 and 3, where only the shapes tell them apart.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import importlib.util
import io
import sys
import zipfile
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent

RANDHIE_MEMBER = "statsmodels/datasets/randhie/randhie.csv"
RANDHIE_SHA256 = "9f6c87d05aef087a82cc4465310c8cd3f38327be6eafa43bd81fb98c4f3d088c"
RANDHIE_COLUMN = "mdvis"
# What the committed counts hold, for a test that cannot fetch statsmodels.
RANDHIE_SUMMARY = {"n_rows": 20190, "total": 57752, "n_zeros": 6308, "max": 77}

# Parameters in fit.params form ({node: {param: list}}), with the leading axis indexed by z.
WEIBULL_MIXTURE = {
    "seed": 20261203,
    "n_rows": 500,
    "true": {
        "z": {"probs": [0.4, 0.6]},
        "x": {"k": [0.8, 4.0], "lam": [1.0, 3.0]},
    },
}


def read_randhie_source(statsmodels_path=None):
    """The bytes of statsmodels' ``randhie.csv``.

    Parameters
    ----------
    statsmodels_path : str or Path, optional
        A statsmodels wheel (``.whl``), or the folder of the statsmodels package (the one holding
        ``datasets/``). Without it, the installed statsmodels is located without importing it.

    Returns
    -------
    bytes

    Raises
    ------
    FileNotFoundError
        statsmodels is not installed and no path was given.
    ValueError
        The file differs from the one the committed counts came from (statsmodels 0.15.0).
    """
    if statsmodels_path is None:
        found = importlib.util.find_spec("statsmodels")
        if found is None or found.origin is None:
            raise FileNotFoundError(
                "statsmodels is not installed: install it, or run 'pip download statsmodels==0.15.0 --no-deps "
                "-d DIR' and pass the wheel with --statsmodels DIR/statsmodels-0.15.0-*.whl")
        statsmodels_path = Path(found.origin).parent
    statsmodels_path = Path(statsmodels_path)
    if statsmodels_path.suffix == ".whl":
        with zipfile.ZipFile(statsmodels_path) as wheel:
            content = wheel.read(RANDHIE_MEMBER)
    else:
        content = (statsmodels_path / RANDHIE_MEMBER.split("/", 1)[1]).read_bytes()
    digest = hashlib.sha256(content).hexdigest()
    if digest != RANDHIE_SHA256:
        raise ValueError(f"{RANDHIE_MEMBER} from {statsmodels_path} has SHA-256 {digest}, not {RANDHIE_SHA256} "
                         "(statsmodels 0.15.0's, from which models/randhie_mdvis.csv was written): "
                         "use statsmodels 0.15.0")
    return content


def randhie_counts(content):
    """The ``mdvis`` column of statsmodels' ``randhie.csv``, in file order.

    Parameters
    ----------
    content : bytes
        The file, as ``read_randhie_source`` returns it.

    Returns
    -------
    ndarray of int64, shape (20190,)
    """
    rows = csv.DictReader(io.StringIO(content.decode("utf-8")))
    values = np.array([float(row[RANDHIE_COLUMN]) for row in rows])
    counts = values.astype(np.int64)
    if not np.array_equal(counts, values) or np.any(counts < 0):
        raise ValueError(f"column {RANDHIE_COLUMN!r} of {RANDHIE_MEMBER} holds values that are not "
                         "non-negative integers")
    return counts


def sample_weibull_mixture(settings):
    """Draw the Weibull mixture.

    Parameters
    ----------
    settings : dict
        ``WEIBULL_MIXTURE`` or one of its shape: seed, n_rows, true.

    Returns
    -------
    dict
        ``{"x": ndarray of shape (n_rows,)}``, positive reals.
    """
    rng = np.random.default_rng(settings["seed"])
    true = settings["true"]
    n_rows = settings["n_rows"]
    component = rng.choice(len(true["z"]["probs"]), size=n_rows, p=true["z"]["probs"])
    shape = np.asarray(true["x"]["k"])[component]
    scale = np.asarray(true["x"]["lam"])[component]
    return {"x": scale * rng.weibull(shape)}


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


def write_randhie(out_dir=HERE, statsmodels_path=None):
    """Write ``randhie_mdvis.csv`` into ``out_dir`` from statsmodels' file.

    Parameters
    ----------
    out_dir : str or Path
    statsmodels_path : str or Path, optional
        See ``read_randhie_source``.

    Returns
    -------
    Path
        The file written.
    """
    path = Path(out_dir) / "randhie_mdvis.csv"
    counts = randhie_counts(read_randhie_source(statsmodels_path))
    write_csv(path, {"count": counts})
    return path


def write_weibull(out_dir=HERE):
    """Write ``weibull_mixture.csv`` into ``out_dir``; returns its Path."""
    path = Path(out_dir) / "weibull_mixture.csv"
    write_csv(path, sample_weibull_mixture(WEIBULL_MIXTURE))
    return path


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--statsmodels", metavar="PATH",
                        help="a statsmodels 0.15.0 wheel or package folder (default: the installed statsmodels)")
    parser.add_argument("--out-dir", default=HERE, type=Path, help="where to write (default: models/)")
    arguments = parser.parse_args(argv)
    print(f"wrote {write_weibull(arguments.out_dir)}")
    try:
        print(f"wrote {write_randhie(arguments.out_dir, arguments.statsmodels)}")
    except (FileNotFoundError, ValueError, KeyError) as error:
        # KeyError: a wheel without the data file.
        print(f"make_gem_data: randhie_mdvis.csv not written: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
