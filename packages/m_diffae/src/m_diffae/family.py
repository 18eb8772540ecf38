"""The `diffae.families` entry point of this package (see diffae_core.families)."""

from __future__ import annotations

from diffae_core.families import Family

from .config import MDiffAEConfig, MDiffAEInferenceConfig
from .model import MDiffAE

TINY_CONFIG = MDiffAEConfig(
    patch_size=4,
    model_dim=16,
    encoder_depth=2,
    decoder_depth=2,
    bottleneck_dim=4,
    adaln_low_rank_rank=4,
    depthwise_kernel_size=3,
)
"""A structurally complete mDiffAE (every key kind, 2 + 2 blocks) small enough for tests."""

FAMILY = Family(
    name="m_diffae",
    model_class=MDiffAE,
    config_class=MDiffAEConfig,
    inference_config_class=MDiffAEInferenceConfig,
    # The spelling the repository's files were read under, then the card's; `from_pretrained`
    # tries each as given, then the other (open_points.REPO_ID_ALIASES).
    repo_ids=("data-archetype/mdiffae-v1", "data-archetype/mdiffae_v1"),
    tiny_config=TINY_CONFIG,
    tiny_variants={"mdiffae_v1": TINY_CONFIG},
)
