"""DINAC-AE's encoder posterior: the core one, with float32 mode and sample (spec §5.4)."""

from __future__ import annotations

from typing import ClassVar

from diffae_core import posterior as core


class EncoderPosterior(core.EncoderPosterior):
    """Raw (unwhitened) `mean` and `logsnr` [N, C, h, w] in the model's compute dtype.

    Unlike fcdm_diffae's, `mode()` and `sample()` stay float32: the DINAC-AE reference does not
    cast them back to the mean's dtype (its `encode` rounds the mode itself before whitening).
    """

    float32_moments: ClassVar[bool] = True
