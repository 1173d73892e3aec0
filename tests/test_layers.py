"""The package layering the architecture promises (docs/architecture.md), checked on imports.

``server/`` is the connection layer: it hands each request to a ``Handler``
(``server/handler.py``) and knows none of them, so the pipeline, the mesh,
the tunnels and interception build on it without a cycle. The decision
cores stay free of trio (sans-I/O: plain code that takes ``now``).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import nodeproxy

# The package the tests import: the source tree, or the installed wheel (make unit-compiled)
PACKAGE = Path(nodeproxy.__file__).parent


def imported(path: Path) -> set[str]:
    """Every module ``path`` imports (``from x import y`` counts as ``x``), type-only ones too."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found.add(node.module)
    return found


def modules(folder: str) -> list[Path]:
    return sorted((PACKAGE / folder).glob("*.py"))


@pytest.mark.parametrize("path", modules("server"), ids=lambda p: p.name)
def test_the_server_layer_imports_no_handler(path: Path) -> None:
    above = ("nodeproxy.pipeline", "nodeproxy.mesh", "nodeproxy.tunnel", "nodeproxy.intercept")
    assert not {m for m in imported(path) if m.startswith(above)}


@pytest.mark.parametrize(
    "path",
    [*modules("balancing"), *modules("resilience"), *modules("routing"), *modules("policy")],
    ids=lambda p: f"{p.parent.name}/{p.name}",
)
def test_the_decision_cores_import_no_trio(path: Path) -> None:
    assert "trio" not in {m.split(".")[0] for m in imported(path)}
