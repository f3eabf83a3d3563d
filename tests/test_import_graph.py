"""The import graph of mambatr has no stairs running up: the token contract (``tokens``) and the FLOPs
dispatch (``flops``) import no backbone or method, the backbones (``models``) import no method, and
no module hides an import of mambatr inside a function unless a comment there names the cycle it breaks
or the optional dependency it defers.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "mambatr"
# module (or package) -> the mambatr modules (or packages) it must not import
FORBIDDEN = {
    "mambatr.tokens": ("mambatr.",),
    "mambatr.flops": ("mambatr.",),
    "mambatr.models": ("mambatr.reduction", "mambatr.cli"),
    "mambatr.reduction": ("mambatr.cli", "mambatr.sweep", "mambatr.probe", "mambatr.visualize"),
}
# a function-local import of mambatr must say why in a comment beside it: the cycle it breaks, or the
# optional dependency it keeps out of `import mambatr` (the Triton kernels)
REASONS = ("cycle", "optional")


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def mambatr_imports(tree: ast.Module) -> list[tuple[ast.stmt, str]]:
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node, alias.name) for alias in node.names if alias.name.startswith("mambatr")]
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("mambatr"):
            found += [(node, f"{node.module}.{alias.name}") for alias in node.names]
    return found


MODULES = sorted(PACKAGE.rglob("*.py"))


@pytest.mark.parametrize("path", MODULES, ids=lambda path: module_name(path))
def test_no_import_runs_up_or_hides_in_a_function(path: Path) -> None:
    name = module_name(path)
    lines = path.read_text().splitlines()
    for node, target in mambatr_imports(ast.parse(path.read_text())):
        for owner, forbidden in FORBIDDEN.items():
            if name == owner or name.startswith(owner + "."):
                assert not target.startswith(forbidden), f"{name} imports {target}"
        if node.col_offset:
            context = lines[node.lineno - 2] + lines[node.lineno - 1]
            assert any(reason in context for reason in REASONS), (
                f"{name}:{node.lineno} imports {target} inside a function without saying why"
            )
