"""Imports point down: the layer table in the package docstring, enforced on every import.

Every ``import`` and ``from ... import`` in the package counts, those inside functions and
under ``TYPE_CHECKING`` too: a lazy import still ties the modules together.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import policy_service

PACKAGE = Path(policy_service.__file__).parent
NAME = "policy_service"


def layer_table() -> list[list[str]]:
    doc = policy_service.__doc__ or ""
    rows = re.findall(r"^\s+layer\s+(.+?)\s{2,}", doc, re.MULTILINE)
    return [[part.strip() for part in row.split(",")] for row in rows]


def modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        if "gen" in parts:
            continue  # generated from protos/: imports only protobuf
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = path
    return found


def imports_of(name: str, path: Path, known: dict[str, Path]) -> set[str]:
    """The package's own modules ``name`` imports (resolved to the nearest known module)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    targets: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            candidates = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package
                for _ in range(node.level - 1):
                    anchor = anchor.rpartition(".")[0]
                base = f"{anchor}.{base}" if base else anchor
            candidates = [base, *(f"{base}.{alias.name}" for alias in node.names)]
        else:
            continue
        for candidate in candidates:
            if not candidate.startswith(NAME):
                continue
            while candidate and candidate not in known:
                candidate = candidate.rpartition(".")[0]
            if candidate and candidate != name and candidate != NAME:
                targets.add(candidate)
    return targets


def top_level(module: str) -> str:
    return module.split(".")[1] if "." in module else module


def graph() -> dict[str, set[str]]:
    known = modules()
    return {name: imports_of(name, path, known) for name, path in known.items()}


def test_the_docstring_names_every_top_level_module_once() -> None:
    named = [entry for row in layer_table() for entry in row]
    assert len(named) == len(set(named)), named
    present = {top_level(name) for name in modules() if name != NAME}
    assert set(named) >= present, f"not in the layer table: {sorted(present - set(named))}"


def test_no_import_points_up_the_layers() -> None:
    rank = {entry: index for index, row in enumerate(layer_table()) for entry in row}
    upward = sorted(
        f"{source} -> {target}"
        for source, targets in graph().items()
        if source != NAME
        for target in targets
        if rank[top_level(target)] > rank[top_level(source)]
    )
    assert upward == []


def test_there_are_no_import_cycles() -> None:
    edges = graph()
    cycles: list[list[str]] = []
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        path.append(node)
        for target in sorted(edges.get(node, ())):
            if state.get(target) == 1:
                cycles.append([*path[path.index(target) :], target])
            elif target not in state:
                visit(target)
        path.pop()
        state[node] = 2

    for node in sorted(edges):
        if node not in state:
            visit(node)
    assert cycles == []


def test_the_walk_sees_lazy_and_type_only_imports() -> None:
    # The walk must not miss what it claims to see, or the tests above prove nothing.
    edges = graph()
    assert "policy_service.app" in edges["policy_service.cli.serving"]  # inside a function
    assert "policy_service.cli.flags" in edges["policy_service.cli.dev"]
