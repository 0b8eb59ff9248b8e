"""Every test session derives into its own empty on-disk cache, so derivations really run."""

import os
import tempfile

os.environ["DECLAREM_CACHE_DIR"] = tempfile.mkdtemp(prefix="declarem-cache-")
