"""Memory a model and a fit will need, estimated before anything is allocated.

A spec is untrusted text: ``k = 10**12`` must be refused with the node and the
size, not met with a MemoryError half-way through building arrays. Estimates
count float64 arrays only, so they are lower bounds of the real need.
"""

import math
import os

from .errors import SizeError

#: Working copies of a chunk's joint posterior that the E-step holds at once.
CHUNK_COPIES = 3
#: Arrays of (n_rows, configurations) that forward-backward holds at once (emissions, alpha, beta, posterior).
CHAIN_COPIES = 5


def array_bytes(*values):
    """Bytes of the numpy arrays among ``values``, and within their dicts, lists and tuples.

    What an object holding prepared rows reports as its size (``__sizeof__``): dask's
    scheduler reads it to keep each task beside the partition it needs, where the default,
    a Python object's own few bytes, would let it move hundreds of megabytes between workers.
    """
    import numpy as np
    total = 0
    pending = list(values)
    while pending:
        value = pending.pop()
        if isinstance(value, np.ndarray):
            total += value.nbytes
        elif isinstance(value, dict):
            pending.extend(value.values())
        elif isinstance(value, (list, tuple)):
            pending.extend(value)
    return total


def available_memory():
    """Bytes of memory available to a new allocation now.

    The least of: the system's available memory (MemAvailable where Linux reports
    it), what the container's memory limit leaves (cgroup v2 ``memory.max`` less
    ``memory.current``), and this process's address-space limit (``ulimit -v``).
    """
    limits = [_system_available(), _cgroup_available(), _address_space_available()]
    return min(limit for limit in limits if limit is not None)


def _system_available():
    try:
        with open("/proc/meminfo") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return 2 ** 62


def _cgroup_available():
    try:
        with open("/sys/fs/cgroup/memory.max") as handle:
            limit = handle.read().strip()
        if limit == "max":
            return None
        with open("/sys/fs/cgroup/memory.current") as handle:
            return max(int(limit) - int(handle.read().strip()), 0)
    except (OSError, ValueError):
        return None


def _address_space_available():
    try:
        import resource
        soft, _ = resource.getrlimit(resource.RLIMIT_AS)
        if soft == resource.RLIM_INFINITY:
            return None
        with open("/proc/self/statm") as handle:
            used = int(handle.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
        return max(soft - used, 0)
    except (ImportError, OSError, ValueError, AttributeError):
        return None


def describe_bytes(count):
    """A size for people: 1.5 GiB, 80.0 MiB."""
    for unit, scale in (("TiB", 2 ** 40), ("GiB", 2 ** 30), ("MiB", 2 ** 20), ("KiB", 2 ** 10)):
        if count >= scale:
            return f"{count / scale:.1f} {unit}"
    return f"{count} bytes"


def parameter_bytes(model, name):
    """Bytes of one node's parameters: one set per parent configuration, each of the node's own size."""
    node = model.nodes[name]
    sets = math.prod(model.nodes[p].k or 1 for p in node.parents)
    if node.k is not None:
        own = node.k
    else:
        own = node.dim * max(len(node.family.params), 1) + (node.dim ** 2 if node.dim > 1 else 0)
    return 8 * sets * own


def check_model_size(model):
    """Refuse a model whose parameters alone would not fit in memory, naming the node.

    Raises
    ------
    SizeError
    """
    available = available_memory()
    total = 0
    for name in model.nodes:
        size = parameter_bytes(model, name)
        total += size
        if size > available // 2:
            raise SizeError(f"{model.source}: node '{name}': its parameters would take {describe_bytes(size)}, "
                            f"more than half the memory available ({describe_bytes(available)}); reduce 'k' "
                            "of the node or of its parents")
    if total > available // 2:
        raise SizeError(f"{model.source}: the model's parameters would take {describe_bytes(total)}, more than "
                        f"half the memory available ({describe_bytes(available)}); reduce the nodes' 'k'")


def check_rows_size(compiled, n_rows, chunk_rows):
    """Refuse an E-step whose posterior would not fit in memory, naming the latent nodes.

    Parameters
    ----------
    compiled : CompiledModel
    n_rows : int
        Rows of the data (after grouping).
    chunk_rows : int
        Rows per E-step chunk (a chain's forward-backward holds whole sequences instead).

    Raises
    ------
    SizeError
    """
    configurations = compiled.n_configurations
    if configurations <= 1:
        return
    need = 8 * configurations * (CHUNK_COPIES * min(n_rows, chunk_rows) + n_rows)
    if compiled.model.chain is not None:
        need = 8 * configurations * CHAIN_COPIES * n_rows
    available = available_memory()
    if need > available:
        sizes = ", ".join(f"{name} (k = {k})" for name, k in zip(compiled.latent, compiled.latent_sizes))
        raise SizeError(f"{compiled.model.source}: the latent nodes {sizes} have {configurations} joint "
                        f"configurations; the posterior over {n_rows} rows needs {describe_bytes(need)} and "
                        f"{describe_bytes(available)} is available; reduce 'k' or the number of latent nodes")


def check_sample_size(model, n_rows, label="n_rows = "):
    """Refuse drawing more rows than the memory available can hold.

    Per row, sampling holds a float per drawn column (every node, latent ones too),
    the table written out, and the widest working array of one node (a categorical
    node's cumulative probabilities, a normal node's Cholesky factor).

    Parameters
    ----------
    model : Model
    n_rows : int
    label : str
        How the request is named in the message (``"--n "`` on the command line).

    Raises
    ------
    SizeError
    """
    drawn = sum(node.dim for node in model.nodes.values())
    working = max((node.k or 1) if node.is_discrete else node.dim * node.dim for node in model.nodes.values())
    width = 2 * drawn + working
    need = n_rows * width * 8
    available = available_memory()
    if need > available:
        raise SizeError(f"{label}{n_rows}: sampling needs about {describe_bytes(need)} ({n_rows} rows x {width} "
                        f"values x 8 bytes), more than the {describe_bytes(available)} of memory available; "
                        "sample fewer rows, or several batches with different seeds")
