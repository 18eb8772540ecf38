"""Configs of mDiffAE v1: the published `config.json` fields verbatim, and decoding settings."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from diffae_core.config import JsonConfig, check_positive
from diffae_core.inference import VPInferenceConfig


@dataclass(frozen=True)
class MDiffAEConfig(JsonConfig):
    """Architecture of one mDiffAE checkpoint; defaults are the mdiffae_v1 release (spec §3.1).

    pdg_mask_ratio: the fraction of latent tokens PDG replaces by the learned mask feature.
    """

    in_channels: int = 3
    patch_size: int = 16
    model_dim: int = 896
    encoder_depth: int = 4
    decoder_depth: int = 4
    bottleneck_dim: int = 64
    mlp_ratio: float = 4.0
    depthwise_kernel_size: int = 7
    adaln_low_rank_rank: int = 128
    logsnr_min: float = -10.0
    logsnr_max: float = 10.0
    pixel_noise_std: float = 0.558
    pdg_mask_ratio: float = 0.75

    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {"mdiffae_v1": {}}

    def __post_init__(self) -> None:
        for name in (
            "in_channels",
            "patch_size",
            "model_dim",
            "encoder_depth",
            "decoder_depth",
            "bottleneck_dim",
            "depthwise_kernel_size",
            "adaln_low_rank_rank",
        ):
            check_positive(name, getattr(self, name))
        check_positive("mlp_ratio", self.mlp_ratio, float)
        check_positive("pixel_noise_std", self.pixel_noise_std, float)
        if self.depthwise_kernel_size % 2 == 0:
            raise ValueError(
                f"depthwise_kernel_size: expected an odd size, got {self.depthwise_kernel_size}"
            )
        if not self.logsnr_min < self.logsnr_max:
            raise ValueError(
                f"logsnr_min, logsnr_max: expected min < max, got {self.logsnr_min}, "
                f"{self.logsnr_max}"
            )
        ratio = self.pdg_mask_ratio
        if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not 0 <= ratio <= 1:
            raise ValueError(f"pdg_mask_ratio: expected a number in [0, 1], got {ratio!r}")

    @property
    def latent_channels(self) -> int:
        """Channels of `encode`'s latents (64 for mdiffae_v1)."""
        return self.bottleneck_dim


@dataclass(init=False)
class MDiffAEInferenceConfig(VPInferenceConfig):
    """Decoding settings. Defaults: 1 DDIM step, linear schedule, no PDG (PSNR-optimal, card).

    PDG masks `pdg_mask_ratio` of the latent tokens for the weak prediction and is very
    sensitive here: use strengths 1.01-1.2 (card 1.05; larger values give artefacts).
    `pdg_enabled` (the iRDiffAE spelling) and `pdg` (the core's) name the same switch, as
    constructor keywords and as attributes. `seed` also seeds the PDG mask positions.
    """

    pdg_strength: float = 1.05

    def __init__(
        self,
        num_steps: int = 1,
        sampler: str = "ddim",
        schedule: str = "linear",
        pdg: bool | None = None,
        pdg_strength: float = 1.05,
        seed: int | None = None,
        *,
        pdg_enabled: bool | None = None,
    ) -> None:
        if pdg is not None and pdg_enabled is not None and pdg != pdg_enabled:
            raise ValueError(
                f"pdg, pdg_enabled: two spellings of one switch, got pdg={pdg!r} and "
                f"pdg_enabled={pdg_enabled!r}"
            )
        flag = pdg if pdg is not None else pdg_enabled
        self.num_steps = num_steps
        self.sampler = sampler
        self.schedule = schedule
        self.pdg = False if flag is None else flag
        self.pdg_strength = pdg_strength
        self.seed = seed

    @property
    def pdg_enabled(self) -> bool:
        """Alias of `pdg` (the name in the iRDiffAE lineage)."""
        return self.pdg

    @pdg_enabled.setter
    def pdg_enabled(self, value: bool) -> None:
        self.pdg = value
