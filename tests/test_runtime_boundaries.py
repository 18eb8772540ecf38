"""The runtime packages import only what they declare: torch, safetensors, huggingface_hub, numpy
and the standard library, plus `diffae_core` for the families. No family imports another, and no
runtime package imports the tools (`diffae`), Pillow or tqdm."""

from __future__ import annotations

import ast
import importlib.util
import re
import sys
from importlib.metadata import requires
from pathlib import Path

import pytest

from diffae_core.families import installed_families

RUNTIME_THIRD_PARTY = {"torch", "safetensors", "huggingface_hub", "numpy"}
OPTIONAL_EXTRAS = {
    "capacitor_decoder": {"diffusers_vae.py": {"diffusers"}},
}
"""package -> module -> what it may import beyond the runtime set: an optional extra declared in
the package's `[project.optional-dependencies]`, that module imported only lazily."""
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
    extras = OPTIONAL_EXTRAS.get(package, {})
    outside = {
        f"{path.name}: {name}"
        for path in source_files(package)
        for name in imported_top_names(path) - allowed - extras.get(path.name, set())
    }
    assert not outside, f"{package} imports what it does not declare: {sorted(outside)}"


def test_diffae_core_holds_no_command_line() -> None:
    assert importlib.util.find_spec("diffae_core.cli") is None
    assert not any("argparse" in imported_top_names(p) for p in source_files("diffae_core"))


@pytest.mark.parametrize("package", sorted(OPTIONAL_EXTRAS))
def test_optional_extras_are_declared_and_imported_lazily(package: str) -> None:
    """Each extra is an optional dependency of its package, and no module imports the extra's
    module at its top level (only inside a function)."""
    declared = {
        re.match(r"[A-Za-z0-9_.-]+", requirement).group()  # "diffusers>=0.36 ; extra == ..."
        for requirement in requires(package.replace("_", "-")) or []
        if "extra ==" in requirement
    }
    files = {path.name: path for path in source_files(package)}
    for module_file, names in OPTIONAL_EXTRAS[package].items():
        assert names <= declared, f"{package}: {sorted(names - declared)} not declared as extras"
        module = f"{package}.{module_file.removesuffix('.py')}"
        for path in files.values():
            tree = ast.parse(path.read_text(encoding="utf-8"))
            for node in tree.body:  # top-level statements only: function bodies are lazy
                if isinstance(node, ast.ImportFrom) and path.name != module_file:
                    target = node.module or ""
                    absolute = f"{package}.{target}" if node.level else target
                    assert absolute != module, f"{path.name} imports {module} eagerly"


def imported_modules(path: Path, package: str) -> set[str]:
    """Full names of the modules one module imports (relative imports resolved in `package`)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level == 0:
                names.add(node.module or "")
                continue
            parts = package.split(".")[: len(package.split(".")) - node.level + 1]
            names.add(".".join([*parts, *([node.module] if node.module else [])]))
    return names


TOOLS_LIBRARY = (
    "dataset_encoding",
    "distributed",
    "images",
    "models",
    "reconstruction",
    "runs",
    "training",
)
"""The tools' library modules under the commands: typed functions, no command-line words."""


@pytest.mark.parametrize("module", TOOLS_LIBRARY)
def test_the_tools_library_speaks_no_command_line(module: str) -> None:
    """No argparse, no import of `diffae.cli`, no CliError: errors name the Python argument
    (`ArgumentError`) and the command line puts its flag in front."""
    spec = importlib.util.find_spec(f"diffae.{module}")
    assert spec is not None and spec.origin, module
    path = Path(spec.origin)
    imported = imported_modules(path, "diffae")
    assert "argparse" not in imported and not any(
        name.startswith("diffae.cli") for name in imported
    )
    source = path.read_text(encoding="utf-8")
    assert "CliError" not in source and not re.search(r"\"--[a-z]", source), module


def test_benchmarks_import_the_library_not_the_command_line() -> None:
    scripts = sorted((Path(__file__).resolve().parents[1] / "benchmarks").glob("*.py"))
    assert scripts
    using_cli = [
        path.name
        for path in scripts
        if any(name.startswith("diffae.cli") for name in imported_modules(path, "benchmarks"))
    ]
    assert not using_cli, using_cli
