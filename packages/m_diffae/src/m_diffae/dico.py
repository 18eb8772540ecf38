"""The DiCo block of mDiffAE and its parts.

DiCo (Ai et al., arXiv:2505.11196): a conv path 1x1 -> depthwise -> SiLU -> compact channel
attention -> 1x1, then a GELU MLP, each a gated residual branch. Shapes are [N, C, h, w].
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from diffae_core.config import check_choice
from diffae_core.layers import ChannelWiseRMSNorm, mlp_hidden_channels, row_spans

from .open_points import MODULATION_ORDERS

NORM_EPS = 1e-6
GATE_INIT = 1e-3
"""Initial value of the encoder's residual gates. The spec gives none (loading overwrites it);
borrowed from the FCDM block's `layer_scale_init` (diffae_core.fcdm), the same role."""


class Float32RMSNorm(ChannelWiseRMSNorm):
    """ChannelWiseRMSNorm computed in float32 throughout, cast back at the end.

    The iRDiffAE lineage normalises and applies the affine in float32; the
    core norm multiplies in the input dtype. Identical in float32.
    """

    def forward(self, x: Tensor) -> Tensor:
        return super().forward(x.float()).to(x.dtype)


class CompactChannelAttention(nn.Module):
    """x * sigmoid(proj(mean over h, w of x)): one gate per sample and channel, full 1x1 proj."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(channels, channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        pooled = x.mean(dim=(2, 3), keepdim=True)  # [N, C, h, w] -> [N, C, 1, 1]
        return x * torch.sigmoid(self.proj(pooled))


class ConvMLP(nn.Module):
    """RMSNorm (no affine) -> 1x1 conv to the hidden width -> exact GELU -> 1x1 conv back."""

    def __init__(self, channels: int, hidden_channels: int, norm_eps: float = NORM_EPS) -> None:
        super().__init__()
        self.norm = Float32RMSNorm(channels, eps=norm_eps, affine=False)
        self.conv_in = nn.Conv2d(channels, hidden_channels, 1)
        self.conv_out = nn.Conv2d(hidden_channels, channels, 1)

    def forward(self, x: Tensor, *, normalize: bool = True) -> Tensor:
        """[N, C, h, w] -> [N, C, h, w]; `normalize=False` skips the internal norm."""
        if normalize:
            x = self.norm(x)
        return self.conv_out(F.gelu(self.conv_in(x)))


class DiCoBlock(nn.Module):
    """Gated conv-path and MLP residual branches.

    Encoder mode: the gates are learned per-channel vectors `gate1`, `gate2` [C], used raw.
    External AdaLN mode (decoder): `forward` receives `adaln_m` [N, 4C] holding (s1, g1, s2, g2);
    scales enter as (1 + s) on the branch norms, gates raw (AdaLN-Zero).
    """

    def __init__(
        self,
        channels: int,
        mlp_ratio: float = 4.0,
        *,
        depthwise_kernel_size: int = 7,
        use_external_adaln: bool = False,
        norm_eps: float = NORM_EPS,
        modulation_order: str = "s1g1s2g2",
        mlp_renorm: bool = True,
    ) -> None:
        super().__init__()
        check_choice("modulation_order", modulation_order, tuple(MODULATION_ORDERS))
        self.use_external_adaln = use_external_adaln
        self.chunk_order = MODULATION_ORDERS[modulation_order]
        self.mlp_renorm = mlp_renorm
        self.norm1 = Float32RMSNorm(channels, eps=norm_eps, affine=False)
        self.norm2 = Float32RMSNorm(channels, eps=norm_eps, affine=False)
        self.conv1 = nn.Conv2d(channels, channels, 1)
        self.conv2 = nn.Conv2d(
            channels,
            channels,
            depthwise_kernel_size,
            padding=depthwise_kernel_size // 2,
            groups=channels,
        )
        self.cca = CompactChannelAttention(channels)
        self.conv3 = nn.Conv2d(channels, channels, 1)
        self.mlp = ConvMLP(channels, mlp_hidden_channels(channels, mlp_ratio), norm_eps)
        if use_external_adaln:
            self.register_parameter("gate1", None)
            self.register_parameter("gate2", None)
        else:
            self.gate1 = nn.Parameter(torch.full((channels,), GATE_INIT))
            self.gate2 = nn.Parameter(torch.full((channels,), GATE_INIT))

    def _modulation(self, x: Tensor, adaln_m: Tensor | None) -> tuple[Tensor | None, ...]:
        """(scale1, gate1, scale2, gate2), each [N or 1, C, 1, 1]; scales None in encoder mode."""
        if not self.use_external_adaln:
            assert adaln_m is None, "encoder-mode DiCoBlock takes no adaln_m"
            gate1 = self.gate1.view(1, -1, 1, 1).to(x.dtype)
            gate2 = self.gate2.view(1, -1, 1, 1).to(x.dtype)
            return None, gate1, None, gate2
        assert adaln_m is not None, "decoder-mode DiCoBlock needs adaln_m [N, 4C]"
        chunks = adaln_m.to(device=x.device, dtype=x.dtype).chunk(4, dim=1)  # 4 x [N, C]
        return tuple(chunks[i][:, :, None, None] for i in self.chunk_order)

    def forward(
        self, x: Tensor, *, adaln_m: Tensor | None = None, tile_tokens: int | None = None
    ) -> Tensor:
        """[N, C, h, w] -> [N, C, h, w]; `adaln_m` [N, 4C] is required in AdaLN mode only.

        Runs over row spans of <= tile_tokens positions (None: one span, the whole grid). The
        channel attention's mean over h x w is the one whole-image statistic: pass 1 computes
        the conv path's SiLU output span by span (1x1, then the depthwise conv with a halo of
        k // 2 rows) and its mean over all spans (float32 sums when there are several); pass 2
        gates each span's conv path with it and runs the per-position MLP branch on the same
        rows. Pass 2 runs bottom-up and reuses the last span's conv path (one span: nothing is
        recomputed); the others are recomputed. Several spans equal one up to float rounding.
        """
        height, width = x.shape[2], x.shape[3]
        spans = row_spans(height, width, tile_tokens)
        tiled = len(spans) > 1
        scale1, gate1, scale2, gate2 = self._modulation(x, adaln_m)
        halo = self.conv2.padding[0]

        def conv_path(start: int, stop: int) -> Tensor:
            first, last = max(start - halo, 0), min(stop + halo, height)
            h = self.norm1(x[:, :, first:last])
            if scale1 is not None:
                h = h * (1 + scale1)
            h = self.conv2(self.conv1(h))[:, :, start - first : stop - first]
            return F.silu(h)

        kept: dict[int, Tensor] = {}
        pooled = None  # [N, C, 1, 1]
        for index, (start, stop) in enumerate(spans):
            path = conv_path(start, stop)
            if not tiled:  # the mean in x's dtype, as `CompactChannelAttention`'s
                pooled = path.mean(dim=(2, 3), keepdim=True)
            else:  # float32 sums, divided once at the end
                span_sum = path.sum(dim=(2, 3), keepdim=True, dtype=torch.float32)
                pooled = span_sum if pooled is None else pooled + span_sum
            if index == len(spans) - 1:
                kept[index] = path
            del path
        assert pooled is not None
        if tiled:
            pooled = (pooled / (height * width)).to(x.dtype)
        attention = torch.sigmoid(self.cca.proj(pooled))
        out = torch.empty_like(x) if tiled else x  # one span: never written
        for index in reversed(range(len(spans))):
            start, stop = spans[index]
            path = kept.pop(index) if index in kept else conv_path(start, stop)
            h = self.conv3(path * attention)
            del path
            rows = x[:, :, start:stop] + gate1 * h
            h = self.norm2(rows)
            if scale2 is not None:
                h = h * (1 + scale2)
            h = rows + gate2 * self.mlp(h, normalize=self.mlp_renorm)
            if not tiled:
                return h  # the one span's fresh output, no copy
            out[:, :, start:stop] = h
        return out
