"""The FCDM block: a ConvNeXt-style residual block with GRN (diffae_core spec §3)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .norms import GRN, ChannelWiseRMSNorm


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
        """[N, C, h, w] -> [N, C, h, w]; `adaln_m` [N, 2C] is required in AdaLN mode."""
        h = self.norm(self.dwconv(x))
        if adaln_m is not None:
            scale, gate = adaln_m.to(x.dtype).chunk(2, dim=1)  # [N, 2C] -> 2 x [N, C]
            h = h * (1 + scale[:, :, None, None])
            gate = gate[:, :, None, None]
        else:
            gate = self.layer_scale.view(1, -1, 1, 1).to(h.dtype)
        h = self.pwconv2(self.grn(F.gelu(self.pwconv1(h))))
        return x + gate * h
