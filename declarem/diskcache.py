"""Checked JSON entries in a private directory: the storage of the derivation cache.

Derivations (``derive.cache``) and their numeric kernels (``kernels``) are
stored here, so that a second process fitting the same spec loads them instead
of running sympy. What the storage promises:

- Entries cannot run code. They are JSON text; the callers read them back into
  fixed whitelists of expression nodes and records. Nothing is unpickled or
  evaluated.
- Entries are checked before use. Each carries the SHA-256 of its content and
  the full declaration it was derived from; an entry that fails either check, or
  does not parse, is recomputed and overwritten, never used.
- Only a private directory is used. A cache directory (or entry) owned by
  another user, or writable by group or others, is refused with a warning and the
  process runs without a cache. A directory the cache creates is made private.
- Entries depend on the sympy version that derived them (its simplifications
  shape the expressions); the version is read from the installed package's
  metadata, so a warm process need not import sympy to find its entries.

The directory is ``$DECLAREM_CACHE_DIR``, else ``~/.cache/declarem``;
``DECLAREM_CACHE_DIR=off`` turns the cache off.
"""

import functools
import hashlib
import importlib.metadata
import json
import os
import stat
import tempfile
import warnings

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


@functools.lru_cache(maxsize=None)
def sympy_version():
    """The installed sympy's version, without importing sympy."""
    return importlib.metadata.version("sympy")


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
                      "DECLAREM_CACHE_DIR", RuntimeWarning, stacklevel=5)
    return None


def digest(kind, key, value_text):
    """The SHA-256 an entry carries of its content."""
    return hashlib.sha256("\0".join([FORMAT, VERSION, sympy_version(), kind, key, value_text])
                          .encode()).hexdigest()


def entry_path(directory, kind, key):
    """Where the entry of a declaration lives."""
    name = hashlib.sha256("\0".join([VERSION, sympy_version(), kind, key]).encode()).hexdigest()
    return os.path.join(directory, f"{kind}-{name[:32]}.json")


def read_entry(path, kind, key):
    """The stored value of (kind, key) as parsed JSON, or None when absent, foreign, damaged or unsafe."""
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
    if entry.get("sha256") != digest(kind, key, entry["value"]):
        return None
    try:
        return json.loads(entry["value"])
    except (ValueError, RecursionError):
        return None


def write_entry(directory, path, kind, key, value_text):
    """Write an entry atomically; a read-only or full disk only costs the next process a derivation."""
    entry = {"format": FORMAT, "version": VERSION, "sympy": sympy_version(), "kind": kind, "key": key,
             "value": value_text, "sha256": digest(kind, key, value_text)}
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
        pass


def cached_json(kind, key, compute, read):
    """Load the value stored under (kind, key), or compute and store it.

    Parameters
    ----------
    kind : str
        What is stored (``"scalar"``, ``"simplex-kernels"``, ...).
    key : str
        A complete, deterministic description of the declaration (its repr).
    compute : callable
        ``compute() -> (value, data)``: the value and its JSON-ready data, or
        ``(value, None)`` when it must not be stored (a provisional derivation,
        or one the format cannot represent).
    read : callable
        ``read(data) -> value``, rebuilding a value from stored data; it raises
        ``ValueError`` (or ``TypeError``, ``RecursionError``) for data it does
        not accept, and the entry is then recomputed.
    """
    directory = usable_dir()
    if directory is None:
        return compute()[0]
    path = entry_path(directory, kind, key)
    data = read_entry(path, kind, key)
    if data is not None:
        try:
            return read(data)
        except (ValueError, TypeError, RecursionError):
            pass
    value, data = compute()
    if data is not None:
        write_entry(directory, path, kind, key, json.dumps(data, separators=(",", ":")))
    return value
