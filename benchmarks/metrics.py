"""SSIM on 8-bit images (Wang et al. 2004, "Image quality assessment: from error visibility to
structural similarity"), float64; PSNR is the command line's (`diffae.metrics`).

Both images are quantised to 8 bits first, as for the cards' PSNR. Each channel is filtered with
an 11x11 Gaussian window (sigma 1.5) over the "valid" region only (no padding), the local
statistics use the window weights as they are (no sample-covariance correction), and the SSIM
map is averaged over the pixels and the three channels. This equals scikit-image's
`structural_similarity(..., gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
data_range=255)`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from diffae.metrics import PIXEL_MAX, quantize_8bit

SSIM_WINDOW_SIZE = 11
SSIM_SIGMA = 1.5
SSIM_K1 = 0.01
SSIM_K2 = 0.03
"""The constants of Wang et al.: C1 = (K1 L)^2, C2 = (K2 L)^2 with L = 255."""


def gaussian_window(size: int = SSIM_WINDOW_SIZE, sigma: float = SSIM_SIGMA) -> Tensor:
    """A normalised 1-D Gaussian [size], float64, centred on the middle tap."""
    offsets = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    weights = torch.exp(-(offsets**2) / (2 * sigma**2))
    return weights / weights.sum()


def _local_mean(images: Tensor, window: Tensor) -> Tensor:
    """Separable Gaussian mean of [C, H, W] over valid positions -> [C, H-10, W-10]."""
    channels = images.shape[0]
    rows = window.view(1, 1, -1, 1).expand(channels, 1, -1, 1)
    columns = window.view(1, 1, 1, -1).expand(channels, 1, 1, -1)
    filtered = F.conv2d(images.unsqueeze(0), rows, groups=channels)
    return F.conv2d(filtered, columns, groups=channels).squeeze(0)


def ssim_8bit(original: Tensor, reconstruction: Tensor) -> float:
    """Mean SSIM of two [3, H, W] images in [-1, 1] after 8-bit quantisation, in [-1, 1].

    H and W must be at least 11 (the window).
    """
    if original.shape != reconstruction.shape or original.ndim != 3:
        raise ValueError(
            f"original, reconstruction: expected two [3, H, W] images of one size, got "
            f"{tuple(original.shape)} and {tuple(reconstruction.shape)}"
        )
    if min(original.shape[-2:]) < SSIM_WINDOW_SIZE:
        raise ValueError(
            f"original: expected H, W >= {SSIM_WINDOW_SIZE} (the SSIM window), got "
            f"{tuple(original.shape)}"
        )
    x = quantize_8bit(original).double().cpu()
    y = quantize_8bit(reconstruction).double().cpu()
    window = gaussian_window()
    mean_x, mean_y = _local_mean(x, window), _local_mean(y, window)
    var_x = _local_mean(x * x, window) - mean_x**2
    var_y = _local_mean(y * y, window) - mean_y**2
    covariance = _local_mean(x * y, window) - mean_x * mean_y
    c1, c2 = (SSIM_K1 * PIXEL_MAX) ** 2, (SSIM_K2 * PIXEL_MAX) ** 2
    numerator = (2 * mean_x * mean_y + c1) * (2 * covariance + c2)
    denominator = (mean_x**2 + mean_y**2 + c1) * (var_x + var_y + c2)
    return float((numerator / denominator).mean())
