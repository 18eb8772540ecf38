"""Floating-point operations of Conv2d and Linear layers counted from shapes; the GEMM peak.

A multiply-add counts 2 FLOPs. Only convolutions and linear layers are counted (the 1x1 and 7x7
convolutions and linears that do nearly all of an FCDM decoder's work); norms, activations,
attention's score matmuls and the sampler's elementwise maths are not, so the FLOP rate is a
lower bound on the work done.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from .timing import synchronize, time_call


def layer_flops(module: nn.Module, inputs: tuple[Tensor, ...], output: Tensor) -> int:
    """FLOPs of one Conv2d or Linear call: 2 x output elements x inputs feeding each one."""
    if isinstance(module, nn.Conv2d):
        kernel_height, kernel_width = module.kernel_size
        fan_in = module.in_channels // module.groups * kernel_height * kernel_width
        return 2 * output.numel() * fan_in
    if isinstance(module, nn.Linear):
        return 2 * output.numel() * module.in_features
    return 0


@dataclass
class FlopCount:
    """FLOPs seen by the hooks of `count_flops` so far."""

    total: int = 0


@contextmanager
def count_flops(model: nn.Module) -> Iterator[FlopCount]:
    """Count the Conv2d/Linear FLOPs of every forward call of `model` inside the block."""
    count = FlopCount()

    def hook(module: nn.Module, inputs: tuple[Tensor, ...], output: Tensor) -> None:
        count.total += layer_flops(module, inputs, output)

    handles = [
        layer.register_forward_hook(hook)
        for layer in model.modules()
        if isinstance(layer, (nn.Conv2d, nn.Linear))
    ]
    try:
        yield count
    finally:
        for handle in handles:
            handle.remove()


def gemm_peak_flops(device: torch.device, dtype: torch.dtype, size: int, repeats: int = 5) -> float:
    """FLOP/s of a [size, size] @ [size, size] matmul: the median of `repeats` after a warm-up."""
    generator = torch.Generator().manual_seed(0)
    left = torch.randn(size, size, generator=generator).to(device=device, dtype=dtype)
    right = torch.randn(size, size, generator=generator).to(device=device, dtype=dtype)
    torch.matmul(left, right)
    synchronize(device)
    seconds = [time_call(lambda: torch.matmul(left, right), device) for _ in range(repeats)]
    return 2.0 * size**3 / statistics.median(seconds)
