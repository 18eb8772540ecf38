"""Normalisations of the FCDM family: channel-wise RMSNorm and GRN (diffae_core spec §1-2)."""

from __future__ import annotations

import torch
from torch import Tensor, nn


def channel_rms_norm(x: Tensor, eps: float = 1e-6, *, inplace: bool = False) -> Tensor:
    """Divide each pixel's channel vector [N, C, ...] by its RMS; statistics in float32.

    The mean of squares is accumulated in float32 but the final multiply runs in x's dtype: the
    published models switched to this form "to match training code" (2026-04-10). For float32
    inputs one fused `vector_norm` pass replaces `square().mean()`, which writes a full-size
    temporary; other dtypes keep the spec's square in x's dtype, bitwise. `inplace` writes the
    result over x (same values).
    """
    if x.dtype == torch.float32:
        norm = torch.linalg.vector_norm(x, dim=1, keepdim=True)
        mean_square = norm.square() / x.shape[1]
    else:
        mean_square = x.square().mean(dim=1, keepdim=True, dtype=torch.float32)
    inv_rms = torch.rsqrt(mean_square + eps).to(x.dtype)
    return x.mul_(inv_rms) if inplace else x * inv_rms


class ChannelWiseRMSNorm(nn.Module):
    """RMSNorm over dim 1 of [N, C, ...] tensors, with an optional per-channel affine."""

    def __init__(self, channels: int, eps: float = 1e-6, affine: bool = True) -> None:
        super().__init__()
        self.channels = channels
        self.eps = eps
        if affine:
            self.weight = nn.Parameter(torch.ones(channels))
            self.bias = nn.Parameter(torch.zeros(channels))
        else:
            self.register_parameter("weight", None)
            self.register_parameter("bias", None)

    def forward(self, x: Tensor) -> Tensor:
        if x.ndim < 2:
            return x
        y = channel_rms_norm(x, self.eps)
        if self.weight is not None:
            view = (1, self.channels) + (1,) * (x.ndim - 2)
            y = y * self.weight.view(view).to(x.dtype) + self.bias.view(view).to(x.dtype)
        return y


def grn_scale(spatial_l2: Tensor, gamma: Tensor, eps: float, dtype: torch.dtype) -> Tensor:
    """1 + gamma * n [N, C, 1, 1] in `dtype`, n = spatial L2 norm / its channel mean (float32).

    `spatial_l2` [N, C, 1, 1] is the L2 norm over all h x w positions; taking it as an input
    lets a tiled caller accumulate it over row chunks first (see `diffae_core.tiling`).
    """
    spatial_l2 = spatial_l2.float()
    relative = (spatial_l2 / (spatial_l2.mean(dim=1, keepdim=True) + eps)).to(dtype)
    return 1 + gamma.to(dtype) * relative


def global_response_norm(
    x: Tensor, gamma: Tensor, beta: Tensor, eps: float = 1e-6, *, inplace: bool = False
) -> Tensor:
    """ConvNeXt-V2 GRN on [N, C, h, w]: gamma * (x * n) + beta + x, channel mean in float32.

    Evaluated as x * (1 + gamma * n) + beta in one `addcmul` pass over x (the spec's form
    writes three full-size temporaries); equal up to rounding. `inplace` writes over x.
    """
    spatial_l2 = torch.linalg.vector_norm(x, dim=(2, 3), keepdim=True)  # in x's dtype (spec §2)
    factor = grn_scale(spatial_l2, gamma, eps, x.dtype)
    return torch.addcmul(beta.to(x.dtype), x, factor, out=x if inplace else None)


class GRN(nn.Module):
    """Global response normalisation with zero-initialised gamma/beta [1, C, 1, 1] (identity)."""

    def __init__(self, channels: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps
        self.gamma = nn.Parameter(torch.zeros(1, channels, 1, 1))
        self.beta = nn.Parameter(torch.zeros(1, channels, 1, 1))

    def forward(self, x: Tensor) -> Tensor:
        return global_response_norm(x, self.gamma, self.beta, self.eps)
