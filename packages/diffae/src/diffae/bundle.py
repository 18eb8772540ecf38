"""Hugging Face code bundles: a model folder that runs with torch, safetensors and huggingface_hub.

`export_bundle(model, out)` writes the published repos' layout plus the code:

    config.json, model.safetensors   copied byte for byte, after checking they load
    README.md                        the model card: front matter, usage, parameters, provenance
    <package>/                       the family's package; the diffae_core modules it imports
                                     are vendored as <package>/_core/ (imports made relative)
    viewer/                          optional: the results viewer of runs of the model
                                     (`diffae.viewer`), linked from the card

so `sys.path.insert(0, folder); from <package> import <Model>` works with no diffae package
installed, and the folder adds exactly one top-level name.
"""

from __future__ import annotations

import ast
import importlib.metadata
import importlib.util
import json
import os
import re
import secrets
import shutil
import subprocess
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from huggingface_hub import ModelCardData

from diffae_core.families import Family
from diffae_core.io import IDENTITY_NAME
from diffae_core.loading import CheckpointMismatchError

from . import __version__
from .models import choose_family, patch_multiple, read_config, resolve_model
from .viewer import VIEWER, build_viewer

CORE = "diffae_core"
VENDORED_CORE = "_core"
"""Where the diffae_core modules go inside the bundled package."""
RUNTIME_IMPORTS = frozenset({"torch", "safetensors", "huggingface_hub", "numpy"})
"""Top-level names a bundle may import besides its own package and the standard library."""
MODEL_FILES = ("config.json", "model.safetensors")
PLACEHOLDER_REPO_ID = "<user>/<repo>"
CARD_IMAGE_SIZE = 256
"""Side of the example image in the card's usage (rounded up to the patch multiple)."""
MINIMAL_CORE_INIT = '"""The diffae_core modules {package} uses, vendored by `diffae bundle`."""\n'


class BundleError(RuntimeError):
    """A family's code cannot be bundled: an import form we do not rewrite, or a dependency
    outside torch, safetensors, huggingface_hub, numpy and the standard library."""


@dataclass(frozen=True)
class SourceModule:
    """A Python module to bundle: its dotted name, its file, and whether it is a package."""

    name: str
    path: Path

    @property
    def is_package(self) -> bool:
        """Whether the file is a package's `__init__.py`."""
        return self.path.name == "__init__.py"

    @property
    def package(self) -> str:
        """The package its relative imports start from."""
        return self.name if self.is_package else self.name.rpartition(".")[0]


# -- finding the sources ------------------------------------------------------------------------
def find_module(name: str) -> SourceModule | None:
    """The source file of module `name` (imported to find it), or None when it is no module."""
    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError):
        return None
    if spec is None or spec.origin is None or not spec.origin.endswith(".py"):
        return None
    return SourceModule(name, Path(spec.origin))


def package_root(package: str) -> Path:
    """The folder of an installed package's sources."""
    top = find_module(package)
    if top is None or not top.is_package:
        raise BundleError(f"{package!r} is not an importable package with Python sources")
    return top.path.parent


def package_modules(package: str) -> list[SourceModule]:
    """Every module of an installed package, sorted, without caches or test folders, and
    without the modules that import one of its optional extras (e.g. capacitor_decoder's
    diffusers adapter): a bundle runs on the runtime dependencies alone."""
    root, extras = package_root(package), optional_extras(package)
    modules = []
    for path in sorted(root.rglob("*.py")):
        relative = path.relative_to(root).with_suffix("")
        if {"__pycache__", "tests"} & set(relative.parts[:-1]):
            continue
        parts = relative.parts[:-1] if relative.name == "__init__" else relative.parts
        module = SourceModule(".".join((package, *parts)), path)
        tree = ast.parse(path.read_bytes(), filename=str(path))
        if not extras & {name.partition(".")[0] for name in imported_names(module, tree)}:
            modules.append(module)
    return modules


def optional_extras(package: str) -> set[str]:
    """Top-level names of an installed package's optional dependencies (its extras)."""
    try:
        requirements = importlib.metadata.requires(package.replace("_", "-")) or []
    except importlib.metadata.PackageNotFoundError:
        return set()
    return {
        re.match(r"[A-Za-z0-9_.-]+", requirement).group().replace("-", "_")
        for requirement in requirements
        if "extra ==" in requirement
    }


def import_nodes(tree: ast.AST) -> Iterator[ast.Import | ast.ImportFrom]:
    """Every import statement, including those inside functions and `try` blocks."""
    for node in ast.walk(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node


def imported_names(module: SourceModule, tree: ast.AST) -> set[str]:
    """Absolute names a module imports; `from a import b` gives "a" and "a.b" (b may be a
    submodule; callers check)."""
    names: set[str] = set()
    for node in import_nodes(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
            continue
        base = importlib.util.resolve_name("." * node.level + (node.module or ""), module.package)
        names.add(base)
        names.update(f"{base}.{alias.name}" for alias in node.names if alias.name != "*")
    return names


def core_closure(modules: list[SourceModule]) -> list[SourceModule]:
    """The diffae_core modules `modules` import, directly or through each other, sorted.

    The `diffae_core` package itself (its eager __init__) is included only when a name other
    than a submodule is imported from it; otherwise the bundle gets a minimal `__init__`.
    """
    found: dict[str, SourceModule] = {}
    pending = list(modules)
    while pending:
        module = pending.pop()
        tree = ast.parse(module.path.read_bytes(), filename=str(module.path))
        for name in sorted(imported_names(module, tree)):
            if name in found or not (name == CORE or name.startswith(CORE + ".")):
                continue
            if name == CORE and not needs_core_init(module, tree):
                continue
            source = find_module(name)
            if source is not None:
                found[name] = source
                pending.append(source)
    return sorted(found.values(), key=lambda source: source.name)


def needs_core_init(module: SourceModule, tree: ast.AST) -> bool:
    """Whether `module` imports from `diffae_core` a name that is not one of its submodules."""
    for node in import_nodes(tree):
        if not isinstance(node, ast.ImportFrom):
            continue
        base = importlib.util.resolve_name("." * node.level + (node.module or ""), module.package)
        if base == CORE and any(find_module(f"{CORE}.{a.name}") is None for a in node.names):
            return True
    return False


# -- rewriting ----------------------------------------------------------------------------------
def rewrite_core_imports(source: bytes, depth: int, filename: str) -> bytes:
    """`from diffae_core[.x] import y` -> `from <dots>_core[.x] import y`, the rest unchanged.

    `depth`: how many packages below the bundled package's top the module's package sits (0 for
    the package's own modules, 1 for `_core`). Edits are byte offsets, as `ast` reports them.
    """
    line_starts = [0]
    for line in source.splitlines(keepends=True):
        line_starts.append(line_starts[-1] + len(line))
    edits = []
    for node in import_nodes(ast.parse(source, filename=filename)):
        if isinstance(node, ast.Import):
            if any(alias.name.partition(".")[0] == CORE for alias in node.names):
                raise BundleError(
                    f"{filename}:{node.lineno}: `import {CORE}...` cannot be bundled; write "
                    f"`from {CORE}.<module> import <name>`"
                )
            continue
        if node.level or (node.module or "").partition(".")[0] != CORE:
            continue
        start = line_starts[node.lineno - 1] + node.col_offset
        match = re.compile(rb"from\s+" + CORE.encode()).match(source, start)
        assert match, f"{filename}:{node.lineno}: an ImportFrom starts with `from {CORE}`"
        replacement = b"from " + b"." * (depth + 1) + VENDORED_CORE.encode()
        edits.append((match.start(), match.end(), replacement))
    for start, end, replacement in sorted(edits, reverse=True):
        source = source[:start] + replacement + source[end:]
    return source


def external_imports(package_dir: Path) -> list[str]:
    """Imports of a bundled package outside itself, the standard library and RUNTIME_IMPORTS,
    as "file:line: name"."""
    allowed = {package_dir.name, *RUNTIME_IMPORTS, *sys.stdlib_module_names}
    problems = []
    for path in sorted(package_dir.rglob("*.py")):
        for node in import_nodes(ast.parse(path.read_bytes(), filename=str(path))):
            if isinstance(node, ast.ImportFrom) and node.level:
                continue  # relative: inside the package by construction
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module]
            problems += [
                f"{path.relative_to(package_dir.parent)}:{node.lineno}: {name}"
                for name in names
                if name.partition(".")[0] not in allowed
            ]
    return problems


def write_package(package: str, destination: Path) -> None:
    """The family's package, then its diffae_core closure as `_core/`, imports rewritten."""
    root, modules = package_root(package), package_modules(package)
    for module in modules:
        depth = module.package.count(".")
        write_module(module, destination / module.path.relative_to(root), depth)
    core_dir = destination / VENDORED_CORE
    for module in core_closure(modules):
        relative = Path(*module.name.split(".")[1:], "__init__.py" if module.is_package else "")
        target = core_dir / (relative if module.is_package else relative.with_suffix(".py"))
        write_module(module, target, depth=1 + module.package.count("."))
    if not (core_dir / "__init__.py").exists():
        (core_dir / "__init__.py").write_text(MINIMAL_CORE_INIT.format(package=package))
    problems = external_imports(destination)
    if problems:
        raise BundleError(
            f"{package} imports modules a bundle cannot carry (only {sorted(RUNTIME_IMPORTS)} "
            "and the standard library are allowed): " + "; ".join(problems)
        )


def write_module(module: SourceModule, target: Path, depth: int) -> None:
    """Write `module` at `target` with its diffae_core imports made relative."""
    target.parent.mkdir(parents=True, exist_ok=True)
    source = rewrite_core_imports(module.path.read_bytes(), depth, str(module.path))
    target.write_bytes(source)


# -- the model card -----------------------------------------------------------------------------
def source_commit(path: Path) -> str:
    """`git rev-parse HEAD` of the checkout tracking `path`, else "unknown" (e.g. a wheel)."""

    def git(*arguments: str) -> subprocess.CompletedProcess:
        command = ["git", "-C", str(path.parent), *arguments]
        return subprocess.run(command, capture_output=True, text=True, timeout=30)

    try:
        # A file the checkout does not track (an installed wheel inside a repo's .venv) says
        # nothing about which commit it came from.
        tracked = git("ls-files", "--error-unmatch", path.name)
        head = git("rev-parse", "HEAD")
        changed = git("status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    if tracked.returncode or head.returncode:
        return "unknown"
    return head.stdout.strip() + (" (with uncommitted changes)" if changed.stdout.strip() else "")


def card_usage(family: Family, config: Any, package: str, repo_id: str) -> str:
    """The card's Python snippet: fetch the repo, import the package from it, encode/decode."""
    model_class = family.model_class.__name__
    patch = patch_multiple(config)
    size = -(-CARD_IMAGE_SIZE // patch) * patch
    cells, channels = size // patch, config.latent_channels
    lines = [
        "import sys",
        "",
        "import torch",
        "from huggingface_hub import snapshot_download",
        "",
        f'folder = snapshot_download("{repo_id}")  # or the path of a local copy of this repo',
        f"sys.path.insert(0, folder)  # the repo's `{package}` folder is the package",
        f"from {package} import {model_class}",
        "",
        f"model = {model_class}.from_pretrained(folder)  # device=..., dtype=... as usual",
    ]
    if callable(getattr(family.model_class, "encode", None)):
        lines += [
            f"images = torch.rand(1, 3, {size}, {size}) * 2 - 1  # your images, in [-1, 1]",
            f"latents = model.encode(images)  # [1, {channels}, {cells}, {cells}]",
        ]
    else:
        lines.append(f"latents = torch.randn(1, {channels}, {cells}, {cells})  # your latents")
    lines.append(
        f"recon = model.decode(latents, height={size}, width={size})"
        f"  # [1, 3, {size}, {size}], float32, ~[-1, 1]"
    )
    return "\n".join(lines)


VIEWER_SECTION = """
## Results viewer

[`viewer/index.html`](viewer/index.html) is a static page of this model's reconstructions
(original, reconstruction, RGB error and latent PCA per photo, with the PSNR table): open it from
a download of this repository, or publish the folder as a Hugging Face static Space with
`hf upload <user>/<space> viewer/ . --repo-type space`.
"""


def model_card(
    family: Family, config: Any, package: str, repo_id: str, commit: str, viewer: bool = False
) -> str:
    """README.md: YAML front matter, what the folder holds, usage, parameters, provenance, and
    with `viewer` a link to the results viewer."""
    front_matter = ModelCardData(
        license="apache-2.0",
        library_name=package,
        tags=["diffae", "diffusion-autoencoder", "pytorch", "safetensors", family.name],
    ).to_yaml()
    parameters = family.model_class.from_config_on_meta(config).num_parameters()
    summary = (sys.modules[package].__doc__ or package).strip().splitlines()[0]
    return f"""---
{front_matter}
---

# {package}

{summary}

This repository holds the model (`config.json`, `model.safetensors`: {parameters:,} parameters)
and the code that runs it: the `{package}` package, with the `diffae_core` modules it uses
vendored as `{package}/_core`. It needs only `torch`, `safetensors` and `huggingface_hub`.

## Usage

```python
{card_usage(family, config, package, repo_id)}
```

`from_pretrained` takes this folder or, once the package is importable, the repo id itself.
{VIEWER_SECTION if viewer else ""}
## Provenance

Bundled by `diffae bundle` (diffae {__version__}) from the diffae sources at git commit
{commit}.
"""


# -- the folder ---------------------------------------------------------------------------------
def check_new_folder(out: Path, argument: str = "out") -> None:
    """A FileExistsError naming `argument` when `out` exists and is not an empty folder."""
    if out.is_dir() and not any(out.iterdir()):
        return
    if out.exists() or out.is_symlink():
        raise FileExistsError(
            f"{argument}: {out} already exists and is not an empty folder; "
            "give a new folder (nothing is overwritten)"
        )


def check_model_files(family: Family, folder: Path) -> Any:
    """The config of `folder`, after checking its weights' header fits the model built on meta."""
    for name in MODEL_FILES:
        if not (folder / name).is_file():
            raise FileNotFoundError(f"{folder} has no {name}")
    config = family.config_class.load(folder / "config.json")
    diff = family.model_class.inspect_checkpoint(folder / "model.safetensors", config)
    if not diff.loadable:
        raise CheckpointMismatchError(str(folder / "model.safetensors"), diff)
    return config


def export_bundle(
    model: str | os.PathLike[str],
    out: str | os.PathLike[str],
    family: str | None = None,
    *,
    repo_id: str | None = None,
    viewer_runs: Sequence[Path] = (),
) -> Path:
    """Write the bundle of `model` (a local directory or a Hub repo id) to the new folder `out`.

    family: the family's name when the config does not tell (as `--family`). repo_id: the Hub
    repo the folder will be uploaded to, used in the card's usage (default a placeholder).
    viewer_runs: run folders of `diffae reconstruct --viewer`, whose page goes in out/viewer/.
    The folder is built next to `out` and renamed into place, so `out` is complete or absent.
    Returns `out`.
    """
    out = Path(out)
    check_new_folder(out)
    folder = resolve_model(os.fspath(model))
    chosen, _ = choose_family(os.fspath(model), read_config(folder), family, folder=folder)
    config = check_model_files(chosen, folder)
    package = chosen.model_class.__module__.partition(".")[0]
    commit = source_commit(Path(sys.modules[package].__file__))
    out.parent.mkdir(parents=True, exist_ok=True)
    building = out.parent / f".{out.name}.{secrets.token_hex(4)}.tmp"
    building.mkdir()
    try:
        for name in MODEL_FILES:
            shutil.copyfile(folder / name, building / name)
        # The family, recorded as save_pretrained records it, so the folder needs no --family.
        identity = json.dumps({"family": chosen.name}, indent=2) + "\n"
        (building / IDENTITY_NAME).write_text(identity, encoding="utf-8")
        write_package(package, building / package)
        if viewer_runs:
            build_viewer(viewer_runs, building / VIEWER)
        card = model_card(
            chosen, config, package, repo_id or PLACEHOLDER_REPO_ID, commit, bool(viewer_runs)
        )
        (building / "README.md").write_text(card, encoding="utf-8")
        # rename() replaces an empty folder and fails on a non-empty one: no check-then-act race.
        building.rename(out)
    except BaseException:
        shutil.rmtree(building, ignore_errors=True)
        raise
    return out
