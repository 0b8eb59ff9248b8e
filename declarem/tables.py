"""Small validators shared by the spec reader and the model: allowed keys and value types of a table."""

import difflib

from .errors import SpecError

# The keys of [model] and [data] that declarem reads, each with the type its value must have; a key
# outside these would be ignored without a word (`weight = "count"` would drop the counts).
MODEL_KEYS = {"name": str, "description": str}
DATA_KEYS = {"path": str, "weights": str, "rows": str, "columns": str, "sequence": str}
#: The options a spec's [fit] table may set (the model's own defaults for fit and `declarem fit`).
FIT_DEFAULTS = {"max_iter": 1000, "tol": 1e-8, "restarts": 1, "reg_covar": 1e-6, "accelerate": None}
TYPE_NAMES = {str: "a string", dict: "a table", list: "a list", bool: "true or false", int: "an integer",
              float: "a number", type(None): "null"}


def did_you_mean(key, allowed):
    """A hint for an unknown key: the closest allowed one, or the list of them.

    Parameters
    ----------
    key : str
    allowed : sequence of str

    Returns
    -------
    str
    """
    close = difflib.get_close_matches(str(key), list(allowed), n=1)
    return f"did you mean '{close[0]}'?" if close else f"allowed are {', '.join(allowed)}"


def type_name(value):
    return TYPE_NAMES.get(type(value), type(value).__name__)


def shown(value, limit=60):
    """A value's repr, cut short so that a message stays one readable line."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."


def check_table(table, allowed, name, source):
    """Refuse keys of table ``[name]`` outside ``allowed`` (with did-you-mean) and values of the wrong type."""
    for key, value in table.items():
        if key not in allowed:
            raise SpecError(f"{source}: unknown key '{key}' in [{name}]; {did_you_mean(key, allowed)}")
        if not isinstance(value, allowed[key]):
            raise SpecError(f"{source}: [{name}] {key} must be {TYPE_NAMES[allowed[key]]}, found "
                            f"{type_name(value)} {shown(value)}")
