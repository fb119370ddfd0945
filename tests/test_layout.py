"""The shape of the code: no import cycles inside orpo_lab, no module past 300 lines, and importing
the app starts nothing. (Function complexity is ruff's C901, max 12, in `make lint`.)"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "orpo_lab"
MAX_LINES = 300


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> set[str]:
    """orpo_lab modules this file imports anywhere (a function-level import is an edge too)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("orpo_lab"):
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("orpo_lab")}
    return found


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as [a, b, ..., a], or None (depth-first search with a path stack)."""
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done

    def visit(node: str, path: list[str]) -> list[str] | None:
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt) :] + [nxt]
            if nxt not in state and (cycle := visit(nxt, path + [nxt])):
                return cycle
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node, [node])):
            return cycle
    return None


def test_find_cycle_finds_one_and_only_one():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


def test_no_import_cycles_in_the_package():
    modules = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    # A package's own __init__ is imported with any of its modules: not an edge back to it.
    graph = {
        name: {m for m in imports_of(path) if m in modules and not name.startswith(m + ".")}
        for name, path in modules.items()
    }
    assert find_cycle(graph) is None, find_cycle(graph)


def test_no_module_is_too_long_to_read_in_one_sitting():
    long = {
        str(p.relative_to(ROOT)): n
        for p in [*PACKAGE.rglob("*.py"), ROOT / "app.py"]
        if (n := len(p.read_text().splitlines())) > MAX_LINES
    }
    assert not long, long


def test_importing_the_app_starts_no_thread_and_creates_no_folder(tmp_path):
    code = (
        "import threading, os, sys; sys.path.insert(0, sys.argv[1]); before = threading.active_count()\n"
        "import app\n"
        "print(threading.active_count() - before, sorted(os.listdir('.')))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(ROOT)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split()[0] == "0" and out.stdout.strip().endswith("[]"), out.stdout
