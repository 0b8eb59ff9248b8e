"""Errors declarem raises for bad input; every one derives from DeclaremError.

Each subclass names one cause, so callers (and the command line) can tell a bad
spec from bad data without parsing messages.
"""


class DeclaremError(Exception):
    """Base class of every error declarem raises for bad input."""


class ExpressionError(DeclaremError):
    """A symbolic expression from a spec is not allowed or does not parse."""


class SpecError(DeclaremError):
    """A spec file or graph declares something invalid."""


class FamilyError(DeclaremError):
    """A family declaration cannot be used (unknown, malformed, not exponential-family)."""


class NotExponentialFamily(FamilyError):
    """A family whose log-density does not split into T(x) eta(theta): fitted by generalised EM."""


class DataError(DeclaremError):
    """The data does not fit the model (missing column, value outside the support, bad shape)."""


class InitError(DeclaremError):
    """An `init` entry names an unknown node or parameter, or has the wrong shape or domain."""


class OptionError(DeclaremError):
    """An option passed to fit or to the command line is out of range."""


class SizeError(DeclaremError):
    """The model or the fit would need more memory than the machine has available."""


class FitError(DeclaremError):
    """The fit cannot proceed (a row has zero probability under the model, and similar)."""


class ReferenceUpdateError(DeclaremError):
    """A hand-coded reference update given to ``compare`` cannot be loaded or run, or returns bad parameters."""


class ConvergenceWarning(UserWarning):
    """A fit stopped at ``max_iter`` before its objective's relative change fell below ``tol``."""
