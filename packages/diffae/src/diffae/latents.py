"""Latent files: safetensors with one tensor per image and a JSON description in the metadata.

Metadata key "diffae" holds {"family", "model", "whitened", "patch", "items": [...]}, each item
{"tensor", "source", "source_height", "source_width", "fit", "box"} (see `images.Fitted`).
Tensors are [1, C, h, w] float32, exactly what `model.encode` returned (cast up, lossless).
Files without that metadata (written elsewhere) are decoded too: each [C, h, w] or [N, C, h, w]
tensor is an item, decoded at the latent grid times the patch size.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from safetensors import SafetensorError, safe_open

from diffae_core.io import CheckpointError, atomic_write, read_safetensors_header

if TYPE_CHECKING:
    from torch import Tensor

# torch (through safetensors.torch and .images) is imported by the functions that read or write
# tensors: `read_description` reads the header alone, so `diffae inspect` runs without torch.

METADATA_KEY = "diffae"


class BadLatentFile(Exception):
    """A file that is not safetensors, or whose tensors or description cannot be decoded."""


@dataclass(frozen=True)
class LatentItem:
    """One image's latents [1, C, h, w] and how to turn the decoded image back into the source's."""

    name: str
    latents: Tensor
    fit: str = "none"
    box: tuple[int, int, int, int] | None = None

    def content(self, image: Tensor) -> Tensor:
        """A decoded [3, H, W] image -> the source's pixels (the encoder's padding removed)."""
        if self.fit != "pad" or self.box is None:
            return image
        top, left, height, width = self.box
        return image[..., top : top + height, left : left + width]


def write_latent_file(
    path: Path, tensors: dict[str, Tensor], items: list[dict[str, Any]], header: dict[str, Any]
) -> None:
    """Write `tensors` (name -> [1, C, h, w]) with the item descriptions, atomically."""
    from safetensors.torch import save_file

    metadata = {METADATA_KEY: json.dumps(header | {"items": items})}
    state = {name: tensor.detach().float().cpu().contiguous() for name, tensor in tensors.items()}
    atomic_write(path, lambda tmp: save_file(state, os.fspath(tmp), metadata=metadata))


def read_description(path: Path) -> dict[str, Any] | None:
    """The "diffae" metadata of a safetensors file, or None when it has none (header only)."""
    try:
        text = read_safetensors_header(path).metadata.get(METADATA_KEY)
        return None if text is None else json.loads(text)
    except CheckpointError as error:  # says "<path>: not a readable safetensors file (...)"
        raise BadLatentFile(str(error).removeprefix(f"{path}: ")) from None
    except (OSError, ValueError) as error:
        raise BadLatentFile(f"not a readable safetensors file ({error})") from None


def read_latent_file(path: Path) -> list[LatentItem]:
    """Every image's latents in a file, in the order they were written."""
    description = read_description(path)
    try:
        with safe_open(os.fspath(path), framework="pt") as handle:
            tensors = {name: handle.get_tensor(name) for name in handle.keys()}  # noqa: SIM118
        for key, tensor in tensors.items():
            if not tensor.is_floating_point():
                raise ValueError(
                    f"tensor {key!r}: expected floating-point latents, got dtype "
                    f"{str(tensor.dtype).removeprefix('torch.')}"
                )
        if description is None:
            return list(_undescribed_items(path, tensors))
        return [
            LatentItem(
                item["tensor"],
                tensors[item["tensor"]],
                item.get("fit", "none"),
                tuple(item["box"]) if item.get("box") else None,
            )
            for item in description["items"]
        ]
    except (SafetensorError, OSError, ValueError, KeyError, TypeError) as error:
        raise BadLatentFile(f"unusable latents ({type(error).__name__}: {error})") from None


def _undescribed_items(path: Path, tensors: dict[str, Tensor]):
    for key, tensor in tensors.items():
        batch = tensor.unsqueeze(0) if tensor.ndim == 3 else tensor
        if batch.ndim != 4:
            raise ValueError(
                f"tensor {key!r}: expected latents [C, h, w] or [N, C, h, w], "
                f"got {tuple(tensor.shape)}"
            )
        stem = path.stem if len(tensors) == 1 else f"{path.stem}_{key}"
        for index in range(batch.shape[0]):
            name = stem if batch.shape[0] == 1 else f"{stem}_{index}"
            yield LatentItem(name, batch[index : index + 1])


def find_latent_files(arguments: list[str]) -> tuple[list[Path], list[tuple[str, str]]]:
    """.safetensors files named or inside folders named, and the arguments that are neither."""
    from .images import find_files

    return find_files(arguments, (".safetensors",))
