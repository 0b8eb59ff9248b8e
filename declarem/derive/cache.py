"""The on-disk cache of derivations, keyed by the declaration's content.

A derivation depends only on a family's (or a block of free parameters')
declaration, so a second process fitting the same spec loads it instead of
running sympy. What the cache promises:

- Entries cannot run code. They are JSON: expressions as trees of whitelisted
  sympy classes, read back by ``serial.from_data``; nothing is unpickled or
  evaluated.
- Entries are checked before use. Each carries the SHA-256 of its content and
  the full declaration it was derived from; an entry that fails either check, or
  does not parse, is recomputed and overwritten, never used.
- Only a private directory is used. A cache directory (or entry) owned by
  another user, or writable by group or others, is refused with a warning and the
  process runs without a cache. A directory the cache creates is made private.
- Only final results are stored. A derivation whose sympy budget ran out
  (``provisional``) serves its own process and is derived again by the next.
- An entry is verified on writing: it must read back equal to what was derived.

The directory is ``$DECLAREM_CACHE_DIR``, else ``~/.cache/declarem``;
``DECLAREM_CACHE_DIR=off`` turns the cache off.
"""

import hashlib
import json
import os
import stat
import tempfile
import warnings

import sympy

from .serial import FormatError, from_data, to_data

VERSION = "2"
FORMAT = "declarem-derivation"
MAX_ENTRY_BYTES = 16 * 2**20
_refused = set()


def cache_dir():
    """The cache directory, or None when caching is off."""
    configured = os.environ.get("DECLAREM_CACHE_DIR")
    if configured == "off":
        return None
    return configured or os.path.join(os.path.expanduser("~"), ".cache", "declarem")


def _is_private(status):
    """Whether a file or directory is ours and writable by nobody else."""
    if hasattr(os, "getuid") and status.st_uid != os.getuid():
        return False
    return not status.st_mode & (stat.S_IWGRP | stat.S_IWOTH)


def usable_dir():
    """The cache directory when it is safe to use (created private if absent), else None."""
    directory = cache_dir()
    if directory is None:
        return None
    try:
        if not os.path.lexists(directory):
            os.makedirs(directory, mode=0o700, exist_ok=True)
        status = os.lstat(directory)
    except OSError:
        return None
    if stat.S_ISDIR(status.st_mode) and _is_private(status):
        return directory
    if directory not in _refused:
        _refused.add(directory)
        reason = "is not a directory (or is a symbolic link)" if not stat.S_ISDIR(status.st_mode) else \
            "is owned by another user or writable by others"
        warnings.warn(f"derivation cache {directory} {reason}, so its entries could be planted by someone "
                      "else; running without a cache. Use a private directory (chmod 700) or set "
                      "DECLAREM_CACHE_DIR", RuntimeWarning, stacklevel=4)
    return None


def _digest(kind, key, value_text):
    return hashlib.sha256("\0".join([FORMAT, VERSION, sympy.__version__, kind, key, value_text])
                          .encode()).hexdigest()


def entry_path(directory, kind, key):
    """Where the entry of a declaration lives."""
    name = hashlib.sha256("\0".join([VERSION, sympy.__version__, kind, key]).encode()).hexdigest()
    return os.path.join(directory, f"{kind}-{name[:32]}.json")


def _load(path, kind, key):
    """The stored derivation, or None when the entry is absent, foreign, damaged or unsafe."""
    try:
        handle = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    except OSError:
        return None
    with os.fdopen(handle, "rb") as stream:
        status = os.fstat(stream.fileno())
        if not stat.S_ISREG(status.st_mode) or not _is_private(status) or status.st_size > MAX_ENTRY_BYTES:
            return None
        raw = stream.read(MAX_ENTRY_BYTES + 1)
    try:
        entry = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        return None
    if not isinstance(entry, dict) or entry.get("format") != FORMAT or entry.get("kind") != kind or \
            entry.get("key") != key or not isinstance(entry.get("value"), str):
        return None
    if entry.get("sha256") != _digest(kind, key, entry["value"]):
        return None
    try:
        return from_data(json.loads(entry["value"]))
    except (FormatError, ValueError, TypeError, RecursionError):
        return None


def _store(directory, path, kind, key, value):
    """Write an entry atomically; skip values that do not read back equal."""
    try:
        value_text = json.dumps(to_data(value), separators=(",", ":"))
        if from_data(json.loads(value_text)) != value:
            return
    except (FormatError, ValueError, TypeError, RecursionError):
        return
    entry = {"format": FORMAT, "version": VERSION, "sympy": sympy.__version__, "kind": kind, "key": key,
             "value": value_text, "sha256": _digest(kind, key, value_text)}
    try:
        handle, temporary = tempfile.mkstemp(dir=directory, suffix=".tmp")
        try:
            with os.fdopen(handle, "w") as stream:
                json.dump(entry, stream)
            os.replace(temporary, path)
        except OSError:
            os.unlink(temporary)
            raise
    except OSError:
        pass  # a read-only or full disk only costs the next process a derivation


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
    directory = usable_dir()
    if directory is None:
        return compute()
    path = entry_path(directory, kind, key)
    value = _load(path, kind, key)
    if value is not None:
        return value
    value = compute()
    if not getattr(value, "provisional", False):
        _store(directory, path, kind, key, value)
    return value
