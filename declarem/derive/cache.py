"""The on-disk cache of derivations, keyed by the declaration's content.

A derivation depends only on a family's (or a block of free parameters')
declaration, so a second process fitting the same spec loads it instead of
running sympy. Entries are pickles that declarem itself wrote, named by a hash of
the declaration, declarem's version and sympy's version; a stale, unreadable or
foreign entry is recomputed and overwritten. The directory is
``$DECLAREM_CACHE_DIR``, else ``~/.cache/declarem``; ``DECLAREM_CACHE_DIR=off``
turns the cache off.
"""

import hashlib
import os
import pickle
import tempfile

import sympy

VERSION = "1"


def cache_dir():
    """The cache directory, or None when caching is off."""
    configured = os.environ.get("DECLAREM_CACHE_DIR")
    if configured == "off":
        return None
    return configured or os.path.join(os.path.expanduser("~"), ".cache", "declarem")


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
    directory = cache_dir()
    if directory is None:
        return compute()
    digest = hashlib.sha256("\0".join([VERSION, sympy.__version__, kind, key]).encode()).hexdigest()
    path = os.path.join(directory, f"{kind}-{digest[:32]}.pickle")
    try:
        with open(path, "rb") as handle:
            stored_key, value = pickle.load(handle)
        if stored_key == key:
            return value
    except (OSError, EOFError, pickle.UnpicklingError, AttributeError, ImportError, ValueError, TypeError):
        pass
    value = compute()
    try:
        os.makedirs(directory, exist_ok=True)
        handle, temporary = tempfile.mkstemp(dir=directory, suffix=".tmp")
        with os.fdopen(handle, "wb") as stream:
            pickle.dump((key, value), stream, protocol=pickle.HIGHEST_PROTOCOL)
        os.replace(temporary, path)
    except OSError:
        pass  # a read-only or full disk only costs the next process a derivation
    return value
