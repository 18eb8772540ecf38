"""The VP-parameterised diagonal Gaussian posterior of the encoders (diffae_core spec §11)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from .vp import alpha_sigma


@dataclass(frozen=True)
class EncoderPosterior:
    """Raw (unwhitened) encoder output: `mean` and `logsnr`, each [N, C, h, w].

    The posterior is N(alpha * mean, sigma^2) with alpha = sqrt(sigmoid(logsnr)) and
    sigma = sqrt(sigmoid(-logsnr)); its moments are computed in float32.
    """

    mean: Tensor
    logsnr: Tensor

    float32_moments: ClassVar[bool] = False
    """Whether `mode`/`sample` return float32 (dinac_ae) or the mean's dtype (fcdm_diffae)."""

    def _out(self, value: Tensor) -> Tensor:
        return value if self.float32_moments else value.to(self.mean.dtype)

    @property
    def alpha(self) -> Tensor:
        """sqrt(sigmoid(logsnr)), float32 [N, C, h, w]."""
        return alpha_sigma(self.logsnr)[0]

    @property
    def sigma(self) -> Tensor:
        """sqrt(sigmoid(-logsnr)), float32 [N, C, h, w]."""
        return alpha_sigma(self.logsnr)[1]

    def mode(self) -> Tensor:
        """alpha * mean, computed in float32 (output dtype: see `float32_moments`)."""
        return self._out(self.alpha * self.mean.float())

    def sample(
        self, *, generator: torch.Generator | None = None, noise: Tensor | None = None
    ) -> Tensor:
        """alpha * mean + sigma * eps, eps ~ N(0, 1) drawn in float32 on the mean's device.

        `noise` (standard normal, the mean's shape) replaces the draw, e.g. so that training
        draws it per sample, independently of how a batch is split across processes.
        """
        if noise is None:
            eps = torch.randn(
                self.mean.shape, generator=generator, dtype=torch.float32, device=self.mean.device
            )
        elif tuple(noise.shape) != tuple(self.mean.shape):
            raise ValueError(
                f"noise: expected shape {tuple(self.mean.shape)}, got {tuple(noise.shape)}"
            )
        else:
            eps = noise.to(device=self.mean.device, dtype=torch.float32)
        alpha, sigma = alpha_sigma(self.logsnr)
        return self._out(alpha * self.mean.float() + sigma * eps)


DETERMINISTIC_LOGSNR = 1e4
"""The logsnr a deterministic encoder's posterior reports: alpha = 1 and sigma = 0 exactly."""


def split_posterior(
    projection: Tensor, posterior_class: type[EncoderPosterior] = EncoderPosterior
) -> EncoderPosterior:
    """Encoder output [N, 2B, h, w] -> posterior with mean = channels [0, B), logsnr = [B, 2B)."""
    mean, logsnr = projection.chunk(2, dim=1)
    return posterior_class(mean=mean, logsnr=logsnr)


def deterministic_posterior(
    latents: Tensor, posterior_class: type[EncoderPosterior] = EncoderPosterior
) -> EncoderPosterior:
    """A deterministic encoder's latents [N, B, h, w] as a posterior whose mode is the latents."""
    return posterior_class(
        mean=latents, logsnr=latents.new_full(latents.shape, DETERMINISTIC_LOGSNR)
    )
