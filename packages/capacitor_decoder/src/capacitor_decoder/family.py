"""The `diffae.families` entry point of this package (see diffae_core.families)."""

from __future__ import annotations

from diffae_core.families import DecodeSwitch, Family

from .config import CapacitorDecoderConfig, CapacitorDecoderInferenceConfig

TINY_CONFIG = CapacitorDecoderConfig(model_dim=16, decoder_depth=5, adaln_low_rank_rank=4)
"""A structurally complete capacitor decoder (2 + 1 + 2 blocks) small enough for tests. It keeps
the FLUX.2 contract (128 latent channels, 16 pixels per cell), so 32x32 images work."""

RAW_LATENTS = DecodeSwitch(
    flag="raw-latents",
    keyword="latents_are_flux2_whitened",
    value=False,
    help="the latents are FLUX.2's 2x2-patchified latents without the BN whitening",
)
"""`diffae decode --raw-latents`: decode latents as FLUX.2's VAE encoder gives them."""

FAMILY = Family(
    name="capacitor_decoder",
    model="capacitor_decoder.model:CapacitorDecoder",
    config_class=CapacitorDecoderConfig,
    inference_config_class=CapacitorDecoderInferenceConfig,
    repo_ids=("data-archetype/capacitor_decoder",),
    tiny_config=TINY_CONFIG,
    tiny_variants={"capacitor_decoder": TINY_CONFIG},
    has_encoder=False,
    decode_switches=(RAW_LATENTS,),
    # With FLUX.2's encoder in front of it (the card's 2k benchmark).
    card_psnr={"data-archetype/capacitor_decoder": 36.34},
)
