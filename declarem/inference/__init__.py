"""E-step engines over numpy. Each returns expected statistics keyed by node."""

from .enumeration import (ExpectedStatistics, expected_statistics, posterior_marginals,
                          statistics_from_posterior)
from .rows import Rows, prepare_rows

__all__ = ["ExpectedStatistics", "expected_statistics", "posterior_marginals",
           "statistics_from_posterior", "Rows", "prepare_rows"]
