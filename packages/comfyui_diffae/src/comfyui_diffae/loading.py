"""Finding and loading diffae models from ComfyUI's `models/vae/` folders.

Two layouts are accepted:
- a sub-folder `<name>/model.safetensors` with its `config.json` beside it (what
  `save_pretrained` writes and the Hub repos hold): the config says the family;
- a single `.safetensors` file, renamed at will: its header (tensor names and shapes, read
  without loading any weight) must match one published preset of one installed family.

Every failure is a `ModelFileError` whose one-line message names the file and what is wrong.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from diffae_core.config import ConfigError
from diffae_core.families import Family, installed_families
from diffae_core.io import IDENTITY_NAME, CheckpointError, saved_family
from diffae_core.loading import read_header

CONFIG_NAME = "config.json"
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
AUTO = "auto"
DTYPE_CHOICES = (AUTO, *DTYPES)


class ModelFileError(ValueError):
    """A model file that cannot be loaded as a diffae model; the message says why."""


@dataclass(frozen=True)
class Identified:
    """A model file with its family and config, decided before any weight is read."""

    path: Path
    family: Family
    config: Any
    how: str
    """'config.json' or 'preset <name>'."""


def choose_dtype(name: str, device: torch.device) -> torch.dtype:
    """dtype widget value -> torch dtype; auto is bf16 on CUDA, fp32 elsewhere."""
    if name == "auto":
        return torch.bfloat16 if torch.device(device).type == "cuda" else torch.float32
    if name not in DTYPES:
        raise ValueError(f"dtype: expected one of {DTYPE_CHOICES}, got {name!r}")
    return DTYPES[name]


def read_model_header(path: Path) -> dict[str, Any]:
    try:
        return read_header(path)
    except FileNotFoundError:
        raise ModelFileError(f"{path}: no such file") from None
    except CheckpointError as error:
        raise ModelFileError(str(error)) from None


def read_config(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ModelFileError(f"{path}: not a readable JSON config ({error})") from None
    if not isinstance(data, dict):
        raise ModelFileError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


def identify(
    path: Path, families: dict[str, Family] | None = None, family: str = AUTO
) -> Identified:
    """The family and config of `path` (see the module docstring); reads no weights.

    `family`: "auto", or the one family to try (when two families' configs have the same
    fields and tensors, e.g. small fcdm_diffae and full_capacitor models).
    """
    families = installed_families() if families is None else families
    try:
        # A folder saved by diffae (save_pretrained, train, bundle) names its family.
        saved = saved_family(path.parent)
    except ValueError as error:
        raise ModelFileError(str(error)) from None
    if saved is not None and saved in families:
        if family not in (AUTO, saved):
            raise ModelFileError(
                f"family: {path} is a {saved} model (its {IDENTITY_NAME} says so), not {family}"
            )
        family = saved
    if family != AUTO:
        if family not in families:
            raise ModelFileError(
                f"family: expected auto or one of {list(families)}, got {family!r}"
            )
        families = {family: families[family]}
    names = ", ".join(families) or "none"
    header = read_model_header(path)
    config_path = path.parent / CONFIG_NAME
    if config_path.is_file():
        data = read_config(config_path)
        accepted = []
        for candidate in families.values():
            try:
                config = candidate.config_class.from_dict(dict(data), source=str(config_path))
            except (ConfigError, ValueError, TypeError):
                continue
            if candidate.fits_header(config, header):
                accepted.append(Identified(path, candidate, config, CONFIG_NAME))
        if len(accepted) > 1:  # a published config names its family through its preset
            accepted = [
                a for a in accepted if a.family.preset_equal_to(a.config) is not None
            ] or accepted
        if len(accepted) == 1:
            return accepted[0]
        if accepted:
            fitting = ", ".join(a.family.name for a in accepted)
            raise ModelFileError(f"{path}: fits several families ({fitting}); choose its family")
        raise ModelFileError(
            f"{path}: neither its {CONFIG_NAME} nor its tensors match a model of the installed "
            f"diffae families ({names})"
        )
    for candidate in families.values():
        for preset in candidate.presets():
            config = candidate.config_class.preset(preset)
            if candidate.fits_header(config, header):
                return Identified(path, candidate, config, f"preset {preset}")
    raise ModelFileError(
        f"{path}: its tensors match no published preset of the installed diffae families "
        f"({names}); a model of another size needs its {CONFIG_NAME} beside it "
        f"(models/vae/<name>/model.safetensors)"
    )


def load_identified(identified: Identified, dtype: torch.dtype) -> torch.nn.Module:
    """The model, on the CPU in `dtype` (ComfyUI's model management moves it), eval mode."""
    model_class = identified.family.model_class
    try:
        # Not as inference tensors, though ComfyUI loads under inference mode (see vae.py).
        with torch.inference_mode(False):
            return model_class.from_weights(identified.config, identified.path, dtype=dtype)
    except (CheckpointError, ValueError) as error:
        raise ModelFileError(f"{identified.path}: {error}") from None
