"""declarem: Expectation-Maximization derived from a declared model.

Declare a model of exponential-family factors (a TOML spec or a networkx
DiGraph); declarem derives the E-step's expected statistics and the M-step,
and fits it.
"""

import importlib

from .errors import ConvergenceWarning, DeclaremError

__all__ = ["load_model", "Model", "Fit", "DeclaremError", "ConvergenceWarning"]
__version__ = "0.1.0"

# The public names that need numpy and networkx are imported on first use, so that
# `import declarem` (and the command line's help) starts quickly.
_LAZY = {"Model": ".model", "Fit": ".fit", "load_model": ".spec"}


def __getattr__(name):
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name], __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'declarem' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_LAZY))
