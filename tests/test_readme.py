"""README.md's ``python`` code blocks run as pasted, so the guide cannot drift from the code.

Convention for README authors:

* A block fenced as ```` ```python ```` is a complete program: it is extracted (its common
  indentation removed, so blocks inside list items work too) and run on its own in a fresh
  interpreter, from an empty temporary directory, with warnings as errors (as in
  ``pyproject.toml``). It must not need a network, a checkpoint on disk, several devices or
  TensorFlow; it may write under ``tempfile``.
* A block that needs something a plain checkout does not have, or that is a fragment, is
  fenced as something else: ```` ```py-norun ```` for Python that is not run, ```` ```text ````
  or a bare ```` ``` ```` for commands and output. (The first block of the README is CI's
  command line and must stay a bare fence.)
* A ``python`` block that imports one of ``OPTIONAL_MODULES`` (flax: the ``[flax]`` extra,
  not part of ``[test]``) is skipped, not failed, where that package is not installed.

Each block is one test, named by its README line number.
"""

from __future__ import annotations

import ast
import importlib.util
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
OPTIONAL_MODULES = ("flax",)
TIMEOUT_S = 120

# Warnings as errors, with pyproject.toml's one exception (JAX's own DeprecationWarnings).
_RUNNER = """\
import sys, warnings
warnings.filterwarnings("error")
warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"jax.*")
source = sys.stdin.read()
exec(compile(source, "README.md:" + sys.argv[1], "exec"), {"__name__": "__main__"})
"""

_FENCE = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>`{3,})(?P<info>[^`\n]*)$")


def python_blocks(text: str) -> list[tuple[int, str]]:
    """``(line number of the opening fence, dedented source)`` of every ```python block."""
    blocks = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        m = _FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        fence, info, start = m.group("fence"), m.group("info").strip(), i
        body = []
        i += 1
        while i < len(lines) and not re.match(r"^[ \t]*" + fence + r"\s*$", lines[i]):
            body.append(lines[i])
            i += 1
        i += 1  # the closing fence
        if info.split()[:1] == ["python"]:
            blocks.append((start + 1, textwrap.dedent("\n".join(body)) + "\n"))
    return blocks


def imported_modules(source: str) -> set[str]:
    """Top-level names of the modules a block imports."""
    names = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module.split(".")[0])
    return names


BLOCKS = python_blocks(README.read_text(encoding="utf-8"))


def test_readme_has_python_blocks():
    assert len(BLOCKS) >= 4, "README.md: expected its quick starts as ```python blocks"


def test_first_block_is_the_ci_command():
    """``.ci/run`` executes line 2 of the README's first fenced block."""
    lines = README.read_text(encoding="utf-8").splitlines()
    opening = next(n for n, line in enumerate(lines) if line.startswith("```"))
    assert lines[opening] == "```"
    assert lines[opening + 1:opening + 4] == [
        'python3 -m pip install -e ".[examples]" && python3 examples/train_digits.py',
        'python3 -m pip install -e ".[test,lint]" && ruff check . && pyright && '
        'python3 -m pytest -q -m "not slow" && python3 -m pytest -q -m slow',
        "```"]


def test_extraction_handles_indented_and_other_fences():
    text = ("```\nnot python\n```\n"
            "```python\nx = 1\n```\n"
            "1. item\n   ```python\n   if True:\n       y = 2\n   ```\n"
            "```py-norun\nraise SystemExit(1)\n```\n")
    assert python_blocks(text) == [(4, "x = 1\n"), (8, "if True:\n    y = 2\n")]


@pytest.mark.parametrize("line,source", BLOCKS, ids=[f"README.md:{n}" for n, _ in BLOCKS])
def test_readme_block_runs(line: int, source: str, tmp_path: Path):
    for module in sorted(imported_modules(source) & set(OPTIONAL_MODULES)):
        if importlib.util.find_spec(module) is None:
            pytest.skip(f"{module} is not installed (an optional extra)")
    env = dict(os.environ)
    paths = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT)] + paths)  # this checkout's compatopt
    env.setdefault("JAX_PLATFORMS", "cpu")
    proc = subprocess.run([sys.executable, "-c", _RUNNER, str(line)], input=source,
                          capture_output=True, text=True, cwd=tmp_path, env=env,
                          timeout=TIMEOUT_S, check=False)
    assert proc.returncode == 0, (
        f"README.md block at line {line} failed (exit {proc.returncode}):\n"
        f"--- source ---\n{source}--- stdout ---\n{proc.stdout}--- stderr ---\n{proc.stderr}")
