"""The house, drawn from the code's own imports (in functions too): layers whose arrows only point down, no
import circle, no function longer than a screen. docs/architecture.md describes the same layers."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "nettrain"

# Each layer's packages may import their own layer and the ones below it, never one above.
LAYERS = [
    ["cli", "__main__"],
    ["commands"],
    ["serving"],
    ["training", "export"],
    ["evaluation"],
    ["inference"],
    ["models"],
    ["data"],
    ["records"],
    ["config"],
    ["errors", "files", "runtime", "__init__"],
]
LONGEST_FUNCTION = 80


def modules() -> dict[str, Path]:
    return {".".join(("nettrain", *p.relative_to(PACKAGE).with_suffix("").parts)).removesuffix(".__init__"): p
            for p in PACKAGE.rglob("*.py")}


def imports(path: Path, name: str, known: set[str]) -> set[str]:
    """The nettrain modules a module imports, wherever in it (a name imported from a package counts as its module
    when it is one)."""
    found = set()
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("nettrain")}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            if base.startswith("nettrain"):
                found |= {f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names}
    return {m for m in found if m in known and m != name}


def layer_of(module: str) -> int:
    top = module.split(".")[1] if "." in module else "__init__"
    return next(i for i, layer in enumerate(LAYERS) if top in layer)


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    found = modules()
    return {name: imports(path, name, set(found)) for name, path in found.items() if not name.startswith("nettrain.configs")}


def test_every_package_is_on_a_layer(graph):
    for module in graph:
        layer_of(module)  # raises StopIteration for a package no layer names


def test_arrows_point_down_the_layers(graph):
    upward = sorted(f"{a} -> {b}" for a, targets in graph.items() for b in targets if layer_of(b) < layer_of(a))
    assert not upward, "library modules import a layer above them:\n" + "\n".join(upward)


def test_no_module_below_the_commands_imports_a_command(graph):
    assert not [a for a, targets in graph.items() for b in targets
                if b.startswith("nettrain.commands") and not a.startswith(("nettrain.commands", "nettrain.cli"))]


def test_there_is_no_import_circle(graph):
    """Tarjan's strongly connected components: every one is a single module."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    circles = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                circles.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    assert not circles, circles


def test_no_function_is_longer_than_a_screen():
    long = []
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > LONGEST_FUNCTION:
                    long.append(f"{path.relative_to(PACKAGE)}:{node.lineno} {node.name}: {lines} lines")
    assert not long, long
