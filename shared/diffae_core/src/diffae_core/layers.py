"""Layers the families share: channel norms and GRN, AdaLN modulation, the sinusoidal time
embedding, patchify, and the exact row tiling every convolutional block runs under.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# ---- norms -----------------------------------------------------------------------------
# Normalisations of the FCDM family: channel-wise RMSNorm and GRN.


def channel_rms_norm(x: Tensor, eps: float = 1e-6, *, inplace: bool = False) -> Tensor:
    """Divide each pixel's channel vector [N, C, ...] by its RMS; statistics in float32.

    The mean of squares is accumulated in float32 but the final multiply runs in x's dtype: the
    published models switched to this form "to match training code" (2026-04-10). For float32
    inputs one fused `vector_norm` pass replaces `square().mean()`, which writes a full-size
    temporary; other dtypes keep the spec's square in x's dtype, bitwise. `inplace` writes the
    result over x (same values).
    """
    if x.dtype == torch.float32:
        norm = torch.linalg.vector_norm(x, dim=1, keepdim=True)
        mean_square = norm.square() / x.shape[1]
    else:
        mean_square = x.square().mean(dim=1, keepdim=True, dtype=torch.float32)
    inv_rms = torch.rsqrt(mean_square + eps).to(x.dtype)
    return x.mul_(inv_rms) if inplace else x * inv_rms


class ChannelWiseRMSNorm(nn.Module):
    """RMSNorm over dim 1 of [N, C, ...] tensors, with an optional per-channel affine."""

    def __init__(self, channels: int, eps: float = 1e-6, affine: bool = True) -> None:
        super().__init__()
        self.channels = channels
        self.eps = eps
        if affine:
            self.weight = nn.Parameter(torch.ones(channels))
            self.bias = nn.Parameter(torch.zeros(channels))
        else:
            self.register_parameter("weight", None)
            self.register_parameter("bias", None)

    def forward(self, x: Tensor) -> Tensor:
        if x.ndim < 2:
            return x
        y = channel_rms_norm(x, self.eps)
        if self.weight is not None:
            view = (1, self.channels) + (1,) * (x.ndim - 2)
            y = y * self.weight.view(view).to(x.dtype) + self.bias.view(view).to(x.dtype)
        return y


def grn_scale(spatial_l2: Tensor, gamma: Tensor, eps: float, dtype: torch.dtype) -> Tensor:
    """1 + gamma * n [N, C, 1, 1] in `dtype`, n = spatial L2 norm / its channel mean (float32).

    `spatial_l2` [N, C, 1, 1] is the L2 norm over all h x w positions; taking it as an input
    lets a tiled caller accumulate it over row chunks first (see the row tiling section below).
    """
    spatial_l2 = spatial_l2.float()
    relative = (spatial_l2 / (spatial_l2.mean(dim=1, keepdim=True) + eps)).to(dtype)
    return 1 + gamma.to(dtype) * relative


def global_response_norm(
    x: Tensor, gamma: Tensor, beta: Tensor, eps: float = 1e-6, *, inplace: bool = False
) -> Tensor:
    """ConvNeXt-V2 GRN on [N, C, h, w]: gamma * (x * n) + beta + x, channel mean in float32.

    Evaluated as x * (1 + gamma * n) + beta in one `addcmul` pass over x (the spec's form
    writes three full-size temporaries); equal up to rounding. `inplace` writes over x.
    """
    spatial_l2 = torch.linalg.vector_norm(x, dim=(2, 3), keepdim=True)  # in x's dtype
    factor = grn_scale(spatial_l2, gamma, eps, x.dtype)
    return torch.addcmul(beta.to(x.dtype), x, factor, out=x if inplace else None)


class GRN(nn.Module):
    """Global response normalisation with zero-initialised gamma/beta [1, C, 1, 1] (identity)."""

    def __init__(self, channels: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps
        self.gamma = nn.Parameter(torch.zeros(1, channels, 1, 1))
        self.beta = nn.Parameter(torch.zeros(1, channels, 1, 1))

    def forward(self, x: Tensor) -> Tensor:
        return global_response_norm(x, self.gamma, self.beta, self.eps)


def mlp_hidden_channels(channels: int, mlp_ratio: float) -> int:
    """Hidden width of a block's pointwise MLP: int(C * ratio), at least 1."""
    return max(int(channels * mlp_ratio), 1)


# ---- adaln -----------------------------------------------------------------------------
# AdaLN-Zero modulation: one shared base projection plus low-rank per-block deltas.


class AdaLNScaleGateZeroProjector(nn.Module):
    """proj(SiLU(cond)): [N, d_cond] -> [N, num_chunks * d_model], zero-initialised."""

    def __init__(self, d_model: int, d_cond: int, num_chunks: int = 2) -> None:
        super().__init__()
        self.act = nn.SiLU()
        self.proj = nn.Linear(d_cond, num_chunks * d_model)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def forward(self, cond: Tensor) -> Tensor:
        return self.proj(self.act(cond))

    def forward_activated(self, activated_cond: Tensor) -> Tensor:
        """The projection of an input that already went through SiLU."""
        return self.proj(activated_cond)


class AdaLNScaleGateZeroLowRankDelta(nn.Module):
    """up(down(a)) without biases: a per-block low-rank correction of the shared projection."""

    def __init__(self, d_model: int, d_cond: int, rank: int, num_chunks: int = 2) -> None:
        super().__init__()
        self.down = nn.Linear(d_cond, rank, bias=False)
        self.up = nn.Linear(rank, num_chunks * d_model, bias=False)
        if not self.down.weight.is_meta:
            # On `meta` there are no values to draw, and normal_ there would import torch's
            # compiler stack (seconds) for nothing.
            nn.init.normal_(self.down.weight, std=0.02)
        nn.init.zeros_(self.up.weight)

    def forward(self, activated_cond: Tensor) -> Tensor:
        return self.up(self.down(activated_cond))


def shared_modulation(base: AdaLNScaleGateZeroProjector, cond: Tensor) -> tuple[Tensor, Tensor]:
    """(a, base(a)) with a = SiLU(cond): computed once, shared by every block's delta."""
    activated = F.silu(cond)
    return activated, base.forward_activated(activated)


def block_modulations(
    base: AdaLNScaleGateZeroProjector, deltas: nn.ModuleList, cond: Tensor
) -> Tensor:
    """Every block's modulation base(a) + delta_b(a), a = SiLU(cond): [D, N, num_chunks * C].

    All D low-rank deltas in two batched products (one matmul with the stacked `down` weights,
    one bmm with the stacked `up` weights) instead of 2D small matmuls; equal to
    `shared_modulation` plus each delta up to float rounding.
    """
    activated, shared = shared_modulation(base, cond)
    down = torch.cat([delta.down.weight for delta in deltas])  # [D * R, C]
    up = torch.stack([delta.up.weight for delta in deltas])  # [D, kC, R]
    low_rank = F.linear(activated, down)  # [N, D * R]
    low_rank = low_rank.unflatten(1, (len(deltas), -1)).transpose(0, 1)  # -> [D, N, R]
    return shared + torch.bmm(low_rank, up.transpose(1, 2))  # [D, N, kC]


# ---- time embed ------------------------------------------------------------------------
# Sinusoidal timestep embedding followed by a two-layer MLP.


def sinusoidal_frequencies(freq_dim: int = 256, max_period: float = 10000.0) -> Tensor:
    """freqs[i] = exp(-ln(max_period) * i / max(half - 1, 1)), i < half = freq_dim // 2.

    float32 [half], each entry the float64 value rounded once (so the same bits on every CPU:
    a vectorised float32 `exp` differs by an ulp between instruction sets, and one ulp of one
    entry moves a random-weight model's output by ~1e-4). The spec fixes the formula, not a
    float32 evaluation. A float32 evaluation (as the published code's, whose values the
    checkpoints store and we load) rounds the exponent first: it differs by < 1e-6 relative.
    """
    half = freq_dim // 2
    # Python floats, built on the CPU even inside `with torch.device("meta")`: meta kernels
    # for exp would import torch's compiler stack (seconds) for 128 numbers.
    divisor = max(half - 1, 1)
    values = [math.exp(-math.log(max_period) * i / divisor) for i in range(half)]
    return torch.tensor(values, dtype=torch.float64, device="cpu").float()


def sinusoidal_embedding(t: Tensor, freqs: Tensor, time_scale: float = 1000.0) -> Tensor:
    """t [N] in [0, 1] -> concat(sin, cos) of (time_scale * t) * freqs, float32 [N, 2 * half]."""
    angles = (time_scale * t.float())[:, None] * freqs.float()[None, :]
    return torch.cat([torch.sin(angles), torch.cos(angles)], dim=-1)


class SinusoidalTimeEmbeddingMLP(nn.Module):
    """t [N] in [0, 1] -> conditioning vector [N, dim] in the weights' dtype."""

    def __init__(
        self,
        dim: int,
        freq_dim: int = 256,
        hidden_mult: float = 1.0,
        time_scale: float = 1000.0,
        max_period: float = 10000.0,
        persistent_freqs: bool = True,
    ) -> None:
        super().__init__()
        hidden = int(dim * hidden_mult)
        self.time_scale = time_scale
        freqs = sinusoidal_frequencies(freq_dim, max_period)
        if persistent_freqs:
            # The published FCDM checkpoints store it (float32, key `...time_embed.freqs`), so
            # a model built on meta leaves it on meta until the file is loaded.
            freqs = freqs.to(torch.empty(0).device)  # the ambient device: "meta" if so
        # A non-persistent table is never loaded, so it keeps real (CPU) values even on meta.
        self.register_buffer("freqs", freqs, persistent=persistent_freqs)
        self.proj_in = nn.Linear(freq_dim, hidden)
        self.act = nn.SiLU()
        self.proj_out = nn.Linear(hidden, dim)

    def forward(self, t: Tensor) -> Tensor:
        embedding = sinusoidal_embedding(t, self.freqs, self.time_scale)
        hidden = self.act(self.proj_in(embedding.to(self.proj_in.weight.dtype)))
        return self.proj_out(hidden.to(self.proj_out.weight.dtype))


# ---- patchify --------------------------------------------------------------------------
# Pixel <-> patch-grid conversions.


class Patchify(nn.Module):
    """images [N, in_ch, H, W] -> features [N, C, H/P, W/P] through one stride-P convolution."""

    def __init__(self, in_channels: int, channels: int, patch_size: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_channels, channels, patch_size, stride=patch_size)

    def forward(self, images: Tensor) -> Tensor:
        return self.proj(images)


def space_to_channels(x: Tensor, factor: int = 2) -> Tensor:
    """[N, C, h, w] -> [N, C*f*f, h/f, w/f]; channel c*f*f + dy*f + dx (pixel-unshuffle order).

    This is the FLUX.2 latent patchify and the semdisdiffae_p32 (v1) bottleneck patchify; it is a
    pure permutation, so it is exact in every dtype.
    """
    return F.pixel_unshuffle(x, factor)


def channels_to_space(x: Tensor, factor: int = 2) -> Tensor:
    """Inverse of `space_to_channels`: [N, C*f*f, h, w] -> [N, C, h*f, w*f]."""
    return F.pixel_shuffle(x, factor)


# ---- tiling ----------------------------------------------------------------------------
# Exact row tiling: bounded-memory forward passes that equal the untiled ones up to rounding.
#
# The FCDM and DiCo blocks mix positions in two ways only: a k x k depthwise convolution (a halo
# of k // 2 rows) and a per-channel statistic over the whole image (GRN's spatial L2 norm, DiCo's
# channel-attention mean). A tiled block therefore runs over row chunks of the latent grid in two
# passes: the first accumulates the statistic over the chunks, the second applies it with the
# global value, recomputing each chunk's hidden activations instead of keeping them. Everything
# else in the networks (patchify, the 1x1 convolutions, out_proj and PixelShuffle) is per position
# and runs chunk by chunk. Nothing is approximated: there are no seams, and tiles are not blended.
#
# Peak memory is then a few full-size tensors at model width (the residual stream and the skip)
# plus one chunk of the 4x-wide MLP, instead of several 4x-wide full-size tensors. The price is
# the recomputation (one more 1x1 convolution per FCDM block); `recompute=False` keeps the
# hidden activations instead (one full-size 4x-wide tensor, no extra work).

DEFAULT_TILE_TOKENS = 2048
"""Latent-grid positions per chunk: a [2048, 4 * 896] float32 MLP activation is 28 MiB."""


class RowTiled:
    """Mixin of modules whose forward runs over row spans; `tile_tokens` None: one span.

    `tile_recompute`: whether two-pass blocks recompute their hidden activations in the second
    pass (lowest memory) or keep them from the first (less time, more memory).
    """

    tile_tokens: int | None = None
    tile_recompute: bool = True


def check_tile_tokens(tile_tokens: object) -> int:
    """Validate a user `tile_tokens` argument: a positive int."""
    if isinstance(tile_tokens, bool) or not isinstance(tile_tokens, int) or tile_tokens < 1:
        raise ValueError(f"tile_tokens: expected a positive int, got {tile_tokens!r}")
    return tile_tokens


def row_spans(height: int, width: int, tile_tokens: int | None) -> list[tuple[int, int]]:
    """[(start, stop), ...] covering rows 0..height of a width-wide grid, <= tile_tokens each.

    At least one row per chunk, so a chunk holds max(tile_tokens, width) positions at most.
    `tile_tokens` None (tiling off) is one span over the whole grid, [(0, height)]: the tiled
    forward passes are then the plain ones.
    """
    if tile_tokens is None:
        return [(0, height)]
    rows = max(1, tile_tokens // max(width, 1))
    return [(start, min(start + rows, height)) for start in range(0, height, rows)]


def stitch_rows(
    compute_rows: Callable[[int, int], Tensor], spans: list[tuple[int, int]], scale: int = 1
) -> Tensor:
    """compute_rows(start, stop) [N, C, (stop - start) * scale, W] of each span, stacked on dim 2.

    One span: its chunk as is (no copy). More: each chunk is written into one preallocated
    [N, C, height * scale, W] tensor as it comes, so only one chunk is alive besides it.
    `scale` maps span rows to output rows (the patch size for pixel-level outputs).
    """
    if len(spans) == 1:
        return compute_rows(*spans[0])
    stitched = None
    for start, stop in spans:
        chunk = compute_rows(start, stop)
        if stitched is None:
            stitched = chunk.new_empty(*chunk.shape[:2], spans[-1][1] * scale, chunk.shape[3])
        stitched[:, :, start * scale : stop * scale] = chunk
    assert stitched is not None
    return stitched


def combined_l2_norm(span_norms: list[Tensor]) -> Tensor:
    """The L2 norm over all spans from each span's: one span's as is, else sqrt(sum of squares)."""
    if len(span_norms) == 1:
        return span_norms[0]
    sum_of_squares = span_norms[0].square()
    for norm in span_norms[1:]:
        sum_of_squares = sum_of_squares + norm.square()
    return sum_of_squares.sqrt()


def conv_rows(
    conv: nn.Conv2d, x: Tensor, start: int, stop: int, below: Tensor | None = None
) -> Tensor:
    """conv(x)[:, :, start:stop] of a stride-1 'same' conv, reading only the rows it needs.

    The slab keeps a halo of `padding` rows on each side where the image has them; at the
    image border the conv's own zero padding stands in, as in the untiled call. `below`, when
    given, holds x's rows from `stop` on as they were before an in-place update overwrote them
    (at least the halo's worth, or up to the image's last row).
    """
    halo = conv.padding[0]
    first, last = max(start - halo, 0), min(stop + halo, x.shape[2])
    slab = x[:, :, first:last]
    if below is not None:
        slab = torch.cat([x[:, :, first:stop], below[:, :, : last - stop]], dim=2)
    return conv(slab)[:, :, start - first : stop - first]
