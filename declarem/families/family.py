"""The Family type: a distribution declared as data.

Built-in families and the ones a user writes in ``[families.NAME]`` are the same
kind of object. A family says what a node's log-density is; the derivation
(``declarem.derive``) works out the sufficient statistics, the natural
parameters and the M-step from that declaration alone.

Three forms of declaration exist, because three shapes of sufficient statistic
exist:

``"scalar"``
    A log-density expression in ``x`` and the named parameters, e.g. Poisson's
    ``"x*log(rate) - rate - lgamma(x + 1)"``. Vector nodes of a scalar family
    are independent columns sharing the declaration.
``"indicator"``
    A log-density that is ``log(p)`` of the observed category's probability,
    with the probabilities on a simplex (the categorical family). Its
    statistic is the indicator of the category.
``"gaussian"``
    The multivariate normal in exponential-family parts, with its
    moment-to-parameter map, since sympy cannot solve for a general dimension.
``"table"``
    A deterministic many-to-one map from the parent's category (no parameters).
``"covariate"``
    An observed column that is only a covariate (a continuous parent of other
    nodes): no distribution, no parameters, no term in the likelihood.
"""

from dataclasses import dataclass, field

SUPPORTS = ("real", "positive", "nonnegative", "unit", "integer", "nonnegative-integer",
            "positive-integer", "binary", "category")
DOMAINS = ("real", "positive", "unit")
KINDS = ("scalar", "indicator", "gaussian", "table", "covariate")
#: The attributes a node declares (a family's constants are node attributes too).
NODE_KEYS = ("family", "latent", "k", "parents", "columns", "dim", "covariance", "trials",
             "probs", "table", "prior", "description", "lagged", "shares")


@dataclass(frozen=True)
class CovarianceForm:
    """How one covariance type of a vector normal node is built from declared families.

    Attributes
    ----------
    family : str
        The family whose factor is used: ``"normal"`` (independent columns) or
        ``"multivariate_normal"``.
    tie_across_columns : tuple of str
        Parameters shared by all columns of the node (spherical: ``var``).
    tie_across_parents : tuple of str
        Parameters shared by all parent configurations (tied: ``cov``).
    """

    family: str
    tie_across_columns: tuple = ()
    tie_across_parents: tuple = ()


@dataclass(frozen=True)
class Family:
    """A declared distribution.

    Attributes
    ----------
    name : str
    kind : str
        One of ``KINDS``.
    logpdf : str
        The log-density (or log-mass) in ``x`` and the parameter names, as text
        for the whitelist parser. For ``"indicator"`` families, the log of the
        observed category's probability ``p``.
    support : str
        One of ``SUPPORTS``.
    params : tuple of (str, str)
        Parameter names with their domains (``real``, ``positive``, ``unit``),
        in declaration order.
    constants : tuple of str
        Node attributes that enter the log-density as known constants
        (binomial: ``trials``).
    upper_bound : str or None
        A constant bounding the support from above (binomial: ``trials``).
    location : str or None
        A parameter that shifts with the data (``x - c`` has ``location - c``).
        The engine centres such nodes' data before forming statistics, for
        accuracy; it never changes the fit.
    regularized : tuple of str
        Parameters whose diagonal ``reg_covar`` is added to in the M-step.
    symmetric : tuple of str
        Matrix parameters that are symmetric (counted once per pair in BIC).
    covariance : tuple of (str, CovarianceForm)
        For families with vector variants selected by ``covariance = ...``.
    parts : object or None
        For ``"gaussian"`` families, the declared exponential-family parts (an
        object with ``statistics``, ``natural``, ``log_partition``,
        ``moment_map`` and ``base`` callables).
    sampler : tuple of str
        How to draw from the family with numpy: a ``numpy.random.Generator``
        method name followed by its arguments as expressions in the parameters
        and constants (normal: ``("normal", "mean", "sqrt(var)")``). Without
        one, sampling inverts the distribution function numerically.
    linear : str or None
        The parameter that continuous parents set through the canonical link
        (normal: ``mean``, poisson: ``rate``, bernoulli: ``p``).
    description : str
    """

    name: str
    kind: str
    logpdf: str
    support: str
    params: tuple
    constants: tuple = ()
    upper_bound: str | None = None
    location: str | None = None
    regularized: tuple = ()
    symmetric: tuple = ()
    covariance: tuple = ()
    parts: object = field(default=None, compare=False)
    sampler: tuple = ()
    linear: str | None = None
    description: str = ""

    def __post_init__(self):
        if self.kind not in KINDS or self.support not in SUPPORTS:
            raise ValueError(f"family '{self.name}': kind {self.kind!r} or support {self.support!r} is not "
                             "one declarem knows")

    @property
    def param_names(self):
        return tuple(name for name, _ in self.params)

    @property
    def domains(self):
        return dict(self.params)

    def covariance_form(self, name):
        return dict(self.covariance).get(name)
