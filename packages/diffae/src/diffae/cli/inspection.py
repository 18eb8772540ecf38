"""The `inspect` command: a model's family, config, latent shapes and stored tensors, from its
`config.json` and the safetensors header alone (no weights read, no torch imported: under a
second). `--check` also builds the model on the `meta` device (torch) and compares the header
with it key by key.
"""

from __future__ import annotations

import argparse
from collections import defaultdict
from pathlib import Path
from typing import Any

from diffae_core.io import StoredTensor, read_safetensors_header

from ..console import CliError, Console
from ..latents import BadLatentFile, read_description
from ..models import choose_family, patch_multiple, read_config, resolve_model

IMAGE_SIZES = (256, 512, 1024)
"""Square image sizes whose latent shape is listed (rounded up to the patch multiple)."""


def inspect(args: argparse.Namespace, console: Console) -> int:
    """Print the report on a model (repo id, directory or model.safetensors) or a latents file."""
    target = Path(args.target)
    if target.is_file():
        if target.suffix != ".safetensors":
            raise CliError(f"{target}: expected a model directory or a .safetensors file")
        try:
            description = read_description(target)
        except BadLatentFile as error:
            raise CliError(f"{target}: {error}") from None
        if description is not None:
            print(describe_latent_file(target, description))
            return 0
        if not (target.parent / "config.json").is_file():
            print(describe_tensors(target))
            return 0
        folder, weights = target.parent, target
    else:
        folder = resolve_model(args.target)
        weights = folder / "model.safetensors"
    config_data = read_config(folder)
    family, reason = choose_family(args.target, config_data, args.family, folder=folder)
    config = family.config_class.from_dict(config_data, source=str(folder / "config.json"))
    lines = [f"model:  {args.target}", f"family: {family.name} (from {reason})", "config:"]
    lines += [f"  {key}: {value}" for key, value in config_data.items()]
    lines += latent_shape_lines(config, decode_only=not family.has_encoder)
    if not weights.is_file():
        lines.append(f"no {weights.name} in {folder}: nothing stored to list or check")
    else:
        tensors = read_safetensors_header(weights).tensors
        lines += stored_value_lines(tensors) + storage_lines(weights.name, tensors)
        if args.check:
            lines += model_check_lines(family, config, weights)
        else:
            lines.append(
                "checkpoint vs model: not checked; add --check to compare (builds the model "
                "on the meta device, imports torch)"
            )
    print("\n".join(lines))
    return 0


def model_check_lines(family: Any, config: Any, weights: Path) -> list[str]:
    """The model's parameter counts and the header compared with it (imports torch)."""
    model = family.model_class.from_config_on_meta(config)
    report = family.model_class.inspect_checkpoint(weights, config).report()
    return [
        *parameter_lines(model),
        "checkpoint vs model:",
        *(f"  {line}" for line in report.splitlines()),
    ]


def parameter_lines(model: Any) -> list[str]:
    """Total learnable values of a (meta) model, then per top-level module, and the buffers."""
    total = sum(p.numel() for p in model.parameters())
    lines = [f"parameters: {total:,}"]
    for name, child in model.named_children():
        count = sum(p.numel() for p in child.parameters())
        if count:
            lines.append(f"  {name}: {count:,}")
    buffers = sum(b.numel() for b in model.buffers())
    return [*lines, f"buffers: {buffers:,} values"]


def latent_shape(config: Any, size: int) -> tuple[int, int, int] | None:
    """[C, h, w] of one size x size image (size a multiple of the patch), read off the config:
    `latent_channels` over the grid of `effective_patch_size` cells; None without them."""
    channels = getattr(config, "latent_channels", None)
    if not isinstance(channels, int):
        return None
    patch = patch_multiple(config)
    return (channels, size // patch, size // patch)


def latent_shape_lines(config: Any, *, decode_only: bool) -> list[str]:
    """Latent shape and compression per listed image size."""
    patch = patch_multiple(config)
    title = "latents per image (C x h x w)" + (", decode input only" if decode_only else "")
    lines = [f"{title}, patch {patch}:"]
    for size in IMAGE_SIZES:
        size = -(-size // patch) * patch  # round up to a multiple of the patch
        shape = latent_shape(config, size)
        if shape is None:
            return [*lines, "  unknown (the config has no latent_channels)"]
        ratio = 3 * size * size / (shape[0] * shape[1] * shape[2])
        lines.append(f"  {size}x{size}: {'x'.join(map(str, shape))} ({ratio:.1f}x fewer values)")
    return lines


def stored_value_lines(tensors: dict[str, StoredTensor]) -> list[str]:
    """Values stored (parameters and buffers), in total and per top-level name."""
    per_name: dict[str, int] = defaultdict(int)
    for key, info in tensors.items():
        per_name[key.split(".")[0]] += info.numel
    lines = [f"values stored: {sum(per_name.values()):,} (parameters and buffers)"]
    return lines + [f"  {name}: {count:,}" for name, count in per_name.items()]


def storage_lines(file_name: str, tensors: dict[str, StoredTensor]) -> list[str]:
    """Tensors, values and bytes per dtype stored in a safetensors file."""
    totals: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0])
    for info in tensors.values():
        for index, amount in enumerate((1, info.numel, info.nbytes)):
            totals[info.dtype][index] += amount
    lines = [f"stored in {file_name}:"]
    for dtype, (count, values, nbytes) in sorted(totals.items()):
        lines.append(f"  {dtype}: {count} tensors, {values:,} values, {nbytes / 1e6:.1f} MB")
    return lines


def describe_latent_file(path: Path, description: dict[str, Any]) -> str:
    """The report on a latents file written by `diffae encode`."""
    tensors = read_safetensors_header(path).tensors
    lines = [
        f"latents file: {path}",
        f"family: {description.get('family')}  model: {description.get('model')}",
        f"whitened: {description.get('whitened')}  patch: {description.get('patch')}",
    ]
    for item in description.get("items", []):
        info = tensors.get(item["tensor"])
        shape = "?" if info is None else "x".join(map(str, info.shape))
        lines.append(
            f"  {item['tensor']}: {shape} from {item.get('source')} "
            f"({item.get('source_width')}x{item.get('source_height')}, fit {item.get('fit')})"
        )
    return "\n".join(lines)


def describe_tensors(path: Path) -> str:
    """The report on a safetensors file that is neither a model's nor `diffae encode`'s."""
    tensors = read_safetensors_header(path).tensors
    lines = [
        f"safetensors file: {path}",
        "neither a model file (no config.json beside it) nor written by `diffae encode`; "
        f"{len(tensors)} tensors:",
    ]
    for name, info in tensors.items():
        lines.append(f"  {name}: {'x'.join(map(str, info.shape))} {info.dtype}")
    return "\n".join(lines)
