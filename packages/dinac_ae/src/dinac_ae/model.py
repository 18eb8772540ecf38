"""DinacAE: transformer encoder, FCDM diffusion decoder, DINO class/token head (spec §4-§7)."""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from diffae_core.autoencoder import WhitenedVPAutoencoder, build_fcdm_decoder
from diffae_core.patchify import Patchify
from diffae_core.posterior import deterministic_posterior, split_posterior
from diffae_core.precision import compute_dtype
from diffae_core.tiling import RowTiled
from diffae_core.validation import check_tensor, check_values

from .config import DinacAEConfig, DinacAEInferenceConfig
from .dit import (
    AxialRoPE2D,
    CrossAttentionBlock,
    DitBlock,
    RMSNorm,
    from_tokens,
    to_tokens,
    with_identity_prefix,
)
from .posterior import EncoderPosterior
from .precision import STORAGE_DTYPES, is_float32_island, storage_problems

ALIASED_KEYS = (
    re.compile(
        r"(?P<owner>encoder\.blocks\.\d+|dino_token_alignment_head\.block)\."
        r"(?P<core>attn_core\.)?(?P<leaf>qkv|proj_out)\.weight"
    ),
    re.compile(
        r"(?P<owner>dino_token_alignment_head\.class_readout)\."
        r"(?P<core>attn_core\.)?(?P<leaf>kv_proj|out_proj)\.weight"
    ),
)
"""State-dict keys published under two names: `<owner>.attn_core.<leaf>` and `<owner>.<leaf>`."""


def alias_twin(key: str) -> tuple[str, bool] | None:
    """(the other spelling of `key`, whether `key` is the short alias), or None if not aliased."""
    for pattern in ALIASED_KEYS:
        match = pattern.fullmatch(key)
        if match:
            owner, core, leaf = match.group("owner", "core", "leaf")
            if core:
                return f"{owner}.{leaf}.weight", False
            return f"{owner}.attn_core.{leaf}.weight", True
    return None


# -- encoder ---------------------------------------------------------------------------------
class TransformerEncoder(RowTiled, nn.Module):
    """images [N, 3, H, W] in [-1, 1] -> raw posterior, mean/logsnr [N, B, H/P, W/P].

    patchify (no norm, no position embedding) -> DiT blocks with axial RoPE on the patch grid
    -> 1x1 `to_bottleneck` (channels [0, B) = mean, [B, 2B) = logsnr). No input or final norm.
    With `tile_tokens` set (`model.enable_tiling`), each block runs over query chunks
    (`DitBlock.forward_tiled`): exact, global attention kept.
    """

    def __init__(
        self,
        *,
        in_channels: int,
        patch_size: int,
        model_dim: int,
        depth: int,
        heads: int,
        bottleneck_dim: int,
        mlp_ratio: float,
        mlp_type: str,
        posterior_kind: str,
    ) -> None:
        super().__init__()
        self.deterministic = posterior_kind == "deterministic"
        self.patchify = Patchify(in_channels, model_dim, patch_size)
        self.blocks = nn.ModuleList(
            DitBlock(model_dim, heads, mlp_ratio, mlp_type) for _ in range(depth)
        )
        self.rope = AxialRoPE2D(model_dim // heads)
        projection_channels = bottleneck_dim if self.deterministic else 2 * bottleneck_dim
        self.to_bottleneck = nn.Conv2d(model_dim, projection_channels, 1)

    def posterior(self, images: Tensor) -> EncoderPosterior:
        """images [N, 3, H, W] in [-1, 1] -> raw posterior, mean/logsnr [N, B, H/P, W/P].

        mean and logsnr are in the compute dtype (the weights', or bf16 under autocast); a
        deterministic encoder reports `diffae_core.posterior.DETERMINISTIC_LOGSNR` (alpha 1,
        sigma 0).
        """
        features = self.patchify(images)
        height, width = features.shape[-2:]
        rope = self.rope(height, width)
        tokens = to_tokens(features)  # [N, C, h, w] -> [N, h*w, C]
        for block in self.blocks:
            if self.tile_tokens is None:
                tokens = block(tokens, rope)
            else:
                tokens = block.forward_tiled(tokens, rope, self.tile_tokens)
        projection = self.to_bottleneck(from_tokens(tokens, height, width))
        if self.deterministic:
            return deterministic_posterior(projection, EncoderPosterior)
        return split_posterior(projection, EncoderPosterior)

    def forward(self, images: Tensor) -> Tensor:
        """images -> posterior mode alpha * mean, rounded to the mean's dtype."""
        posterior = self.posterior(images)
        return posterior.mode().to(posterior.mean.dtype)


# -- DINO class/token alignment head ---------------------------------------------------------
@dataclass(frozen=True)
class DinoAlignment:
    """The head's predictions of DINO teacher features, each RMS-normalised (unit RMS)."""

    class_token: Tensor
    """[N, D] class-token feature."""
    spatial_tokens: Tensor
    """[N, h*w, D] patch-token features, row-major over the latent grid."""


class DinoTokenAlignmentHead(nn.Module):
    """Raw latents [N, B, h, w] -> DINO class token and patch tokens (spec §5.5).

    Tokens [class, registers, spatial] go through one DiT block (RoPE on the spatial tokens,
    identity for the prefix); the class token then reads out registers + spatial tokens with a
    cross-attention block. No time conditioning.
    """

    def __init__(
        self,
        *,
        latent_channels: int,
        model_dim: int,
        heads: int,
        mlp_ratio: float,
        mlp_type: str,
        register_token_count: int,
    ) -> None:
        super().__init__()
        self.in_proj = nn.Conv2d(latent_channels, model_dim, 1)
        self.initial_class_token = nn.Parameter(torch.zeros(1, model_dim))
        self.register_tokens = nn.Parameter(torch.zeros(register_token_count, model_dim))
        self.block = DitBlock(model_dim, heads, mlp_ratio, mlp_type)
        self.spatial_output_norm = RMSNorm(model_dim, affine=False)
        self.class_readout = CrossAttentionBlock(model_dim, heads, mlp_ratio, mlp_type)
        self.class_output_norm = RMSNorm(model_dim, affine=False)
        self._axial_rope2d = AxialRoPE2D(model_dim // heads)

    def forward(self, latents: Tensor) -> DinoAlignment:
        """Raw (dewhitened) latents [N, B, h, w] -> class [N, D] and spatial [N, h*w, D]."""
        features = self.in_proj(latents)
        height, width = features.shape[-2:]
        spatial = to_tokens(features)  # [N, D, h, w] -> [N, h*w, D]
        prefix = torch.cat([self.initial_class_token, self.register_tokens]).to(spatial.dtype)
        prefix_count = prefix.shape[0]
        tokens = torch.cat([prefix.expand(spatial.shape[0], -1, -1), spatial], dim=1)
        rope = with_identity_prefix(self._axial_rope2d(height, width), prefix_count)
        tokens = self.block(tokens, rope)
        readout = self.class_readout(tokens[:, :1], tokens[:, 1:])
        return DinoAlignment(
            class_token=self.class_output_norm(readout[:, 0]),
            spatial_tokens=self.spatial_output_norm(tokens[:, prefix_count:]),
        )


# -- the model -------------------------------------------------------------------------------
class DinacAE(WhitenedVPAutoencoder):
    """DINAC-AE: transformer encoder -> VP posterior -> whitened latents -> FCDM decoder.

    Images are [N, 3, H, W] in [-1, 1] with H, W multiples of 16; latents are whitened
    [N, 128, H/16, W/16], float32. `predict_class` maps latents to a DINO class token.

    Precision (spec §7): a bfloat16 model stores float32 islands (see `precision`), and
    `encode`, `encode_posterior` and `decode` run under bf16 autocast; a float32 model runs
    without autocast, except `predict_class`, which always uses bf16 autocast as the reference.
    """

    config_class = DinacAEConfig
    family_name = "dinac_ae"
    inference_config_class = DinacAEInferenceConfig
    config: DinacAEConfig

    def __init__(self, config: DinacAEConfig) -> None:
        super().__init__(config)
        self.encoder = TransformerEncoder(
            in_channels=config.in_channels,
            patch_size=config.patch_size,
            model_dim=config.model_dim,
            depth=config.encoder_depth,
            heads=config.encoder_heads,
            bottleneck_dim=config.bottleneck_dim,
            mlp_ratio=config.mlp_ratio,
            mlp_type=config.encoder_mlp_type,
            posterior_kind=config.bottleneck_posterior_kind,
        )
        self.decoder = build_fcdm_decoder(config)
        self.dino_token_alignment_head = DinoTokenAlignmentHead(
            latent_channels=config.latent_channels,
            model_dim=config.class_head_model_dim,
            heads=config.class_head_heads,
            mlp_ratio=config.class_head_mlp_ratio,
            mlp_type=config.class_head_mlp_type,
            register_token_count=config.class_head_register_token_count,
        )

    # -- precision policy --------------------------------------------------------------------
    @property
    def ordinary_weight_storage_dtype(self) -> torch.dtype:
        """The dtype of the ordinary (non-island) weights: float32 or bfloat16.

        The one compute-dtype choice of every entry point: `compute_dtype(self)`, which the core
        also uses to cast images and decoder inputs. It reads the first parameter,
        `encoder.patchify.proj.weight`, an ordinary weight, so it equals the spec's
        `decoder.patchify.proj.weight` dtype whenever the policy holds (see
        `validate_inference_storage`).
        """
        return compute_dtype(self)

    def _apply(self, fn: Callable[[Tensor], Tensor], recurse: bool = True) -> nn.Module:
        # Any cast keeps the float32 islands in float32 (device moves still apply), so
        # `model.to(torch.bfloat16)` gives exactly the published bf16 layout. The core's
        # Float32BuffersModule._apply (super) then keeps every floating buffer float32.
        islands = set()
        for name, parameter in self.named_parameters():
            if is_float32_island(name):
                islands.add(id(parameter))
                if parameter.grad is not None:
                    islands.add(id(parameter.grad))

        def keep_islands_float32(tensor: Tensor) -> Tensor:
            converted = fn(tensor)
            if id(tensor) in islands and converted.dtype != torch.float32:
                return tensor.to(device=converted.device, dtype=torch.float32)
            return converted

        return super()._apply(keep_islands_float32, recurse)

    def validate_inference_storage(self) -> None:
        """Raise RuntimeError if a tensor's dtype breaks the storage policy or is off-device."""
        base = self.ordinary_weight_storage_dtype
        problems = storage_problems(self, base, self.latent_norm_running_mean.device)
        if problems:
            listed = "\n  ".join(problems[:10])
            raise RuntimeError(
                f"DinacAE storage: {len(problems)} tensors break the {base} policy:\n  {listed}"
            )

    def _storage_autocast(self) -> torch.autocast:
        """bf16 autocast when the ordinary weights are bf16, else a context that disables it."""
        enabled = self.ordinary_weight_storage_dtype == torch.bfloat16
        device_type = self.latent_norm_running_mean.device.type
        return torch.autocast(device_type, dtype=torch.bfloat16, enabled=enabled)

    # -- loading and saving ------------------------------------------------------------------
    @classmethod
    def canonical_checkpoint_keys(cls, state: Mapping[str, Any]) -> dict[str, Any]:
        """Complete the aliased keys: a file may hold either spelling of each, or both.

        Works on tensors and on header entries; two spellings holding different tensors are
        refused (ValueError naming both).
        """
        state = dict(state)
        for key in list(state):
            twin = alias_twin(key)
            if twin is None:
                continue
            twin_key = twin[0]
            if twin_key not in state:
                state[twin_key] = state[key]
            elif isinstance(state[key], Tensor) and not _same_tensor(state[key], state[twin_key]):
                raise ValueError(
                    f"checkpoint: {key} and {twin_key} name the same weight but hold different "
                    "values"
                )
        return state

    def checkpoint_state(self) -> dict[str, Tensor]:
        """Both spellings of every aliased weight, the short alias as a copy (safetensors
        refuses tensors that share memory)."""
        state = self.state_dict()
        for key, tensor in state.items():
            twin = alias_twin(key)
            if twin is not None and twin[1]:
                state[key] = tensor.clone()
        return state

    @classmethod
    def from_weights(
        cls,
        config: Any,
        weights_path: str | os.PathLike[str],
        *,
        device: torch.device | str = "cpu",
        dtype: torch.dtype | None = None,
    ) -> DinacAE:
        """Load a `.safetensors` file strictly and apply the storage policy (spec §4.3).

        dtype: None keeps the file's base dtype (that of its ordinary weights);
        torch.bfloat16 or torch.float32 casts the ordinary weights, islands stay float32.
        """
        if dtype is not None and dtype not in STORAGE_DTYPES:
            raise ValueError(
                f"dtype: expected None, torch.float32 or torch.bfloat16, got {dtype!r}"
            )
        model = super().from_weights(config, weights_path, device=device, dtype=None)
        base = model.ordinary_weight_storage_dtype if dtype is None else dtype
        if base not in STORAGE_DTYPES:
            raise ValueError(
                f"weights_path: {os.fspath(weights_path)} stores its ordinary weights "
                f"(encoder.patchify.proj.weight) as {base}; expected torch.float32 or "
                "torch.bfloat16"
            )
        model.to(dtype=base)
        model.validate_inference_storage()
        return model

    # -- public API --------------------------------------------------------------------------
    def _raw_posterior(self, images: Tensor) -> EncoderPosterior:
        """Checked images [N, 3, H, W] on the model's device and dtype -> raw posterior.

        mean/logsnr [N, 128, H/16, W/16] in the compute dtype (see `TransformerEncoder.posterior`).
        """
        return self.encoder.posterior(images)

    def encode_posterior(self, images: Tensor) -> EncoderPosterior:
        """images [N, 3, H, W] in [-1, 1] -> raw posterior (mean, logsnr) [N, 128, H/16, W/16].

        Moved to the model's device and weight dtype; mean/logsnr come out in that dtype,
        unwhitened (bf16 autocast for a bf16 model).
        """
        with self._storage_autocast():
            return super().encode_posterior(images)

    @torch.no_grad()
    def encode(self, images: Tensor) -> Tensor:
        """images [N, 3, H, W] in [-1, 1] -> whitened latents [N, 128, H/16, W/16], float32.

        The posterior mode alpha * mean is rounded to the compute dtype before whitening, as in
        the reference, so a bf16 model's latents carry bf16 rounding.
        """
        posterior = self.encode_posterior(images)
        return self.whiten(posterior.mode().to(posterior.mean.dtype))

    def decode(
        self,
        latents: Tensor,
        height: int,
        width: int,
        *,
        inference_config: DinacAEInferenceConfig | None = None,
        noise: Tensor | None = None,
    ) -> Tensor:
        """Whitened latents [N, 128, h, w] -> images [N, 3, height, width], float32, ~[-1, 1].

        Not clamped. Runs on `latents.device`; `inference_config` defaults to one DDIM step
        without PDG. `noise` ([N, 3, height, width], std 0.558) replaces the seeded draw.
        """
        with self._storage_autocast():
            return super().decode(
                latents, height, width, inference_config=inference_config, noise=noise
            )

    def predict_class(self, latents: Tensor) -> Tensor:
        """Whitened latents [N, 128, h, w] -> DINO class-token prediction [N, 768], float32.

        The prediction has unit RMS (norm ~ sqrt(768)), not unit L2 norm. The head always runs
        under bf16 autocast, even for a float32 model, as the reference does (spec §7).
        """
        latents = check_tensor("latents", latents)
        channels = self.config.latent_channels
        if latents.ndim != 4 or latents.shape[1] != channels:
            raise ValueError(f"latents: expected [N, {channels}, h, w], got {tuple(latents.shape)}")
        check_values("latents", latents)
        device = self.latent_norm_running_mean.device
        raw_latents = self.dewhiten(latents.to(device))
        with torch.autocast(device.type, dtype=torch.bfloat16):
            alignment = self.dino_token_alignment_head(raw_latents)
        return alignment.class_token.float()


def _same_tensor(a: Tensor, b: Tensor) -> bool:
    """True when two tensors (any shape and dtype) have equal dtype, shape and values."""
    return a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b)
