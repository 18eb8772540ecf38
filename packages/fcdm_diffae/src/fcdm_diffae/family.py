"""The `diffae.families` entry point of this package (see diffae_core.families)."""

from __future__ import annotations

import dataclasses

from diffae_core.families import Family, boolean_variants

from .config import FCDMDiffAEConfig, FCDMDiffAEInferenceConfig

TINY_VARIANTS = {
    name: dataclasses.replace(
        FCDMDiffAEConfig.preset(name),
        patch_size=4,
        model_dim=16,
        encoder_depth=2,
        decoder_depth=5,
        bottleneck_dim=4,
        adaln_low_rank_rank=4,
    )
    for name in ("semdisdiffae_p32", "semdisdiffae_p32_v2")
}
"""Each release's structure with a 2 + 1 + 2-block decoder, small enough for tests: p32 v1 (the
2x2 bottleneck patchify, no eps field) and p32_v2 (its eps field). p16 differs from p32_v2 only
in sizes and the absent eps field (whose default is the same 1e-4), so at tiny sizes it would be
the same model again."""

TINY_CONFIG = TINY_VARIANTS["semdisdiffae_p32_v2"]


def open_variants() -> dict[str, type]:
    """The one open point that changes outputs (`model.ENCODER_NORMALIZES_MEAN`)."""
    from .model import FCDMDiffAE

    return boolean_variants(FCDMDiffAE, "encoder_normalizes_mean")


FAMILY = Family(
    name="fcdm_diffae",
    model="fcdm_diffae.model:FCDMDiffAE",
    config_class=FCDMDiffAEConfig,
    inference_config_class=FCDMDiffAEInferenceConfig,
    repo_ids=tuple(f"data-archetype/{name}" for name in FCDMDiffAEConfig.PRESETS),
    tiny_config=TINY_CONFIG,
    tiny_variants=TINY_VARIANTS,
    open_variants_of=open_variants,
    card_psnr={"data-archetype/semdisdiffae_p32_v2": 36.06},
)
