"""The benchmarks' SSIM and FLOP counting (benchmarks/metrics.py, flops.py)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # the benchmarks are scripts beside the packages, not installed
    sys.path.insert(0, str(ROOT))

from benchmarks.flops import count_flops  # noqa: E402
from benchmarks.metrics import gaussian_window, ssim_8bit  # noqa: E402

SSIM_OF_NOISY_IMAGE = 0.9456559287803712
"""scikit-image 0.26 `structural_similarity(gaussian_weights=True, sigma=1.5,
use_sample_covariance=False, data_range=255, channel_axis=2)` on `_noisy_pair()`, 8-bit."""
FLOAT64_ROUNDING = 1e-12


def _noisy_pair() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    original = torch.rand(3, 40, 52, generator=generator) * 2 - 1
    noisy = (original + 0.2 * torch.randn(3, 40, 52, generator=generator)).clamp(-1, 1)
    return original, noisy


def test_ssim_equals_scikit_image() -> None:
    assert ssim_8bit(*_noisy_pair()) == pytest.approx(SSIM_OF_NOISY_IMAGE, abs=FLOAT64_ROUNDING)


def test_ssim_of_an_image_with_itself_is_one_and_is_symmetric() -> None:
    original, noisy = _noisy_pair()
    assert ssim_8bit(original, original) == pytest.approx(1.0, abs=FLOAT64_ROUNDING)
    assert ssim_8bit(original, noisy) == pytest.approx(ssim_8bit(noisy, original))


def test_ssim_rejects_mismatched_or_small_images() -> None:
    with pytest.raises(ValueError, match="original, reconstruction"):
        ssim_8bit(torch.zeros(3, 16, 16), torch.zeros(3, 16, 17))
    with pytest.raises(ValueError, match="SSIM window"):
        ssim_8bit(torch.zeros(3, 8, 16), torch.zeros(3, 8, 16))


def test_gaussian_window_is_normalised_and_symmetric() -> None:
    window = gaussian_window()
    assert window.dtype == torch.float64 and window.shape == (11,)
    assert float(window.sum()) == pytest.approx(1.0)
    # Mirrored taps: the same exp inputs, but a vector kernel may treat the tail as scalars.
    torch.testing.assert_close(window, window.flip(0))


def test_flops_of_convolutions_and_linears() -> None:
    model = nn.Sequential(
        nn.Conv2d(4, 8, 7, padding=3, groups=4),  # depthwise-style: 2 inputs per group
        nn.Conv2d(8, 6, 1),
        nn.Flatten(),
        nn.Linear(6 * 5 * 5, 3),
    )
    with torch.inference_mode(), count_flops() as flops:
        model(torch.zeros(2, 4, 5, 5))
    expected = 2 * (2 * 8 * 25) * (1 * 49) + 2 * (2 * 6 * 25) * 8 + 2 * (2 * 3) * 150
    assert flops.total == expected
    model(torch.zeros(2, 4, 5, 5))
    assert flops.total == expected  # nothing counted after the block


def test_flops_include_attention() -> None:
    queries = torch.zeros(2, 3, 16, 8)  # [N, heads, L, D]
    with torch.inference_mode(), count_flops() as flops:
        nn.functional.scaled_dot_product_attention(queries, queries, queries)
    assert flops.total == 2 * 2 * (2 * 3 * 16 * 16 * 8)  # two products, 2 FLOPs per MAC
