"""E-step engines over numpy, behind one interface (``engine.py``); each returns expected statistics by node."""

from .engine import BilinearEngine, EnumerationEngine, engine_for
from .enumeration import ExpectedStatistics
from .rows import Rows, prepare_rows

__all__ = ["ExpectedStatistics", "EnumerationEngine", "BilinearEngine", "engine_for", "Rows", "prepare_rows"]
