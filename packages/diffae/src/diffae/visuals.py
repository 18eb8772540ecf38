"""The comparison grid: original | reconstruction | error map | latent PCA, as one uint8 image."""

from __future__ import annotations

import torch
from torch import Tensor

from .metrics import quantize_8bit

ERROR_GAIN = 8.0
"""The error map shows 8x the mean absolute 8-bit error: white from 32 levels (1/8 of 255)."""
PCA_RANGE = (0.01, 0.99)
"""Each principal component is stretched between these quantiles, so outliers do not grey it out."""
GAP = 4
"""White pixels between the panels."""


def hot_colormap(values: Tensor) -> Tensor:
    """[H, W] in [0, 1] -> [3, H, W] uint8: black -> red -> yellow -> white."""
    ramp = values.clamp(0.0, 1.0) * 3.0
    rgb = torch.stack([ramp, ramp - 1.0, ramp - 2.0]).clamp(0.0, 1.0)
    return (rgb * 255.0).round().to(torch.uint8)


def error_map(original: Tensor, reconstruction: Tensor) -> Tensor:
    """Two [3, H, W] images in [-1, 1] -> [3, H, W] uint8 heat map of their 8-bit difference."""
    difference = quantize_8bit(original).float() - quantize_8bit(reconstruction).float()
    return hot_colormap(difference.abs().mean(0) / 255.0 * ERROR_GAIN)


def latent_pca(latents: Tensor, height: int, width: int) -> Tensor:
    """Latents [C, h, w] -> [3, height, width] uint8: first three principal components as RGB.

    The components are taken over the h*w latent cells and upsampled by nearest neighbour.
    """
    channels, grid_height, grid_width = latents.shape
    cells = latents.detach().float().cpu().reshape(channels, -1).T  # [C, h, w] -> [h*w, C]
    cells = cells - cells.mean(dim=0)
    components = torch.zeros(cells.shape[0], 3)
    if cells.shape[0] > 1:
        _, _, directions = torch.linalg.svd(cells, full_matrices=False)  # rows: components
        projected = cells @ directions[:3].T  # [h*w, k], k = min(3, C, h*w)
        components[:, : projected.shape[1]] = projected
    low = torch.quantile(components, PCA_RANGE[0], dim=0)
    high = torch.quantile(components, PCA_RANGE[1], dim=0)
    scaled = ((components - low) / (high - low).clamp_min(1e-12)).clamp(0.0, 1.0)
    rgb = scaled.T.reshape(3, grid_height, grid_width)  # [h*w, 3] -> [3, h, w]
    upsampled = torch.nn.functional.interpolate(rgb[None], size=(height, width), mode="nearest")
    return (upsampled[0] * 255.0).round().to(torch.uint8)


def comparison_grid(original: Tensor, reconstruction: Tensor, pca: Tensor) -> Tensor:
    """[3, H, W] original and reconstruction in [-1, 1], PCA uint8 -> [3, H, 4W + 3 GAP] uint8."""
    panels = [
        quantize_8bit(original),
        quantize_8bit(reconstruction),
        error_map(original, reconstruction),
        pca,
    ]
    gap = torch.full((3, original.shape[-2], GAP), 255, dtype=torch.uint8)
    pieces = [panels[0]]
    for panel in panels[1:]:
        pieces += [gap, panel]
    return torch.cat(pieces, dim=-1)
