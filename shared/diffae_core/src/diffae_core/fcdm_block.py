"""The FCDM block: a ConvNeXt-style residual block with GRN (diffae_core spec §3)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .norms import GRN, ChannelWiseRMSNorm, channel_rms_norm, global_response_norm, grn_scale
from .tiling import conv_rows, row_spans


def _gated_residual(x: Tensor, gate: Tensor, h: Tensor, inplace: bool) -> Tensor:
    """x + gate * h; `inplace` writes it over h with the same roundings."""
    return h.mul_(gate).add_(x) if inplace else x + gate * h


def mlp_hidden_channels(channels: int, mlp_ratio: float) -> int:
    """Hidden width of a block's pointwise MLP: int(C * ratio), at least 1."""
    return max(int(channels * mlp_ratio), 1)


class FCDMBlock(nn.Module):
    """Depthwise conv -> RMSNorm -> (AdaLN scale) -> 1x1 MLP with GRN, gated residual.

    Two modes: unconditioned (encoder; the residual gate is a learned `layer_scale` [C]) and
    external AdaLN (decoder; `forward` receives `adaln_m` [N, 2C] = (scale, gate) per sample).
    """

    def __init__(
        self,
        channels: int,
        mlp_ratio: float = 4.0,
        *,
        depthwise_kernel_size: int = 7,
        use_external_adaln: bool = False,
        norm_eps: float = 1e-6,
        layer_scale_init: float = 1e-3,
    ) -> None:
        super().__init__()
        hidden = mlp_hidden_channels(channels, mlp_ratio)
        self.channels = channels
        self.dwconv = nn.Conv2d(
            channels,
            channels,
            depthwise_kernel_size,
            padding=depthwise_kernel_size // 2,
            groups=channels,
        )
        self.norm = ChannelWiseRMSNorm(channels, eps=norm_eps, affine=False)
        self.pwconv1 = nn.Conv2d(channels, hidden, 1)
        self.grn = GRN(hidden, eps=norm_eps)
        self.pwconv2 = nn.Conv2d(hidden, channels, 1)
        if use_external_adaln:
            self.register_parameter("layer_scale", None)
        else:
            self.layer_scale = nn.Parameter(torch.full((channels,), layer_scale_init))

    def forward(self, x: Tensor, *, adaln_m: Tensor | None = None) -> Tensor:
        """[N, C, h, w] -> [N, C, h, w]; `adaln_m` [N, 2C] is required in AdaLN mode.

        Without autograd each step writes over the fresh tensor it reads (x itself is never
        written): one 4C-wide tensor alive instead of two, and fewer new allocations, which
        on a CPU are fresh pages for large images. Same operations, same values.
        """
        scale, gate = self._modulation(x, adaln_m)
        inplace = not torch.is_grad_enabled()
        h = self._hidden(self.dwconv(x), scale, inplace)
        grn = self.grn
        h = self.pwconv2(global_response_norm(h, grn.gamma, grn.beta, grn.eps, inplace=inplace))
        return _gated_residual(x, gate, h, inplace)

    def _hidden(self, dwconv_out: Tensor, scale: Tensor | None, inplace: bool) -> Tensor:
        """GELU(pwconv1(RMSNorm(depthwise conv output) * (1 + scale))): [N, 4C, h, w]."""
        h = channel_rms_norm(dwconv_out, self.norm.eps, inplace=inplace)
        if scale is not None:
            h = h.mul_(1 + scale) if inplace else h * (1 + scale)
        h = self.pwconv1(h)
        return torch.ops.aten.gelu_(h) if inplace else F.gelu(h)

    def _modulation(self, x: Tensor, adaln_m: Tensor | None) -> tuple[Tensor | None, Tensor]:
        """(scale [N, C, 1, 1] or None, gate [N or 1, C, 1, 1]) in x's dtype."""
        if adaln_m is not None:
            scale, gate = adaln_m.to(x.dtype).chunk(2, dim=1)  # [N, 2C] -> 2 x [N, C]
            return scale[:, :, None, None], gate[:, :, None, None]
        return None, self.layer_scale.view(1, -1, 1, 1).to(x.dtype)

    def forward_tiled(
        self,
        x: Tensor,
        *,
        adaln_m: Tensor | None = None,
        tile_tokens: int,
        recompute: bool = True,
        overwrite: bool = False,
    ) -> Tensor:
        """`forward` over row chunks of <= tile_tokens positions; equal up to float rounding.

        Pass 1 accumulates GRN's per-channel sums of squares over the chunks (float32); pass 2
        applies GRN with the whole image's statistics, then `pwconv2` and the gated residual.
        The depthwise conv reads a halo of k // 2 rows. `recompute=True` recomputes each
        chunk's hidden activations in pass 2 (one more `pwconv1` per block, no full-size
        [N, 4C, h, w] tensor); `recompute=False` keeps them from pass 1 (about the untiled
        time, one full-size 4C-wide tensor in memory). Pass 2 runs bottom-up, so the last
        chunk's activations are reused either way. `overwrite=True` writes the output into x
        itself (one full-size tensor fewer; the caller must not need x afterwards), keeping
        the original halo rows each recomputed chunk reads from below; never under autograd.
        """
        spans = row_spans(x.shape[2], x.shape[3], tile_tokens)
        if len(spans) == 1:  # one chunk: the plain pass, without recomputing anything
            return self(x, adaln_m=adaln_m)
        scale, gate = self._modulation(x, adaln_m)
        halo = self.dwconv.padding[0]
        inplace = not torch.is_grad_enabled()  # chunk temporaries are updated in place

        def hidden(start: int, stop: int, below: Tensor | None = None) -> Tensor:
            return self._hidden(conv_rows(self.dwconv, x, start, stop, below), scale, inplace)

        kept: dict[int, Tensor] = {}
        sum_of_squares = None
        for index, (start, stop) in enumerate(spans):
            chunk = hidden(start, stop)
            squares = torch.linalg.vector_norm(
                chunk, dim=(2, 3), keepdim=True, dtype=torch.float32
            ).square()
            sum_of_squares = squares if sum_of_squares is None else sum_of_squares + squares
            if not recompute or index == len(spans) - 1:
                kept[index] = chunk
            del chunk
        assert sum_of_squares is not None
        grn = self.grn
        factor = grn_scale(sum_of_squares.sqrt(), grn.gamma, grn.eps, x.dtype)
        beta = grn.beta.to(x.dtype)
        overwrite = overwrite and inplace
        out = x if overwrite else torch.empty_like(x)
        below = None  # x's original rows just below the current chunk, once overwritten
        for index in reversed(range(len(spans))):
            start, stop = spans[index]
            chunk = kept.pop(index) if index in kept else hidden(start, stop, below)
            h = self.pwconv2(torch.addcmul(beta, chunk, factor, out=chunk if inplace else None))
            del chunk
            rows = x[:, :, start:stop]
            if overwrite and recompute and index > 0:
                pristine = rows if below is None else torch.cat([rows, below], dim=2)
                below = pristine[:, :, :halo].clone()
            out[:, :, start:stop] = _gated_residual(rows, gate, h, inplace)
        return out
