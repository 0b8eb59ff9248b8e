"""The user documentation works as written.

(a) Every example in README.md and docs/*.md runs, each file's examples in sequence:
    ```python blocks share one namespace per file (```python no-run is skipped);
    ```toml / ```json / ```csv blocks with ``file=NAME`` in their info string are written to NAME;
    ```console / ```bash lines starting with ``$ declarem`` run as ``python -m declarem`` and must
    exit 0, or 2 when the output shown starts with ``declarem: error:``; output shown under a
    command must match (``...`` matches anything, as in doctest's ELLIPSIS).
    Examples run in a scratch directory that mirrors the repository root (``models/`` and
    ``docs/`` are links to the real ones), so relative paths read as from the root while files
    the examples write never land in the repository.
(b) The README's first set-up command fits the bundled model and writes the documented JSON.
(c) .ci/run runs exactly the README's test command.
(d) docs/families.md is what docs/generate_families.py generates.
(e) Relative links between the documents point at files and headings that exist.
"""

import doctest
import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from support import load_file, run_cli

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
DOCS = [README] + sorted((ROOT / "docs").glob("*.md"))
MIRRORED = ("models", "docs")
FENCE = re.compile(r"^```([^\n`]*)\n(.*?)^```[ \t]*$", re.M | re.S)
SHELL = ("console", "bash", "shell", "sh")
FIT_KEYS = ("loglik", "n_iter", "converged", "history", "params")


def blocks(path):
    """The fenced code blocks of a markdown file: (language, options, body, line number)."""
    text = path.read_text()
    for match in FENCE.finditer(text):
        info = match.group(1).split()
        language = info[0] if info else ""
        line = text.count("\n", 0, match.start()) + 1
        yield language, info[1:], match.group(2), line


def shell_commands(body):
    """Commands of a console block with the output shown under each: [(command, output)]."""
    commands = []
    for line in body.splitlines():
        if line.startswith("$ "):
            commands.append([line[2:].strip(), []])
        elif commands:
            commands[-1][1].append(line)
    return [(command, "\n".join(output).strip("\n")) for command, output in commands]


def environment():
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    return env


def run_declarem(arguments, cwd):
    return subprocess.run([sys.executable, "-m", "declarem", *arguments], cwd=cwd, env=environment(),
                          capture_output=True, text=True, timeout=120)


def check_command(command, shown, cwd, where):
    words = shlex.split(command)
    result = run_cli(*words[1:], cwd=cwd)
    expected_status = 2 if shown.startswith("declarem: error:") else 0
    got = (result.stderr + result.stdout).strip("\n")
    assert result.returncode == expected_status, (
        f"{where}: `{command}` exited {result.returncode}, expected {expected_status}\n{got}")
    if shown:
        checker = doctest.OutputChecker()
        assert checker.check_output(shown + "\n", got + "\n", doctest.ELLIPSIS), (
            f"{where}: output of `{command}` differs from the document\n--- shown:\n{shown}\n"
            f"--- got:\n{got}")


def mirror_root(tmp_path):
    for name in MIRRORED:
        (tmp_path / name).symlink_to(ROOT / name, target_is_directory=True)
    return tmp_path


@pytest.mark.parametrize("path", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_examples_run(path, tmp_path, monkeypatch):
    work = mirror_root(tmp_path)
    monkeypatch.chdir(work)
    monkeypatch.syspath_prepend(str(ROOT))
    namespace = {"__name__": "__docs__"}
    name = path.relative_to(ROOT)
    for language, options, body, line in blocks(path):
        where = f"{name}:{line}"
        files = [o.split("=", 1)[1] for o in options if o.startswith("file=")]
        if files:
            target = work / files[0]
            assert work in target.resolve().parents or target.parent == work, f"{where}: {files[0]}"
            target.write_text(body)
        elif language == "python" and "no-run" not in options:
            exec(compile(body, where, "exec"), namespace)
        elif language in SHELL:
            for command, shown in shell_commands(body):
                if command.startswith("declarem "):
                    check_command(command, shown, work, where)


def setup_commands():
    """The README's set-up commands, in order (lines `$ pip install ...` of its console blocks)."""
    commands = []
    for language, _, body, _ in blocks(README):
        if language in SHELL:
            commands += [c for c, _ in shell_commands(body) if c.startswith("pip install")]
    return commands


def test_readme_setup_commands_are_the_documented_ones():
    commands = setup_commands()
    assert len(commands) >= 2, commands
    assert commands[0] == "pip install -e . && declarem fit models/gmm.toml"
    assert commands[1].startswith("pip install -q -e '.[test]' && python -m pytest")
    ci = [line for line in (ROOT / ".ci" / "run").read_text().splitlines() if line and not line.startswith("#")]
    assert ci[-1] == commands[1]            # CI runs exactly the README's test command


def test_readme_fit_command(tmp_path):
    install, fit = setup_commands()[0].split(" && ")
    words = shlex.split(fit)
    assert words[:2] == ["declarem", "fit"]
    out = tmp_path / "fit.json"
    result = run_declarem(words[1:] + ["--out", str(out)], ROOT)
    assert result.returncode == 0, result.stderr
    assert "converged" in result.stderr  # progress and a summary go to standard error
    stored = json.loads(out.read_text())
    for key in FIT_KEYS:
        assert key in stored, key
    assert stored["converged"] is True
    assert len(stored["history"]) == stored["n_iter"] + 1
    assert stored["history"][-1] == pytest.approx(stored["loglik"])
    assert set(stored["params"]) == {"z", "x"}
    assert len(stored["params"]["x"]["cov"]) == 3


def test_ci_runs_the_readme_test_command():
    command = setup_commands()[1]
    lines = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()]
    assert command in lines, f".ci/run does not run the README's test command {command!r}"


def test_families_page_is_fresh():
    module = load_file(ROOT / "docs" / "generate_families.py")
    committed = (ROOT / "docs" / "families.md").read_text()
    assert committed == module.render(), "docs/families.md is stale: run python docs/generate_families.py"


LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def slug(heading):
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def anchors(path):
    text = FENCE.sub("", path.read_text())
    return {slug(m.group(1)) for m in re.finditer(r"^#+ (.*)$", text, re.M)}


@pytest.mark.parametrize("path", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_links_resolve(path):
    text = FENCE.sub("", path.read_text())
    for target in LINK.findall(text):
        if re.match(r"[a-z]+:", target):
            continue
        file, _, anchor = target.partition("#")
        linked = (path.parent / file).resolve() if file else path
        assert linked.exists(), f"{path.name}: link to missing {target}"
        if anchor:
            assert anchor in anchors(linked), f"{path.name}: link to missing heading {target}"
