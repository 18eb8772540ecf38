"""Seeded Gaussian noise that does not depend on the device the model runs on (spec §8.2), and
host-drawn tensors moved to the device without a host sync.

On CUDA a copy from ordinary (pageable) host memory makes the host wait for the stream; a copy
from pinned memory with `non_blocking=True` is queued like a kernel. So whatever the decode
loop draws on the CPU (seeded noise, the schedule, m_diffae's PDG token masks) is pinned first,
on CUDA only: pinning costs a page-locked allocation and buys nothing on a CPU.
"""

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
    """N(0, noise_std^2) noise of `shape` on `device`, drawn in float32.

    With an integer `seed` the draw comes from a fresh CPU generator, so the same seed gives the
    same image on every device; on CUDA it is drawn into pinned memory and copied without
    blocking. With `seed=None` it is drawn on `device` itself from its global RNG (no copy, and
    no promise that two devices agree).
    """
    device = torch.device("cpu" if device is None else device)
    if seed is None:
        noise = torch.randn(shape, dtype=torch.float32, device=device).mul_(noise_std)
        return noise.to(dtype)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"seed: expected an int or None, got {type(seed).__name__}")
    generator = torch.Generator(device="cpu").manual_seed(seed)
    pinned = device.type == "cuda" and torch.cuda.is_available()
    noise = torch.randn(shape, dtype=torch.float32, generator=generator, pin_memory=pinned)
    return noise.mul_(noise_std).to(device=device, dtype=dtype, non_blocking=pinned)


def host_to_device(tensor: Tensor, device: torch.device | str) -> Tensor:
    """A CPU `tensor` on `device`, queued without a host sync on CUDA (pinned, non-blocking).

    Elsewhere (CPU, meta, a tensor already off the CPU, or inside a torch.compile graph, where
    the copy is part of the graph) it is a plain `.to(device)`.
    """
    device = torch.device(device)
    if device.type != "cuda" or tensor.device.type != "cpu" or torch.compiler.is_compiling():
        return tensor.to(device)
    return tensor.pin_memory().to(device, non_blocking=True)
