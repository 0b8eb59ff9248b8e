"""Facts about the machine a benchmark runs on, printed beside its numbers."""

import os
import platform


def loadavg():
    """The 1, 5 and 15 minute load averages, as text."""
    try:
        return " ".join(f"{v:.2f}" for v in os.getloadavg())
    except (OSError, AttributeError):
        return "unknown"


def cpu_model():
    """The CPU's model name."""
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def ncpu():
    """The number of CPUs this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count()


def reference_ms(repeats=3):
    """The least time, in ms, of a fixed workload shaped like a small fit's EM loop: 2,000 rounds of a few
    numpy calls on arrays of ten to a few hundred numbers, interpreted Python between them.

    Printed before and after a benchmark, it shows how fast the host ran meanwhile: on a shared host the
    same fit's time moves from minute to minute, and with it this figure (a run whose reference took 1.5x
    its usual time ran on a host 1.5x slower).
    """
    import time

    import numpy as np
    rng = np.random.default_rng(0)
    table, rows, weights = rng.random((2, 10)), rng.random((300, 2)), rng.random(300)
    least = float("inf")
    for _ in range(repeats):
        began = time.perf_counter()
        for _ in range(2000):
            joint = rows @ np.log(table[:, :2])
            joint -= joint.max(axis=1, keepdims=True)
            posterior = np.exp(joint)
            posterior /= posterior.sum(axis=1, keepdims=True)
            table[:, :2] = (weights @ posterior).reshape(2, 1) / weights.sum() + 0.5
        least = min(least, time.perf_counter() - began)
    return least * 1e3
