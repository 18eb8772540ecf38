"""The FCDM diffusion autoencoder: FCDM encoder + FCDM decoder + whitening (SemDisDiffAE layout).

fcdm_diffae and full_capacitor are configurations of this one model. Its config is an
`fcdm_config.FCDMConfig` (the shared fields, their checks, the latent layout, `whitening_eps`).
"""

from __future__ import annotations

from typing import Any, ClassVar

from torch import Tensor

from .autoencoder import WhitenedVPAutoencoder, build_fcdm_decoder
from .fcdm_encoder import FCDMEncoder
from .patchify import channels_to_space, space_to_channels
from .posterior import EncoderPosterior


class FCDMAutoencoder(WhitenedVPAutoencoder):
    """images [N, 3, H, W] in [-1, 1] <-> whitened latents [N, C, H/p, W/p].

    With `bottleneck_patchify_mode="patch_2x2"` the encoder's [N, B, H/P, W/P] posterior is
    2x2-patchified to [N, 4B, H/2P, W/2P] before whitening, and decode un-patchifies it.
    """

    encoder_normalizes_mean: ClassVar[bool] = True
    """Whether the encoder applies its affine-free RMSNorm to the posterior mean: an open point
    per family (no state-dict key tells), so each family sets it in one documented place."""

    def __init__(self, config: Any) -> None:
        super().__init__(config)
        if config.bottleneck_norm_mode != "disabled":
            # No release uses another mode and its meaning is undocumented: refuse, not guess.
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
            normalize_mean=self.encoder_normalizes_mean,
        )
        self.decoder = build_fcdm_decoder(config)

    def _raw_posterior(self, images: Tensor) -> EncoderPosterior:
        posterior = self.encoder.posterior(images)
        if not self.config.patchifies_bottleneck:
            return posterior
        # [N, B, h, w] -> [N, 4B, h/2, w/2]; whitening happens in this layout.
        return EncoderPosterior(
            mean=space_to_channels(posterior.mean), logsnr=space_to_channels(posterior.logsnr)
        )

    def _decoder_latents(self, latents: Tensor) -> Tensor:
        if not self.config.patchifies_bottleneck:
            return latents
        return channels_to_space(latents)  # [N, 4B, h, w] -> [N, B, 2h, 2w]
