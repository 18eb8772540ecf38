"""The bicubic baseline (`diffae.metrics.bicubic_baseline`), the yardstick of every quality
claim about the embedded model: pinned on a known image against a float64 evaluation.

At compression ratio r the small image keeps 1/r of the values, so each side is divided by
sqrt(r): 64 x 48 at r = 8 -> 23 x 17 (391 values for 3072 / 8 = 384).
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from diffae.metrics import bicubic_baseline, psnr_8bit

HEIGHT, WIDTH, RATIO = 64, 48, 8.0
SMALL = (23, 17)
"""round(64 / sqrt(8)), round(48 / sqrt(8))."""
FLOAT32 = {"rtol": 0.0, "atol": 1e-5}
"""float32 resampling vs float64 on values in [-1, 1]: a few float32 ulps of 16-tap sums."""


def known_image() -> torch.Tensor:
    """[3, 64, 48] in [-1, 1]: a sinusoid of period 16 px down and 12 px across per channel
    (resolvable at 23 x 17 pixels, not at 8 x 6), plus a diagonal ramp."""
    y = torch.arange(HEIGHT, dtype=torch.float64).view(-1, 1)
    x = torch.arange(WIDTH, dtype=torch.float64).view(1, -1)
    channels = [
        0.5 * torch.sin(2 * math.pi * (y / 16 + x / 12) + phase) + 0.3 * (x + y) / (HEIGHT + WIDTH)
        for phase in (0.0, 1.0, 2.0)
    ]
    return torch.stack(channels)


@pytest.mark.values
def test_bicubic_baseline_keeps_one_value_in_ratio():
    assert SMALL[0] * SMALL[1] == pytest.approx(HEIGHT * WIDTH / RATIO, rel=0.02)
    image = known_image()
    batch = image[None]
    down = F.interpolate(batch, size=SMALL, mode="bicubic", antialias=True, align_corners=False)
    expected = F.interpolate(down, size=(HEIGHT, WIDTH), mode="bicubic", align_corners=False)[0]
    baseline = bicubic_baseline(image.float(), RATIO)
    assert baseline.dtype == torch.float32 and baseline.shape == image.shape
    torch.testing.assert_close(baseline.double(), expected, **FLOAT32)
    # The periods (16, 12 px) survive sampling at 23 x 17 (32.6 dB) but not at 8 x 6 (15.1 dB).
    assert psnr_8bit(image.float(), baseline) > 25.0
