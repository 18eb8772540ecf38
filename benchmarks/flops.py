"""FLOPs counted by `torch.utils.flop_counter.FlopCounterMode`; the fastest GEMM measured here.

The counter sees every aten matmul, convolution and attention call (2 FLOPs per multiply-add),
including `scaled_dot_product_attention`'s score and value products, which the former forward
hooks on Conv2d/Linear missed. Norms, activations and the sampler's elementwise maths are not
counted, so the FLOP rate remains a lower bound on the work done.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch.utils.benchmark import Timer
from torch.utils.flop_counter import FlopCounterMode


@dataclass
class FlopCount:
    """FLOPs counted inside `count_flops`, set when the block exits."""

    total: int = 0


@contextmanager
def count_flops() -> Iterator[FlopCount]:
    """Count the FLOPs of every matmul, convolution and attention run inside the block (eager)."""
    count = FlopCount()
    counter = FlopCounterMode(display=False)
    with counter:
        yield count
    count.total = int(counter.get_total_flops())


def gemm_peak_flops(device: torch.device, dtype: torch.dtype, size: int, repeats: int = 5) -> float:
    """FLOP/s of a [size, size] @ [size, size] product: the faster of `torch.matmul` and the
    same product as a 1x1 convolution, each the median of `repeats` after a warm-up.

    On a CPU the two run in different libraries (BLAS and oneDNN), and oneDNN's 1x1
    convolutions, which the models' pointwise layers use, measured up to 1.3x faster than the
    matmul on the 2-core EPYC: the matmul alone would understate the rate. Not a peak: compiled
    and eager models ran faster than it (up to 1.3x), so a share of it can exceed 100%.
    """
    generator = torch.Generator().manual_seed(0)
    left = torch.randn(size, size, generator=generator).to(device=device, dtype=dtype)
    right = torch.randn(size, size, generator=generator).to(device=device, dtype=dtype)
    products = {
        "torch.matmul(left, right)": {"left": left, "right": right},
        # [1, K, M, 1] images through a [N, K, 1, 1] kernel: M positions, K -> N channels.
        "conv2d(image, kernel)": {
            "image": right.T.reshape(1, size, size, 1),
            "kernel": left.reshape(size, size, 1, 1),
            "conv2d": torch.nn.functional.conv2d,
        },
    }
    best = 0.0
    for statement, names in products.items():
        timer = Timer(
            statement, globals={"torch": torch, **names}, num_threads=torch.get_num_threads()
        )
        with torch.inference_mode():
            timer.timeit(1)  # warm-up
            seconds = [timer.timeit(1).median for _ in range(repeats)]
        best = max(best, 2.0 * size**3 / statistics.median(seconds))
    return best
