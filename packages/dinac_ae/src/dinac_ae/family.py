"""The `diffae.families` entry point of this package (see diffae_core.families)."""

from __future__ import annotations

import dataclasses

from diffae_core.families import Family

from .config import DinacAEConfig, DinacAEInferenceConfig

TINY_CONFIG = DinacAEConfig(
    patch_size=4,
    model_dim=128,
    encoder_depth=2,
    decoder_depth=5,
    bottleneck_dim=4,
    adaln_low_rank_rank=4,
    class_head_feature_dim=64,
    class_head_model_dim=64,
    class_head_head_dim=32,
)
"""A structurally complete DINAC-AE (2 encoder heads, 2 + 1 + 2 decoder blocks, 2 class-head
heads, 4 registers) small enough for tests."""

FAMILY = Family(
    name="dinac_ae",
    model="dinac_ae.model:DinacAE",
    config_class=DinacAEConfig,
    inference_config_class=DinacAEInferenceConfig,
    repo_ids=tuple(f"data-archetype/{name}" for name in DinacAEConfig.PRESETS),
    tiny_config=TINY_CONFIG,
    tiny_variants={
        "dinac_ae": dataclasses.replace(TINY_CONFIG, encoder_depth=1),
        "dinac_ae_d2": TINY_CONFIG,
    },
    card_psnr={"data-archetype/dinac_ae_d2": 35.59, "data-archetype/dinac_ae": 35.19},
)
