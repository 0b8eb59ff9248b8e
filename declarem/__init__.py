"""declarem: Expectation-Maximization derived from a declared model.

Declare a model of exponential-family factors (a TOML spec or a networkx
DiGraph); declarem derives the E-step's expected statistics and the M-step,
and fits it.
"""

from .errors import ConvergenceWarning, DeclaremError
from .fit import Fit
from .model import Model
from .spec import load_model

__all__ = ["load_model", "Model", "Fit", "DeclaremError", "ConvergenceWarning"]
__version__ = "0.1.0"
