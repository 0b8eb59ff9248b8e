"""The on-disk derivation cache: a second process does no sympy solving; bad entries are recomputed."""

import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest

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


def test_entries_are_json_and_private(tmp_path):
    assert run(COMPILE, tmp_path).returncode == 0
    entries = list(tmp_path.iterdir())
    assert entries and all(p.suffix == ".json" for p in entries)
    for entry in entries:
        stored = json.loads(entry.read_text())
        assert stored["format"] == "declarem-derivation"
        assert entry.stat().st_mode & 0o022 == 0


def _plant_pickle(path, marker):
    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    path.write_bytes(pickle.dumps(("key", Payload())))


def test_planted_pickle_does_not_run(tmp_path):
    """An entry replaced by a pickle whose loading runs a command: refused, recomputed, never run."""
    assert run(COMPILE, tmp_path).returncode == 0
    marker = tmp_path.parent / "planted-marker"
    for entry in list(tmp_path.iterdir()):
        _plant_pickle(entry, marker)
        _plant_pickle(entry.with_suffix(".pickle"), marker)  # where the first cache format kept entries
    again = run(COMPILE, tmp_path)
    assert again.returncode == 0, again.stderr
    assert not marker.exists()
    assert run(NO_SOLVING + COMPILE, tmp_path).returncode == 0, "entries were not recomputed"


def test_planted_json_with_foreign_classes_is_refused(tmp_path):
    """A well-formed entry with a correct checksum that names classes outside the whitelist is not used."""
    assert run(COMPILE, tmp_path).returncode == 0
    from declarem.derive import cache
    marker = tmp_path.parent / "json-marker"
    hostile_values = [
        {"record": "Popen", "fields": {"args": f"touch {marker}"}},
        {"expr": ["__import__", ["Symbol", "os", {}]]},
        {"expr": ["Symbol", "x", {"__class__": True}]},
        {"expr": ["Function", ["Symbol", f"touch {marker}", {}]]},
    ]
    for index, value in enumerate(hostile_values):
        for entry in tmp_path.glob("*.json"):
            stored = json.loads(entry.read_text())
            stored["value"] = json.dumps(value)
            stored["sha256"] = cache._digest(stored["kind"], stored["key"], stored["value"])
            entry.write_text(json.dumps(stored))
        again = run(NO_SOLVING + COMPILE, tmp_path)
        assert again.returncode != 0, f"hostile value {index} was accepted instead of recomputed"
        assert "sympy solved on a warm start" in again.stderr
        assert not marker.exists()
        assert run(COMPILE, tmp_path).returncode == 0


def test_flipped_byte_is_recomputed_not_used(tmp_path):
    """A corrupted entry never changes a fit: the checksum refuses it and it is derived again."""
    fit = ("import declarem; m = declarem.load_model('models/gamma_mixture.toml');"
           "f = m.fit('models/gamma_mixture.csv', max_iter=5, tol=0); print(repr(f.loglik))")
    cold = run(fit, tmp_path)
    assert cold.returncode == 0, cold.stderr
    originals = {p: p.read_bytes() for p in tmp_path.iterdir()}
    scalar = next(p for p in originals if p.name.startswith("scalar-"))
    raw = bytearray(originals[scalar])
    # Change a digit of the stored derivation, the kind of damage that parses but is wrong.
    position = next(i for i in range(len(raw) // 2, len(raw)) if chr(raw[i]).isdigit() and raw[i] != ord("7"))
    raw[position] = ord("7")
    scalar.write_bytes(bytes(raw))
    warm = run(fit, tmp_path)
    assert warm.returncode == 0, warm.stderr
    assert warm.stdout == cold.stdout
    assert scalar.read_bytes() == originals[scalar]


def test_directory_writable_by_others_is_refused(tmp_path):
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    result = run(COMPILE, shared)
    assert result.returncode == 0, result.stderr
    assert "running without a cache" in result.stderr
    assert list(shared.iterdir()) == []


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() != 0, reason="chown needs root")
def test_entry_owned_by_someone_else_is_not_used(tmp_path):
    assert run(COMPILE, tmp_path).returncode == 0
    for entry in tmp_path.iterdir():
        os.chown(entry, 65534, 65534)
    result = run(NO_SOLVING + COMPILE, tmp_path)
    assert result.returncode != 0 and "sympy solved on a warm start" in result.stderr


def test_provisional_derivation_is_not_cached(tmp_path):
    """A derivation whose budget ran out serves its process only; the next process derives it again."""
    starved = ("import warnings; warnings.simplefilter('always')\n"
               "import declarem.derive.budget as b; b.CPU_SECONDS = 1e-4\n"
               "import declarem; m = declarem.load_model('models/abo.toml'); m.compiled\n"
               "print(m.derive().free.status)\n")
    result = run(starved, tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "numeric"
    assert "not cached" in result.stderr
    assert not list(tmp_path.glob("free-*"))
    normal = run("import declarem; m = declarem.load_model('models/abo.toml'); m.compiled\n"
                 "print(m.derive().free.status)\n", tmp_path)
    assert normal.stdout.strip() == "closed"
    assert list(tmp_path.glob("free-*"))


def test_route_does_not_depend_on_a_busy_machine(tmp_path):
    """With every core busy, the hardest catalog derivation still closes (the budget is CPU time)."""
    spin = "import time\nend = time.time() + 60\nwhile time.time() < end: pass\n"
    spinners = [subprocess.Popen([sys.executable, "-c", spin]) for _ in range(os.cpu_count() or 2)]
    try:
        result = run("import declarem; m = declarem.load_model('models/abo.toml'); m.compiled\n"
                     "print(m.derive().free.status)\n", tmp_path)
    finally:
        for spinner in spinners:
            spinner.kill()
            spinner.wait()
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "closed"


def test_stored_derivations_read_back_equal():
    import declarem
    from declarem.derive.serial import FormatError, from_data, to_data
    for name in ("gamma_mixture", "abo", "topic_model"):
        compiled = declarem.load_model(ROOT / "models" / f"{name}.toml").compiled
        solutions = [getattr(f, "solution", None) for f in compiled.factors.values()]
        solutions.append(compiled.block.solution if compiled.block else None)
        for solution in filter(None, solutions):
            data = json.loads(json.dumps(to_data(solution)))
            assert from_data(data) == solution
    with pytest.raises(FormatError):
        from_data({"expr": ["eval", ["Integer", "1"]]})
    with pytest.raises(FormatError):
        to_data(object())
