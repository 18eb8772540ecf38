"""The FCDM diffusion decoder: x0-prediction with skip fusion and path-drop PDG (spec §7)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .adaln import AdaLNScaleGateZeroLowRankDelta, AdaLNScaleGateZeroProjector, block_modulations
from .fcdm_block import FCDMBlock
from .patchify import Patchify
from .tiling import RowTiled, row_spans
from .time_embed import SinusoidalTimeEmbeddingMLP


class FCDMDecoder(RowTiled, nn.Module):
    """Predicts x0 [N, 3, H, W] from a noisy image x_t, its time t and raw latents [N, B, h, w].

    Layout (depth D = start + middle + end blocks, each with AdaLN from a shared base plus a
    low-rank delta): fuse_in(patchify(x_t) ++ latent_up(z)) -> start -> middle -> fuse_skip(start
    ++ middle) -> end -> out_proj -> PixelShuffle(P). No input, latent or output norms.
    With `tile_tokens` set (`model.enable_tiling`), the same maths run over row chunks of the
    latent grid (`diffae_core.tiling`).
    """

    def __init__(
        self,
        *,
        in_channels: int = 3,
        patch_size: int = 16,
        model_dim: int = 896,
        depth: int = 8,
        start_block_count: int = 2,
        end_block_count: int = 2,
        bottleneck_dim: int = 128,
        mlp_ratio: float = 4.0,
        depthwise_kernel_size: int = 7,
        adaln_low_rank_rank: int = 128,
    ) -> None:
        super().__init__()
        middle_block_count = depth - start_block_count - end_block_count
        if middle_block_count < 0:
            raise ValueError(
                f"depth: expected >= start_block_count + end_block_count "
                f"= {start_block_count + end_block_count}, got {depth}"
            )
        self.patch_size = patch_size

        def block() -> FCDMBlock:
            return FCDMBlock(
                model_dim,
                mlp_ratio,
                depthwise_kernel_size=depthwise_kernel_size,
                use_external_adaln=True,
            )

        self.patchify = Patchify(in_channels, model_dim, patch_size)
        self.latent_up = nn.Conv2d(bottleneck_dim, model_dim, 1)
        self.fuse_in = nn.Conv2d(2 * model_dim, model_dim, 1)
        self.time_embed = SinusoidalTimeEmbeddingMLP(model_dim)
        self.adaln_base = AdaLNScaleGateZeroProjector(model_dim, model_dim)
        self.adaln_deltas = nn.ModuleList(
            AdaLNScaleGateZeroLowRankDelta(model_dim, model_dim, adaln_low_rank_rank)
            for _ in range(depth)
        )
        self.start_blocks = nn.ModuleList(block() for _ in range(start_block_count))
        self.middle_blocks = nn.ModuleList(block() for _ in range(middle_block_count))
        self.fuse_skip = nn.Conv2d(2 * model_dim, model_dim, 1)
        self.end_blocks = nn.ModuleList(block() for _ in range(end_block_count))
        self.path_drop_mask_feature = nn.Parameter(torch.zeros(1, model_dim, 1, 1))
        self.out_proj = nn.Conv2d(model_dim, in_channels * patch_size**2, 1)
        self.unpatchify = nn.PixelShuffle(patch_size)

    def forward(
        self, x_t: Tensor, t: Tensor, latents: Tensor, *, drop_middle_blocks: bool = False
    ) -> Tensor:
        """x_t [N, 3, H, W], t [N] in [0, 1], raw latents [N, B, H/P, W/P] -> x0_hat [N, 3, H, W].

        With `drop_middle_blocks` the middle blocks are replaced by the learned mask feature:
        the weak prediction of path-drop guidance (PDG).
        """
        cond = self.time_embed(t.to(device=x_t.device, dtype=torch.float32))
        modulations = block_modulations(self.adaln_base, self.adaln_deltas, cond)  # [D, N, 2C]
        if self.tile_tokens is not None:
            return self._forward_tiled(x_t, latents, modulations, drop_middle_blocks)
        features = self.fuse_in(torch.cat([self.patchify(x_t), self.latent_up(latents)], dim=1))

        def run(blocks: nn.ModuleList, x: Tensor, first_index: int) -> Tensor:
            # Global block index b selects the AdaLN delta: start 0.., middle, then end.
            for offset, block in enumerate(blocks):
                x = block(x, adaln_m=modulations[first_index + offset])
            return x

        start = run(self.start_blocks, features, 0)
        if drop_middle_blocks:
            middle = self.path_drop_mask_feature.to(start.dtype).expand_as(start)
        else:
            middle = run(self.middle_blocks, start, len(self.start_blocks))
        end = self.fuse_skip(torch.cat([start, middle], dim=1))
        end = run(self.end_blocks, end, len(self.start_blocks) + len(self.middle_blocks))
        return self.unpatchify(self.out_proj(end))

    def _forward_tiled(
        self, x_t: Tensor, latents: Tensor, modulations: Tensor, drop_middle_blocks: bool
    ) -> Tensor:
        """`forward` over row chunks of the latent grid; equal up to float rounding.

        Full-size tensors: x_t, the output, and at most three [N, C, h, w] feature maps (the
        start-block skip, the first middle block's input and its output); every other block
        writes its output over its input. The pixel-level patchify, out_proj
        and PixelShuffle, the fuse convs and each block's MLP run chunk by chunk.
        """
        assert self.tile_tokens is not None
        patch = self.patch_size
        spans = row_spans(latents.shape[2], latents.shape[3], self.tile_tokens)
        features = None
        for start, stop in spans:
            pixels = x_t[:, :, start * patch : stop * patch]
            chunk = torch.cat([self.patchify(pixels), self.latent_up(latents[:, :, start:stop])], 1)
            chunk = self.fuse_in(chunk)  # [N, C, rows, w]
            if features is None:
                features = chunk.new_empty(*chunk.shape[:2], *latents.shape[2:])
            features[:, :, start:stop] = chunk
        assert features is not None

        def run(blocks: nn.ModuleList, x: Tensor, first_index: int, own_input: bool) -> Tensor:
            # Blocks overwrite their input in place, except an input the caller still needs.
            for offset, block in enumerate(blocks):
                modulation = modulations[first_index + offset]
                x = block.forward_tiled(
                    x,
                    adaln_m=modulation,
                    tile_tokens=self.tile_tokens,
                    recompute=self.tile_recompute,
                    overwrite=own_input or offset > 0,
                )
            return x

        skip = run(self.start_blocks, features, 0, own_input=True)
        del features
        middle = None
        if not drop_middle_blocks:  # the skip is read again by fuse_skip
            middle = run(self.middle_blocks, skip, len(self.start_blocks), own_input=False)
        mask_feature = self.path_drop_mask_feature.to(skip.dtype)
        fused = torch.empty_like(skip)
        for start, stop in spans:
            skip_rows = skip[:, :, start:stop]
            if middle is None:
                middle_rows = mask_feature.expand_as(skip_rows)
            else:
                middle_rows = middle[:, :, start:stop]
            fused[:, :, start:stop] = self.fuse_skip(torch.cat([skip_rows, middle_rows], dim=1))
        del skip, middle
        end = run(
            self.end_blocks, fused, len(self.start_blocks) + len(self.middle_blocks), own_input=True
        )
        del fused
        images = x_t.new_empty(x_t.shape, dtype=end.dtype)
        for start, stop in spans:
            rows = self.unpatchify(self.out_proj(end[:, :, start:stop]))
            images[:, :, start * patch : stop * patch] = rows
        return images
