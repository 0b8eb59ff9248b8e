"""The built-in families, declared exactly as a user declares one: a table of data.

Each entry has the keys of a ``[families.NAME]`` table in a spec file, plus the
few declarations a user family has no need of (constants such as binomial's
``trials``, the location and covariance roles of the normal).
"""

from .family import CovarianceForm, Family
from .gaussian import GaussianParts


def _dirichlet_log_normaliser(a):
    """log Gamma(sum a) - sum log Gamma(a) over the last axis: the Dirichlet's log normaliser."""
    from scipy.special import gammaln
    return gammaln(a.sum(axis=-1)) - gammaln(a).sum(axis=-1)


BUILTIN_TABLE = {
    "categorical": dict(
        kind="indicator", logpdf="log(p)", support="category", params=(("probs", "unit"),),
        description="One of k categories with probabilities `probs` on the simplex."),
    "deterministic": dict(
        kind="table", logpdf="", support="category", params=(),
        description="An observed category that is a fixed function of its parent's category, given as "
                    "`table` (parent value -> this node's value): coarsened data, declared."),
    "covariate": dict(
        kind="covariate", logpdf="", support="real", params=(),
        description="An observed column that is only a covariate: a continuous parent of normal, poisson or "
                    "bernoulli nodes (their linear predictor), with no distribution of its own."),
    "bernoulli": dict(
        sampler=("binomial", "1", "p"),
        logpdf="x*log(p) + (1 - x)*log(1 - p)", support="binary", params=(("p", "unit"),), linear="p",
        description="A 0/1 outcome with success probability `p`."),
    "binomial": dict(
        sampler=("binomial", "trials", "p"),
        logpdf="x*log(p) + (trials - x)*log(1 - p) + lgamma(trials + 1) - lgamma(x + 1)"
               " - lgamma(trials - x + 1)",
        support="nonnegative-integer", params=(("p", "unit"),), constants=("trials",),
        upper_bound="trials",
        description="Successes in `trials` independent trials with success probability `p`."),
    "poisson": dict(
        sampler=("poisson", "rate"),
        logpdf="x*log(rate) - rate - lgamma(x + 1)", support="nonnegative-integer",
        params=(("rate", "positive"),), linear="rate", description="Counts with mean `rate`."),
    "exponential": dict(
        sampler=("exponential", "1/rate"),
        logpdf="log(rate) - rate*x", support="positive", params=(("rate", "positive"),),
        description="Waiting times with rate `rate` (mean 1/rate)."),
    "geometric": dict(
        sampler=("geometric", "p"),
        logpdf="log(p) + (x - 1)*log(1 - p)", support="positive-integer", params=(("p", "unit"),),
        description="Trials up to and including the first success (1, 2, ...), as numpy's `geometric`."),
    "normal": dict(
        sampler=("normal", "mean", "sqrt(var)"),
        logpdf="-(x - mean)**2/(2*var) - log(2*pi*var)/2", support="real",
        params=(("mean", "real"), ("var", "positive")), location="mean", regularized=("var",), linear="mean",
        covariance=(
            ("diag", CovarianceForm("normal")),
            ("spherical", CovarianceForm("normal", tie_across_columns=("var",))),
            ("full", CovarianceForm("multivariate_normal")),
            ("tied", CovarianceForm("multivariate_normal", tie_across_parents=("cov",))),
        ),
        description="Univariate normal with `mean` and variance `var`; with `dim`, a multivariate "
                    "normal whose `covariance` is full, diag, tied or spherical."),
    "multivariate_normal": dict(
        kind="gaussian", logpdf="", support="real", params=(("mean", "real"), ("cov", "positive")),
        location="mean", regularized=("cov",), symmetric=("cov",), parts=GaussianParts,
        description="Multivariate normal with `mean` and covariance matrix `cov` (reached through "
                    "`normal` with `covariance = \"full\"` or `\"tied\"`)."),
    "gamma": dict(
        sampler=("gamma", "shape", "1/rate"),
        logpdf="shape*log(rate) - lgamma(shape) + (shape - 1)*log(x) - rate*x", support="positive",
        params=(("shape", "positive"), ("rate", "positive")),
        description="Gamma with `shape` and `rate` (mean shape/rate)."),
    "beta": dict(
        sampler=("beta", "a", "b"),
        logpdf="(a - 1)*log(x) + (b - 1)*log(1 - x) + lgamma(a + b) - lgamma(a) - lgamma(b)",
        support="unit", params=(("a", "positive"), ("b", "positive")),
        description="Beta on (0, 1) with shapes `a` and `b`."),
}

#: Conjugate priors, declared like families: the log-density of one element of the parameter
#: (``p``) in the prior's hyperparameter (``a``), and the family kind they apply to. The
#: normaliser is constant in the parameters, so it moves the reported objective only.
PRIOR_TABLE = {
    "dirichlet": dict(
        applies_to="indicator", element_logpdf="(a - 1)*log(p)", hyperparameter="a",
        minimum=1.0, maximum=1e6, log_normaliser=_dirichlet_log_normaliser,
        description="Dirichlet(a) on each probability row: MAP adds a - 1 pseudo-counts per category."),
}

#: Families a node cannot name directly (reached through another family's options).
INTERNAL = ("multivariate_normal",)


def builtin_families():
    """Return the built-in families, by name."""
    return {name: Family(name=name, kind=entry.get("kind", "scalar"),
                         **{key: value for key, value in entry.items() if key != "kind"})
            for name, entry in BUILTIN_TABLE.items()}
