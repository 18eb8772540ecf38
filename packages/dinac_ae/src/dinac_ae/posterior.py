"""DINAC-AE's encoder posterior: the core one, with float32 mode and sample (spec §5.4)."""

from __future__ import annotations

import torch
from torch import Tensor

from diffae_core import posterior as core


class EncoderPosterior(core.EncoderPosterior):
    """Raw (unwhitened) `mean` and `logsnr` [N, C, h, w] in the model's compute dtype.

    Unlike fcdm_diffae's, `mode()` and `sample()` stay float32: the DINAC-AE reference does not
    cast them back to the mean's dtype (its `encode` rounds the mode itself before whitening).
    """

    def mode(self) -> Tensor:
        """alpha * mean, float32 [N, C, h, w]."""
        return self.alpha * self.mean.float()

    def sample(self, *, generator: torch.Generator | None = None) -> Tensor:
        """alpha * mean + sigma * eps, eps ~ N(0, 1) float32 on the mean's device; float32."""
        eps = torch.randn(
            self.mean.shape, generator=generator, dtype=torch.float32, device=self.mean.device
        )
        return self.alpha * self.mean.float() + self.sigma * eps
