"""Configs of the SemDisDiffAE releases: the published `config.json` fields, verbatim."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from diffae_core.config import JsonConfig, LatentLayout, check_choice, check_positive
from diffae_core.fcdm_config import check_fcdm_fields
from diffae_core.fcdm_encoder import POSTERIOR_KINDS
from diffae_core.inference import VPInferenceConfig

DEFAULT_WHITENING_EPS = 1e-4
"""Whitening eps of the releases whose config has no `latent_running_stats_eps` (p16, p32 v1).
Open point (fcdm_diffae spec §12.5): 1e-4 as in p32_v2; it never changes a reconstruction."""

BOTTLENECK_NORM_MODES = ("disabled", "channel_wise")


@dataclass(frozen=True)
class FCDMDiffAEConfig(LatentLayout, JsonConfig):
    """Architecture of one SemDisDiffAE checkpoint; defaults are the semdisdiffae (p16) release.

    `bottleneck_patchify_mode` exists only in semdisdiffae_p32 (v1) and
    `latent_running_stats_eps` only in semdisdiffae_p32_v2: `None` means "not in this release's
    file", and such a field is not written back by `save`.
    """

    in_channels: int = 3
    patch_size: int = 16
    model_dim: int = 896
    encoder_depth: int = 4
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
    latent_running_stats_eps: float | None = None

    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {
        "semdisdiffae": {},
        "semdisdiffae_p32": {"bottleneck_patchify_mode": "patch_2x2"},
        "semdisdiffae_p32_v2": {
            "patch_size": 32,
            "model_dim": 1024,
            "encoder_depth": 8,
            "bottleneck_dim": 384,
            "latent_running_stats_eps": 0.0001,
        },
    }

    def __post_init__(self) -> None:
        check_fcdm_fields(self)
        check_choice("bottleneck_posterior_kind", self.bottleneck_posterior_kind, POSTERIOR_KINDS)
        check_choice("bottleneck_norm_mode", self.bottleneck_norm_mode, BOTTLENECK_NORM_MODES)
        if self.latent_running_stats_eps is not None:
            check_positive("latent_running_stats_eps", self.latent_running_stats_eps, float)

    @property
    def whitening_eps(self) -> float:
        """The eps of sqrt(running_var + eps) in whiten/dewhiten."""
        if self.latent_running_stats_eps is None:
            return DEFAULT_WHITENING_EPS
        return self.latent_running_stats_eps


@dataclass
class FCDMDiffAEInferenceConfig(VPInferenceConfig):
    """Decoding settings. Defaults: 1 DDIM step, linear schedule, no PDG (PSNR-optimal).

    The cards' "perceptual sharpening" setting: num_steps=10, pdg=True, pdg_strength=2.0.
    """
