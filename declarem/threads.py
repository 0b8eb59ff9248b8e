"""The fit's own parallelism: the E-step's row chunks on a pool of threads, BLAS on one thread each.

A BLAS library splits every product over all cores. The E-step makes many mid-sized
products (a few per chunk of rows); split, each waits for its slowest thread, and on a
machine shared with other work a busy core stalls every one of them (a full-covariance
GMM's iteration ran 3x slower beside one busy process). So during a fit BLAS runs one
thread, and the E-step hands whole chunks to a pool of threads instead: a thread takes the
next chunk when it is free, so a busy core slows only the chunks it runs. numpy releases
the interpreter lock inside its loops and BLAS calls, so the threads run at once.

Each chunk's statistics are summed on their own and the chunks are added in order, so a
fit's result does not depend on the number of threads or on timing.

The thread count is ``threads`` (``Model.fit``, ``declarem fit --threads``), else the
``DECLAREM_THREADS`` environment variable, else the cores this process may use. Setting
BLAS's thread count takes threadpoolctl (``pip install 'declarem[threads]'``; scikit-learn
installs it too): without it, chunks run in turn and BLAS keeps its own threads.
"""

import contextlib
import contextvars
import numbers
import os
import sys
import threading
from concurrent.futures import ThreadPoolExecutor

from .errors import OptionError

#: The pool of the fit running in this context, or None: chunks then run in turn.
_POOL = contextvars.ContextVar("declarem_pool", default=None)
#: Inside ``blas_held`` in this context: whether BLAS is held at one thread; None outside.
_HELD = contextvars.ContextVar("declarem_blas_held", default=None)


def usable_cores():
    """The number of cores this process may run on."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


def resolve_threads(threads):
    """The fit's thread count: ``threads``, else ``$DECLAREM_THREADS``, else the usable cores.

    Raises
    ------
    OptionError
        When ``threads`` (or the environment variable) is not a positive integer.
    """
    if threads is None:
        configured = os.environ.get("DECLAREM_THREADS", "").strip()
        if not configured:
            return usable_cores()
        if not configured.isdigit() or int(configured) < 1:
            raise OptionError(f"DECLAREM_THREADS must be a positive integer, found {configured!r}")
        return int(configured)
    if isinstance(threads, bool) or not isinstance(threads, numbers.Integral) or threads < 1:
        raise OptionError(f"threads must be a positive integer (or None for the usable cores), found {threads!r}")
    return int(threads)


#: threadpoolctl's controller of the loaded libraries, and the count of imported modules when it
#: was made. Finding the libraries takes about 1.5 ms, more than a small fit's whole EM, so it is
#: kept between fits and made again only after imports: a BLAS arrives with an extension module
#: (scipy.linalg brings its own OpenBLAS).
_CONTROLLER = (None, -1)


def _one_blas_thread():
    """A context in which every loaded BLAS runs one thread; None without threadpoolctl."""
    global _CONTROLLER
    try:
        from threadpoolctl import ThreadpoolController
    except ImportError:
        return None
    controller, modules = _CONTROLLER
    if modules != len(sys.modules):
        controller = ThreadpoolController()
        _CONTROLLER = (controller, len(sys.modules))
    return controller.limit(limits=1, user_api="blas")


@contextlib.contextmanager
def blas_held():
    """Hold every loaded BLAS at one thread for what runs inside; yield whether it is held.

    A fit holds it from its setup on, not only in its EM loop: the setup's few large products
    (weighted sums over every row) would run on all of BLAS's threads, and OpenBLAS's threads then
    spin on for a while after each, taking a core from the fit itself and from whatever else runs
    (a tenth of a second of CPU for a fit of 20,000 counts). Nested, the outermost hold stands and
    the inner ones only report it. Without threadpoolctl nothing is held.
    """
    held = _HELD.get()
    if held is not None:
        yield held
        return
    limits = _one_blas_thread()
    if limits is None:
        token = _HELD.set(False)
        try:
            yield False
        finally:
            _HELD.reset(token)
        return
    token = _HELD.set(True)
    try:
        with limits:
            _count_limited_fit(+1)
            try:
                yield True
            finally:
                _count_limited_fit(-1)
    finally:
        _HELD.reset(token)


@contextlib.contextmanager
def fit_threads(threads, chunked):
    """Run a fit's E-steps on ``threads`` threads with one BLAS thread each.

    Parameters
    ----------
    threads : int
        From ``resolve_threads``.
    chunked : bool
        Whether the fit's engine takes its rows in more than one chunk (else a pool has
        nothing to share out, and BLAS alone is limited).
    """
    with blas_held() as held, contextlib.ExitStack() as stack:
        # Without threadpoolctl BLAS keeps its threads, and a pool would only compete with them.
        if held and threads > 1 and chunked:
            pool = stack.enter_context(ThreadPoolExecutor(threads, thread_name_prefix="declarem-estep"))
            stack.callback(_POOL.reset, _POOL.set(pool))
        yield


#: Fits running now with BLAS held to one thread (threadpoolctl's limit holds for the whole process).
_limited_fits = [0]
_limited_lock = threading.Lock()


def _count_limited_fit(change):
    with _limited_lock:
        _limited_fits[0] += change


def blas_single_threaded():
    """Whether BLAS runs one thread now (a fit holds it there), so no product needs splitting to stay on one."""
    return _limited_fits[0] > 0


def map_in_order(function, items):
    """``function`` applied to each item, results in the items' order: on the fit's pool if it has one.

    Returns
    -------
    iterator
        An exception a call raised is raised when its result is reached.
    """
    pool = _POOL.get()
    if pool is None:
        return map(function, items)
    return pool.map(function, items)


__all__ = ["blas_held", "blas_single_threaded", "fit_threads", "map_in_order", "resolve_threads", "usable_cores"]
