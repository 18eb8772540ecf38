"""Config of the full_capacitor release: the published `config.json` fields, verbatim."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from diffae_core.config import FCDMConfig, StrengthVPInferenceConfig


@dataclass(frozen=True)
class FullCapacitorConfig(FCDMConfig):
    """Architecture of full_capacitor: the core FCDM fields; defaults are the spec's expected
    release values (8 encoder blocks, eps 1e-4 required).

    The release's `config.json` could not be read: fields follow the FCDM
    family's names and order. The latent layout comes from `bottleneck_patchify_mode`: absent
    (None) or "off" gives [N, 128, H/16, W/16] latents (the spec's default, L16); "patch_2x2"
    gives [N, 512, H/32, W/32] (L32).
    """

    encoder_depth: int = 8
    latent_running_stats_eps: float = 0.0001

    # No release normalises the bottleneck; the model refuses other modes.
    ALLOWED_NORM_MODES: ClassVar[tuple[Any, ...] | None] = ("disabled",)
    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {"full_capacitor": {}}


@dataclass
class FullCapacitorInferenceConfig(StrengthVPInferenceConfig):
    """Decoding settings. Defaults: 1 DDIM step, linear schedule, no PDG (the card's setting).

    `strength` (schedule starts at t = strength; 1.0 changes nothing) is kept as the spec's
    open point U7 recommends; it precedes `seed`, as in the published class.
    """
