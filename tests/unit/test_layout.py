"""The layout explains the platform: subpackages by part, no cycles, one public API."""

from __future__ import annotations

import ast
import importlib
from collections import defaultdict
from pathlib import Path

import pytest

import eventplatform

PACKAGE = Path(eventplatform.__file__).parent
SUBPACKAGES = {"store", "relay", "leases", "consumers", "rebuild", "messagebus", "cli", "testing"}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def is_module(name: str) -> bool:
    path = PACKAGE.parent / name.replace(".", "/")
    return path.with_suffix(".py").exists() or (path / "__init__.py").exists()


def imports_of(path: Path) -> set[str]:
    """Every eventplatform module ``path`` imports, at module level or inside functions."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level == 0:
            if node.module and node.module.startswith("eventplatform"):
                for alias in node.names:  # ``from package import module`` names a module
                    submodule = f"{node.module}.{alias.name}"
                    found.add(submodule if is_module(submodule) else node.module)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("eventplatform"))
    return found


#: module -> the eventplatform modules it imports (package ``__init__`` files included).
GRAPH = {module_name(p): imports_of(p) for p in PACKAGE.rglob("*.py")}


def part_of(module: str) -> str:
    """``relay`` for ``eventplatform.relay.fencing``; ``root`` for the loose root modules."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in SUBPACKAGES else "root"


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = defaultdict(int)  # 0 new, 1 on the path, 2 done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state[nxt] == 1:
                return [*path[path.index(nxt) :], nxt]
            if state[nxt] == 0 and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(edges):
        if state[node] == 0 and (cycle := visit(node)):
            return cycle
    return None


def test_the_framework_is_split_into_one_subpackage_per_part_of_the_data_path():
    present = {p.name for p in PACKAGE.iterdir() if (p / "__init__.py").exists()}
    assert present == SUBPACKAGES
    loose = {p.stem for p in PACKAGE.glob("*.py")} - {"__init__", "__main__"}
    assert loose == {"settings", "errors", "backoff", "partitions", "redaction"}


def test_no_module_imports_itself_back_through_others():
    assert find_cycle(GRAPH) is None


def test_the_parts_depend_on_each_other_in_one_direction_only():
    parts: dict[str, set[str]] = defaultdict(set)
    for module, deps in GRAPH.items():
        if module in ("eventplatform", "eventplatform.__main__"):
            continue  # the root re-exports every part's names; __main__ is the command
        for dep in deps:
            if part_of(dep) != part_of(module):
                parts[part_of(module)].add(part_of(dep))
    assert find_cycle(parts) is None, dict(parts)
    assert parts["store"] <= {"root"}, "the write side depends on nothing but settings and errors"
    assert "cli" not in set().union(*(deps for part, deps in parts.items() if part != "cli"))


def test_every_public_name_is_importable_from_the_package_root():
    assert len(eventplatform.__all__) == len(set(eventplatform.__all__))
    for name in eventplatform.__all__:
        assert getattr(eventplatform, name) is not None, name


@pytest.mark.parametrize("subpackage", sorted(SUBPACKAGES))
def test_each_subpackage_says_what_it_offers(subpackage):
    module = importlib.import_module(f"eventplatform.{subpackage}")
    assert module.__doc__ is not None
    assert len(module.__doc__.split()) > 15
    for name in getattr(module, "__all__", []):
        assert hasattr(module, name), f"eventplatform.{subpackage}.{name}"
