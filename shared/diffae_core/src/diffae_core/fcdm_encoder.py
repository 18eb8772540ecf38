"""The FCDM encoder of SemDisDiffAE and full_capacitor (fcdm_diffae spec §5)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .fcdm_block import FCDMBlock
from .norms import ChannelWiseRMSNorm
from .patchify import Patchify
from .posterior import EncoderPosterior, deterministic_posterior, split_posterior
from .tiling import RowTiled, row_spans

POSTERIOR_KINDS = ("diagonal_gaussian", "deterministic")


class FCDMEncoder(RowTiled, nn.Module):
    """images [N, 3, H, W] in [-1, 1] -> raw posterior, mean/logsnr [N, B, H/P, W/P].

    patchify -> unconditioned FCDM blocks (layer-scale residuals) -> 1x1 `to_bottleneck`.
    `normalize_mean` chooses whether `norm_out` (an affine-free channel RMSNorm, no state-dict
    keys either way) is applied to the posterior mean or is an identity: the published files
    cannot tell, so each family decides it in one documented place. With `tile_tokens` set
    (`model.enable_tiling`), `features` runs over row chunks of the patch grid, exactly.
    """

    def __init__(
        self,
        *,
        in_channels: int = 3,
        patch_size: int = 16,
        model_dim: int = 896,
        depth: int = 4,
        bottleneck_dim: int = 128,
        mlp_ratio: float = 4.0,
        depthwise_kernel_size: int = 7,
        posterior_kind: str = "diagonal_gaussian",
        normalize_mean: bool = True,
    ) -> None:
        super().__init__()
        if posterior_kind not in POSTERIOR_KINDS:
            raise ValueError(
                f"posterior_kind: expected one of {POSTERIOR_KINDS}, got {posterior_kind!r}"
            )
        self.posterior_kind = posterior_kind
        self.patchify = Patchify(in_channels, model_dim, patch_size)
        self.blocks = nn.ModuleList(
            FCDMBlock(model_dim, mlp_ratio, depthwise_kernel_size=depthwise_kernel_size)
            for _ in range(depth)
        )
        projection_channels = 2 * bottleneck_dim
        if posterior_kind == "deterministic":
            projection_channels = bottleneck_dim
        self.to_bottleneck = nn.Conv2d(model_dim, projection_channels, 1)
        self.norm_out: nn.Module = (
            ChannelWiseRMSNorm(bottleneck_dim, eps=1e-6, affine=False)
            if normalize_mean
            else nn.Identity()
        )

    def features(self, images: Tensor) -> Tensor:
        """images [N, 3, H, W] -> bottleneck projection [N, 2B (or B), H/P, W/P]."""
        if self.tile_tokens is not None:
            return self._features_tiled(images, self.tile_tokens)
        x = self.patchify(images)
        for block in self.blocks:
            x = block(x)
        return self.to_bottleneck(x)

    def _features_tiled(self, images: Tensor, tile_tokens: int) -> Tensor:
        """`features` over row chunks of the patch grid; equal up to float rounding."""
        patch = self.patchify.proj.stride[0]
        height, width = images.shape[2] // patch, images.shape[3] // patch
        spans = row_spans(height, width, tile_tokens)
        x = None
        for start, stop in spans:
            chunk = self.patchify(images[:, :, start * patch : stop * patch])  # [N, C, rows, w]
            if x is None:
                x = chunk.new_empty(*chunk.shape[:2], height, width)
            x[:, :, start:stop] = chunk
        assert x is not None
        for block in self.blocks:
            x = block.forward_tiled(
                x, tile_tokens=tile_tokens, recompute=self.tile_recompute, overwrite=True
            )
        projections = [self.to_bottleneck(x[:, :, start:stop]) for start, stop in spans]
        return torch.cat(projections, dim=2)  # row chunks -> [N, 2B, h, w]

    def posterior(self, images: Tensor) -> EncoderPosterior:
        """The raw posterior; a deterministic encoder has logsnr = +inf (alpha = 1, sigma = 0)."""
        projection = self.features(images)
        if self.posterior_kind == "deterministic":
            return deterministic_posterior(self.norm_out(projection))
        posterior = split_posterior(projection)
        return EncoderPosterior(mean=self.norm_out(posterior.mean), logsnr=posterior.logsnr)

    def forward(self, images: Tensor) -> Tensor:
        """images -> posterior mode alpha * mean, in the model dtype."""
        return self.posterior(images).mode()
