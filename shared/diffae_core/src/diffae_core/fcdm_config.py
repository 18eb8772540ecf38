"""`FCDMConfig`: the published `config.json` fields every FCDM family shares, declared once.

fcdm_diffae, full_capacitor, capacitor_decoder and dinac_ae publish the same 18 architecture
fields (`in_channels`, `patch_size`, `model_dim`, ... `latent_running_stats_eps`), in that order.
A family's config subclasses `FCDMConfig`, re-declares only the fields whose default differs
(a re-declared dataclass field keeps its place), adds its own fields after them, and narrows the
accepted values through the `ALLOWED_*` class variables. Defaults here are the semdisdiffae (p16)
release's.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from .config import (
    JsonConfig,
    LatentLayout,
    check_architecture_fields,
    check_choice,
    check_positive,
)
from .fcdm_encoder import POSTERIOR_KINDS

BOTTLENECK_PATCHIFY_MODES = (None, "off", "patch_2x2")
"""None: the release's file has no such field; "patch_2x2": latents are 2x2-patchified."""
BOTTLENECK_NORM_MODES = ("disabled", "channel_wise")
DEFAULT_WHITENING_EPS = 1e-4
"""Whitening eps of the releases whose config has no `latent_running_stats_eps` (semdisdiffae
p16 and p32 v1). Open point (fcdm_diffae spec §12.5): 1e-4 as in p32_v2, the value every other
release writes; it changes latent values only, never a reconstruction."""


@dataclass(frozen=True)
class FCDMConfig(LatentLayout, JsonConfig):
    """The shared FCDM architecture fields and their checks; defaults: semdisdiffae (p16).

    A field whose default is None is optional in the file (see `JsonConfig`): a family whose
    release may omit `encoder_depth` re-declares it `int | None = None`.
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

    ALLOWED_POSTERIOR_KINDS: ClassVar[tuple[Any, ...] | None] = POSTERIOR_KINDS
    """Accepted `bottleneck_posterior_kind` values; None: not checked (a decoder ignores it)."""
    ALLOWED_NORM_MODES: ClassVar[tuple[Any, ...] | None] = BOTTLENECK_NORM_MODES
    """Accepted `bottleneck_norm_mode` values; None: not checked."""
    ALLOWED_PATCHIFY_MODES: ClassVar[tuple[Any, ...]] = BOTTLENECK_PATCHIFY_MODES
    """Accepted `bottleneck_patchify_mode` values (None: absent from the file)."""

    def __post_init__(self) -> None:
        check_architecture_fields(self)
        start, end = self.decoder_start_blocks, self.decoder_end_blocks
        for name, value in (("decoder_start_blocks", start), ("decoder_end_blocks", end)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"{name}: expected an int >= 0, got {value!r}")
        if start + end > self.decoder_depth:
            raise ValueError(
                f"decoder_depth: expected >= decoder_start_blocks + decoder_end_blocks = "
                f"{start + end}, got {self.decoder_depth}"
            )
        for name, allowed in (
            ("bottleneck_posterior_kind", self.ALLOWED_POSTERIOR_KINDS),
            ("bottleneck_norm_mode", self.ALLOWED_NORM_MODES),
            ("bottleneck_patchify_mode", self.ALLOWED_PATCHIFY_MODES),
        ):
            if allowed is not None:
                check_choice(name, getattr(self, name), allowed)
        if self.latent_running_stats_eps is not None:
            check_positive("latent_running_stats_eps", self.latent_running_stats_eps, float)

    @property
    def whitening_eps(self) -> float:
        """The eps of sqrt(running_var + eps) in whiten/dewhiten."""
        if self.latent_running_stats_eps is None:
            return DEFAULT_WHITENING_EPS
        return self.latent_running_stats_eps
