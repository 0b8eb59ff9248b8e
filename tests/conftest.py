"""Every test session derives into its own empty on-disk cache, so derivations really run.

Under pytest-xdist (``-n N``) every worker process imports this file; the workers of one run share
one cache, named after the run's random id, so that a derivation runs once per run as it does in a
serial session, not once per worker.

BLAS runs one thread per process (unless the environment already says otherwise), here and in the
processes the tests start. The tests' matrices are small: on a machine with two cores shared with
other work, a second BLAS thread mostly waits for a busy core, and made the topic model's fit 2.5
times slower (10.4 s against 4.2 s); under ``-n 2`` the threads would also oversubscribe the cores.
"""

import os
import sys
import tempfile

for _variable in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_variable, "1")
if "numpy" in sys.modules:      # a plugin imported numpy before this file: its BLAS has started its threads
    from threadpoolctl import threadpool_limits

    threadpool_limits(limits=1, user_api="blas")

_run_id = os.environ.get("PYTEST_XDIST_TESTRUNUID")
if _run_id:
    _directory = os.path.join(tempfile.gettempdir(), f"declarem-cache-{_run_id}")
    os.makedirs(_directory, mode=0o700, exist_ok=True)
else:
    _directory = tempfile.mkdtemp(prefix="declarem-cache-")
os.environ["DECLAREM_CACHE_DIR"] = _directory


import pytest  # noqa: E402


@pytest.fixture(scope="session")
def page_generator():
    """docs/generate_models.py, loaded once per session.

    It fits each catalog spec (``declarem fit SPEC --seed 0``) once per process, so the tests that
    hold those fits to something (the catalog pages, the generalised-EM fixed points) share them.
    """
    from pathlib import Path

    from support import load_file

    return load_file(Path(__file__).resolve().parent.parent / "docs" / "generate_models.py")
