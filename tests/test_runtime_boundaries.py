"""The runtime packages import only what they declare: torch, safetensors, huggingface_hub, numpy
and the standard library, plus `diffae_core` for the families. No family imports another, and no
runtime package imports the tools (`diffae`), Pillow or tqdm."""

from __future__ import annotations

import ast
import importlib.util
import sys
from pathlib import Path

import pytest

from diffae_core.families import installed_families

RUNTIME_THIRD_PARTY = {"torch", "safetensors", "huggingface_hub", "numpy"}
FAMILY_PACKAGES = sorted(
    {family.model_class.__module__.split(".")[0] for family in installed_families().values()}
)


def source_files(package: str) -> list[Path]:
    """Every module of an installed package (its folder, recursively)."""
    spec = importlib.util.find_spec(package)
    assert spec is not None and spec.submodule_search_locations, package
    return sorted(Path(next(iter(spec.submodule_search_locations))).rglob("*.py"))


def imported_top_names(path: Path) -> set[str]:
    """Top-level names of the absolute imports in one module."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("package", ["diffae_core", *FAMILY_PACKAGES])
def test_runtime_package_imports_only_its_dependencies(package: str) -> None:
    allowed = set(sys.stdlib_module_names) | RUNTIME_THIRD_PARTY | {package}
    if package != "diffae_core":
        allowed.add("diffae_core")
    outside = {
        f"{path.name}: {name}"
        for path in source_files(package)
        for name in imported_top_names(path) - allowed
    }
    assert not outside, f"{package} imports what it does not declare: {sorted(outside)}"


def test_diffae_core_holds_no_command_line() -> None:
    assert importlib.util.find_spec("diffae_core.cli") is None
    assert not any("argparse" in imported_top_names(p) for p in source_files("diffae_core"))
