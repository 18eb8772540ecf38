"""Config of the full_capacitor release: the published `config.json` fields, verbatim."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from diffae_core.config import JsonConfig, LatentLayout, check_choice, check_positive
from diffae_core.fcdm_config import check_fcdm_fields
from diffae_core.fcdm_encoder import POSTERIOR_KINDS
from diffae_core.inference import StrengthVPInferenceConfig


@dataclass(frozen=True)
class FullCapacitorConfig(LatentLayout, JsonConfig):
    """Architecture of full_capacitor; defaults are the spec's expected release values.

    The release's `config.json` could not be read (spec §3.5, U3-U5): fields follow the FCDM
    family's names and order. The latent layout comes from `bottleneck_patchify_mode`: absent
    (None) or "off" gives [N, 128, H/16, W/16] latents (the spec's default, L16); "patch_2x2"
    gives [N, 512, H/32, W/32] (L32).
    """

    in_channels: int = 3
    patch_size: int = 16
    model_dim: int = 896
    encoder_depth: int = 8
    decoder_depth: int = 8
    decoder_start_blocks: int = 2
    decoder_end_blocks: int = 2
    bottleneck_dim: int = 128
    mlp_ratio: float = 4.0
    depthwise_kernel_size: int = 7
    adaln_low_rank_rank: int = 128
    bottleneck_posterior_kind: str = "diagonal_gaussian"
    bottleneck_norm_mode: str = "disabled"
    bottleneck_patchify_mode: str | None = None
    logsnr_min: float = -10.0
    logsnr_max: float = 10.0
    pixel_noise_std: float = 0.558
    latent_running_stats_eps: float = 0.0001

    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {"full_capacitor": {}}

    def __post_init__(self) -> None:
        check_fcdm_fields(self)
        check_choice("bottleneck_posterior_kind", self.bottleneck_posterior_kind, POSTERIOR_KINDS)
        # No release normalises the bottleneck; the model refuses other modes.
        check_choice("bottleneck_norm_mode", self.bottleneck_norm_mode, ("disabled",))
        check_positive("latent_running_stats_eps", self.latent_running_stats_eps, float)

    @property
    def whitening_eps(self) -> float:
        """The eps of sqrt(running_var + eps) in whiten/dewhiten."""
        return self.latent_running_stats_eps


@dataclass
class FullCapacitorInferenceConfig(StrengthVPInferenceConfig):
    """Decoding settings. Defaults: 1 DDIM step, linear schedule, no PDG (the card's setting).

    `strength` (schedule starts at t = strength; 1.0 changes nothing) is kept as the spec's
    open point U7 recommends; it precedes `seed`, as in the published class.
    """
