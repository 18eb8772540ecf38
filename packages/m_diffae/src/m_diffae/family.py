"""The `diffae.families` entry point of this package (see diffae_core.families)."""

from __future__ import annotations

import itertools

from diffae_core.families import Family, model_variant

from .config import MDiffAEConfig, MDiffAEInferenceConfig
from .open_points import DEFAULT_OPEN_POINTS, MODULATION_ORDERS, OpenPoints

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


def _open_variants() -> dict[str, type]:
    """MDiffAE under each modulation order x MLP re-normalisation (`open_points`), the
    default first. The PDG-only points (mask place and draw) do not change 1-step
    reconstructions; the key-presence points are settled by the header."""
    from .model import MDiffAE

    default = (DEFAULT_OPEN_POINTS.modulation_order, DEFAULT_OPEN_POINTS.mlp_renorm)
    variants = {f"modulation_order={default[0]}, mlp_renorm={default[1]} (default)": MDiffAE}
    for order, renorm in itertools.product(MODULATION_ORDERS, (True, False)):
        if (order, renorm) != default:
            points = OpenPoints(modulation_order=order, mlp_renorm=renorm)
            label = f"modulation_order={order}, mlp_renorm={renorm}"
            variants[label] = model_variant(MDiffAE, open_points=points)
    return variants


FAMILY = Family(
    name="m_diffae",
    model="m_diffae.model:MDiffAE",
    config_class=MDiffAEConfig,
    inference_config_class=MDiffAEInferenceConfig,
    # The spelling the repository's files were read under, then the card's; `from_pretrained`
    # tries each as given, then the other (open_points.REPO_ID_ALIASES).
    repo_ids=("data-archetype/mdiffae-v1", "data-archetype/mdiffae_v1"),
    tiny_config=TINY_CONFIG,
    tiny_variants={"mdiffae_v1": TINY_CONFIG},
    open_variants_of=_open_variants,
    card_psnr={"data-archetype/mdiffae_v1": 34.15, "data-archetype/mdiffae-v1": 34.15},
)
