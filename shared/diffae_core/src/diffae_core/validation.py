"""Checks at the public boundary: each error names the argument, what was expected, what came."""

from __future__ import annotations

import torch
from torch import Tensor


def check_tensor(name: str, value: object) -> Tensor:
    """`value` must be a floating-point torch.Tensor."""
    if not isinstance(value, Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(value).__name__}")
    if not value.is_floating_point():
        raise TypeError(f"{name}: expected a floating-point tensor, got dtype {value.dtype}")
    return value


def check_size(name: str, value: object, multiple: int) -> int:
    """A pixel size: a positive int divisible by `multiple`."""
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{name}: expected a positive int, got {value!r}")
    if value % multiple:
        raise ValueError(f"{name}: expected a multiple of {multiple}, got {value}")
    return value


def check_images(images: object, channels: int, multiple: int, name: str = "images") -> Tensor:
    """images: [N, channels, H, W] with H and W multiples of `multiple`."""
    images = check_tensor(name, images)
    if images.ndim != 4 or images.shape[1] != channels:
        raise ValueError(
            f"{name}: expected [N, {channels}, H, W] in [-1, 1], got {tuple(images.shape)}"
        )
    height, width = images.shape[-2:]
    if height % multiple or width % multiple:
        raise ValueError(
            f"{name}: expected H and W divisible by {multiple}, got H={height}, W={width}"
        )
    return images


def check_latents(
    latents: object, channels: int, height: int, width: int, patch: int, name: str = "latents"
) -> Tensor:
    """latents: [N, channels, height/patch, width/patch] for an image of height x width."""
    latents = check_tensor(name, latents)
    check_size("height", height, patch)
    check_size("width", width, patch)
    expected = (channels, height // patch, width // patch)
    if latents.ndim != 4 or tuple(latents.shape[1:]) != expected:
        raise ValueError(
            f"{name}: expected [N, {channels}, {expected[1]}, {expected[2]}] for a "
            f"{height}x{width} image (patch {patch}), got {tuple(latents.shape)}"
        )
    return latents


def check_device(device: object) -> torch.device:
    """A torch device from a string or torch.device, with a clear error otherwise."""
    try:
        return torch.device(device)  # type: ignore[arg-type]
    except (RuntimeError, TypeError) as error:
        raise ValueError(f"device: expected e.g. 'cpu' or 'cuda', got {device!r}") from error
