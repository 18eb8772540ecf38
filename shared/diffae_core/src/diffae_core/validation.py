"""Checks at the public boundary: each error names the argument, what was expected, what came.

Shapes and dtypes are always checked. Values (no NaN or inf; images not far outside [-1, 1])
cost one `torch.aminmax` pass over the tensor and one device sync per call: skipped while
torch.compile traces, on `meta` tensors, and while `value_checks(False)` is in force (hot loops
that have validated their data once).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator

import torch
from torch import Tensor

IMAGE_VALUE_LIMIT = 3.0
"""Images must lie within [-IMAGE_VALUE_LIMIT, IMAGE_VALUE_LIMIT]. Inputs are [-1, 1]; the margin
admits unclamped reconstructions (which overshoot a little) yet refuses [0, 255] pixels."""

_value_checks_enabled = True


def set_value_checks(enabled: bool) -> None:
    """Turn the value checks of images and latents on or off for this process (default on)."""
    global _value_checks_enabled
    if not isinstance(enabled, bool):
        raise TypeError(f"enabled: expected True or False, got {enabled!r}")
    _value_checks_enabled = enabled


@contextlib.contextmanager
def value_checks(enabled: bool) -> Iterator[None]:
    """Within the block, value checks are on or off (`with value_checks(False): ...`)."""
    previous = _value_checks_enabled
    set_value_checks(enabled)
    try:
        yield
    finally:
        set_value_checks(previous)


def _checking_values(tensor: Tensor) -> bool:
    """Whether to look at values: enabled, a real tensor, not inside a torch.compile trace."""
    if not _value_checks_enabled or tensor.is_meta or tensor.numel() == 0:
        return False
    return not torch.compiler.is_compiling()


def check_values(name: str, tensor: Tensor, limit: float | None = None) -> None:
    """Raise ValueError naming `name` if `tensor` holds NaN or inf, or values beyond +-limit."""
    if not _checking_values(tensor):
        return
    # One read-back of the (min, max) pair: one host sync on CUDA. NaN propagates to both.
    low, high = torch.stack(torch.aminmax(tensor.detach())).tolist()
    if not (math.isfinite(low) and math.isfinite(high)):
        raise ValueError(f"{name}: expected finite values, got NaN or inf (min {low}, max {high})")
    if limit is not None and (low < -limit or high > limit):
        hint = " (this looks like [0, 255] pixels: use x / 127.5 - 1)" if high > 2 else ""
        raise ValueError(
            f"{name}: expected values in [-1, 1], got min {low:.4g}, max {high:.4g}{hint}"
        )


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
    check_values(name, images, IMAGE_VALUE_LIMIT)
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
    check_values(name, latents)
    return latents


def check_device(device: object) -> torch.device:
    """A torch device from a string or torch.device, with a clear error otherwise."""
    try:
        checked = torch.device(device)  # type: ignore[arg-type]
    except (RuntimeError, TypeError) as error:
        raise ValueError(f"device: expected e.g. 'cpu' or 'cuda', got {device!r}") from error
    # torch reads cpu:0 as the CPU; safetensors and some kernels take only the plain name.
    return torch.device("cpu") if checked.type == "cpu" else checked
