"""Variance-preserving diffusion maths, all float32 (diffae_core spec §8)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

SCHEDULE_KINDS = ("linear", "cosine")


def alpha_sigma(logsnr: Tensor) -> tuple[Tensor, Tensor]:
    """VP coefficients alpha = sqrt(sigmoid(l)), sigma = sqrt(sigmoid(-l)), float32.

    Uses exp(logsigmoid / 2), the form the published code adopted for extreme log-SNR values.
    """
    logsnr = logsnr.float()
    return torch.exp(0.5 * F.logsigmoid(logsnr)), torch.exp(0.5 * F.logsigmoid(-logsnr))


def cosine_interpolated_logsnr(t: Tensor, logsnr_min: float, logsnr_max: float) -> Tensor:
    """SiD2 schedule lambda(t) = -2 ln tan(a t + b): lambda(0) = max, lambda(1) = min; float32."""
    b = math.atan(math.exp(-0.5 * logsnr_max))
    a = math.atan(math.exp(-0.5 * logsnr_min)) - b
    a_t = torch.tensor(a, dtype=torch.float32, device=t.device)
    b_t = torch.tensor(b, dtype=torch.float32, device=t.device)
    return -2.0 * torch.log(torch.tan(a_t * t.float() + b_t))


def get_schedule(kind: str, num_steps: int) -> Tensor:
    """Descending times [num_steps + 1] from t = 1 (noise) to t = 0, float32 on the CPU.

    `num_steps` is the number of decoder evaluations without PDG. Computed in the published
    order of operations (linspace; cosine divides before multiplying by pi) so the float32
    values match the reference bit for bit.
    """
    if isinstance(num_steps, bool) or not isinstance(num_steps, int) or num_steps < 1:
        raise ValueError(f"num_steps: expected an integer >= 1, got {num_steps!r}")
    points = num_steps + 1
    if kind == "linear":
        ascending = torch.linspace(0.0, 1.0, points, dtype=torch.float32)
    elif kind == "cosine":
        fraction = torch.arange(points, dtype=torch.float32) / (points - 1)
        ascending = 0.5 * (1.0 - torch.cos(math.pi * fraction))
    else:
        raise ValueError(f"schedule: expected one of {SCHEDULE_KINDS}, got {kind!r}")
    return ascending.flip(0)


def diffuse(x0: Tensor, noise: Tensor, logsnr: Tensor) -> Tensor:
    """The forward process x_t = alpha * x0 + sigma * noise (spec §8), float32.

    x0 and noise [N, ...]; logsnr [N] per sample. `noise` carries its std (`pixel_noise_std`).
    """
    alpha, sigma = alpha_sigma(logsnr)
    return broadcast_like(alpha, x0) * x0.float() + broadcast_like(sigma, x0) * noise.float()


def broadcast_like(coefficient: Tensor, x: Tensor) -> Tensor:
    """Per-sample coefficients [N] -> [N, 1, 1, ...] matching x's rank."""
    return coefficient.view(-1, *([1] * (x.ndim - 1)))
