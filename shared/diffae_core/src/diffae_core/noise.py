"""Seeded Gaussian noise that does not depend on the device the model runs on (spec §8.2)."""

from __future__ import annotations

import torch
from torch import Tensor


def sample_noise(
    shape: tuple[int, ...],
    noise_std: float,
    seed: int | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """N(0, noise_std^2) noise of `shape`, drawn in float32.

    With an integer `seed` the draw comes from a fresh CPU generator, so the same seed gives the
    same image on every device; with `seed=None` from the global RNG of `device` (CPU by default).
    """
    if seed is None:
        noise = torch.randn(shape, dtype=torch.float32, device=device)
    else:
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise TypeError(f"seed: expected an int or None, got {type(seed).__name__}")
        generator = torch.Generator(device="cpu").manual_seed(seed)
        noise = torch.randn(shape, dtype=torch.float32, generator=generator)
    return (noise * noise_std).to(device=device, dtype=dtype)
