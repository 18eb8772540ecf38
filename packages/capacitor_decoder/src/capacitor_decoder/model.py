"""CapacitorDecoder: the FCDM diffusion decoder for FLUX.2 latents."""

from __future__ import annotations

import torch
from torch import Tensor

from diffae_core.autoencoder import DiffusionAutoencoder
from diffae_core.config import InferenceConfigBase
from diffae_core.fcdm import build_fcdm_decoder
from diffae_core.loading import KeyAliases
from diffae_core.runtime import check_size, check_tensor, check_values

from .config import (
    FLUX2_LATENT_CHANNELS,
    FLUX2_PATCHIFIED_CHANNELS,
    CapacitorDecoderConfig,
    CapacitorDecoderInferenceConfig,
)
from .flux2 import Flux2Statistics

DECODER_ATTRIBUTES = (
    "patchify",
    "latent_up",
    "fuse_in",
    "time_embed",
    "adaln_base",
    "adaln_deltas",
    "start_blocks",
    "middle_blocks",
    "fuse_skip",
    "end_blocks",
    "path_drop_mask_feature",
    "out_proj",
)
"""Top-level names of the FCDM decoder's state dict."""

CHECKPOINT_KEY_ALIASES: KeyAliases = {
    # U1: other names the FLUX.2 statistics may be published under; an embedded
    # nn.BatchNorm2d would also carry an unused int64 counter.
    "flux2_bn.running_mean": "latent_norm_running_mean",
    "flux2_bn.running_var": "latent_norm_running_var",
    "flux2_bn.num_batches_tracked": None,
    "flux2_running_mean": "latent_norm_running_mean",
    "flux2_running_var": "latent_norm_running_var",
    # U2: decoder keys published without the `decoder.` prefix.
    **{name: f"decoder.{name}" for name in DECODER_ATTRIBUTES},
}
"""Open points U1/U2 of the spec: we save `latent_norm_running_{mean,var}` and `decoder.*` (the
spec's defaults, the author's exporter names) and accept these other spellings when loading."""


class CapacitorDecoder(DiffusionAutoencoder):
    """FLUX.2 latents [N, 128, H/16, W/16] -> images [N, 3, H, W] through a 1-step VP decoder.

    Holds the FCDM decoder and a float32 copy of FLUX.2's latent BatchNorm statistics
    (`latent_norm_running_mean/var` [128]) with which it un-whitens its input.
    """

    config_class = CapacitorDecoderConfig
    family_name = "capacitor_decoder"
    inference_config_class = CapacitorDecoderInferenceConfig
    checkpoint_key_aliases = CHECKPOINT_KEY_ALIASES
    has_encoder = False  # decodes FLUX.2 latents; FLUX.2's own VAE encodes
    config: CapacitorDecoderConfig

    def __init__(self, config: CapacitorDecoderConfig) -> None:
        super().__init__(config)
        self.decoder = build_fcdm_decoder(config)

    @torch.no_grad()
    def decode(
        self,
        latents: Tensor,
        height: int,
        width: int,
        *,
        inference_config: InferenceConfigBase | None = None,
        latents_are_flux2_whitened: bool = True,
        noise: Tensor | None = None,
    ) -> Tensor:
        """FLUX.2 latents [N, 128, height/16, width/16] -> images [N, 3, height, width].

        float32, ~[-1, 1], not clamped; runs on `latents.device`. By default `latents` are
        patchified and BN-whitened as FLUX.2 pipelines do (see `flux2_patchify`,
        `flux2_whiten`) and are un-whitened here with the stored FLUX.2 statistics;
        `latents_are_flux2_whitened=False` takes raw patchified latents as they are.
        `noise` ([N, 3, height, width], std `config.pixel_noise_std`) replaces the seeded draw.
        """
        if not isinstance(latents_are_flux2_whitened, bool):
            raise TypeError(
                f"latents_are_flux2_whitened: expected True or False, got "
                f"{latents_are_flux2_whitened!r}"
            )
        settings = self.inference_config_class() if inference_config is None else inference_config
        settings.validate()
        check_flux2_latents(latents, height, width, whitened=latents_are_flux2_whitened)
        raw = self.dewhiten(latents) if latents_are_flux2_whitened else latents.float()
        return self.sample(raw, height, width, settings, noise)

    def flux2_statistics(self) -> Flux2Statistics:
        """The FLUX.2 BatchNorm statistics this decoder un-whitens with (float32, on the CPU)."""
        return Flux2Statistics(
            running_mean=self.latent_norm_running_mean.detach().to("cpu", torch.float32),
            running_var=self.latent_norm_running_var.detach().to("cpu", torch.float32),
            eps=self.config.whitening_eps,
        )

    def check_flux2_statistics(self, vae: object) -> None:
        """Raise ValueError unless a diffusers `AutoencoderKLFlux2`'s `bn` statistics and
        `batch_norm_eps` equal the stored ones exactly (then both whitenings agree)."""
        problems = self.flux2_statistics().differences(Flux2Statistics.from_vae(vae))
        if problems:
            raise ValueError(
                "vae: its FLUX.2 latent statistics differ from the decoder's (decoder vs vae): "
                + "; ".join(problems)
            )

    def as_flux2_vae(
        self,
        flux2_vae: object,
        *,
        inference_config: CapacitorDecoderInferenceConfig | None = None,
        check_statistics: bool = True,
    ) -> torch.nn.Module:
        """This decoder behind a diffusers `AutoencoderKLFlux2`'s encoder: a `pipe.vae` for
        diffusers' FLUX.2 pipelines (`pipe.vae = decoder.as_flux2_vae(pipe.vae)`).

        See `capacitor_decoder.diffusers_vae.CapacitorFlux2VAE`. Needs diffusers
        (`pip install "capacitor-decoder[diffusers]"`). Raises ValueError when the VAE's `bn`
        statistics are not the stored ones (up to the VAE's buffer dtype), unless
        `check_statistics=False`.
        """
        try:
            from .diffusers_vae import CapacitorFlux2VAE
        except ModuleNotFoundError as error:
            # diffusers missing, or a code bundle, which leaves the adapter module out
            if error.name not in ("diffusers", f"{__package__}.diffusers_vae"):
                raise
            raise ImportError(
                "as_flux2_vae needs diffusers and the installed package: "
                'pip install "capacitor-decoder[diffusers]"'
            ) from error
        return CapacitorFlux2VAE(
            flux2_vae, self, inference_config=inference_config, check_statistics=check_statistics
        )


def check_flux2_latents(latents: object, height: int, width: int, *, whitened: bool) -> Tensor:
    """latents: [N, 128, height/16, width/16], FLUX.2-patchified (whitened or raw)."""
    latents = check_tensor("latents", latents)
    check_size("height", height, 16)
    check_size("width", width, 16)
    grid = (height // 16, width // 16)
    if latents.ndim == 4 and tuple(latents.shape[1:]) == (FLUX2_PATCHIFIED_CHANNELS, *grid):
        check_values("latents", latents)
        return latents
    kind = "BN-whitened" if whitened else "raw (latents_are_flux2_whitened=False)"
    hint = ""
    if latents.ndim == 4 and latents.shape[1] == FLUX2_LATENT_CHANNELS:
        hint = "; these look like unpatchified FLUX.2 latents: apply flux2_patchify first"
    raise ValueError(
        f"latents: expected FLUX.2 2x2-patchified, {kind} latents "
        f"[N, {FLUX2_PATCHIFIED_CHANNELS}, {grid[0]}, {grid[1]}] for a {height}x{width} "
        f"image, got {tuple(latents.shape)}{hint}"
    )
