"""diffae_core: what every diffae model family shares.

Norms and FCDM blocks, AdaLN, time embedding, the FCDM encoder and decoder, VP schedule and
samplers with path-drop guidance, latent whitening, the encoder posterior, loading/saving and
the dtype policy. Images are [N, 3, H, W] RGB in [-1, 1]; latents are [N, C, h, w].
"""

from .autoencoder import WhitenedVPAutoencoder, WhitenedVPDecoder, build_fcdm_decoder
from .checkpoint import (
    CheckpointError,
    CheckpointMismatchError,
    StateDiff,
    TensorInfo,
    diff_state,
    load_state_strict,
    read_header,
    state_info,
)
from .config import ConfigError, JsonConfig
from .families import DecodeSwitch, Family, installed_families
from .fcdm_block import FCDMBlock
from .fcdm_decoder import FCDMDecoder
from .fcdm_encoder import FCDMEncoder
from .hub import ModelNotAvailableError, resolve_model_dir
from .inference import VPInferenceConfig
from .norms import GRN, ChannelWiseRMSNorm
from .posterior import EncoderPosterior
from .pretrained import PretrainedModel
from .samplers import sample_ddim, sample_dpmpp_2m
from .time_embed import SinusoidalTimeEmbeddingMLP
from .vp import alpha_sigma, cosine_interpolated_logsnr, get_schedule
from .whitening import dewhiten, whiten

__all__ = [
    "GRN",
    "ChannelWiseRMSNorm",
    "CheckpointError",
    "CheckpointMismatchError",
    "ConfigError",
    "DecodeSwitch",
    "EncoderPosterior",
    "FCDMBlock",
    "FCDMDecoder",
    "FCDMEncoder",
    "Family",
    "JsonConfig",
    "ModelNotAvailableError",
    "PretrainedModel",
    "SinusoidalTimeEmbeddingMLP",
    "StateDiff",
    "TensorInfo",
    "VPInferenceConfig",
    "WhitenedVPAutoencoder",
    "WhitenedVPDecoder",
    "alpha_sigma",
    "build_fcdm_decoder",
    "cosine_interpolated_logsnr",
    "dewhiten",
    "diff_state",
    "get_schedule",
    "installed_families",
    "load_state_strict",
    "read_header",
    "resolve_model_dir",
    "sample_ddim",
    "sample_dpmpp_2m",
    "state_info",
    "whiten",
]
