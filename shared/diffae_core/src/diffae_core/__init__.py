"""diffae_core: what every diffae model family shares.

`layers` (norms, AdaLN, time embedding, patchify, row tiling), `fcdm` (the FCDM block, encoder,
decoder and autoencoder), `diffusion` (VP schedule, posterior, samplers with path-drop guidance,
whitening), `autoencoder` (the base class every model derives from), `config` (JSON configs,
`FCDMConfig`, the inference settings), `io` (atomic files, safetensors headers, the Hub),
`loading` (checkpoint diffs, strict loading, from/save_pretrained), `runtime` (dtype policy,
input checks, the compile recipe) and `families` (entry points); `config`, `io` and `families`
import no torch. docs/architecture.md draws the layers. Images are [N, 3, H, W] RGB
in [-1, 1]; latents are [N, C, h, w].
"""

from __future__ import annotations

import importlib
from typing import Any

_WHERE = {
    "DiffusionAutoencoder": "autoencoder",
    "FCDMAutoencoder": "fcdm",
    "FCDMConfig": "config",
    "build_fcdm_decoder": "fcdm",
    "CheckpointError": "io",
    "CheckpointMismatchError": "loading",
    "StateDiff": "loading",
    "TensorInfo": "loading",
    "diff_state": "loading",
    "load_state_strict": "loading",
    "read_header": "loading",
    "state_info": "loading",
    "CompiledForInference": "runtime",
    "ConfigError": "config",
    "JsonConfig": "config",
    "DecodeSwitch": "families",
    "Family": "families",
    "installed_families": "families",
    "FCDMBlock": "fcdm",
    "FCDMDecoder": "fcdm",
    "FCDMEncoder": "fcdm",
    "ModelNotAvailableError": "io",
    "resolve_model_dir": "io",
    "VPInferenceConfig": "config",
    "ChannelWiseRMSNorm": "layers",
    "GRN": "layers",
    "EncoderPosterior": "diffusion",
    "PretrainedModel": "loading",
    "sample_ddim": "diffusion",
    "sample_dpmpp_2m": "diffusion",
    "SinusoidalTimeEmbeddingMLP": "layers",
    "alpha_sigma": "diffusion",
    "cosine_interpolated_logsnr": "diffusion",
    "get_schedule": "diffusion",
    "dewhiten": "diffusion",
    "whiten": "diffusion",
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
