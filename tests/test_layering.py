"""Imports flow one way through the package (see README "Layout")."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "factsync"

FORBIDDEN = {
    "facts": {"connectors", "store", "registry", "policies", "evaluation", "editing", "daemon"},
    "connectors": {"store", "registry", "policies", "evaluation", "editing", "daemon"},
    "store": {"connectors", "registry", "policies", "evaluation", "editing", "daemon"},
    "registry": {"connectors", "store", "policies", "evaluation", "editing", "daemon"},
    "models": {"connectors", "store", "registry", "policies", "evaluation", "editing", "daemon"},
    "editing": {"connectors", "store", "registry", "policies", "evaluation", "daemon"},
    "evaluation": {"connectors", "store", "registry", "policies", "daemon"},
    "policies": {"connectors", "store", "registry", "evaluation", "editing", "daemon"},
    "commands": {"cli"},  # cli.py builds its parser from the commands, never the reverse
}
"""Sub-package -> sub-packages (or top-level modules) it must not import."""


def imported_subpackages(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
        elif isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
    return {n.split(".")[1] for n in names if n.startswith("factsync.") and n.count(".") >= 1}


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_a_lower_layer_never_imports_a_higher_one(package):
    offenders = {
        str(path.relative_to(PACKAGE)): sorted(imported_subpackages(path) & FORBIDDEN[package])
        for path in (PACKAGE / package).rglob("*.py")
    }
    assert {k: v for k, v in offenders.items() if v} == {}
