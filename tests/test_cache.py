"""The on-disk derivation cache: a second process does no sympy solving; bad entries are recomputed."""

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
COMPILE = "import declarem; m = declarem.load_model('models/gamma_mixture.toml'); m.compiled; print('ok')"
NO_SOLVING = ("import sympy\n"
              "def refuse(*a, **k):\n    raise AssertionError('sympy solved on a warm start')\n"
              "sympy.solve = refuse\n"
              "import sympy.solvers.solvers\nsympy.solvers.solvers.solve = refuse\n")


def run(code, cache):
    env = dict(os.environ, DECLAREM_CACHE_DIR=str(cache))
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300)


def test_second_process_loads_the_derivation(tmp_path):
    first = run(COMPILE, tmp_path)
    assert first.returncode == 0, first.stderr
    entries = sorted(p.name for p in tmp_path.iterdir())
    assert any(name.startswith("scalar-") for name in entries)
    assert any(name.startswith("simplex-") for name in entries)
    second = run(NO_SOLVING + COMPILE, tmp_path)
    assert second.returncode == 0, second.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == entries


def test_unreadable_entries_are_recomputed(tmp_path):
    assert run(COMPILE, tmp_path).returncode == 0
    for entry in tmp_path.iterdir():
        entry.write_bytes(b"not a pickle")
    again = run(COMPILE, tmp_path)
    assert again.returncode == 0, again.stderr
    refused = run(NO_SOLVING + COMPILE, tmp_path)
    assert refused.returncode == 0, refused.stderr


def test_cache_can_be_turned_off(tmp_path):
    result = run(COMPILE, "off")
    assert result.returncode == 0, result.stderr
    assert not (ROOT / "off").exists()
