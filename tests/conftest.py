"""Every test session derives into its own empty on-disk cache, so derivations really run.

Under pytest-xdist (``-n N``) every worker process imports this file; the workers of one run share
one cache, named after the run's random id, so that a derivation runs once per run as it does in a
serial session, not once per worker.
"""

import os
import tempfile

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
