"""The layers do not leak: `app -> models` and `training -> models` are the only edges between
packages, no module imports itself back through others, at module level or hidden in a
function or an `if TYPE_CHECKING:` block (every import statement counts), and `models/`
reads and writes no files (it is shared by training and serving, which own their I/O)."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("models", "training", "app")
ALLOWED = {("app", "models"), ("training", "models")}


def _module_name(path: Path) -> str:
    return ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")


def _imports() -> dict[str, set[str]]:
    """Every module of the packages -> the project modules it imports (any statement)."""
    modules = {_module_name(p): p for package in PACKAGES for p in (ROOT / package).rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        targets = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                wanted = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                # `from models import contract` imports the submodule models.contract.
                wanted = [f"{node.module}.{alias.name}" for alias in node.names] + [node.module]
            else:
                continue
            targets |= {target for target in wanted if target in modules and target != name}
        graph[name] = targets
    return graph


def test_packages_depend_on_models_only() -> None:
    leaks = sorted(
        (module, target)
        for module, targets in _imports().items()
        for target in targets
        if (top := module.split(".")[0]) != (other := target.split(".")[0]) and (top, other) not in ALLOWED
    )
    assert not leaks, leaks


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Cycles of a directed graph (each found once, from where a depth-first walk meets it)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    cycles: list[list[str]] = []

    def visit(module: str, path: list[str]) -> None:
        state[module] = 1
        for target in sorted(graph.get(module, ())):
            if state.get(target) == 1:
                cycles.append([*path[path.index(target) :], target])
            elif target not in state:
                visit(target, [*path, target])
        state[module] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    return cycles


def test_the_cycle_finder_finds_one_hidden_in_a_function() -> None:
    assert find_cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c", "a"]]
    assert find_cycles({"a": {"b"}, "b": set()}) == []
    # `app.outcome` once imported `app.prediction` under TYPE_CHECKING, which imports it back.
    graph = _imports()
    assert "app.outcome" in graph["app.prediction"] and "app.localization" in graph["app.outcome"]


def test_no_import_cycle() -> None:
    graph = _imports()
    # A package's __init__ importing its own submodules is how it re-exports: not a cycle.
    for package in PACKAGES:
        graph[package] = {t for t in graph.get(package, set()) if not t.startswith(f"{package}.")}
    assert not find_cycles(graph), find_cycles(graph)


FILE_IO = {
    "open",
    "dcmread",
    "dcmwrite",
    "save_as",
    "read_text",
    "write_text",
    "read_bytes",
    "write_bytes",
    "to_filename",
}


def test_models_do_no_file_io() -> None:
    calls = []
    for path in (ROOT / "models").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Call):
                func = node.func
                name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
                is_nib_load = (
                    isinstance(func, ast.Attribute)
                    and name == "load"
                    and getattr(func.value, "id", "") == "nib"
                )
                if name in FILE_IO or is_nib_load:
                    calls.append(f"{path.relative_to(ROOT)}:{node.lineno} {name}")
    assert not calls, calls
