"""The packages' imports run one way (docs/architecture.md): read from the source tree with `ast`, so a
function-local import counts as much as a top-level one."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.conftest import ROOT

PACKAGES = ("training", "sampling", "distill", "export", "serving", "loadtests", "bench", "stepserve_client")
# package -> the project packages it may import (besides itself)
ALLOWED = {
    "training": set(),
    "sampling": {"training"},
    "distill": {"sampling", "training"},  # a teacher's samples are a student's training data
    "export": {"sampling", "training"},
    "serving": {"sampling", "training"},
    # it speaks HTTP through stepserve_client; training only for reference data and metrics
    "loadtests": {"training", "stepserve_client"},
    "bench": {"training", "sampling", "distill", "export", "serving", "loadtests", "stepserve_client"},
    "stepserve_client": set(),  # installable and usable alone: it imports nothing of the project
}


def imported_packages(path: Path) -> set[str]:
    """Top-level project packages that the module at `path` imports anywhere in its body."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        else:
            continue
        found |= {n.split(".")[0] for n in names} & set(PACKAGES)
    return found


def module_imports(package: str) -> dict[Path, set[str]]:
    return {p: imported_packages(p) for p in sorted((ROOT / package).rglob("*.py"))}


@pytest.mark.parametrize("package", PACKAGES)
def test_imports_run_one_way(package: str) -> None:
    bad = {
        str(p.relative_to(ROOT)): sorted(deps - ALLOWED[package] - {package})
        for p, deps in module_imports(package).items()
        if deps - ALLOWED[package] - {package}
    }
    assert not bad, f"{package} imports packages it must not: {bad}"


def test_nothing_imports_bench() -> None:
    users = [
        str(p.relative_to(ROOT))
        for pkg in PACKAGES
        if pkg != "bench"
        for p, d in module_imports(pkg).items()
        if "bench" in d
    ]
    assert not users


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def test_no_import_cycles_between_modules() -> None:
    """No cycle among the project's modules (a cycle hidden inside a function counts too)."""
    graph: dict[str, set[str]] = {}
    modules = {_module_name(p): p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")}
    for name, path in modules.items():
        deps = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                targets = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            else:
                continue
            deps |= {t for t in targets if t in modules and t != name}
        graph[name] = deps
    # A package's __init__ re-exporting its submodules is not a cycle of ideas: drop edges to ancestors.
    for name in graph:
        graph[name] = {d for d in graph[name] if not name.startswith(d + ".")}
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for dep in graph[node]:
            if state.get(dep) == 1:
                raise AssertionError("import cycle: " + " -> ".join([*stack[stack.index(dep) :], dep]))
            if dep not in state:
                visit(dep)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)
