"""ddc_hpc's modules import one another without a circle.

The graph walks every import statement of every module, function-level (lazy) imports included: a
lazy import only postpones a circle to the first call that takes it, so it counts. An edge goes to
the module imported and to each package above it that the importer is not inside (importing
``ddc_hpc.data.sources`` runs ``ddc_hpc/data/__init__.py`` first). A module reading its own
package's namespace (``from . import register`` in models/) is how a package is built, not an edge.

    python -m pytest tests/test_imports.py
"""

from __future__ import annotations

import ast
from pathlib import Path

from conftest import REPO

PACKAGE = REPO / "ddc_hpc"


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported(tree: ast.AST, name: str, is_package: bool, modules: set[str]) -> set[str]:
    """The ddc_hpc modules `tree` (module `name`) imports: absolute and relative, at any depth."""
    here = name if is_package else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = here.split(".")
                anchor = anchor[:len(anchor) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            # `from PACKAGE import SUBMODULE` imports the submodule; `from MODULE import NAME` the module
            found |= {f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base for alias in node.names}
    return {m for m in found if m in modules}


def import_graph() -> dict[str, set[str]]:
    files = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph = {}
    for name, path in files.items():
        edges = set()
        for target in imported(ast.parse(path.read_text()), name, path.name == "__init__.py", set(files)):
            parts = target.split(".")
            for depth in range(1, len(parts) + 1):  # the target and the packages above it ...
                step = ".".join(parts[:depth])
                if not (name == step or name.startswith(step + ".")):  # ... that the importer is not inside
                    edges.add(step)
        graph[name] = edges - {name}
    return graph


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One circle through each strongly connected component of more than one module (Tarjan)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(node):
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph[node]):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while not component or component[-1] != node:
                component.append(stack.pop())
                on_stack.discard(component[-1])
            if len(component) > 1:
                found.append(_circle_in(graph, set(component)))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def _circle_in(graph, component: set[str]) -> list[str]:
    """A path from the component's first module back to itself, inside the component (breadth first)."""
    start = min(component)
    paths = {start: [start]}
    frontier = [start]
    while frontier:
        node = frontier.pop(0)
        for nxt in sorted(graph[node] & component):
            if nxt == start:
                return paths[node] + [start]
            if nxt not in paths:
                paths[nxt] = paths[node] + [nxt]
                frontier.append(nxt)
    raise AssertionError(f"{sorted(component)} is strongly connected but has no circle through {start}")


def test_the_graph_sees_relative_package_and_lazy_imports():
    graph = import_graph()
    assert "ddc_hpc.data.hdf5" in graph["ddc_hpc.data.sources"]  # from .hdf5 import ...
    assert "ddc_hpc.data" in graph["ddc_hpc.run"]  # the package's __init__ runs first
    assert "ddc_hpc.data.sources" in graph["ddc_hpc.calibration"]
    assert "ddc_hpc.comm.state" in graph["ddc_hpc.comm.collectives"]  # from . import state
    assert "ddc_hpc.evaluate" in graph["ddc_hpc.frontier"]  # inside a function
    assert "ddc_hpc.models" not in graph["ddc_hpc.models.cnn"]  # its own package's namespace
    assert circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c", "a"]]


def test_no_module_of_ddc_hpc_imports_itself_through_a_circle():
    found = circles(import_graph())
    assert not found, "import circles: " + "; ".join(" -> ".join(c) for c in found)
