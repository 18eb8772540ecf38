"""Per-channel latent whitening with stored running statistics, float32 (spec §10)."""

from __future__ import annotations

import torch
from torch import Tensor


def _channel_stats(latents: Tensor, mean: Tensor, var: Tensor, eps: float) -> tuple[Tensor, Tensor]:
    view = (1, -1) + (1,) * (latents.ndim - 2)
    mean = mean.to(device=latents.device, dtype=torch.float32).view(view)
    std = torch.sqrt(var.to(device=latents.device, dtype=torch.float32) + eps).view(view)
    return mean, std


def whiten(latents: Tensor, running_mean: Tensor, running_var: Tensor, eps: float) -> Tensor:
    """(z - mean) / sqrt(var + eps) per channel of [N, C, ...]; float32 result."""
    mean, std = _channel_stats(latents, running_mean, running_var, eps)
    return (latents.float() - mean) / std


def dewhiten(latents: Tensor, running_mean: Tensor, running_var: Tensor, eps: float) -> Tensor:
    """z * sqrt(var + eps) + mean per channel of [N, C, ...]; float32 result."""
    mean, std = _channel_stats(latents, running_mean, running_var, eps)
    return latents.float() * std + mean
