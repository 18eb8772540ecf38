"""Pixel <-> patch-grid conversions (diffae_core spec §6)."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn


class Patchify(nn.Module):
    """images [N, in_ch, H, W] -> features [N, C, H/P, W/P] through one stride-P convolution."""

    def __init__(self, in_channels: int, channels: int, patch_size: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_channels, channels, patch_size, stride=patch_size)

    def forward(self, images: Tensor) -> Tensor:
        return self.proj(images)


def space_to_channels(x: Tensor, factor: int = 2) -> Tensor:
    """[N, C, h, w] -> [N, C*f*f, h/f, w/f]; channel c*f*f + dy*f + dx (pixel-unshuffle order).

    This is the FLUX.2 latent patchify and the semdisdiffae_p32 (v1) bottleneck patchify; it is a
    pure permutation, so it is exact in every dtype.
    """
    return F.pixel_unshuffle(x, factor)


def channels_to_space(x: Tensor, factor: int = 2) -> Tensor:
    """Inverse of `space_to_channels`: [N, C*f*f, h, w] -> [N, C, h*f, w*f]."""
    return F.pixel_shuffle(x, factor)
