"""The `inspect` command: a model's family, config, sizes and checkpoint header, reading no weights.

The model is built on the `meta` device; latent shapes come from running its `encode` there
(shapes only), so they hold for every family without a table of formulas here.
"""

from __future__ import annotations

import argparse
from collections import defaultdict
from pathlib import Path
from typing import Any

import torch

from diffae_core.loading import read_header

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
        folder = resolve_model(args.target, argument="MODEL_OR_FILE")
        weights = folder / "model.safetensors"
    config_data = read_config(folder)
    family, reason = choose_family(args.target, config_data, args.family, folder=folder)
    config = family.config_class.from_dict(config_data, source=str(folder / "config.json"))
    with torch.device("meta"):
        model = family.model_class(config)
    lines = [f"model:  {args.target}", f"family: {family.name} (from {reason})", "config:"]
    lines += [f"  {key}: {value}" for key, value in config_data.items()]
    lines += parameter_lines(model)
    lines += latent_shape_lines(model, config)
    if weights.is_file():
        lines += storage_lines(weights)
        lines.append("checkpoint vs model:")
        report = family.model_class.inspect_checkpoint(weights, config).report()
        lines += [f"  {line}" for line in report.splitlines()]
    else:
        lines.append(f"no {weights.name} in {folder}: header not checked")
    print("\n".join(lines))
    return 0


def parameter_lines(model: torch.nn.Module) -> list[str]:
    """Total learnable values, then per top-level module, and the buffers."""
    total = sum(p.numel() for p in model.parameters())
    lines = [f"parameters: {total:,}"]
    for name, child in model.named_children():
        count = sum(p.numel() for p in child.parameters())
        if count:
            lines.append(f"  {name}: {count:,}")
    buffers = sum(b.numel() for b in model.buffers())
    return [*lines, f"buffers: {buffers:,} values"]


def latent_shape(model: Any, config: Any, size: int) -> tuple[int, ...] | None:
    """[C, h, w] of one size x size image: `config.latent_channels` over the patch grid, else
    `encode` on meta. (The config is enough for every family, and a meta encode would import
    torch's compiler stack for the decompositions of its norms: seconds for one shape.)"""
    channels = getattr(config, "latent_channels", None)
    if isinstance(channels, int):
        patch = patch_multiple(config)
        return (channels, size // patch, size // patch)
    if callable(getattr(model, "encode", None)):
        try:
            latents = model.encode(torch.zeros(1, 3, size, size, device="meta"))
            return tuple(int(s) for s in latents.shape[1:])
        except (RuntimeError, ValueError, TypeError):
            pass  # an op without a meta kernel
    return None


def latent_shape_lines(model: Any, config: Any) -> list[str]:
    """Latent shape and compression per listed image size."""
    patch = patch_multiple(config)
    can_encode = callable(getattr(model, "encode", None))
    title = "latents per image (C x h x w)" + ("" if can_encode else ", decode input only")
    lines = [f"{title}, patch {patch}:"]
    for size in IMAGE_SIZES:
        size = -(-size // patch) * patch  # round up to a multiple of the patch
        shape = latent_shape(model, config, size)
        if shape is None:
            return [*lines, "  unknown (no encode and no latent_channels)"]
        ratio = 3 * size * size / (shape[0] * shape[1] * shape[2])
        lines.append(f"  {size}x{size}: {'x'.join(map(str, shape))} ({ratio:.1f}x fewer values)")
    return lines


def storage_lines(weights: Path) -> list[str]:
    """Tensors, values and bytes per dtype stored in a safetensors file (header only)."""
    header = read_header(weights)
    totals: dict[torch.dtype, list[int]] = defaultdict(lambda: [0, 0])
    for info in header.values():
        totals[info.dtype][0] += 1
        totals[info.dtype][1] += info.numel
    lines = [f"stored in {weights.name}:"]
    for dtype, (tensors, values) in sorted(totals.items(), key=lambda kv: str(kv[0])):
        megabytes = values * dtype.itemsize / 1e6
        name = str(dtype).removeprefix("torch.")
        lines.append(f"  {name}: {tensors} tensors, {values:,} values, {megabytes:.1f} MB")
    return lines


def describe_latent_file(path: Path, description: dict[str, Any]) -> str:
    """The report on a latents file written by `diffae encode`."""
    header = read_header(path)
    lines = [
        f"latents file: {path}",
        f"family: {description.get('family')}  model: {description.get('model')}",
        f"whitened: {description.get('whitened')}  patch: {description.get('patch')}",
    ]
    for item in description.get("items", []):
        info = header.get(item["tensor"])
        shape = "?" if info is None else "x".join(map(str, info.shape))
        lines.append(
            f"  {item['tensor']}: {shape} from {item.get('source')} "
            f"({item.get('source_width')}x{item.get('source_height')}, fit {item.get('fit')})"
        )
    return "\n".join(lines)


def describe_tensors(path: Path) -> str:
    """The report on a safetensors file that is neither a model's nor `diffae encode`'s."""
    header = read_header(path)
    lines = [
        f"safetensors file: {path}",
        "neither a model file (no config.json beside it) nor written by `diffae encode`; "
        f"{len(header)} tensors:",
    ]
    for name, info in header.items():
        dtype = str(info.dtype).removeprefix("torch.")
        lines.append(f"  {name}: {'x'.join(map(str, info.shape))} {dtype}")
    return "\n".join(lines)
