"""FCDMDiffAE: the SemDisDiffAE model (fcdm_diffae spec §4-§7)."""

from __future__ import annotations

from torch import Tensor

from diffae_core.autoencoder import WhitenedVPAutoencoder, build_fcdm_decoder
from diffae_core.fcdm_encoder import FCDMEncoder
from diffae_core.patchify import channels_to_space, space_to_channels
from diffae_core.posterior import EncoderPosterior

from .config import FCDMDiffAEConfig, FCDMDiffAEInferenceConfig

ENCODER_NORMALIZES_MEAN = True
"""Open point (fcdm_diffae spec §5.2/§12.1): the encoder's documentation says the posterior mean
goes through an affine-free channel RMSNorm (`norm_out`) while `bottleneck_norm_mode` reads
"disabled". We follow the documentation, the spec's recommendation; set False to make
`norm_out` an identity. Neither choice has state-dict keys."""


class FCDMDiffAE(WhitenedVPAutoencoder):
    """SemDisDiffAE: FCDM encoder -> VP posterior -> whitened latents -> FCDM diffusion decoder.

    Images are [N, 3, H, W] in [-1, 1] with H, W multiples of `config.effective_patch_size`;
    latents are [N, config.latent_channels, H/p, W/p], whitened by the stored running statistics.
    """

    config_class = FCDMDiffAEConfig
    inference_config_class = FCDMDiffAEInferenceConfig
    config: FCDMDiffAEConfig

    def __init__(self, config: FCDMDiffAEConfig) -> None:
        super().__init__(config)
        if config.bottleneck_norm_mode != "disabled":
            # No release uses it and its meaning is undocumented: refuse rather than guess.
            raise ValueError(
                f"bottleneck_norm_mode: only 'disabled' is supported (every release uses it), "
                f"got {config.bottleneck_norm_mode!r}"
            )
        self.encoder = FCDMEncoder(
            in_channels=config.in_channels,
            patch_size=config.patch_size,
            model_dim=config.model_dim,
            depth=config.encoder_depth,
            bottleneck_dim=config.bottleneck_dim,
            mlp_ratio=config.mlp_ratio,
            depthwise_kernel_size=config.depthwise_kernel_size,
            posterior_kind=config.bottleneck_posterior_kind,
            normalize_mean=ENCODER_NORMALIZES_MEAN,
        )
        self.decoder = build_fcdm_decoder(config)

    def _raw_posterior(self, images: Tensor) -> EncoderPosterior:
        posterior = self.encoder.posterior(images)
        if not self.config.patchifies_bottleneck:
            return posterior
        # p32 v1: [N, B, h, w] -> [N, 4B, h/2, w/2], whitening happens in this layout.
        return EncoderPosterior(
            mean=space_to_channels(posterior.mean), logsnr=space_to_channels(posterior.logsnr)
        )

    def _decoder_latents(self, latents: Tensor) -> Tensor:
        if not self.config.patchifies_bottleneck:
            return latents
        return channels_to_space(latents)  # [N, 4B, h, w] -> [N, B, 2h, 2w]
