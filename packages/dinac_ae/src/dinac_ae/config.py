"""Configs of the DINAC-AE releases: the published `config.json` fields, verbatim."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from diffae_core.config import (
    FCDMConfig,
    StrengthVPInferenceConfig,
    check_choice,
    check_multiple,
    check_positive,
)

MLP_TYPES = ("gelu", "silu", "relu")
"""The MLP activations a config may name (`model.ACTIVATIONS` maps each to its function)."""
"""The `encoder_mlp_type` / `class_head_mlp_type` values: "gelu", "silu", "relu"."""
ATTENTION_HEAD_DIM = 64
"""Channels per encoder attention head; `model_dim` must be a multiple of it."""
REGISTER_TOKEN_COUNT = 4
"""Register tokens of the class head: the reference accepts exactly 4."""


@dataclass(frozen=True)
class DinacAEConfig(FCDMConfig):
    """Architecture of one DINAC-AE checkpoint; defaults are the dinac_ae release (6 blocks).

    A transformer encoder (patch 16, width 896, 64-channel heads), the 8-block FCDM decoder of
    diffae_core, and a DINO class/token alignment head (`class_head_*`, width 768). The core
    FCDM fields come first (the release has no `bottleneck_patchify_mode`: only absent is
    accepted), then this family's own: `encoder_mlp_type` (which the published file lists after
    `mlp_ratio`; JSON key order carries no meaning) and the class head's.
    """

    encoder_depth: int = 6
    latent_running_stats_eps: float = 0.0001
    encoder_mlp_type: str = "gelu"
    class_head_feature_dim: int = 768
    class_head_model_dim: int = 768
    class_head_head_dim: int = 64
    class_head_mlp_ratio: float = 4.0
    class_head_mlp_type: str = "gelu"
    class_head_register_token_count: int = 4

    # No release normalises the bottleneck, and the reference refuses any other mode.
    ALLOWED_NORM_MODES: ClassVar[tuple[Any, ...] | None] = ("disabled",)
    ALLOWED_PATCHIFY_MODES: ClassVar[tuple[Any, ...]] = (None,)
    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {
        "dinac_ae": {},
        "dinac_ae_d2": {"encoder_depth": 8},
    }

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("class_head_feature_dim", "class_head_model_dim", "class_head_head_dim"):
            check_positive(name, getattr(self, name))
        check_positive("class_head_mlp_ratio", self.class_head_mlp_ratio, float)
        check_multiple("model_dim", self.model_dim, ATTENTION_HEAD_DIM)
        check_multiple("class_head_model_dim", self.class_head_model_dim, self.class_head_head_dim)
        # Axial RoPE splits each head between the y and x axes in (cos, sin) pairs.
        check_multiple("class_head_head_dim", self.class_head_head_dim, 4)
        if self.class_head_feature_dim != self.class_head_model_dim:
            # The head has no output projection: it predicts features at its own width.
            raise ValueError(
                f"class_head_feature_dim: expected class_head_model_dim = "
                f"{self.class_head_model_dim}, got {self.class_head_feature_dim}"
            )
        count = self.class_head_register_token_count
        if isinstance(count, bool) or not isinstance(count, int) or count != REGISTER_TOKEN_COUNT:
            # The class head's RoPE prefix and readout are built for exactly 4 registers.
            raise ValueError(
                f"class_head_register_token_count: expected {REGISTER_TOKEN_COUNT}, got {count!r}"
            )
        check_choice("encoder_mlp_type", self.encoder_mlp_type, MLP_TYPES)
        check_choice("class_head_mlp_type", self.class_head_mlp_type, MLP_TYPES)

    @property
    def encoder_heads(self) -> int:
        """Attention heads of each encoder block (model_dim / 64)."""
        return self.model_dim // ATTENTION_HEAD_DIM

    @property
    def class_head_heads(self) -> int:
        """Attention heads of the class head (class_head_model_dim / class_head_head_dim)."""
        return self.class_head_model_dim // self.class_head_head_dim


@dataclass
class DinacAEInferenceConfig(StrengthVPInferenceConfig):
    """Decoding settings. Defaults: 1 DDIM step (`num_steps` counts decoder evaluations, so 1
    is one NFE), linear schedule, no PDG, `strength` 1.0 (the full schedule).

    Fields, validation and `strength` all come from the core class, in the published order
    (num_steps, sampler, schedule, pdg, pdg_strength, strength, seed).
    """
