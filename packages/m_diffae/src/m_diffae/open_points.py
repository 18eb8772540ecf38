"""Every choice the public mDiffAE sources leave open, in one place.

Defaults are the spec's recommendations. To evaluate an alternative with the real weights, subclass
the model with another `OpenPoints`:

    Variant = type("Variant", (MDiffAE,), {"open_points": OpenPoints(modulation_order="s1s2g1g2")})
    model = Variant.from_pretrained(folder)

`MDiffAE.open_points` is a class attribute, not part of the published `config.json`: a saved
model records none of these choices, and loading it builds whatever the loading class says.
Save a variant's weights and load them with the same variant class.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from diffae_core.config import check_choice

MODULATION_ORDERS: dict[str, tuple[int, int, int, int]] = {
    "s1g1s2g2": (0, 1, 2, 3),
    "s1s2g1g2": (0, 2, 1, 3),
    "g1s1g2s2": (1, 0, 3, 2),
}
"""Chunk index of (scale1, gate1, scale2, gate2) in a block's `adaln_m` [N, 4C], by packing."""

MASK_PLACES = ("latent", "fused")
MASK_DRAWS = ("uniform", "grid_2x2")


def check_bool(field: str, value: Any) -> None:
    """Raise ValueError naming `field` unless `value` is True or False (1 and 1.0 refused)."""
    if not isinstance(value, bool):
        raise ValueError(f"{field}: expected True or False, got {value!r}")


@dataclass(frozen=True)
class OpenPoints:
    """Switches for the points the checkpoint or the published code has not settled.

    modulation_order: how the decoder blocks split `adaln_m` into (s1, g1, s2, g2) [I].
    mlp_renorm: the MLP path re-normalises its (modulated) input inside ConvMLP [I]; False
        feeds the modulated `norm2` output straight to `conv_in`.
    mask_at: PDG replaces tokens of the normalised latent features ("latent", before `fuse_in`)
        or of the fused features ("fused") [I].
    mask_draw: PDG mask positions: round(ratio * h * w) uniform positions per sample
        ("uniform"), or one kept token per 2x2 group as in training ("grid_2x2") [O].
    encoder_norm_out_affine: the encoder's output RMSNorm has weight and bias [64] (reading A of
        the card's 81,410,624 then counts `parameters()` exactly) [O].
    time_embed_freqs_persistent: the checkpoint stores `decoder.time_embed.freqs` [128] (
        lists it; the FCDM siblings store theirs) [I]. False computes it and saves no key.
    """

    modulation_order: str = "s1g1s2g2"
    mlp_renorm: bool = True
    mask_at: str = "latent"
    mask_draw: str = "uniform"
    encoder_norm_out_affine: bool = True
    time_embed_freqs_persistent: bool = True

    def __post_init__(self) -> None:
        check_choice("modulation_order", self.modulation_order, tuple(MODULATION_ORDERS))
        check_choice("mask_at", self.mask_at, MASK_PLACES)
        check_choice("mask_draw", self.mask_draw, MASK_DRAWS)
        check_bool("mlp_renorm", self.mlp_renorm)
        check_bool("encoder_norm_out_affine", self.encoder_norm_out_affine)
        check_bool("time_embed_freqs_persistent", self.time_embed_freqs_persistent)


DEFAULT_OPEN_POINTS = OpenPoints()

REPO_ID_ALIASES: dict[str, str] = {
    "data-archetype/mdiffae-v1": "data-archetype/mdiffae_v1",
    "data-archetype/mdiffae_v1": "data-archetype/mdiffae-v1",
}
"""Each Hub spelling of the release -> the other one, tried when the first is not found (neither
in the cache nor on the Hub). The repository's files were read under `mdiffae-v1` (the
sibling is `mdiffae-v2`); the card's snippet and citation write `mdiffae_v1`. Which one the Hub
serves is not re-checked here, so both are accepted, each tried as given first."""

MASK_SEED_OFFSET = 1_000_003
"""PDG mask positions come from their own CPU generator seeded with `seed + MASK_SEED_OFFSET`, so
they are reproducible with the inference seed yet not drawn from the same stream as the noise."""

UNVERIFIED_KEYS: dict[str, tuple[str, ...]] = {
    "CCA name and layout": ("encoder.blocks.0.cca.proj.weight",),
    "conv3 name": ("encoder.blocks.0.conv3.weight",),
    "MLP attribute name": ("encoder.blocks.0.mlp.conv_in.weight",),
    "encoder gate names and shapes": ("encoder.blocks.0.gate1", "encoder.blocks.0.gate2"),
    "mask feature name": ("decoder.mask_feature",),
}
"""Key names the spec inferred without seeing the file, by the open point
`diffae.investigation.m_diffae` names after them; block keys are shown for block 0. A spelling a
real header shows goes in `MDiffAE.checkpoint_key_aliases` (published key -> ours)."""
