"""Config of the capacitor_decoder release: the published `config.json` fields, verbatim."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from diffae_core.config import FCDMConfig, StrengthVPInferenceConfig

FLUX2_LATENT_CHANNELS = 32
FLUX2_PATCHIFIED_CHANNELS = 4 * FLUX2_LATENT_CHANNELS
FLUX2_PIXELS_PER_CELL = 16
"""8x VAE downsampling times the 2x2 patchify. (The FLUX.2 sizes live here, not in `flux2.py`,
so that the config, and `diffae inspect`, need no torch.)"""


@dataclass(frozen=True)
class CapacitorDecoderConfig(FCDMConfig):
    """Architecture of the capacitor decoder: the core FCDM fields; defaults are the spec's
    expected release values.

    The release's `config.json` could not be read: fields follow the FCDM
    family's names and order. `encoder_depth`, `bottleneck_posterior_kind` and
    `bottleneck_norm_mode` are encoder fields the file may carry; `None` means "absent", they are
    accepted and ignored by the decoder (the class must accept every field the file
    has). `bottleneck_patchify_mode` likewise, but only absent or "off": "patch_2x2" would
    change the latent layout away from FLUX.2's and is refused. `bottleneck_dim` and
    `patch_size` are fixed by the FLUX.2 input ([N, 128, H/16, W/16]).
    """

    encoder_depth: int | None = None
    bottleneck_posterior_kind: str | None = None
    bottleneck_norm_mode: str | None = None
    latent_running_stats_eps: float = 0.0001

    ALLOWED_POSTERIOR_KINDS: ClassVar[tuple[Any, ...] | None] = None
    ALLOWED_NORM_MODES: ClassVar[tuple[Any, ...] | None] = None
    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {"capacitor_decoder": {}}

    def __post_init__(self) -> None:
        if self.bottleneck_patchify_mode not in (None, "off"):
            raise ValueError(
                f"bottleneck_patchify_mode: expected absent or 'off' (the decoder takes FLUX.2 "
                f"latents, already 2x2-patchified to {FLUX2_PATCHIFIED_CHANNELS} channels), "
                f"got {self.bottleneck_patchify_mode!r}"
            )
        super().__post_init__()
        if self.bottleneck_dim != FLUX2_PATCHIFIED_CHANNELS:
            raise ValueError(
                f"bottleneck_dim: expected {FLUX2_PATCHIFIED_CHANNELS} (FLUX.2 latents, "
                f"2x2-patchified), got {self.bottleneck_dim}"
            )
        if self.patch_size != FLUX2_PIXELS_PER_CELL:
            raise ValueError(
                f"patch_size: expected {FLUX2_PIXELS_PER_CELL} (one patchified FLUX.2 latent "
                f"cell covers 16x16 pixels), got {self.patch_size}"
            )


@dataclass
class CapacitorDecoderInferenceConfig(StrengthVPInferenceConfig):
    """Decoding settings. Defaults: 1 DDIM step, linear schedule, no PDG (the card's setting).

    `strength` (schedule starts at t = strength; 1.0 changes nothing) is kept as the spec's
    open point U7 recommends; it precedes `seed`, as in the published class.
    """
