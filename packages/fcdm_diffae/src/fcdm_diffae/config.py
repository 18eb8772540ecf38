"""Configs of the SemDisDiffAE releases: the published `config.json` fields, verbatim."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from diffae_core.config import FCDMConfig, VPInferenceConfig


@dataclass(frozen=True)
class FCDMDiffAEConfig(FCDMConfig):
    """Architecture of one SemDisDiffAE checkpoint: the core FCDM fields, whose defaults are the
    semdisdiffae (p16) release's.

    `bottleneck_patchify_mode` exists only in semdisdiffae_p32 (v1) and
    `latent_running_stats_eps` only in semdisdiffae_p32_v2: `None` means "not in this release's
    file", and such a field is not written back by `save`. Without it the whitening eps is
    `diffae_core.config.DEFAULT_WHITENING_EPS`.
    """

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


@dataclass
class FCDMDiffAEInferenceConfig(VPInferenceConfig):
    """Decoding settings. Defaults: 1 DDIM step, linear schedule, no PDG (PSNR-optimal).

    The cards' "perceptual sharpening" setting: num_steps=10, pdg=True, pdg_strength=2.0.
    """
