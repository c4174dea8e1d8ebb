"""The package layering, read from the source with `ast` (every import counts, also those inside functions;
only `if TYPE_CHECKING:` blocks are skipped, they never run)."""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "taktstock"


def _package(module: str) -> str:
    """taktstock.config.loader -> config; taktstock.run_dir -> run_dir; taktstock -> the root facade."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "<root>"


def _type_checking_nodes(tree: ast.AST) -> set[int]:
    skipped: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skipped.update(id(n) for n in ast.walk(node))
    return skipped


def import_graph() -> dict[str, dict[str, list[str]]]:
    """{package: {imported package: [files doing it]}} of taktstock's own code (project templates excluded)."""
    graph: dict[str, dict[str, list[str]]] = defaultdict(lambda: defaultdict(list))
    for path in sorted(ROOT.rglob("*.py")):
        rel = path.relative_to(ROOT.parent)
        if "templates" in rel.parts:
            continue
        src = _package(".".join(rel.with_suffix("").parts).removesuffix(".__init__"))
        tree = ast.parse(path.read_text(), str(path))
        skipped = _type_checking_nodes(tree)
        for node in ast.walk(tree):
            if id(node) in skipped:
                continue
            if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                modules = [node.module]
            elif isinstance(node, ast.Import):
                modules = [a.name for a in node.names]
            else:
                continue
            for module in modules:
                if module.split(".")[0] == "taktstock" and _package(module) != src:
                    graph[src][_package(module)].append(str(rel))
    return graph


def test_config_is_the_ground_floor() -> None:
    graph = import_graph()
    upward = {dst: files for dst, files in graph["config"].items() if dst in ("training", "data", "metrics", "tracking")}
    assert upward == {}, f"config/ imports upward: {upward}"


def _cycles(graph: dict[str, dict[str, list[str]]]) -> list[list[str]]:
    """Strongly connected components with more than one package (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph.get(v, {}):
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
                found.append(sorted(component))

    for v in list(graph):
        if v not in index:
            visit(v)
    return found


def test_no_import_cycle_between_packages() -> None:
    graph = import_graph()
    # The root package is the lazy public facade (`taktstock.train` etc. import on first use); modules that
    # read `taktstock.__version__` do not depend on what it forwards to.
    graph.pop("<root>", None)
    for deps in graph.values():
        deps.pop("<root>", None)
    cycles = _cycles(graph)
    detail = {tuple(c): {a: {b: graph[a][b] for b in c if b in graph[a]} for a in c} for c in cycles}
    assert cycles == [], f"import cycles between packages: {detail}"


@pytest.mark.parametrize("kind", ["optimizer", "loss", "source", "metric"])
def test_config_validation_finds_components_through_the_registry(kind: str) -> None:
    from taktstock import registry

    reg = {"optimizer": registry.OPTIMIZERS, "loss": registry.LOSSES, "source": registry.SOURCES, "metric": registry.METRICS}[kind]
    assert reg.names(), f"no {kind} registered by {reg.provider}"


def test_the_regression_losses_are_declared_once() -> None:
    from taktstock.config.loader import validate
    from taktstock.registry import LOSSES

    assert sorted(LOSSES.where(task="regression")) == ["huber", "l1", "mse", "smooth_l1"]
    assert validate({"loss": {"name": "huber"}, "metrics": {"monitor": "val/r2"}}, {}, "test").task == "regression"
