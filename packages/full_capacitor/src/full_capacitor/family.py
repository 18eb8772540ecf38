"""The `diffae.families` entry point of this package (see diffae_core.families)."""

from __future__ import annotations

import dataclasses

from diffae_core.families import Family, boolean_variants

from .config import FullCapacitorConfig, FullCapacitorInferenceConfig

TINY_CONFIG = FullCapacitorConfig(
    patch_size=4,
    model_dim=16,
    encoder_depth=2,
    decoder_depth=5,
    bottleneck_dim=4,
    adaln_low_rank_rank=4,
)
"""A structurally complete full_capacitor (2 + 1 + 2 decoder blocks) small enough for tests;
`dataclasses.replace(TINY_CONFIG, bottleneck_patchify_mode="patch_2x2")` is its L32 variant."""


def open_variants() -> dict[str, type]:
    """The open point that changes reconstructions (`model.ENCODER_NORMALIZES_MEAN`)."""
    from .model import FullCapacitor

    return boolean_variants(FullCapacitor, "encoder_normalizes_mean")


FAMILY = Family(
    name="full_capacitor",
    model="full_capacitor.model:FullCapacitor",
    config_class=FullCapacitorConfig,
    inference_config_class=FullCapacitorInferenceConfig,
    repo_ids=("data-archetype/full_capacitor",),
    tiny_config=TINY_CONFIG,
    tiny_variants={
        "full_capacitor": TINY_CONFIG,
        "full_capacitor_patch_2x2": dataclasses.replace(
            TINY_CONFIG, bottleneck_patchify_mode="patch_2x2"
        ),
    },
    open_variants_of=open_variants,
    card_psnr={"data-archetype/full_capacitor": 36.62},
)
