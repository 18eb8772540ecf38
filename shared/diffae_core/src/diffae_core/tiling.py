"""Exact row tiling: bounded-memory forward passes that equal the untiled ones up to rounding.

The FCDM and DiCo blocks mix positions in two ways only: a k x k depthwise convolution (a halo
of k // 2 rows) and a per-channel statistic over the whole image (GRN's spatial L2 norm, DiCo's
channel-attention mean). A tiled block therefore runs over row chunks of the latent grid in two
passes: the first accumulates the statistic over the chunks, the second applies it with the
global value, recomputing each chunk's hidden activations instead of keeping them. Everything
else in the networks (patchify, the 1x1 convolutions, out_proj and PixelShuffle) is per position
and runs chunk by chunk. Nothing is approximated: there are no seams, and tiles are not blended.

Peak memory is then a few full-size tensors at model width (the residual stream and the skip)
plus one chunk of the 4x-wide MLP, instead of several 4x-wide full-size tensors. The price is
the recomputation (one more 1x1 convolution per FCDM block); `recompute=False` keeps the
hidden activations instead (one full-size 4x-wide tensor, no extra work).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

DEFAULT_TILE_TOKENS = 2048
"""Latent-grid positions per chunk: a [2048, 4 * 896] float32 MLP activation is 28 MiB."""


class RowTiled:
    """Mixin of modules with a row-tiled forward; `tile_tokens` None runs the plain forward.

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


def row_spans(height: int, width: int, tile_tokens: int) -> list[tuple[int, int]]:
    """[(start, stop), ...] covering rows 0..height of a width-wide grid, <= tile_tokens each.

    At least one row per chunk, so a chunk holds max(tile_tokens, width) positions at most.
    """
    rows = max(1, tile_tokens // max(width, 1))
    return [(start, min(start + rows, height)) for start in range(0, height, rows)]


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
