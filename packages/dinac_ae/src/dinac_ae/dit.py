"""DINAC-AE transformer pieces: RMSNorm, MLP, axial 2-D RoPE, attention, DiT block (spec §5.1-5.3).

Tokens are [N, L, C]; attention heads are [N, heads, L, head_dim]. Attribute names are the
published state-dict names, including the alias spellings (`qkv` = `attn_core.qkv`, ...).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from diffae_core.fcdm_block import mlp_hidden_channels
from diffae_core.precision import Float32BuffersModule

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


class AxialRoPE2D(Float32BuffersModule):
    """Holds the RoPE `periods` buffer [head_dim / 4] (float32 whatever the model dtype).

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
        q, k, v = (split_heads(part, self.heads) for part in self.qkv(x).chunk(3, dim=-1))
        q = apply_rope(self.q_norm(q), rope)
        k = apply_rope(self.k_norm(k), rope)
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

    def forward(self, x: Tensor, rope: RopeTable) -> Tensor:
        """tokens [N, L, C] -> [N, L, C], or a feature map [N, C, h, w] -> [N, C, h, w].

        A feature map is tokenized row-major and restored; `rope` holds L (= h * w) rows.
        """
        if x.ndim == 4:
            height, width = x.shape[-2:]
            return from_tokens(self.forward(to_tokens(x), rope), height, width)
        x = x + self.attn_norm2(self.attn_core(self.attn_norm1(x), rope))
        return x + self.mlp_norm2(self.mlp(self.mlp_norm1(x)))

    def forward_tiled(self, x: Tensor, rope: RopeTable, tile_tokens: int) -> Tensor:
        """`forward` on tokens [N, L, C] in query chunks of <= tile_tokens; equal up to rounding.

        Attention is global, so tiling cannot cut the image: the keys and values of all L
        tokens are computed first (chunk by chunk; 2C wide, kept), then each chunk of queries
        attends to all of them and goes through the per-token MLP. What is never full size:
        the queries, the attention output and the 4x-wide MLP activation.
        """
        attention_core = self.attn_core
        channels = x.shape[-1]
        weight = attention_core.qkv.weight  # [3C, C], rows (q, k, v)
        sin, cos = rope
        spans = [
            (start, min(start + tile_tokens, x.shape[1]))
            for start in range(0, x.shape[1], tile_tokens)
        ]
        keys, values = [], []
        for start, stop in spans:
            k, v = F.linear(self.attn_norm1(x[:, start:stop]), weight[channels:]).chunk(2, dim=-1)
            k = attention_core.k_norm(split_heads(k, attention_core.heads))
            keys.append(apply_rope(k, (sin[start:stop], cos[start:stop])))
            values.append(split_heads(v, attention_core.heads))
        keys_all, values_all = torch.cat(keys, dim=2), torch.cat(values, dim=2)  # [N, heads, L, D]
        del keys, values
        out = torch.empty_like(x)
        for start, stop in spans:
            rows = x[:, start:stop]
            q = F.linear(self.attn_norm1(rows), weight[:channels])
            q = attention_core.q_norm(split_heads(q, attention_core.heads))
            q = apply_rope(q, (sin[start:stop], cos[start:stop]))
            attended = attention_core.proj_out(merge_heads(attention(q, keys_all, values_all)))
            rows = rows + self.attn_norm2(attended)
            out[:, start:stop] = rows + self.mlp_norm2(self.mlp(self.mlp_norm1(rows)))
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
