"""The source tree's shape (issue 21): no import circle among the modules of ``python/`` and
``ssanet_ops/``, and no module there over 600 lines. Read from the sources with ``ast``: nothing
is imported, so these run without torch."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = {"ssanet": ROOT / "python" / "ssanet", "ssanet_ops": ROOT / "ssanet_ops"}
MAX_MODULE_LINES = 600
COMPILED = {"ssanet_ops._C"}  # built, not in the source tree: it imports no package module


def _modules() -> dict[str, Path]:
    """Dotted name -> file of every module of the packages (a package is its __init__.py)."""
    modules = {}
    for package, folder in PACKAGES.items():
        for path in folder.rglob("*.py"):
            parts = [package, *path.relative_to(folder).with_suffix("").parts]
            if parts[-1] == "__init__":
                parts.pop()
            modules[".".join(parts)] = path
    return modules


def _imported(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The package modules that ``name`` imports anywhere in its file: at the top and inside
    functions alike (an import deferred to call time closes a circle all the same). Each
    import counts as the module it names, not the packages above it."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join(anchor + ([node.module] if node.module else []))
            # `from package import submodule` imports the submodule; `from module import name`
            # the module.
            targets = [
                f"{base}.{alias.name}"
                if f"{base}.{alias.name}" in modules.keys() | COMPILED
                else base
                for alias in node.names
            ]
        else:
            continue
        for target in targets:
            if target in COMPILED:
                continue
            # `import a.b.c` of a name inside a module: the longest prefix that is a module.
            while target and target not in modules:
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


def _import_circle(graph: dict[str, set[str]]) -> list[str] | None:
    """One circle of ``graph`` (module -> the modules it imports) as a path, or None."""
    state: dict[str, str] = {}  # "open" while on the current path, "done" after
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = "open"
        path.append(node)
        for child in sorted(graph[node]):
            if state.get(child) == "open":
                return [*path[path.index(child) :], child]
            if child not in state and (circle := visit(child)) is not None:
                return circle
        path.pop()
        state[node] = "done"
        return None

    for node in sorted(graph):
        if node not in state and (circle := visit(node)) is not None:
            return circle
    return None


def test_no_import_circle():
    modules = _modules()
    graph = {name: _imported(name, path, modules) for name, path in modules.items()}
    circle = _import_circle(graph)
    assert circle is None, "import circle: " + " -> ".join(circle)


def test_import_circle_finder_finds_a_circle():
    # The finder on a graph with a known circle, and on the same graph without it.
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a", "d"}, "d": set()}
    assert _import_circle(graph) == ["a", "b", "c", "a"]
    graph["c"] = {"d"}
    assert _import_circle(graph) is None


def test_imports_are_resolved_to_modules():
    # The graph sees lazy imports, relative ones of every level and `from . import module`:
    # the edges cli -> ablation (ROWS, run_study, inside functions), evaluate -> metrics
    # (`from . import metrics, plots`) and ablation.reporting -> plots (`from .. import plots`).
    modules = _modules()
    edges = {name: _imported(name, path, modules) for name, path in modules.items()}
    assert "ssanet.ablation" in edges["ssanet.cli"]
    assert {"ssanet.metrics", "ssanet.plots"} <= edges["ssanet.evaluate"]
    assert "ssanet.plots" in edges["ssanet.ablation.reporting"]


def test_no_module_over_600_lines():
    lengths = {name: len(path.read_text().splitlines()) for name, path in _modules().items()}
    assert len(lengths) > 20  # the packages were found
    longer = {name: lines for name, lines in lengths.items() if lines > MAX_MODULE_LINES}
    assert not longer, f"modules over {MAX_MODULE_LINES} lines: {longer}"
