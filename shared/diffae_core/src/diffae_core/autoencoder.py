"""`DiffusionAutoencoder`: the one base class of every family's model.

encode: images -> encoder posterior -> mode -> whitened latents.
decode: whitened latents -> dewhiten -> x0-predicting VP decoder sampled from noise -> images.

A family builds `self.encoder` (anything with `posterior(images)`, or None for a decoder
alone) and `self.decoder` (called as `decoder(x_t, t, raw_latents, drop_middle_blocks=weak)`),
and states its few differences as class attributes: whether latents are whitened, the dtype
`encode` returns, and whether a bf16 model runs under autocast. Everything else lives here once.
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from .config import InferenceConfigBase, VPInferenceConfig
from .diffusion import (
    EncoderPosterior,
    GuidedPredictor,
    dewhiten,
    sample_images,
    whiten,
)
from .layers import DEFAULT_TILE_TOKENS, RowTiled, check_tile_tokens
from .loading import PretrainedModel
from .runtime import CompiledForInference, check_images, check_latents, compute_dtype

ENCODER_METHODS = ("encode", "encode_posterior", "reconstruct")
"""What a decoder-only model (`has_encoder = False`) does not have."""
WHITENING_METHODS = ("whiten", "dewhiten")
"""What a model whose latents are not whitened (`whitened_latents = False`) does not have."""


class _Absent:
    """A method a subclass does not have: reading it raises AttributeError, so `hasattr(model,
    "encode")` tells, on the class or an instance, what a family can do."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __get__(self, instance: Any, owner: type) -> Any:
        raise AttributeError(f"{owner.__name__} has no {self.name}")


class DiffusionAutoencoder(PretrainedModel):
    """images [N, 3, H, W] in [-1, 1] <-> latents [N, C, H/p, W/p] through a VP diffusion decoder.

    The config provides `in_channels`, `latent_channels`, `effective_patch_size` (p),
    `logsnr_min`, `logsnr_max`, `pixel_noise_std` and, with whitened latents, `whitening_eps`.
    """

    inference_config_class: ClassVar[type[InferenceConfigBase]] = VPInferenceConfig
    has_encoder: ClassVar[bool] = True
    """False for a decoder alone: `encode`, `encode_posterior` and `reconstruct` are absent."""
    whitened_latents: ClassVar[bool] = True
    """Latents are whitened per channel with the stored `latent_norm_running_mean/var`; when
    False, `whiten` and `dewhiten` are absent."""
    encode_returns_float32: ClassVar[bool] = False
    """`encode` returns float32 (dinac_ae, full_capacitor) or the weights' dtype (fcdm_diffae)."""
    bf16_autocast: ClassVar[bool] = False
    """A bf16 model encodes and decodes under bf16 autocast, a float32 one with autocast off
    (dinac_ae, whose bf16 files keep float32 islands); otherwise no autocast is entered."""

    encoder: nn.Module  # absent in a decoder-only model (`has_encoder = False`)
    decoder: nn.Module

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        absent = (() if cls.has_encoder else ENCODER_METHODS) + (
            () if cls.whitened_latents else WHITENING_METHODS
        )
        for name in absent:
            setattr(cls, name, _Absent(name))

    def __init__(self, config: Any) -> None:
        super().__init__(config)
        if self.whitened_latents:
            self.register_buffer("latent_norm_running_mean", torch.zeros(config.latent_channels))
            self.register_buffer("latent_norm_running_var", torch.ones(config.latent_channels))

    # -- encode --------------------------------------------------------------------------------
    def encode_posterior(self, images: Tensor) -> EncoderPosterior:
        """images [N, 3, H, W] in [-1, 1] -> raw posterior (mean, logsnr) [N, C, h, w].

        H and W must be multiples of `config.effective_patch_size`; the images are moved to the
        model's device and weight dtype. mean/logsnr come out in that dtype, unwhitened. Keeps
        the autograd graph (training, fine-tuning).
        """
        images = check_images(images, self.config.in_channels, self.config.effective_patch_size)
        images = images.to(device=self.weights_device(), dtype=compute_dtype(self))
        with self.autocast():
            return self.encoder.posterior(images)

    @torch.no_grad()
    def encode(self, images: Tensor) -> Tensor:
        """images [N, 3, H, W] in [-1, 1] -> whitened latents [N, C, H/p, W/p].

        The posterior mode alpha * mean, rounded to the compute dtype, then whitened in float32
        (unless `whitened_latents` is False); returned in float32 or the weights' dtype
        (`encode_returns_float32`).
        """
        posterior = self.encode_posterior(images)
        latents = posterior.mode().to(posterior.mean.dtype)
        if self.whitened_latents:
            latents = self.whiten(latents)
        return latents.float() if self.encode_returns_float32 else latents.to(posterior.mean.dtype)

    # -- decode --------------------------------------------------------------------------------
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
        raw_latents = self.dewhiten(latents) if self.whitened_latents else latents
        return self.sample(raw_latents, height, width, settings, noise)

    def sample(
        self,
        raw_latents: Tensor,
        height: int,
        width: int,
        settings: InferenceConfigBase,
        noise: Tensor | None = None,
    ) -> Tensor:
        """Raw latents [N, C, h, w] -> images [N, 3, height, width] float32 by the sampler."""
        with self.autocast():
            return sample_images(
                self.predictor(raw_latents, settings),
                (raw_latents.shape[0], self.config.in_channels, height, width),
                device=raw_latents.device,
                sampler=settings.sampler,
                times=settings.schedule_times(),
                guidance_strength=settings.guidance_strength,
                logsnr_min=self.config.logsnr_min,
                logsnr_max=self.config.logsnr_max,
                noise_std=self.config.pixel_noise_std,
                seed=settings.seed,
                noise=noise,
            )

    def predictor(self, raw_latents: Tensor, settings: InferenceConfigBase) -> GuidedPredictor:
        """predict(x_t, t, *, weak) -> x0_hat in the weights' dtype; weak = the PDG path drop.

        m_diffae overrides it: its weak path masks latent tokens with a seeded generator.
        """
        dtype = compute_dtype(self)
        latents_in = raw_latents.to(dtype)

        def predict(x_t: Tensor, t: Tensor, *, weak: bool) -> Tensor:
            return self.decoder(x_t.to(dtype), t, latents_in, drop_middle_blocks=weak)

        return predict

    def predict_x0(
        self, x_t: Tensor, t: Tensor, raw_latents: Tensor, *, drop_middle_blocks: bool = False
    ) -> Tensor:
        """One decoder evaluation, as trained: x0_hat [N, 3, H, W] in the weights' dtype.

        x_t [N, 3, H, W] (`diffusion.diffuse` of x0), t [N] in [0, 1], raw (unwhitened) latents
        [N, C, h, w] (a posterior sample or mode). Builds a graph: the training objective's
        prediction, MSE(x0_hat, x0) being the loss.
        """
        dtype = compute_dtype(self)
        return self.decoder(
            x_t.to(dtype), t, raw_latents.to(dtype), drop_middle_blocks=drop_middle_blocks
        )

    def reconstruct(
        self, images: Tensor, *, inference_config: InferenceConfigBase | None = None
    ) -> Tensor:
        """encode then decode: images [N, 3, H, W] in [-1, 1] -> float32 images, same size."""
        height, width = int(images.shape[-2]), int(images.shape[-1])
        return self.decode(self.encode(images), height, width, inference_config=inference_config)

    # -- latent maths --------------------------------------------------------------------------
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

    # -- where and how it runs -----------------------------------------------------------------
    def weights_device(self) -> torch.device:
        """The device of the model's weights. (A method, not a `device` property: hosts such as
        ComfyUI set a `device` attribute on the models they manage.)"""
        return next(self.parameters()).device

    def autocast(self) -> AbstractContextManager[Any]:
        """The autocast policy of `bf16_autocast` (a no-op context for the other families)."""
        if not self.bf16_autocast:
            return nullcontext()
        enabled = compute_dtype(self) == torch.bfloat16
        device_type = self.weights_device().type
        return torch.autocast(device_type, dtype=torch.bfloat16, enabled=enabled)

    def enable_tiling(
        self, tile_tokens: int = DEFAULT_TILE_TOKENS, *, recompute: bool = True
    ) -> None:
        """Run the encoder and decoder over row chunks of <= tile_tokens latent positions.

        Exact: outputs equal the untiled ones up to float rounding (no seams, no blending; see
        `layers.RowTiled`). Peak memory falls from several full-size 4x-wide MLP tensors to a
        few model-width ones. recompute: True recomputes each FCDM block's hidden activations
        in GRN's second pass (lowest memory, one more 1x1 conv per block); False keeps them
        (about the untiled time, one full-size 4x-wide tensor more). A transformer encoder
        chunks its queries instead. The diffusers convention: `disable_tiling()` switches back.
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

    def compile_for_inference(
        self,
        *,
        freezing: bool = True,
        channels_last: bool | None = None,
        dynamic_batch: bool = False,
        **options: Any,
    ) -> CompiledForInference:
        """`encode`, `decode` and `reconstruct` under torch.compile with the recipe that
        measured best: a new handle, the model itself is left as it is.

        Inductor weight freezing (inference only), channels_last inputs on a CPU, optional
        dynamic batch; `options` go to `torch.compile`. The inductor options are patched in
        around each call, never set globally (`runtime.CompiledForInference`). Pass `noise=`
        to `decode` to keep the RNG out of the graph. `nn.Module.compile` keeps torch's meaning.
        """
        return CompiledForInference(
            self,
            freezing=freezing,
            channels_last=channels_last,
            dynamic_batch=dynamic_batch,
            **options,
        )
