"""The package's layers import one way only: slide -> annotations -> cohort -> post_processing / evaluation ->
models / data -> inference -> cli. A module may import its own layer and the layers below, never one above."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "anomalib_wsi"

#: Layer of each top-level part of the package (files and folders); higher imports lower.
LAYERS = {
    "errors": 0,
    "files": 0,
    "lazy": 0,
    "configs": 0,
    "slide": 1,
    "annotations": 2,
    "cohort": 3,
    "post_processing": 4,
    "evaluation": 4,
    "models": 5,
    "data": 5,
    "inference": 6,
    "engine": 6,
    "reproduction": 7,
    "model_comparison": 7,
    "cli": 7,
    "__init__": 8,
}


def _part(path: Path) -> str:
    relative = path.relative_to(PACKAGE)
    return relative.parts[0].removesuffix(".py")


def _imported_parts(path: Path) -> set[str]:
    parts = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        names = []
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module]
        elif isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        for name in names:
            pieces = name.split(".")
            if pieces[0] == "anomalib_wsi" and len(pieces) > 1:
                parts.add(pieces[1])
    return parts


MODULES = sorted(PACKAGE.rglob("*.py"))


def test_every_part_of_the_package_has_a_layer() -> None:
    assert {_part(path) for path in MODULES} <= set(LAYERS)


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_no_module_imports_a_higher_layer(path: Path) -> None:
    own = LAYERS[_part(path)]
    upward = {part: LAYERS[part] for part in _imported_parts(path) if LAYERS.get(part, -1) > own}
    assert not upward, f"{path.relative_to(PACKAGE)} (layer {own}) imports higher layers {upward}"
