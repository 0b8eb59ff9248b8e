"""The on-disk derivation cache: a second process does no sympy solving; bad entries are never used.

Three processes run end to end: one derives into an empty cache (compiling and fitting the gamma
mixture), a warm start from a copy of it solves nothing and fits to the same digits, and one derives
planted entries again; the other checks read entries in this process, from the cache the first filled.
"""

import json
import os
import pickle
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import networkx as nx
import pytest

import declarem
from declarem import diskcache, kernels
from declarem.derive import cache

ROOT = Path(__file__).resolve().parent.parent
COMPILE = "import declarem; m = declarem.load_model('models/gamma_mixture.toml'); m.compiled; print('ok')\n"
FIT = ("import sys\nfrom declarem.cli import main\n"
       "assert main(['fit', 'models/gamma_mixture.toml', '--quiet', '--out', sys.argv[1]]) == 0\n"
       "print('sympy' in sys.modules)\n")
RECORD_SOLVING = ("import sympy\ncalls = []\nsolve = sympy.solve\n"
                  "def record(*a, **k):\n    calls.append(1)\n    return solve(*a, **k)\n"
                  "sympy.solve = record\n")
HOSTILE_VALUES = [
    {"record": "Popen", "fields": {"args": "touch MARKER"}},
    {"expr": ["__import__", ["Symbol", "os", {}]]},
    {"expr": ["Symbol", "x", {"__class__": True}]},
    {"expr": ["Function", ["Symbol", "touch MARKER", {}]]},
    {"record": "ScalarSolution", "fields": {"form": {"expr": ["eval", ["Integer", "1"]]}}},
    {"list": [{"expr": ["Integer", "9" * 5000]}]},
]


def _load(path, kind, key):
    """An entry of any kind read back as a process would use it, or None when it would not be used."""
    if kind not in kernels.PLAN_READERS:
        return cache.load(path, kind, key)
    plan = diskcache.read_entry(path, kind, key)
    try:
        kernels.PLAN_READERS[kind](plan)
    except ValueError:
        return None
    return plan


def _cached(kind, key, compute):
    """``cached`` for an entry of any kind: the stored value, else compute() stored."""
    if kind not in kernels.PLAN_READERS:
        return cache.cached(kind, key, compute)
    return diskcache.cached_json(kind, key, lambda: (compute(), compute()), lambda plan: (
        kernels.PLAN_READERS[kind](plan), plan)[1])


def run(code, cache_dir, *args):
    env = dict(os.environ, DECLAREM_CACHE_DIR=str(cache_dir))
    return subprocess.run([sys.executable, "-c", code, *map(str, args)], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=300)


@pytest.fixture(scope="module")
def first_process(tmp_path_factory):
    """One process that derives into an empty cache: it compiles the gamma mixture, then fits it from the
    command line. Returns the cache directory it filled and the fit it wrote."""
    work = tmp_path_factory.mktemp("filled")
    directory, deriving = work / "cache", work / "deriving.json"
    first = run(COMPILE + FIT, directory, deriving)
    assert first.returncode == 0, first.stderr
    assert first.stdout.split() == ["ok", "True"]             # it derived (with sympy)
    return directory, deriving


@pytest.fixture(scope="module")
def filled(first_process):
    """A cache directory filled by one process compiling (and fitting) the gamma mixture."""
    return first_process[0]


@pytest.fixture
def entries(filled, tmp_path, monkeypatch):
    """A private copy of the filled cache, as this process's cache: (path, kind, key, value) per entry."""
    directory = tmp_path / "cache"
    shutil.copytree(filled, directory)
    directory.chmod(0o700)
    monkeypatch.setenv("DECLAREM_CACHE_DIR", str(directory))
    found = []
    for path in sorted(directory.glob("*.json")):
        stored = json.loads(path.read_text())
        value = _load(str(path), stored["kind"], stored["key"])
        assert value is not None, path
        found.append((path, stored["kind"], stored["key"], value))
    assert {kind for _, kind, _, _ in found} == {"scalar", "simplex", "scalar-kernels", "simplex-kernels"}
    return found


def _plant(path, kind, key, value_data):
    """Write an entry with a correct checksum around arbitrary data, as someone who read the format could."""
    stored = json.loads(path.read_text())
    planted = dict(stored, value=json.dumps(value_data))
    planted["sha256"] = diskcache.digest(kind, key, planted["value"])
    path.write_text(json.dumps(planted))


@pytest.fixture(scope="module")
def warm(filled, tmp_path_factory):
    """One second process on a copy of the filled cache, fitting the gamma mixture from the command line.

    Returns (the completed process, the entry names before, the entry names after, the fit it wrote);
    it prints whether sympy was imported. The two tests below read this one process.
    """
    work = tmp_path_factory.mktemp("warm")
    directory = work / "cache"
    shutil.copytree(filled, directory)
    names = sorted(p.name for p in directory.iterdir())
    out = work / "warm.json"
    done = run(FIT, directory, out)
    return done, names, sorted(p.name for p in directory.iterdir()), out


def test_second_process_loads_the_derivation(warm):
    """It compiles (and fits) without solving anything (sympy is not even imported) and stores nothing new."""
    done, before, after, _ = warm
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "False"
    assert after == before


def test_a_warm_process_fits_without_sympy_to_the_same_digits(warm, first_process):
    """A process whose derivations are cached never imports sympy, and its fit equals the deriving one's.

    The deriving fit is the first process's, which derived everything into the empty cache (a fit in
    this process with the cache off would hold kernels this session's cache then never receives, so
    later processes would derive them again).
    """
    done, _, _, out = warm
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "False"
    assert out.read_bytes() == first_process[1].read_bytes()


def test_entries_are_json_and_private(entries):
    for path, kind, _, _ in entries:
        stored = json.loads(path.read_text())
        assert stored["format"] == "declarem-derivation" and stored["kind"] == kind
        assert path.stat().st_mode & 0o022 == 0
    assert path.parent.stat().st_mode & 0o077 == 0


def test_unreadable_entries_are_derived_again(entries):
    for path, kind, key, value in entries:
        original = path.read_bytes()
        for damage in (b"", b"not json", original[: len(original) // 2], b"[]", b'{"format": 1}'):
            path.write_bytes(damage)
            assert _load(str(path), kind, key) is None
        assert _cached(kind, key, lambda: value) == value
        assert path.read_bytes() == original


def test_flipped_byte_is_recomputed_not_used(entries):
    """A corrupted entry that still parses (a changed digit) fails its checksum and is derived again."""
    for path, kind, key, value in entries:
        original = path.read_bytes()
        raw = bytearray(original)
        position = next(i for i in range(len(raw) // 2, len(raw))
                        if chr(raw[i]).isdigit() and raw[i] != ord("7"))
        raw[position] = ord("7")
        path.write_bytes(bytes(raw))
        assert _load(str(path), kind, key) is None
        assert _cached(kind, key, lambda: value) == value
        assert path.read_bytes() == original


def test_planted_pickle_does_not_run(entries, tmp_path):
    """An entry replaced by a pickle whose loading runs a command: refused, never unpickled."""
    marker = tmp_path / "planted-marker"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    for path, kind, key, _ in entries:
        path.write_bytes(pickle.dumps((key, Payload())))
        path.with_suffix(".pickle").write_bytes(pickle.dumps((key, Payload())))  # the first format's name
        assert _load(str(path), kind, key) is None
    assert not marker.exists()


def test_planted_json_with_foreign_classes_is_refused(entries):
    """Well-formed entries with correct checksums that name classes outside the whitelist are not used."""
    for value_data in HOSTILE_VALUES:
        for path, kind, key, _ in entries:
            original = path.read_text()
            _plant(path, kind, key, value_data)
            assert _load(str(path), kind, key) is None, value_data
            path.write_text(original)


def test_a_process_derives_again_rather_than_use_planted_entries(filled, tmp_path):
    directory = tmp_path / "cache"
    shutil.copytree(filled, directory)
    for path in directory.glob("*.json"):
        stored = json.loads(path.read_text())
        _plant(path, stored["kind"], stored["key"], HOSTILE_VALUES[0])
    # One process that records (rather than refuses) sympy's solving: it must derive again, and succeed.
    again = run(RECORD_SOLVING + COMPILE + "\nprint('solved', bool(calls))\n", directory)
    assert again.returncode == 0, again.stderr
    assert again.stdout.split()[-2:] == ["solved", "True"]


def test_directory_writable_by_others_is_refused(tmp_path, monkeypatch):
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    monkeypatch.setenv("DECLAREM_CACHE_DIR", str(shared))
    monkeypatch.setattr(diskcache, "_refused", set())
    with pytest.warns(RuntimeWarning, match="running without a cache"):
        assert diskcache.usable_dir() is None
    assert cache.cached("scalar", "key", lambda: 1) == 1
    assert list(shared.iterdir()) == []


def test_a_created_directory_is_private(tmp_path, monkeypatch):
    directory = tmp_path / "new" / "cache"
    monkeypatch.setenv("DECLAREM_CACHE_DIR", str(directory))
    assert diskcache.usable_dir() == str(directory)
    assert directory.stat().st_mode & 0o077 == 0


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() != 0, reason="chown needs root")
def test_entry_owned_by_someone_else_is_not_used(entries):
    for path, kind, key, _ in entries:
        os.chown(path, 65534, 65534)
        assert _load(str(path), kind, key) is None


def test_cache_can_be_turned_off(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DECLAREM_CACHE_DIR", "off")
    assert diskcache.usable_dir() is None
    assert cache.cached("scalar", "key", lambda: 1) == 1
    assert list(tmp_path.iterdir()) == []


def _poisson_family():
    graph = nx.DiGraph()
    graph.add_node("x", family="poisson")
    return declarem.Model(graph).nodes["x"].family


def test_provisional_derivation_is_not_cached(tmp_path, monkeypatch):
    """A derivation whose budget ran out serves its process only; a later one derives it again."""
    from declarem.derive import budget, scalar_solution
    monkeypatch.setenv("DECLAREM_CACHE_DIR", str(tmp_path))
    family = _poisson_family()
    monkeypatch.setattr(budget, "CPU_SECONDS", 0.0)
    with pytest.warns(RuntimeWarning, match="not cached"):
        starved = scalar_solution.__wrapped__(family, ())
    assert starved.provisional and starved.status == "numeric"
    assert list(tmp_path.iterdir()) == []
    monkeypatch.setattr(budget, "CPU_SECONDS", 20.0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        normal = scalar_solution.__wrapped__(family, ())
    assert not normal.provisional and normal.status == "closed"
    assert len(list(tmp_path.glob("scalar-*.json"))) == 1


def test_route_does_not_depend_on_a_busy_machine(monkeypatch):
    """With every core busy, the hardest catalog derivation still closes (the budget is CPU time)."""
    from declarem.freeblock import FreeBlock, free_solution
    monkeypatch.setenv("DECLAREM_CACHE_DIR", "off")
    model = declarem.load_model(ROOT / "models" / "abo.toml")
    free_solution.cache_clear()
    spin = "import time\nend = time.time() + 60\nwhile time.time() < end: pass\n"
    spinners = [subprocess.Popen([sys.executable, "-c", spin]) for _ in range(os.cpu_count() or 2)]
    try:
        solution = FreeBlock(model).solution
    finally:
        for spinner in spinners:
            spinner.kill()
            spinner.wait()
    assert solution.status == "closed" and not solution.provisional


def test_stored_derivations_read_back_equal():
    from declarem.derive.serial import FormatError, from_data, to_data
    for name in ("gamma_mixture", "abo", "topic_model"):
        compiled = declarem.load_model(ROOT / "models" / f"{name}.toml").compiled
        solutions = [f.kernels.solution for f in compiled.factors.values() if hasattr(f, "kernels")]
        solutions.append(compiled.block.solution if compiled.block else None)
        for solution in filter(None, solutions):
            data = json.loads(json.dumps(to_data(solution)))
            assert from_data(data) == solution
    with pytest.raises(FormatError):
        from_data({"expr": ["eval", ["Integer", "1"]]})
    with pytest.raises(FormatError):
        to_data(object())
