"""The VP diffusion decoder / autoencoder APIs that every family's model class builds on.

`VPDiffusionDecoderModel`: decode latents by sampling a VP x0-predicting decoder (all families).
`WhitenedVPDecoder`: the same behind per-channel latent whitening (capacitor_decoder).
`WhitenedVPAutoencoder`: plus an encoder with a VP posterior (fcdm_diffae, dinac_ae,
full_capacitor).

encode: images -> encoder posterior mode -> whitened latents. decode: whitened latents ->
dewhiten -> FCDM diffusion decoder sampled from noise -> images. A family supplies the encoder
(through `_raw_posterior`) and its config; everything else lives here once.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import Tensor

from .compiling import compile_for_inference, uncompile
from .fcdm_decoder import FCDMDecoder
from .inference import InferenceConfigBase, VPInferenceConfig
from .posterior import EncoderPosterior
from .precision import compute_dtype
from .pretrained import PretrainedModel
from .samplers import GuidedPredictor, sample_images
from .tiling import DEFAULT_TILE_TOKENS, RowTiled, check_tile_tokens
from .validation import check_images, check_latents
from .whitening import dewhiten, whiten


def build_fcdm_decoder(config: Any) -> FCDMDecoder:
    """The FCDM decoder described by a family config's published fields."""
    return FCDMDecoder(
        in_channels=config.in_channels,
        patch_size=config.patch_size,
        model_dim=config.model_dim,
        depth=config.decoder_depth,
        start_block_count=config.decoder_start_blocks,
        end_block_count=config.decoder_end_blocks,
        bottleneck_dim=config.bottleneck_dim,
        mlp_ratio=config.mlp_ratio,
        depthwise_kernel_size=config.depthwise_kernel_size,
        adaln_low_rank_rank=config.adaln_low_rank_rank,
    )


class VPDiffusionDecoderModel(PretrainedModel):
    """`decode`: latents -> images by sampling the model's x0-predicting VP decoder from noise.

    The config must provide `in_channels`, `latent_channels`, `effective_patch_size`,
    `logsnr_min`, `logsnr_max` and `pixel_noise_std`. Subclasses set `self.decoder` and may
    override `_decoder_input` (what the decoder receives for the given latents) and
    `_make_predictor` (how one step calls the decoder, including the PDG weak path).
    """

    inference_config_class: ClassVar[type[InferenceConfigBase]] = VPInferenceConfig

    # -- family hooks ------------------------------------------------------------------------
    def _decoder_input(self, latents: Tensor) -> Tensor:
        """Checked latents -> the decoder's latent input (identity unless overridden)."""
        return latents

    def _make_predictor(self, decoder_latents: Tensor, cfg: InferenceConfigBase) -> GuidedPredictor:
        """predict(x_t, t, *, weak) -> x0_hat in the weights' dtype; weak = PDG path drop."""
        dtype = compute_dtype(self)
        latents_in = decoder_latents.to(dtype)

        def predict(x_t: Tensor, t: Tensor, *, weak: bool) -> Tensor:
            return self.decoder(x_t.to(dtype), t, latents_in, drop_middle_blocks=weak)

        return predict

    # -- tiling (exact, bounded memory) -------------------------------------------------------
    def enable_tiling(
        self, tile_tokens: int = DEFAULT_TILE_TOKENS, *, recompute: bool = True
    ) -> None:
        """Run the encoder and decoder over row chunks of <= tile_tokens latent positions.

        Exact: outputs equal the untiled ones up to float rounding (no seams, no blending;
        `diffae_core.tiling`). Peak memory falls from several full-size 4x-wide MLP tensors to
        a few model-width ones. recompute: True recomputes each FCDM block's hidden
        activations in GRN's second pass (lowest memory, one more 1x1 conv per block); False
        keeps them (about the untiled time, one full-size 4x-wide tensor more). A transformer
        encoder chunks its queries instead (`DitBlock.forward_tiled`). The diffusers
        convention: `disable_tiling()` switches back.
        """
        tile_tokens = check_tile_tokens(tile_tokens)
        if not isinstance(recompute, bool):
            raise ValueError(f"recompute: expected True or False, got {recompute!r}")
        for module in self.modules():
            if isinstance(module, RowTiled):
                module.tile_tokens = tile_tokens
                module.tile_recompute = recompute

    def disable_tiling(self) -> None:
        """Back to the plain (untiled) forward passes."""
        for module in self.modules():
            if isinstance(module, RowTiled):
                module.tile_tokens = None

    @property
    def tiling_enabled(self) -> bool:
        """Whether `enable_tiling` is in effect."""
        return any(
            module.tile_tokens is not None
            for module in self.modules()
            if isinstance(module, RowTiled)
        )

    # -- torch.compile -----------------------------------------------------------------------
    def compile(  # type: ignore[override]
        self,
        *,
        freezing: bool = True,
        channels_last: bool | None = None,
        dynamic_batch: bool = False,
        **options: Any,
    ) -> VPDiffusionDecoderModel:
        """Compile `encode` and `decode` in place with the recipe that measured best.

        Inductor weight freezing (inference only), channels_last on a CPU, optional dynamic
        batch; `options` go to `torch.compile`. The inductor options are patched in around each
        call, never set globally (`diffae_core.compiling`). Pass `noise=` to `decode` to keep
        the RNG out of the graph. Returns the model; `uncompile()` undoes it.
        """
        return compile_for_inference(
            self,
            freezing=freezing,
            channels_last=channels_last,
            dynamic_batch=dynamic_batch,
            **options,
        )

    def uncompile(self) -> VPDiffusionDecoderModel:
        """Undo `compile`: eager `encode` / `decode` and NCHW weights."""
        return uncompile(self)

    # -- public API --------------------------------------------------------------------------
    @torch.no_grad()
    def decode(
        self,
        latents: Tensor,
        height: int,
        width: int,
        *,
        inference_config: InferenceConfigBase | None = None,
        noise: Tensor | None = None,
    ) -> Tensor:
        """Latents [N, C, h, w] -> images [N, 3, height, width], float32, ~[-1, 1], unclamped.

        Runs on `latents.device`. `inference_config` defaults to the family's (one DDIM step,
        no PDG). `noise` ([N, 3, height, width], std `config.pixel_noise_std`) replaces the
        seeded draw, e.g. under torch.compile.
        """
        config = self.config
        settings = self.inference_config_class() if inference_config is None else inference_config
        settings.validate()
        check_latents(latents, config.latent_channels, height, width, config.effective_patch_size)
        return self._sample(self._decoder_input(latents), height, width, settings, noise)

    # -- sampling ----------------------------------------------------------------------------
    def _sample(
        self,
        decoder_latents: Tensor,
        height: int,
        width: int,
        settings: InferenceConfigBase,
        noise: Tensor | None,
    ) -> Tensor:
        return sample_images(
            self._make_predictor(decoder_latents, settings),
            (decoder_latents.shape[0], self.config.in_channels, height, width),
            device=decoder_latents.device,
            sampler=settings.sampler,
            times=settings.schedule_times(),
            guidance_strength=settings.guidance_strength,
            logsnr_min=self.config.logsnr_min,
            logsnr_max=self.config.logsnr_max,
            noise_std=self.config.pixel_noise_std,
            seed=settings.seed,
            noise=noise,
        )


class WhitenedVPDecoder(VPDiffusionDecoderModel):
    """A VP diffusion decoder behind per-channel latent whitening with stored running statistics.

    `decode` takes whitened latents and dewhitens them in float32 (capacitor_decoder alone; the
    decoder half of `WhitenedVPAutoencoder`). The config must also provide `whitening_eps` and
    the decoder fields read by `build_fcdm_decoder`.
    """

    decoder: FCDMDecoder

    def __init__(self, config: Any) -> None:
        super().__init__(config)
        self.register_buffer("latent_norm_running_mean", torch.zeros(config.latent_channels))
        self.register_buffer("latent_norm_running_var", torch.ones(config.latent_channels))

    # -- family hooks ------------------------------------------------------------------------
    def _decoder_latents(self, latents: Tensor) -> Tensor:
        """Dewhitened latents -> the decoder's latent input (identity unless the layout differs)."""
        return latents

    def _decoder_input(self, latents: Tensor) -> Tensor:
        return self._decoder_latents(self.dewhiten(latents))

    def predict_x0(
        self, x_t: Tensor, t: Tensor, raw_latents: Tensor, *, drop_middle_blocks: bool = False
    ) -> Tensor:
        """One decoder evaluation, as trained: x0_hat [N, 3, H, W] in the weights' dtype.

        x_t [N, 3, H, W] (the forward process `vp.diffuse` of x0), t [N] in [0, 1], raw
        (unwhitened) latents [N, C, h, w] in the latent layout (a posterior sample or mode).
        Builds a graph: the training objective's prediction (diffae_core spec §8).
        """
        dtype = compute_dtype(self)
        return self.decoder(
            x_t.to(dtype),
            t,
            self._decoder_latents(raw_latents).to(dtype),
            drop_middle_blocks=drop_middle_blocks,
        )

    # -- latent maths ------------------------------------------------------------------------
    def whiten(self, latents: Tensor) -> Tensor:
        """Raw latents [N, C, h, w] -> whitened, float32 (per-channel running statistics)."""
        return whiten(
            latents,
            self.latent_norm_running_mean,
            self.latent_norm_running_var,
            self.config.whitening_eps,
        )

    def dewhiten(self, latents: Tensor) -> Tensor:
        """Whitened latents [N, C, h, w] -> raw, float32; the inverse of `whiten`."""
        return dewhiten(
            latents,
            self.latent_norm_running_mean,
            self.latent_norm_running_var,
            self.config.whitening_eps,
        )


class WhitenedVPAutoencoder(WhitenedVPDecoder):
    """Encoder + FCDM decoder + per-channel latent whitening with stored running statistics.

    Subclasses set `self.encoder` and `self.decoder` and implement `_raw_posterior`.
    """

    # -- family hooks ------------------------------------------------------------------------
    def _raw_posterior(self, images: Tensor) -> EncoderPosterior:
        """images (checked, in the compute dtype) -> raw posterior in the latent layout."""
        raise NotImplementedError

    # -- public API --------------------------------------------------------------------------
    def encode_posterior(self, images: Tensor) -> EncoderPosterior:
        """images [N, 3, H, W] in [-1, 1] -> raw posterior (mean, logsnr) [N, C, h, w].

        H and W must be multiples of `config.effective_patch_size`; the images are moved to the
        model's device and weight dtype. mean/logsnr come out in that dtype, unwhitened.
        """
        images = check_images(images, self.config.in_channels, self.config.effective_patch_size)
        device = self.latent_norm_running_mean.device
        images = images.to(device=device, dtype=compute_dtype(self))
        return self._raw_posterior(images)

    @torch.no_grad()
    def encode(self, images: Tensor) -> Tensor:
        """images [N, 3, H, W] in [-1, 1] -> whitened latents [N, C, H/p, W/p].

        The posterior mode alpha * mean, whitened in float32 and returned in the model's weight
        dtype (p = `config.effective_patch_size`, C = `config.latent_channels`). Runs without
        autograd, as inference; `encode_posterior` keeps the graph (training, fine-tuning).
        """
        posterior = self.encode_posterior(images)
        return self.whiten(posterior.mode()).to(posterior.mean.dtype)

    def reconstruct(
        self, images: Tensor, *, inference_config: InferenceConfigBase | None = None
    ) -> Tensor:
        """encode then decode: images [N, 3, H, W] in [-1, 1] -> float32 images, same size."""
        height, width = int(images.shape[-2]), int(images.shape[-1])
        return self.decode(self.encode(images), height, width, inference_config=inference_config)
