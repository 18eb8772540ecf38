"""Checks and derived sizes shared by the configs of the FCDM families (SemDisDiffAE layout).

fcdm_diffae, full_capacitor and capacitor_decoder publish the same architecture fields
(`in_channels`, `patch_size`, `model_dim`, `decoder_depth`, ...); their `__post_init__` calls
`check_fcdm_fields` instead of repeating the checks.
"""

from __future__ import annotations

from typing import Any

from .config import check_choice, check_positive

BOTTLENECK_PATCHIFY_MODES = (None, "off", "patch_2x2")
"""None: the release's file has no such field; "patch_2x2": latents are 2x2-patchified."""


def check_fcdm_fields(config: Any) -> None:
    """Raise ValueError naming the first unusable FCDM architecture field of `config`.

    `encoder_depth` is checked when the config has it and it is not None (decoder-only files
    may omit it).
    """
    for name in (
        "in_channels",
        "patch_size",
        "model_dim",
        "decoder_depth",
        "bottleneck_dim",
        "depthwise_kernel_size",
        "adaln_low_rank_rank",
    ):
        check_positive(name, getattr(config, name))
    if getattr(config, "encoder_depth", None) is not None:
        check_positive("encoder_depth", config.encoder_depth)
    check_positive("mlp_ratio", config.mlp_ratio, float)
    check_positive("pixel_noise_std", config.pixel_noise_std, float)
    start, end = config.decoder_start_blocks, config.decoder_end_blocks
    for name, value in (("decoder_start_blocks", start), ("decoder_end_blocks", end)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"{name}: expected an int >= 0, got {value!r}")
    if start + end > config.decoder_depth:
        raise ValueError(
            f"decoder_depth: expected >= decoder_start_blocks + decoder_end_blocks = "
            f"{start + end}, got {config.decoder_depth}"
        )
    if config.depthwise_kernel_size % 2 == 0:
        raise ValueError(
            f"depthwise_kernel_size: expected an odd size, got {config.depthwise_kernel_size}"
        )
    if not config.logsnr_min < config.logsnr_max:
        raise ValueError(
            f"logsnr_min, logsnr_max: expected min < max, got {config.logsnr_min}, "
            f"{config.logsnr_max}"
        )
    if getattr(config, "bottleneck_patchify_mode", None) is not None:
        check_choice(
            "bottleneck_patchify_mode", config.bottleneck_patchify_mode, BOTTLENECK_PATCHIFY_MODES
        )
