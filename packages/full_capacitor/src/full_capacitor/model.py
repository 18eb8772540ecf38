"""FullCapacitor: an FCDM autoencoder distilled from the FLUX.2 latent space."""

from __future__ import annotations

from diffae_core.fcdm import FCDMAutoencoder

from .config import FullCapacitorConfig, FullCapacitorInferenceConfig

ENCODER_NORMALIZES_MEAN = False
"""Open point: whether the posterior mean passes an affine-free channel RMSNorm.
The spec assumes the identity (`bottleneck_norm_mode="disabled"`, as dinac_ae); no state-dict
key tells. `normalized_mean_is_possible` is the spec's check (c) on a loaded checkpoint."""

ENCODE_RETURNS_FLOAT32 = True
"""Open point: `encode` returns `whiten`'s float32 result (the spec's default, as
dinac_ae) rather than casting back to the compute dtype (as fcdm_diffae)."""


class FullCapacitor(FCDMAutoencoder):
    """Images [N, 3, H, W] in [-1, 1] <-> its own whitened latents [N, C, H/p, W/p].

    8-block FCDM encoder + the (frozen) capacitor decoder. C and p come from the config:
    128 and 16, or 512 and 32 with `bottleneck_patchify_mode="patch_2x2"`. The latent space is
    self-consistent but not FLUX.2's BN normalisation (different statistics).
    """

    config_class = FullCapacitorConfig
    family_name = "full_capacitor"
    inference_config_class = FullCapacitorInferenceConfig
    encoder_normalizes_mean = ENCODER_NORMALIZES_MEAN
    encode_returns_float32 = ENCODE_RETURNS_FLOAT32
    config: FullCapacitorConfig


def normalized_mean_is_possible(model: FullCapacitor, tolerance: float = 1e-3) -> bool:
    """A check the stored statistics allow: with an RMS-normalised mean, sum_c(var_c + mean_c^2) <=
    C.

    Each latent position then has mean square <= 1 per channel (alpha <= 1), so the stored
    running statistics must satisfy the bound; False rules the RMSNorm out.
    """
    mean = model.latent_norm_running_mean.double()
    second_moment = (model.latent_norm_running_var.double() + mean**2).sum().item()
    return second_moment <= mean.numel() * (1.0 + tolerance)
