"""The FLUX.2 VAE of diffusers as the reference: built with random weights or loaded.

Its encoder maps images [N, 3, H, W] in [-1, 1] to latents [N, 32, H/8, W/8]; FLUX.2 pipelines
patchify them 2x2 and whiten them with the VAE's BatchNorm statistics, the layout
capacitor_decoder decodes ([N, 128, H/16, W/16]).
"""

from __future__ import annotations

import torch
from torch import Tensor

from diffae_core.diffusion import whiten
from diffae_core.layers import space_to_channels

FLUX2_NAME = "FLUX.2 VAE"
FLUX2_LATENT_CHANNELS = 32
FLUX2_DOWNSAMPLING = 8
TINY_FLUX2_CONFIG = {"block_out_channels": (32, 32, 32, 32), "layers_per_block": 1}
"""The FLUX.2 structure (4 levels, 8x downsampling, 32 latent channels) small, for smoke tests."""
FLUX2_SMALL_DECODER_NAME = "FLUX.2 small decoder"
FLUX2_SMALL_DECODER_CHANNELS = (96, 192, 384, 384)
"""Decoder widths of BFL's FLUX.2 small decoder (Apache-2.0, hf.co/black-forest-labs/
FLUX.2-small-decoder; diffusers PR #13428 added `decoder_block_out_channels` for it). The widths
are as stated in VincentGourbin/flux-2-swift-mlx PR #76 (96, 192, 384, 384 against the full
decoder's 128, 256, 512, 512) and agree with the model card's "~28M decoder parameters": they give
27.9M against 49.6M, 44% fewer. Same encoder, latents and BatchNorm as the full VAE."""


def _flux2_class() -> type:
    try:
        from diffusers import AutoencoderKLFlux2
        from diffusers.utils import logging
    except ImportError as error:
        raise ImportError(
            "the FLUX.2 VAE comes from diffusers (the workspace's `interop` group): "
            "uv sync --group interop, or pip install 'diffusers>=0.36'"
        ) from error
    # diffusers warns on every `.to(dtype)` of a VAE it would keep partly in float32; we cast
    # on purpose (same dtype for every model compared), so only errors are shown.
    logging.set_verbosity_error()
    return AutoencoderKLFlux2


def build_flux2_vae(
    source: str | None = None,
    *,
    subfolder: str | None = None,
    tiny: bool = False,
    small_decoder: bool = False,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> torch.nn.Module:
    """`AutoencoderKLFlux2` in eval mode: its default config (or `TINY_FLUX2_CONFIG`) with random
    weights when `source` is None, else `from_pretrained(source, subfolder=...)` (a folder or a
    Hub repo id). `small_decoder`: random weights with the FLUX.2 small decoder's widths
    (`FLUX2_SMALL_DECODER_CHANNELS`); a saved small decoder brings them in its own config."""
    if small_decoder and (source is not None or tiny):
        raise ValueError(
            "small_decoder: builds random weights at the published widths; expected no "
            f"source and tiny=False, got source={source!r}, tiny={tiny}"
        )
    vae_class = _flux2_class()
    if source is not None:
        vae = vae_class.from_pretrained(source, subfolder=subfolder)
    elif small_decoder:
        vae = vae_class(decoder_block_out_channels=FLUX2_SMALL_DECODER_CHANNELS)
    else:
        vae = vae_class(**TINY_FLUX2_CONFIG) if tiny else vae_class()
    return vae.to(device=device, dtype=dtype).eval()


def flux2_encode(vae: torch.nn.Module, images: Tensor) -> Tensor:
    """images [N, 3, H, W] in [-1, 1] -> posterior mean [N, 32, H/8, W/8], the VAE's dtype."""
    return vae.encode(images).latent_dist.mean


def flux2_decode(vae: torch.nn.Module, latents: Tensor) -> Tensor:
    """latents [N, 32, h, w] -> images [N, 3, 8h, 8w], ~[-1, 1], the VAE's dtype."""
    return vae.decode(latents).sample


def flux2_whitened_patchified(vae: torch.nn.Module, latents: Tensor) -> Tensor:
    """latents [N, 32, h, w] -> [N, 128, h/2, w/2] patchified and BN-whitened, float32.

    The FLUX.2 pipeline layout that capacitor_decoder's `decode` takes by default.
    """
    patchified = space_to_channels(latents.float())  # [N, 32, h, w] -> [N, 128, h/2, w/2]
    eps = float(vae.config.batch_norm_eps)
    return whiten(patchified, vae.bn.running_mean, vae.bn.running_var, eps)
