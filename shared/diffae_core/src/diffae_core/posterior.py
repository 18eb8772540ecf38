"""The VP-parameterised diagonal Gaussian posterior of the encoders (diffae_core spec §11)."""

from __future__ import annotations

from dataclasses import dataclass

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

    @property
    def alpha(self) -> Tensor:
        """sqrt(sigmoid(logsnr)), float32 [N, C, h, w]."""
        return alpha_sigma(self.logsnr)[0]

    @property
    def sigma(self) -> Tensor:
        """sqrt(sigmoid(-logsnr)), float32 [N, C, h, w]."""
        return alpha_sigma(self.logsnr)[1]

    def mode(self) -> Tensor:
        """alpha * mean computed in float32, returned in the mean's dtype."""
        return (self.alpha * self.mean.float()).to(self.mean.dtype)

    def sample(self, *, generator: torch.Generator | None = None) -> Tensor:
        """alpha * mean + sigma * eps with eps ~ N(0, 1) drawn like `mean`; in the mean's dtype."""
        eps = torch.randn(
            self.mean.shape, generator=generator, dtype=torch.float32, device=self.mean.device
        )
        alpha, sigma = alpha_sigma(self.logsnr)
        return (alpha * self.mean.float() + sigma * eps).to(self.mean.dtype)


def split_posterior(projection: Tensor) -> EncoderPosterior:
    """Encoder output [N, 2B, h, w] -> posterior with mean = channels [0, B), logsnr = [B, 2B)."""
    mean, logsnr = projection.chunk(2, dim=1)
    return EncoderPosterior(mean=mean, logsnr=logsnr)
