"""The on-disk cache of derivations, keyed by the declaration's content.

A derivation depends only on a family's (or a block of free parameters')
declaration, so a second process fitting the same spec loads it instead of
running sympy. Entries live in ``declarem.diskcache`` (private directory,
checked JSON, see its promises); this module stores derivation records there
as ``serial`` data, which reads back only whitelisted sympy nodes and records.

- Only final results are stored. A derivation whose sympy budget ran out
  (``provisional``) serves its own process and is derived again by the next.
- An entry is verified on writing: it must read back equal to what was derived.
"""

import json

from ..diskcache import cached_json, read_entry
from .serial import FormatError, from_data, to_data


def load(path, kind, key):
    """The derivation stored at ``path`` for (kind, key), or None when absent, damaged or unsafe."""
    data = read_entry(path, kind, key)
    if data is None:
        return None
    try:
        return from_data(data)
    except (FormatError, ValueError, TypeError, RecursionError):
        return None


def _storable(value):
    """The value with its stored data, or with None when it must not be stored."""
    if getattr(value, "provisional", False):
        return value, None
    try:
        data = to_data(value)
        if from_data(json.loads(json.dumps(data))) != value:
            return value, None
    except (FormatError, ValueError, TypeError, RecursionError):
        return value, None
    return value, data


def cached(kind, key, compute):
    """Load the derivation stored under (kind, key), or compute and store it.

    Parameters
    ----------
    kind : str
        What is derived (``"scalar"``, ``"simplex"``, ``"free"``).
    key : str
        A complete, deterministic description of the declaration (its repr).
    compute : callable
        Computes the derivation when it is not stored.
    """
    return cached_json(kind, key, lambda: _storable(compute()), from_data)
