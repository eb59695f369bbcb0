"""The shape of the import graph of `rt`, kept so by reading the source (ARCHITECTURE.md).

Every import counts: at module level, inside functions and under `TYPE_CHECKING`. The
graph has no circle, and no arrow runs back up the layers:

    rt.core  <  rt.engine  <  rt.backends  <  features and shared services  <  rt.app  <  rt.cli

(`rt` itself, which holds only the version, sits at the bottom.) A module longer than
LONG lines says why in its docstring ("Longer than ...").
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "rt"
LONG = 550


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def layer(module: str) -> int:
    if module == "rt" or module.startswith("rt.core"):
        return 0
    if module.startswith("rt.engine"):
        return 1
    if module.startswith("rt.backends"):
        return 2
    if module == "rt.app":
        return 4
    if module == "rt.cli":
        return 5
    return 3


def resolve(importer: str, node: ast.ImportFrom | ast.Import) -> set[str]:
    """The rt modules an import statement names (a name that is a submodule counts as it)."""
    is_package = MODULES[importer].name == "__init__.py"
    if isinstance(node, ast.Import):
        return {alias.name for alias in node.names if alias.name in MODULES}
    if node.level:
        base = importer.split(".") if is_package else importer.split(".")[:-1]
        base = base[:len(base) - (node.level - 1)]
        target = ".".join(base + ([node.module] if node.module else []))
    else:
        target = node.module or ""
    found = set()
    for alias in node.names:
        if f"{target}.{alias.name}" in MODULES:
            found.add(f"{target}.{alias.name}")
        elif target in MODULES:
            found.add(target)
    return found


def imports_of(module: str) -> set[str]:
    tree = ast.parse(MODULES[module].read_text())
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            found |= resolve(module, node)
    found.discard(module)
    return found


GRAPH = {module: imports_of(module) for module in MODULES}


def test_the_graph_is_read():
    # a sanity check of the reader itself: known arrows are found
    assert "rt.gateway" in GRAPH["rt.app"]
    assert "rt.core.errors" in GRAPH["rt.core.tasks"]
    assert "rt.documents.service" in GRAPH["rt.documents.events"]


def test_no_arrow_runs_back_up():
    upward = [f"{a} -> {b}" for a, targets in GRAPH.items() for b in sorted(targets)
              if layer(b) > layer(a)]
    assert upward == []


def test_no_circle():
    # Tarjan's strongly connected components; any component of two or more is a circle
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    circles: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for succ in sorted(GRAPH[node]):
            if succ not in index:
                visit(succ)
                low[node] = min(low[node], low[succ])
            elif succ in on_stack:
                low[node] = min(low[node], index[succ])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                circles.append(sorted(component))

    for node in sorted(GRAPH):
        if node not in index:
            visit(node)
    assert circles == []


@pytest.mark.parametrize("module", sorted(MODULES))
def test_a_long_module_says_why(module):
    path = MODULES[module]
    lines = len(path.read_text().splitlines())
    if lines <= LONG:
        return
    doc = ast.get_docstring(ast.parse(path.read_text())) or ""
    assert "Longer than" in doc, f"{module} has {lines} lines and no reason in its docstring"


def test_feature_packages_follow_one_convention():
    """A feature package's socket edge is `events.py` (a class with `handlers()`), its HTTP
    edge `http.py` (`routes(...)`), its logic `service.py`; none of them wires itself."""
    features = [path.parent for path in PACKAGE.glob("*/events.py")]
    assert features, "no feature package found"
    for package in features:
        events = ast.parse((package / "events.py").read_text())
        classes = [n for n in events.body if isinstance(n, ast.ClassDef)]
        assert any(any(isinstance(f, ast.FunctionDef) and f.name == "handlers"
                       for f in c.body) for c in classes), package
        for path in package.glob("*.py"):
            names = {n.name for n in ast.parse(path.read_text()).body
                     if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))}
            assert not names & {"attach", "register"}, f"{path} wires itself"
