"""The two stacks, enforced: the functional core never imports the shim; no import cycles.

Every ``import`` statement of every module under ``compatopt/`` counts, function-level ones
included. ``from pkg import name`` is an import of the module ``pkg.name`` when that is a
module, else of ``pkg``. The implicit import of a parent package is not counted (otherwise
every module would form a cycle through ``compatopt/__init__.py``).
"""

from __future__ import annotations

import ast
import pathlib
from typing import Dict, List, Set, Tuple

import compatopt

PACKAGE_DIR = pathlib.Path(compatopt.__file__).parent
SHIM = "compatopt.train"
# The public surface re-exports the shim's names (compatopt.Variable, compatopt.function).
PUBLIC_SURFACE = {"compatopt"}


def _module_name(path: pathlib.Path) -> str:
    rel = path.relative_to(PACKAGE_DIR.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> Dict[str, pathlib.Path]:
    return {_module_name(p): p for p in sorted(PACKAGE_DIR.rglob("*.py"))}


def _imports(name: str, path: pathlib.Path, known: Set[str]) -> List[Tuple[str, int]]:
    """``[(imported module, line), ...]`` of one module."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    is_pkg = path.name == "__init__.py"
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(a.name, node.lineno) for a in node.names if a.name.startswith("compatopt")]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = name.split(".") if is_pkg else name.split(".")[:-1]
                anchor = anchor[:len(anchor) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            if not base.startswith("compatopt"):
                continue
            for a in node.names:
                sub = f"{base}.{a.name}"
                out.append((sub if sub in known else base, node.lineno))
    return out


def _graph() -> Dict[str, List[Tuple[str, int]]]:
    mods = _modules()
    known = set(mods)
    return {m: [(t, ln) for t, ln in _imports(m, p, known) if t != m]
            for m, p in mods.items()}


def _in_shim(module: str) -> bool:
    return module == SHIM or module.startswith(SHIM + ".")


def test_the_package_has_both_stacks():
    mods = _modules()
    assert SHIM in mods and "compatopt.rules" in mods and "compatopt.checkpoint" in mods


def test_nothing_below_the_shim_imports_it():
    graph, mods = _graph(), _modules()
    offending = [f"{mods[m].relative_to(PACKAGE_DIR.parent)}:{line}: {m} imports {target}"
                 for m, edges in graph.items()
                 if not _in_shim(m) and m not in PUBLIC_SURFACE
                 for target, line in edges if _in_shim(target)]
    assert not offending, ("the functional stack must not import the shim "
                           "(compatopt.train):\n  " + "\n  ".join(offending))


def test_rules_import_only_the_core():
    """Rule files see the rule protocol, numerics, sparse helpers and errors, nothing else."""
    allowed = {"compatopt", "compatopt._base", "compatopt._rule", "compatopt._numerics",
               "compatopt.tf1_mode",
               "compatopt._sparse", "compatopt.errors"}
    graph = _graph()
    bad = [f"{m} imports {t} (line {ln})" for m, edges in graph.items()
           if m.startswith("compatopt.rules.") for t, ln in edges
           if t not in allowed and not t.startswith("compatopt.rules")]
    assert not bad, "\n".join(bad)


def _find_cycle(graph: Dict[str, List[Tuple[str, int]]]) -> List[str]:
    state: Dict[str, int] = {}
    stack: List[str] = []

    def visit(m: str) -> List[str]:
        state[m] = 1
        stack.append(m)
        for target, _ in graph.get(m, []):
            if state.get(target) == 1:
                return stack[stack.index(target):] + [target]
            if target not in state:
                found = visit(target)
                if found:
                    return found
        stack.pop()
        state[m] = 2
        return []

    for m in sorted(graph):
        if m not in state:
            found = visit(m)
            if found:
                return found
    return []


def test_no_import_cycles():
    graph = _graph()
    # the public __init__ files re-export their submodules: edges out of a package's own
    # __init__ into its children are the surface, not a dependency of the children
    pruned = {m: [(t, ln) for t, ln in edges if not t.startswith(m + ".")]
              for m, edges in graph.items()}
    cycle = _find_cycle(pruned)
    lines = []
    for a, b in zip(cycle, cycle[1:]):
        line = next(ln for t, ln in pruned[a] if t == b)
        lines.append(f"{a} (line {line}) imports {b}")
    assert not cycle, "import cycle:\n  " + "\n  ".join(lines)


def test_the_cycle_finder_finds_a_cycle():
    """Negative control: the checks above are not vacuous."""
    graph = {"a": [("b", 1)], "b": [("c", 2)], "c": [("a", 3)]}
    assert _find_cycle(graph) == ["a", "b", "c", "a"]
    fake = PACKAGE_DIR / "rules" / "adam.py"
    edges = _imports("compatopt.rules.adam", fake, set(_modules()))
    assert ("compatopt._numerics", 10) in edges or any(t == "compatopt._numerics"
                                                       for t, _ in edges)
