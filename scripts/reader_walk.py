"""How far a reader walks: the project files one public call enters, and each model's class chain.

    uv run python scripts/reader_walk.py

For every installed family, builds the tiny model (float32, default settings, untiled), traces
`encode` and `decode` with `sys.setprofile` and counts the distinct project source files (under
`shared/` and `packages/`) whose Python code runs; the class chain counts the project classes in
the model's MRO (torch's `nn.Module` and `object` excluded). tests/test_architecture.py holds
the limits (issue 22: a decode or encode in at most 6 files, a chain at most 4 deep).
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from diffae_core.families import Family, installed_families

ROOT = Path(__file__).resolve().parents[1]
PROJECT_FOLDERS = (ROOT / "shared", ROOT / "packages")


def project_file(filename: str) -> str | None:
    """The path relative to the repository of a project source file, else None."""
    path = Path(filename).resolve()
    if path.suffix == ".py" and any(path.is_relative_to(folder) for folder in PROJECT_FOLDERS):
        return path.relative_to(ROOT).as_posix()
    return None


def files_entered(call: Callable[[], Any]) -> list[str]:
    """The project files whose Python functions run during `call()`, sorted."""
    entered: set[str] = set()

    def profile(frame: Any, event: str, arg: Any) -> None:
        if event == "call":
            name = project_file(frame.f_code.co_filename)
            if name is not None:
                entered.add(name)

    sys.setprofile(profile)
    try:
        call()
    finally:
        sys.setprofile(None)
    return sorted(entered)


def class_chain(model_class: type) -> list[str]:
    """The model's own classes, most derived first (nn.Module and its bases left out)."""
    return [cls.__name__ for cls in model_class.__mro__ if not issubclass(nn.Module, cls)]


def tiny_inputs(family: Family) -> tuple[nn.Module, torch.Tensor, torch.Tensor, int, int]:
    """(model, images [1, 3, H, W], latents, H, W) of the family's tiny config."""
    model = family.model_class(family.tiny_config).eval()
    patch = family.tiny_config.effective_patch_size
    height, width = 2 * patch, 3 * patch
    images = torch.rand(1, 3, height, width) * 2 - 1
    channels = family.tiny_config.latent_channels
    latents = torch.randn(1, channels, height // patch, width // patch)
    return model, images, latents, height, width


def walks(family: Family) -> dict[str, list[str]]:
    """Files entered by `encode` (where the family has an encoder) and `decode`."""
    model, images, latents, height, width = tiny_inputs(family)
    calls = {"decode": lambda: model.decode(latents, height, width)}
    if hasattr(model, "encoder"):
        calls = {"encode": lambda: model.encode(images), **calls}
    for call in calls.values():  # first calls build caches (RoPE tables, ...): not the walk
        call()
    return {name: files_entered(call) for name, call in calls.items()}


def main() -> None:
    for name, family in installed_families().items():
        chain = class_chain(family.model_class)
        print(f"{name}: class chain {len(chain)} ({' -> '.join(chain)})")
        for method, files in walks(family).items():
            print(f"  {method}: {len(files)} files")
            for file in files:
                print(f"    {file}")


if __name__ == "__main__":
    main()
