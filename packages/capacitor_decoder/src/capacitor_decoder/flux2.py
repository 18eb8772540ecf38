"""The FLUX.2 latent convention: 2x2 patchify and BatchNorm whitening, float32.

FLUX.2's VAE encodes images [N, 3, H, W] to latents [N, 32, H/8, W/8]; its pipelines patchify
them 2x2 to [N, 128, H/16, W/16] (channel c*4 + 2*i + j for row i, column j of the cell) and
whiten each channel with the VAE's `bn` running statistics: (z - mean) / sqrt(var + eps).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from diffae_core.diffusion import dewhiten, whiten
from diffae_core.layers import channels_to_space, space_to_channels

FLUX2_BATCH_NORM_EPS = 1e-4


def flux2_patchify(latents: Tensor) -> Tensor:
    """FLUX.2 VAE latents [N, 32, h, w] (h, w even) -> [N, 128, h/2, w/2], float32."""
    if latents.ndim != 4 or latents.shape[-2] % 2 or latents.shape[-1] % 2:
        raise ValueError(
            f"latents: expected [N, C, h, w] with even h and w, got {tuple(latents.shape)}"
        )
    # Pixel-unshuffle order is FLUX.2's: channel c*4 + 2*i + j. A permutation, so exact.
    return space_to_channels(latents.float())


def flux2_unpatchify(latents: Tensor) -> Tensor:
    """Inverse of `flux2_patchify`: [N, 128, h, w] -> [N, 32, 2h, 2w], float32."""
    if latents.ndim != 4 or latents.shape[1] % 4:
        raise ValueError(
            f"latents: expected [N, 4*C, h, w] (C = 32 for FLUX.2), got {tuple(latents.shape)}"
        )
    return channels_to_space(latents.float())


def flux2_whiten(
    latents: Tensor, running_mean: Tensor, running_var: Tensor, eps: float = FLUX2_BATCH_NORM_EPS
) -> Tensor:
    """Patchified latents [N, 128, h, w] -> (z - mean) / sqrt(var + eps) per channel, float32."""
    return whiten(latents, running_mean, running_var, eps)


def flux2_dewhiten(
    latents: Tensor, running_mean: Tensor, running_var: Tensor, eps: float = FLUX2_BATCH_NORM_EPS
) -> Tensor:
    """Whitened latents [N, 128, h, w] -> z * sqrt(var + eps) + mean per channel, float32."""
    return dewhiten(latents, running_mean, running_var, eps)


@dataclass(frozen=True)
class Flux2Statistics:
    """FLUX.2's latent BatchNorm statistics: running mean and var [128] float32, and eps."""

    running_mean: Tensor
    running_var: Tensor
    eps: float

    @classmethod
    def from_vae(cls, vae: Any) -> Flux2Statistics:
        """Read them from a diffusers `AutoencoderKLFlux2` (`bn` buffers, `batch_norm_eps`)."""
        return cls(
            running_mean=vae.bn.running_mean.detach().to("cpu", torch.float32),
            running_var=vae.bn.running_var.detach().to("cpu", torch.float32),
            eps=float(vae.config.batch_norm_eps),
        )

    def differences(self, other: Flux2Statistics) -> list[str]:
        """How `other` differs from these statistics (exact comparison); empty when equal."""
        problems = []
        for name in ("running_mean", "running_var"):
            ours, theirs = getattr(self, name).cpu(), getattr(other, name).cpu()
            if ours.shape != theirs.shape:
                problems.append(f"{name}: shapes {tuple(ours.shape)} vs {tuple(theirs.shape)}")
            elif not torch.equal(ours.float(), theirs.float()):
                difference = (ours.double() - theirs.double()).abs()
                problems.append(
                    f"{name}: {int((difference > 0).sum())} of {ours.numel()} values differ, "
                    f"max |diff| {difference.max().item():.3e} at {int(difference.argmax())}"
                )
        if self.eps != other.eps:
            problems.append(f"eps: {self.eps} vs {other.eps}")
        return problems
