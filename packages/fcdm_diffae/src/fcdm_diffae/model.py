"""FCDMDiffAE: the SemDisDiffAE model.

The architecture is diffae_core's `FCDMAutoencoder` (shared with full_capacitor); this module
names it, binds its configs, and fixes the one open architectural point.
"""

from __future__ import annotations

from diffae_core.fcdm import FCDMAutoencoder

from .config import FCDMDiffAEConfig, FCDMDiffAEInferenceConfig

ENCODER_NORMALIZES_MEAN = True
"""Open point: the encoder's documentation says the posterior mean
goes through an affine-free channel RMSNorm (`norm_out`) while `bottleneck_norm_mode` reads
"disabled". We follow the documentation, the spec's recommendation; set False to make
`norm_out` an identity. Neither choice has state-dict keys."""


class FCDMDiffAE(FCDMAutoencoder):
    """SemDisDiffAE: FCDM encoder -> VP posterior -> whitened latents -> FCDM diffusion decoder.

    Images are [N, 3, H, W] in [-1, 1] with H, W multiples of `config.effective_patch_size`;
    latents are [N, config.latent_channels, H/p, W/p], whitened by the stored running statistics
    (semdisdiffae_p32 v1: the 2x2-patchified bottleneck, whitened in that layout).
    `encode` returns the model's weight dtype, `decode` float32.
    """

    config_class = FCDMDiffAEConfig
    family_name = "fcdm_diffae"
    inference_config_class = FCDMDiffAEInferenceConfig
    encoder_normalizes_mean = ENCODER_NORMALIZES_MEAN
    config: FCDMDiffAEConfig
