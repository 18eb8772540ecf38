"""The `diffae.families` entry point of this package (see diffae_core.families)."""

from __future__ import annotations

from diffae_core.families import Family

from .config import FCDMDiffAEConfig, FCDMDiffAEInferenceConfig
from .model import FCDMDiffAE

TINY_CONFIG = FCDMDiffAEConfig(
    patch_size=4,
    model_dim=16,
    encoder_depth=2,
    decoder_depth=5,
    bottleneck_dim=4,
    adaln_low_rank_rank=4,
    latent_running_stats_eps=0.0001,
)
"""A structurally complete SemDisDiffAE (2 + 1 + 2 decoder blocks) small enough for tests."""

FAMILY = Family(
    name="fcdm_diffae",
    model_class=FCDMDiffAE,
    config_class=FCDMDiffAEConfig,
    inference_config_class=FCDMDiffAEInferenceConfig,
    repo_ids=tuple(f"data-archetype/{name}" for name in FCDMDiffAEConfig.PRESETS),
    tiny_config=TINY_CONFIG,
)
