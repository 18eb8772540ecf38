"""DinacAE: transformer encoder, FCDM diffusion decoder, DINO class/token head.

One file: the storage policy, the transformer pieces, the encoder, the DINO head and the model.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from diffae_core import diffusion
from diffae_core.autoencoder import DiffusionAutoencoder
from diffae_core.diffusion import deterministic_posterior, split_posterior
from diffae_core.fcdm import build_fcdm_decoder, mlp_hidden_channels
from diffae_core.layers import Patchify, RowTiled, row_spans
from diffae_core.runtime import check_tensor, check_values, compute_dtype

from .config import DinacAEConfig, DinacAEInferenceConfig

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


# -- storage policy --------------------------------------------------------------------------
# DINAC-AE's storage policy: bf16 weights with float32 "islands".
#
# With a bfloat16 base, norm weights, GRN gamma/beta, layer scales, the decoder's path-drop mask
# feature and its `out_proj` stay float32; every floating buffer is float32 whatever the base. A
# float32 base keeps everything float32; other base dtypes are refused.

STORAGE_DTYPES = (torch.float32, torch.bfloat16)
FLOAT32_PARAMETERS = (
    "decoder.path_drop_mask_feature",
    "decoder.out_proj.weight",
    "decoder.out_proj.bias",
)
FLOAT32_SUFFIXES = (".layer_scale", ".grn.gamma", ".grn.beta")


def is_float32_island(name: str) -> bool:
    """True for a parameter (dotted name) that the bf16 policy keeps in float32."""
    return (
        any("norm" in part for part in name.split("."))
        or name.endswith(FLOAT32_SUFFIXES)
        or name in FLOAT32_PARAMETERS
    )


def storage_dtype(name: str, base: torch.dtype) -> torch.dtype:
    """The dtype parameter `name` must have when ordinary weights are stored in `base`."""
    return torch.float32 if is_float32_island(name) else base


def storage_problems(model: nn.Module, base: torch.dtype, device: torch.device) -> list[str]:
    """Every tensor whose dtype breaks the policy for `base` or that is not on `device`."""
    if base not in STORAGE_DTYPES:
        return [f"ordinary weights are {base}; expected one of {STORAGE_DTYPES}"]
    problems = []
    for name, parameter in model.named_parameters():
        expected = storage_dtype(name, base)
        if parameter.dtype != expected:
            problems.append(f"parameter {name} is {parameter.dtype}, expected {expected}")
    for name, buffer in model.named_buffers():
        if buffer.is_floating_point() and buffer.dtype != torch.float32:
            problems.append(f"buffer {name} is {buffer.dtype}, expected torch.float32")
    for name, tensor in model.state_dict().items():
        if tensor.device != device:
            problems.append(f"{name} is on {tensor.device}, expected {device}")
    return problems


# -- transformer pieces ----------------------------------------------------------------------
# DINAC-AE transformer pieces: RMSNorm, MLP, axial 2-D RoPE, attention, DiT block.
#
# Tokens are [N, L, C]; attention heads are [N, heads, L, head_dim]. Attribute names are the
# published state-dict names, including the alias spellings (`qkv` = `attn_core.qkv`, ...).

NORM_EPS = 1e-6
ROPE_BASE = 10000.0

ACTIVATIONS: dict[str, Callable[[Tensor], Tensor]] = {
    "gelu": F.gelu,  # exact (erf) GELU
    "silu": F.silu,
    "relu": F.relu,
}

RopeTable = tuple[Tensor, Tensor]
"""(sin, cos), each float32 [L, head_dim]: the rotation angles of L tokens."""


# -- primitives ------------------------------------------------------------------------------
class RMSNorm(nn.Module):
    """RMSNorm over the last dim; its only child `_impl` (torch.nn.RMSNorm) holds the weight.

    The float32 weight is cast to the input's dtype and the norm runs in that dtype, as in the
    reference (no float32 upcast of the activations).
    """

    def __init__(self, channels: int, *, affine: bool = True, eps: float = NORM_EPS) -> None:
        super().__init__()
        self._impl = nn.RMSNorm(channels, eps=eps, elementwise_affine=affine)

    def forward(self, x: Tensor) -> Tensor:
        """x [..., C] in any float dtype -> same shape and dtype, unit RMS over C times weight."""
        weight = self._impl.weight
        weight = None if weight is None else weight.to(x.dtype)
        return F.rms_norm(x, self._impl.normalized_shape, weight, self._impl.eps)


class MLP(nn.Module):
    """down(act(up(x))) without biases; hidden width int(channels * mlp_ratio)."""

    def __init__(self, channels: int, mlp_ratio: float, mlp_type: str) -> None:
        super().__init__()
        hidden = mlp_hidden_channels(channels, mlp_ratio)
        self.activation = ACTIVATIONS[mlp_type]
        self.up = nn.Linear(channels, hidden, bias=False)
        self.down = nn.Linear(hidden, channels, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        """tokens [..., C] -> [..., C] in the compute dtype (the weights' or autocast's)."""
        return self.down(self.activation(self.up(x)))


def to_tokens(x: Tensor) -> Tensor:
    """[N, C, h, w] -> [N, h*w, C], row-major (token index y * w + x)."""
    return x.flatten(2).transpose(1, 2)


def from_tokens(tokens: Tensor, height: int, width: int) -> Tensor:
    """[N, h*w, C] -> [N, C, h, w]; the inverse of `to_tokens`."""
    return tokens.transpose(1, 2).unflatten(2, (height, width))


def split_heads(x: Tensor, heads: int) -> Tensor:
    """[N, L, heads * D] -> [N, heads, L, D] (channel = head * D + d)."""
    return x.unflatten(-1, (heads, -1)).transpose(1, 2)


def merge_heads(x: Tensor) -> Tensor:
    """[N, heads, L, D] -> [N, L, heads * D], head-major."""
    return x.transpose(1, 2).flatten(2)


# -- axial 2-D RoPE --------------------------------------------------------------------------
def rope_periods(head_dim: int, base: float = ROPE_BASE) -> Tensor:
    """periods[j] = base^(2j / (head_dim / 2)), j < head_dim / 4; float32 (10000^(j/16) at 64)."""
    axis_dim = head_dim // 2
    # Python floats: tensor maths on the `meta` device would route through torch._refs.
    return torch.tensor([base ** (2 * j / axis_dim) for j in range(axis_dim // 2)])


def axial_rope_table(periods: Tensor, height: int, width: int) -> RopeTable:
    """(sin, cos) float32 [h*w, 4 * len(periods)] for integer patch coordinates (y, x).

    Dim d of a head uses axis d // (head_dim / 2) (y first) and period j = (d mod head_dim/2) // 2:
    both members of an adjacent pair share one angle, coord / periods[j].
    """
    periods = periods.float()
    ys = torch.arange(height, dtype=torch.float32, device=periods.device)
    xs = torch.arange(width, dtype=torch.float32, device=periods.device)
    grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")
    coords = torch.stack([grid_y.flatten(), grid_x.flatten()], dim=1)  # [hw, 2], row-major
    angles = coords[:, :, None] / periods  # [hw, 2, head_dim / 4]
    angles = angles.repeat_interleave(2, dim=-1).flatten(1)  # [hw, head_dim]
    return torch.sin(angles), torch.cos(angles)


def with_identity_prefix(table: RopeTable, count: int) -> RopeTable:
    """Prepend `count` rows that rotate by zero (sin 0, cos 1), e.g. for class/register tokens."""
    sin, cos = table
    return (
        torch.cat([sin.new_zeros(count, sin.shape[1]), sin]),
        torch.cat([cos.new_ones(count, cos.shape[1]), cos]),
    )


def apply_rope(x: Tensor, table: RopeTable) -> Tensor:
    """Rotate adjacent pairs (a, b) of x [N, heads, L, D] by the table's angles, in float32.

    a' = a cos - b sin, b' = b cos + a sin (EVA-02 pair convention); returned in x's dtype.
    """
    sin, cos = table
    x_fp32 = x.float()
    a, b = x_fp32.unflatten(-1, (-1, 2)).unbind(-1)  # [..., D] -> 2 x [..., D / 2]
    rotated = torch.stack([-b, a], dim=-1).flatten(-2)  # (-b, a) interleaved, [..., D]
    return (x_fp32 * cos + rotated * sin).to(x.dtype)


ROPE_CACHE_SIZE = 8
"""Tables kept per AxialRoPE2D: one per grid size recently used."""


class AxialRoPE2D(nn.Module):
    """Holds the RoPE `periods` buffer [head_dim / 4] (float32 whatever the model dtype: the
    model's dtype policy keeps floating buffers float32).

    Tables are cached per grid size, device and `periods` version (eager calls only; a
    compiled graph folds the table into constants itself).
    """

    def __init__(self, head_dim: int, base: float = ROPE_BASE) -> None:
        super().__init__()
        self.register_buffer("periods", rope_periods(head_dim, base))
        self._tables: dict[tuple[object, ...], RopeTable] = {}

    def forward(self, height: int, width: int) -> RopeTable:
        """(sin, cos) float32 [height * width, head_dim] for an h x w token grid."""
        periods = self.periods
        if torch.compiler.is_compiling() or periods.is_meta:
            return axial_rope_table(periods, height, width)
        key = (height, width, periods.device, periods.data_ptr(), periods._version)
        table = self._tables.get(key)
        if table is None:
            # Ordinary tensors even under inference_mode, so a cached table can later enter
            # an autograd graph.
            with torch.inference_mode(False), torch.no_grad():
                table = axial_rope_table(periods, height, width)
            if len(self._tables) >= ROPE_CACHE_SIZE:
                self._tables.pop(next(iter(self._tables)))
            self._tables[key] = table
        return table


# -- attention -------------------------------------------------------------------------------
def attention(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    """Dense non-causal attention [N, heads, L, D] with scale 1/sqrt(D), no mask, no dropout."""
    return F.scaled_dot_product_attention(q, k, v)


class DitSelfAttentionCore(nn.Module):
    """Multi-head self-attention with per-head QK RMSNorm, then RoPE on q and k."""

    def __init__(self, channels: int, heads: int) -> None:
        super().__init__()
        head_dim = channels // heads
        self.heads = heads
        self.qkv = nn.Linear(channels, 3 * channels, bias=False)
        self.proj_out = nn.Linear(channels, channels, bias=False)
        self.q_norm = RMSNorm(head_dim)
        self.k_norm = RMSNorm(head_dim)

    def forward(self, x: Tensor, rope: RopeTable) -> Tensor:
        """[N, L, C] -> [N, L, C]; `rope` holds L rows."""
        return self.attend(*self.heads_of(x, rope))

    def heads_of(self, x: Tensor, rope: RopeTable, parts: str = "qkv") -> list[Tensor]:
        """The `parts` ("qkv", "kv" or "q") of x [N, L, C], each [N, heads, L, D].

        q and k are normalised per head and rotated by `rope` (L rows). One projection with
        the weight rows of the parts asked for: the keys and values of a query chunk's context
        cost no query projection.
        """
        channels = self.proj_out.weight.shape[0]
        first = "qkv".index(parts[0])
        weight = self.qkv.weight[first * channels : (first + len(parts)) * channels]
        projected = F.linear(x, weight).chunk(len(parts), dim=-1)
        heads = []
        for name, part in zip(parts, projected, strict=True):
            part = split_heads(part, self.heads)
            if name == "q":
                part = apply_rope(self.q_norm(part), rope)
            elif name == "k":
                part = apply_rope(self.k_norm(part), rope)
            heads.append(part)
        return heads

    def attend(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        """Queries [N, heads, Lq, D] over keys and values [N, heads, L, D] -> [N, Lq, C]."""
        return self.proj_out(merge_heads(attention(q, k, v)))


class DitBlock(nn.Module):
    """Unconditioned DiT block with sandwich norms: x + norm2(f(norm1(x))) for attention, MLP."""

    def __init__(self, channels: int, heads: int, mlp_ratio: float, mlp_type: str) -> None:
        super().__init__()
        self.attn_norm1 = RMSNorm(channels)
        self.attn_norm2 = RMSNorm(channels)
        self.mlp_norm1 = RMSNorm(channels)
        self.mlp_norm2 = RMSNorm(channels)
        self.attn_core = DitSelfAttentionCore(channels, heads)
        # Second names of the same modules: the published state dict holds both spellings.
        self.qkv = self.attn_core.qkv
        self.proj_out = self.attn_core.proj_out
        self.mlp = MLP(channels, mlp_ratio, mlp_type)

    def forward(self, x: Tensor, rope: RopeTable, tile_tokens: int | None = None) -> Tensor:
        """tokens [N, L, C] -> [N, L, C], or a feature map [N, C, h, w] -> [N, C, h, w].

        A feature map is tokenized row-major and restored; `rope` holds L (= h * w) rows.
        Runs in query chunks of <= tile_tokens tokens (None: one chunk, all L). Attention is
        global, so chunks cannot cut the image: pass 1 computes the keys and values of all L
        tokens chunk by chunk (2C wide, kept); pass 2 lets each chunk's queries attend to all
        of them and runs the per-token MLP on the chunk. Never full size with several chunks:
        the queries, the attention output and the 4x-wide MLP activation. Pass 2 runs backward
        and takes the last chunk's queries from pass 1's projection (one chunk: the one fused
        qkv projection). Several chunks equal one up to float rounding.
        """
        if x.ndim == 4:
            height, width = x.shape[-2:]
            return from_tokens(self.forward(to_tokens(x), rope, tile_tokens), height, width)
        core = self.attn_core
        sin, cos = rope
        spans = row_spans(x.shape[1], 1, tile_tokens)  # a token sequence: rows of width 1
        last = len(spans) - 1
        kept_queries: dict[int, Tensor] = {}
        keys, values = [], []
        for index, (start, stop) in enumerate(spans):
            normed = self.attn_norm1(x[:, start:stop])
            heads = core.heads_of(
                normed, (sin[start:stop], cos[start:stop]), "qkv" if index == last else "kv"
            )
            if index == last:
                kept_queries[index] = heads.pop(0)
            keys.append(heads[0])
            values.append(heads[1])
            del normed, heads
        keys_all = keys[0] if len(keys) == 1 else torch.cat(keys, dim=2)  # [N, heads, L, D]
        values_all = values[0] if len(values) == 1 else torch.cat(values, dim=2)
        del keys, values
        out = torch.empty_like(x) if last > 0 else x  # one chunk: never written
        for index in reversed(range(len(spans))):
            start, stop = spans[index]
            rows = x[:, start:stop]
            if index in kept_queries:
                q = kept_queries.pop(index)
            else:
                rope_rows = (sin[start:stop], cos[start:stop])
                q = core.heads_of(self.attn_norm1(rows), rope_rows, "q")[0]
            attended = core.attend(q, keys_all, values_all)
            del q
            if index == 0:  # the last chunk to attend: free the context before its MLP
                del keys_all, values_all
            rows = rows + self.attn_norm2(attended)
            del attended
            rows = rows + self.mlp_norm2(self.mlp(self.mlp_norm1(rows)))
            if last == 0:
                return rows  # the one chunk's fresh output, no copy
            out[:, start:stop] = rows
        return out


class CrossAttentionCore(nn.Module):
    """Attention of projected queries over a context: k, v from `kv_proj`, per-head QK norms."""

    def __init__(self, channels: int, heads: int) -> None:
        super().__init__()
        head_dim = channels // heads
        self.heads = heads
        self.kv_proj = nn.Linear(channels, 2 * channels, bias=False)
        self.out_proj = nn.Linear(channels, channels, bias=False)
        self.q_norm_heads = RMSNorm(head_dim)
        self.k_norm_heads = RMSNorm(head_dim)

    def forward(self, q: Tensor, context: Tensor) -> Tensor:
        """q [N, Lq, C] (already projected), context [N, L, C] -> [N, Lq, C]; no RoPE."""
        k, v = (split_heads(part, self.heads) for part in self.kv_proj(context).chunk(2, dim=-1))
        q = self.q_norm_heads(split_heads(q, self.heads))
        k = self.k_norm_heads(k)
        return self.out_proj(merge_heads(attention(q, k, v)))


class CrossAttentionBlock(nn.Module):
    """Pre-norm cross-attention then MLP, both residual on the query tokens."""

    def __init__(self, channels: int, heads: int, mlp_ratio: float, mlp_type: str) -> None:
        super().__init__()
        self.query_norm = RMSNorm(channels)
        self.context_norm = RMSNorm(channels)
        self.mlp_norm = RMSNorm(channels)
        self.q_proj = nn.Linear(channels, channels, bias=False)
        self.attn_core = CrossAttentionCore(channels, heads)
        # Second names of the same modules: the published state dict holds both spellings.
        self.kv_proj = self.attn_core.kv_proj
        self.out_proj = self.attn_core.out_proj
        self.mlp = MLP(channels, mlp_ratio, mlp_type)

    def forward(self, query: Tensor, context: Tensor) -> Tensor:
        """query [N, Lq, C], context [N, L, C] -> updated query [N, Lq, C]."""
        q = self.q_proj(self.query_norm(query))
        x = query + self.attn_core(q, self.context_norm(context))
        return x + self.mlp(self.mlp_norm(x))


# -- posterior -------------------------------------------------------------------------------
class EncoderPosterior(diffusion.EncoderPosterior):
    """Raw (unwhitened) `mean` and `logsnr` [N, C, h, w] in the model's compute dtype.

    Unlike fcdm_diffae's, `mode()` and `sample()` stay float32: the DINAC-AE reference does not
    cast them back to the mean's dtype (its `encode` rounds the mode itself before whitening).
    """

    float32_moments: ClassVar[bool] = True


# -- encoder ---------------------------------------------------------------------------------
class TransformerEncoder(RowTiled, nn.Module):
    """images [N, 3, H, W] in [-1, 1] -> raw posterior, mean/logsnr [N, B, H/P, W/P].

    patchify (no norm, no position embedding) -> DiT blocks with axial RoPE on the patch grid
    -> 1x1 `to_bottleneck` (channels [0, B) = mean, [B, 2B) = logsnr). No input or final norm.
    With `tile_tokens` set (`model.enable_tiling`), each block runs over query chunks
    (`DitBlock.forward`): exact, global attention kept.
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
        deterministic encoder reports `diffae_core.diffusion.DETERMINISTIC_LOGSNR` (alpha 1,
        sigma 0).
        """
        features = self.patchify(images)
        height, width = features.shape[-2:]
        rope = self.rope(height, width)
        tokens = to_tokens(features)  # [N, C, h, w] -> [N, h*w, C]
        for block in self.blocks:
            tokens = block(tokens, rope, self.tile_tokens)
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
    """Raw latents [N, B, h, w] -> DINO class token and patch tokens.

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
class DinacAE(DiffusionAutoencoder):
    """DINAC-AE: transformer encoder -> VP posterior -> whitened latents -> FCDM decoder.

    Images are [N, 3, H, W] in [-1, 1] with H, W multiples of 16; latents are whitened
    [N, 128, H/16, W/16], float32. `predict_class` maps latents to a DINO class token.

    Precision: a bfloat16 model stores float32 islands (see `precision`), and
    `encode`, `encode_posterior` and `decode` run under bf16 autocast; a float32 model runs
    without autocast, except `predict_class`, which always uses bf16 autocast as the reference.
    """

    config_class = DinacAEConfig
    family_name = "dinac_ae"
    inference_config_class = DinacAEInferenceConfig
    encode_returns_float32 = True  # whitened in float32 and returned so, as the reference
    bf16_autocast = True  # bf16 weights with float32 islands compute under bf16 autocast
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
        # PretrainedModel._apply (super) then keeps every floating buffer float32.
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
        problems = storage_problems(self, base, self.weights_device())
        if problems:
            listed = "\n  ".join(problems[:10])
            raise RuntimeError(
                f"DinacAE storage: {len(problems)} tensors break the {base} policy:\n  {listed}"
            )

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
        """Load a `.safetensors` file strictly and apply the storage policy.

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
    def predict_class(self, latents: Tensor) -> Tensor:
        """Whitened latents [N, 128, h, w] -> DINO class-token prediction [N, 768], float32.

        The prediction has unit RMS (norm ~ sqrt(768)), not unit L2 norm. The head always runs
        under bf16 autocast, even for a float32 model, as the reference does.
        """
        latents = check_tensor("latents", latents)
        channels = self.config.latent_channels
        if latents.ndim != 4 or latents.shape[1] != channels:
            raise ValueError(f"latents: expected [N, {channels}, h, w], got {tuple(latents.shape)}")
        check_values("latents", latents)
        device = self.weights_device()
        raw_latents = self.dewhiten(latents.to(device))
        with torch.autocast(device.type, dtype=torch.bfloat16):
            alignment = self.dino_token_alignment_head(raw_latents)
        return alignment.class_token.float()


def _same_tensor(a: Tensor, b: Tensor) -> bool:
    """True when two tensors (any shape and dtype) have equal dtype, shape and values."""
    return a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b)
