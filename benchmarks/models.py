"""The models compared: each installed family's presets (random weights) and the FLUX.2 VAE,
behind one interface with generic `encode` and `decode`.

Families come only from `diffae_core.families.installed_families()`. A family's `decode`
takes random latents [N, config.latent_channels, H/p, W/p] (p = the effective patch size);
capacitor_decoder's are FLUX.2-layout latents [N, 128, H/16, W/16], and it has no encoder.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from diffae.models import patch_multiple
from diffae_core.families import Family, installed_families

from .flux2 import (
    FLUX2_DOWNSAMPLING,
    FLUX2_LATENT_CHANNELS,
    FLUX2_NAME,
    FLUX2_SMALL_DECODER_NAME,
    build_flux2_vae,
    flux2_decode,
    flux2_encode,
)

Encode = Callable[[Tensor], Any]
"""images [N, 3, H, W] in [-1, 1] -> latents."""
Decode = Callable[[Tensor, int, int], Any]
"""(latents, height, width) -> images [N, 3, height, width]."""


@dataclass(frozen=True)
class Candidate:
    """One model under test, with what is needed to feed it."""

    name: str
    module: nn.Module
    latent_channels: int
    pixels_per_latent: int
    encode: Encode | None
    decode: Decode | None

    def latent_shape(self, batch: int, height: int, width: int) -> tuple[int, int, int, int]:
        """[N, C, h, w] of the latents `decode` takes for images of height x width."""
        cell = self.pixels_per_latent
        return (batch, self.latent_channels, height // cell, width // cell)

    def parameters(self) -> int:
        """Learnable values, each tensor once."""
        return sum(p.numel() for p in self.module.parameters())


def select_families(names: list[str] | None) -> dict[str, Family]:
    """The installed families named (all when None); an unknown name is an error."""
    families = installed_families()
    if not families:
        raise SystemExit("no diffae family is installed (diffae.families entry points)")
    if names is None:
        return families
    unknown = [name for name in names if name not in families]
    if unknown:
        raise SystemExit(f"--families: expected names from {list(families)}, got {unknown}")
    return {name: families[name] for name in names}


def save_preset(family_name: str, preset: str, folder: Path) -> Family:
    """A family's preset ("tiny": its test config) with PyTorch's default initialisation,
    saved to `folder` in the published layout, for scripts that time loading as well."""
    family = select_families([family_name])[family_name]
    config = family.tiny_config if preset == "tiny" else family.config_class.preset(preset)
    family.model_class(config).save_pretrained(folder)
    return family


def family_calls(model: Any) -> dict[str, Encode | Decode | None]:
    """`encode` and `decode` of a family model, or of its `compile_for_inference()` handle.

    decode: one step without PDG, the initial noise drawn unseeded on the latents' device.
    """
    encode = getattr(model, "encode", None)
    return {"encode": encode, "decode": _decoding(model)}


def _decoding(model: Any) -> Decode:
    """One 1-step decode without PDG, the initial noise drawn unseeded on the latents' device."""
    inference_config = model.inference_config_class(num_steps=1, pdg=False)
    takes_noise = "noise" in inspect.signature(model.decode).parameters
    noise_std = float(getattr(model.config, "pixel_noise_std", 1.0))

    def run(latents: Tensor, height: int, width: int) -> Tensor:
        keywords: dict[str, Any] = {"inference_config": inference_config}
        if takes_noise:
            # A seeded CPU-generator draw inside decode would break a torch.compile graph.
            shape = (latents.shape[0], 3, height, width)
            keywords["noise"] = torch.randn(shape, device=latents.device) * noise_std
        return model.decode(latents, height, width, **keywords)

    return run


def family_candidate(
    family: Family,
    config: Any,
    name: str,
    *,
    device: torch.device,
    dtype: torch.dtype,
    model: nn.Module | None = None,
) -> Candidate:
    """A family model built from `config` (PyTorch's default init) or the `model` given."""
    if model is None:
        model = family.model_class(config)
    model = model.to(device=device, dtype=dtype).eval()
    return Candidate(
        name=name,
        module=model,
        latent_channels=int(model.config.latent_channels),
        pixels_per_latent=patch_multiple(model.config),
        **family_calls(model),
    )


def flux2_candidate(
    *, device: torch.device, dtype: torch.dtype, tiny: bool = False, small_decoder: bool = False
) -> Candidate:
    """The FLUX.2 VAE from its default config (or a tiny one) with random weights; with
    `small_decoder`, BFL's small decoder (decode only: its encoder is the full VAE's)."""
    vae = build_flux2_vae(device=device, dtype=dtype, tiny=tiny, small_decoder=small_decoder)

    def encode(images: Tensor) -> Tensor:
        return flux2_encode(vae, images)

    def decode(latents: Tensor) -> Tensor:
        return flux2_decode(vae, latents)

    return Candidate(
        name=FLUX2_SMALL_DECODER_NAME if small_decoder else FLUX2_NAME,
        module=vae,
        latent_channels=FLUX2_LATENT_CHANNELS,
        pixels_per_latent=FLUX2_DOWNSAMPLING,
        encode=None if small_decoder else encode,
        decode=lambda latents, height, width: decode(latents),
    )
