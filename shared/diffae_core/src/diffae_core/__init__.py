"""diffae_core: what every diffae model family shares.

Norms and FCDM blocks, AdaLN, time embedding, the FCDM encoder and decoder, VP schedule and
samplers with path-drop guidance, latent whitening, the encoder posterior, loading/saving and
the dtype policy. Images are [N, 3, H, W] RGB in [-1, 1]; latents are [N, C, h, w].
"""

from __future__ import annotations

import importlib
from typing import Any

_WHERE = {
    "WhitenedVPAutoencoder": "autoencoder",
    "WhitenedVPDecoder": "autoencoder",
    "build_fcdm_decoder": "autoencoder",
    "CheckpointError": "checkpoint",
    "CheckpointMismatchError": "checkpoint",
    "StateDiff": "checkpoint",
    "TensorInfo": "checkpoint",
    "diff_state": "checkpoint",
    "load_state_strict": "checkpoint",
    "read_header": "checkpoint",
    "state_info": "checkpoint",
    "ConfigError": "config",
    "JsonConfig": "config",
    "DecodeSwitch": "families",
    "Family": "families",
    "installed_families": "families",
    "FCDMBlock": "fcdm_block",
    "FCDMDecoder": "fcdm_decoder",
    "FCDMEncoder": "fcdm_encoder",
    "ModelNotAvailableError": "hub",
    "resolve_model_dir": "hub",
    "VPInferenceConfig": "inference",
    "ChannelWiseRMSNorm": "norms",
    "GRN": "norms",
    "EncoderPosterior": "posterior",
    "PretrainedModel": "pretrained",
    "sample_ddim": "samplers",
    "sample_dpmpp_2m": "samplers",
    "SinusoidalTimeEmbeddingMLP": "time_embed",
    "alpha_sigma": "vp",
    "cosine_interpolated_logsnr": "vp",
    "get_schedule": "vp",
    "dewhiten": "whitening",
    "whiten": "whitening",
}
"""Each public name -> the module that defines it. Imported on first use (PEP 562), so that
`diffae_core.families` and the command line's help load without torch."""
__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{_WHERE[name]}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_WHERE))
