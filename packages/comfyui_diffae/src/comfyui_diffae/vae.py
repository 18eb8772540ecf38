"""A diffae model behind the interface ComfyUI's stock VAE nodes drive (`comfy.sd.VAE`'s).

Stock nodes check wire types by name only, so this object travels on a `VAE` wire and
`VAEDecode`, `VAEDecodeTiled`, `VAEEncode`, `VAEEncodeTiled`, `VAEEncodeForInpaint` call it as
they call ComfyUI's own VAE:

- `decode(samples)`: LATENT [N, C, h, w] -> IMAGE [N, H, W, 3] float in [0, 1] (NHWC);
  `decode_tiled(samples, tile_x=, tile_y=, overlap=, ...)` with tiles in latent cells.
- `encode(pixels)`: IMAGE [N, H, W, C] in [0, 1] (RGBA allowed) -> LATENT [N, C, h, w];
  `encode_tiled(pixels, tile_x=, tile_y=, overlap=, ...)` with tiles in pixels.
- `spacial_compression_decode()` / `_encode()`, `temporal_compression_decode()` (None), and the
  attributes other core nodes read: `patcher`, `first_stage_model`, `device`, `vae_dtype`,
  `latent_channels`, `downscale_ratio`, `get_sd()`, `throw_exception_if_invalid()`.
  `SelectVAEDevice` copies the object (`copy.copy`) and swaps `patcher`, `first_stage_model` and
  `device`, so every call reads them from `self` when it runs.

As `comfy.sd.VAE` does: pixels are cropped (centred) to multiples of the patch and to 3 channels,
mapped [0, 1] -> [-1, 1] and back (clamped); the model is loaded through ComfyUI's model
management with a memory estimate, the batch is split by free memory, and results land on
ComfyUI's intermediate device and dtype. Unlike it, tiling is the models' own exact row tiling
(`diffae_core.layers`: no seams, equal to the untiled result up to rounding, so `overlap` is not
needed and is ignored), used by `decode_tiled` / `encode_tiled` and as the fallback when a pass
runs out of memory.

Decoding samples noise: one draw for the whole batch from `inference_config.seed` (0 unless
set), sliced per sub-batch, so splitting the batch does not change the images.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor

from diffae_core.diffusion import sample_noise
from diffae_core.families import Family
from diffae_core.layers import DEFAULT_TILE_TOKENS, RowTiled

from .runtime import Runtime

DECODE_ONLY = (
    "decode-only: {name} has no encoder; connect the FLUX.2 VAE (stock VAELoader) to the "
    "capacitor node's flux2_vae input to encode"
)


def crop_pixels(pixels: Tensor, multiple: int) -> Tensor:
    """IMAGE [N, H, W, C] (C = 3 or 4) -> [N, H', W', 3], H' and W' the largest multiples of
    `multiple`, cropped centred (as `comfy.sd.VAE.vae_encode_crop_pixels`); alpha dropped."""
    if pixels.ndim != 4 or pixels.shape[-1] not in (3, 4):
        raise ValueError(f"pixels: expected an IMAGE [N, H, W, 3 or 4], got {tuple(pixels.shape)}")
    height, width = int(pixels.shape[1]), int(pixels.shape[2])
    kept_height, kept_width = height // multiple * multiple, width // multiple * multiple
    if kept_height == 0 or kept_width == 0:
        raise ValueError(
            f"pixels: {width}x{height} is smaller than one latent cell ({multiple}x{multiple})"
        )
    top, left = (height % multiple) // 2, (width % multiple) // 2
    return pixels[:, top : top + kept_height, left : left + kept_width, :3]


def to_model_images(pixels: Tensor) -> Tensor:
    """IMAGE [N, H, W, 3] in [0, 1] -> images [N, 3, H, W] in [-1, 1]."""
    return pixels.movedim(-1, 1) * 2.0 - 1.0


def to_comfy_image(images: Tensor) -> Tensor:
    """Images [N, 3, H, W] ~[-1, 1] -> IMAGE [N, H, W, 3] in [0, 1], clamped."""
    return images.add(1.0).div_(2.0).clamp_(0.0, 1.0).movedim(1, -1)


def check_latents(samples: Tensor, channels: int, name: str) -> Tensor:
    """LATENT samples [N, channels, h, w] (a video-shaped [N, C, 1, h, w] is squeezed as
    ComfyUI does for image VAEs); a clear error for latents of another VAE."""
    if samples.ndim == 5:
        samples = samples[:, :, 0]
    if samples.ndim != 4 or samples.shape[1] != channels:
        raise ValueError(
            f"samples: expected {name} latents [N, {channels}, h, w], got "
            f"{tuple(samples.shape)}; were they made by another VAE?"
        )
    return samples


def activation_bytes(config: Any, tokens: int, pixels: int, dtype: torch.dtype) -> int:
    """Rough peak bytes of one encode or decode pass over `tokens` latent cells and `pixels`
    pixels: the FCDM blocks keep a few model-width tensors and one 4x-wide MLP tensor per cell
    (in the weights' dtype); the sampler keeps a few float32 image-sized tensors."""
    width = int(getattr(config, "model_dim", 1024))
    mlp = float(getattr(config, "mlp_ratio", 4.0))
    itemsize = torch.empty((), dtype=dtype).element_size()
    per_token = itemsize * width * (4 + 2 * mlp)
    per_pixel = 4 * 3 * 8
    return int(tokens * per_token + pixels * per_pixel)


@contextmanager
def outside_inference_mode() -> Iterator[None]:
    """No autograd, and no inference mode: ComfyUI runs nodes under `torch.inference_mode()`,
    whose tensors keep no version counter, which some families' caches read (dinac_ae's RoPE
    tables). The models are loaded, moved and run out of it; their inputs are cloned first."""
    with torch.inference_mode(False), torch.no_grad():
        yield


@contextmanager
def row_tiling(model: torch.nn.Module, tile_tokens: int | None) -> Iterator[None]:
    """Run `model` with exact row tiling of `tile_tokens` cells per chunk (None: as it is),
    then restore each module's own setting."""
    if tile_tokens is None:
        yield
        return
    saved = [
        (module, module.tile_tokens, module.tile_recompute)
        for module in model.modules()
        if isinstance(module, RowTiled)
    ]
    model.enable_tiling(max(1, int(tile_tokens)))
    try:
        yield
    finally:
        for module, tokens, recompute in saved:
            module.tile_tokens, module.tile_recompute = tokens, recompute


class DiffaeVAE:
    """A diffae model (any family) on a ComfyUI `VAE` wire: see the module docstring.

    `first_stage_model`: the family's model (`decode(latents, height, width, ...)`, and
    `encode(images)` when it has an encoder). `encoder_vae`: a ComfyUI VAE that encodes for a
    decode-only model (the stock FLUX.2 VAE for capacitor_decoder), else None.
    `inference_config`: the family's decoding settings used by `decode`.
    """

    latent_dim = 2
    output_channels = 3
    crop_input = True
    not_video = False
    disable_offload = False
    handles_tiling = False
    pad_channel_value = None
    format_encoded = None
    extra_1d_channel = None
    downscale_index_formula = None
    upscale_index_formula = None

    def __init__(
        self,
        model: torch.nn.Module,
        family: Family,
        runtime: Runtime,
        *,
        name: str,
        encoder_vae: Any = None,
        inference_config: Any = None,
    ) -> None:
        self.first_stage_model = model
        self.family = family
        self.runtime = runtime
        self.name = name
        self.encoder_vae = encoder_vae
        self.inference_config = (
            family.inference_config_class(seed=0) if inference_config is None else inference_config
        )
        config = model.config
        self.latent_channels = int(config.latent_channels)
        self.downscale_ratio = self.upscale_ratio = int(config.effective_patch_size)
        self.vae_dtype = next(model.parameters()).dtype
        self.working_dtypes = [torch.bfloat16, torch.float32]
        self.device = runtime.load_device()
        self.output_device = runtime.intermediate_device()
        self.patcher = runtime.make_patcher(model, self.device)
        self.size = None

    # -- what core nodes read ---------------------------------------------------------------
    def throw_exception_if_invalid(self) -> None:
        """Always valid: a model that did not load never became a DiffaeVAE."""

    def model_size(self) -> int:
        if self.size is None:
            self.size = sum(t.nbytes for t in self.first_stage_model.state_dict().values())
        return self.size

    def get_sd(self) -> dict[str, Tensor]:
        return self.first_stage_model.state_dict()

    def spacial_compression_decode(self) -> int:
        return self.upscale_ratio

    def spacial_compression_encode(self) -> int:
        return self.downscale_ratio

    def temporal_compression_decode(self) -> None:
        return None

    def is_dynamic(self) -> bool:
        is_dynamic = getattr(self.patcher, "is_dynamic", None)
        return bool(is_dynamic()) if callable(is_dynamic) else False

    def vae_output_dtype(self) -> torch.dtype:
        return self.runtime.intermediate_dtype()

    def memory_used_decode(self, shape: tuple[int, ...], dtype: torch.dtype) -> int:
        """Bytes a decode of latents `shape` [N, C, h, w] needs (an estimate)."""
        cells = math.prod(shape[:1] + shape[-2:])
        return activation_bytes(self.first_stage_model.config, cells, cells * self.pixels, dtype)

    def memory_used_encode(self, shape: tuple[int, ...], dtype: torch.dtype) -> int:
        """Bytes an encode of images `shape` [N, 3, H, W] needs (an estimate)."""
        pixels = math.prod(shape[:1] + shape[-2:])
        return activation_bytes(self.first_stage_model.config, pixels // self.pixels, pixels, dtype)

    @property
    def pixels(self) -> int:
        """Pixels per latent cell."""
        return self.upscale_ratio * self.upscale_ratio

    # -- decode ---------------------------------------------------------------------------
    def decode(self, samples_in: Tensor, vae_options: dict | None = None) -> Tensor:
        """LATENT [N, C, h, w] -> IMAGE [N, h*p, w*p, 3] in [0, 1]."""
        return self.decode_with(samples_in, self.inference_config)

    def decode_tiled(
        self,
        samples: Tensor,
        tile_x: int | None = None,
        tile_y: int | None = None,
        overlap: int | None = None,
        tile_t: int | None = None,
        overlap_t: int | None = None,
    ) -> Tensor:
        """`decode` with exact row tiling of about tile_x * tile_y latent cells per chunk;
        `overlap` and the temporal arguments are not needed (no seams to blend)."""
        tile_tokens = (tile_x or 64) * (tile_y or 64)
        return self.decode_with(samples, self.inference_config, tile_tokens=tile_tokens)

    def decode_with(
        self, samples_in: Tensor, inference_config: Any, *, tile_tokens: int | None = None
    ) -> Tensor:
        """`decode` with the given inference config and tiling (None: untiled, falling back to
        `DEFAULT_TILE_TOKENS` when the device runs out of memory)."""
        inference_config.validate()
        samples_in = check_latents(samples_in, self.latent_channels, self.name)
        with outside_inference_mode():
            images = self._decode(samples_in.clone(), inference_config, tile_tokens)
        return to_comfy_image(images).to(self.output_device, self.vae_output_dtype())

    def _decode(self, samples_in: Tensor, inference_config: Any, tile_tokens: int | None) -> Tensor:
        model, device = self.first_stage_model, self.device
        count, height, width = samples_in.shape[0], samples_in.shape[-2], samples_in.shape[-1]
        image_height, image_width = height * self.upscale_ratio, width * self.upscale_ratio
        noise = sample_noise(
            (count, 3, image_height, image_width),
            model.config.pixel_noise_std,
            seed=inference_config.seed,
            device=device,
        )

        def decode_batch(start: int, stop: int) -> Tensor:
            latents = samples_in[start:stop].to(device)
            return model.decode(
                latents,
                image_height,
                image_width,
                inference_config=inference_config,
                noise=noise[start:stop],
            )

        return self._run(samples_in.shape, self.memory_used_decode, decode_batch, tile_tokens)

    # -- encode ---------------------------------------------------------------------------
    def encode(self, pixel_samples: Tensor) -> Tensor:
        """IMAGE [N, H, W, 3 or 4] in [0, 1] -> LATENT [N, C, H/p, W/p] (cropped as ComfyUI
        crops)."""
        if self.encoder_vae is not None:
            return self.encoder_vae.encode(pixel_samples)
        return self._encode(pixel_samples, None)

    def encode_tiled(
        self,
        pixel_samples: Tensor,
        tile_x: int | None = None,
        tile_y: int | None = None,
        overlap: int | None = None,
        tile_t: int | None = None,
        overlap_t: int | None = None,
    ) -> Tensor:
        """`encode` with exact row tiling of about (tile_x / p) * (tile_y / p) latent cells per
        chunk (tiles in pixels); `overlap` is not needed."""
        if self.encoder_vae is not None:
            return self.encoder_vae.encode_tiled(
                pixel_samples, tile_x=tile_x, tile_y=tile_y, overlap=overlap
            )
        cells = ((tile_x or 512) // self.downscale_ratio) * (
            (tile_y or 512) // self.downscale_ratio
        )
        return self._encode(pixel_samples, max(1, cells))

    def _encode(self, pixel_samples: Tensor, tile_tokens: int | None) -> Tensor:
        model = self.first_stage_model
        if not callable(getattr(model, "encode", None)):
            raise ValueError(DECODE_ONLY.format(name=self.name))
        cropped = crop_pixels(pixel_samples, self.downscale_ratio)
        with outside_inference_mode():
            images = to_model_images(cropped.clone())

            def encode_batch(start: int, stop: int) -> Tensor:
                batch = images[start:stop].to(device=self.device, dtype=self.vae_dtype)
                return model.encode(batch)

            latents = self._run(images.shape, self.memory_used_encode, encode_batch, tile_tokens)
        return latents.to(self.output_device, self.vae_output_dtype())

    # -- running ----------------------------------------------------------------------------
    def _run(
        self,
        shape: tuple[int, ...],
        memory_used: Callable[[tuple[int, ...], torch.dtype], int],
        run_batch: Callable[[int, int], Tensor],
        tile_tokens: int | None,
    ) -> Tensor:
        """Load the model for `shape`, run `run_batch(start, stop)` over sub-batches that fit
        the free memory and concatenate; untiled passes that run out of memory are redone with
        row tiling."""
        count = int(shape[0])
        single = (1, *shape[1:])
        per_item = max(1, memory_used(single, self.vae_dtype))
        runtime = self.runtime
        runtime.load(self.patcher, memory_used(tuple(shape), self.vae_dtype))
        batch = max(1, min(count, runtime.free_memory(self.patcher, self.device) // per_item))
        spans = [(start, min(start + batch, count)) for start in range(0, count, batch)]
        outputs = []
        with outside_inference_mode():
            try:
                with row_tiling(self.first_stage_model, tile_tokens):
                    outputs = [
                        run_batch(start, stop).to(self.output_device) for start, stop in spans
                    ]
            except Exception as error:
                if tile_tokens is not None or not runtime.is_out_of_memory(error):
                    raise
                outputs, out_of_memory = [], True
            else:
                out_of_memory = False
            if out_of_memory:  # outside the except block, so the failed pass's tensors are freed
                runtime.empty_cache()
                with row_tiling(self.first_stage_model, DEFAULT_TILE_TOKENS):
                    outputs = [run_batch(i, i + 1).to(self.output_device) for i in range(count)]
        return torch.cat(outputs)
