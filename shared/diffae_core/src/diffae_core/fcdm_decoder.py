"""The FCDM diffusion decoder: x0-prediction with skip fusion and path-drop PDG (spec §7)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .adaln import AdaLNScaleGateZeroLowRankDelta, AdaLNScaleGateZeroProjector, shared_modulation
from .fcdm_block import FCDMBlock
from .patchify import Patchify
from .time_embed import SinusoidalTimeEmbeddingMLP


class FCDMDecoder(nn.Module):
    """Predicts x0 [N, 3, H, W] from a noisy image x_t, its time t and raw latents [N, B, h, w].

    Layout (depth D = start + middle + end blocks, each with AdaLN from a shared base plus a
    low-rank delta): fuse_in(patchify(x_t) ++ latent_up(z)) -> start -> middle -> fuse_skip(start
    ++ middle) -> end -> out_proj -> PixelShuffle(P). No input, latent or output norms.
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
        features = self.fuse_in(torch.cat([self.patchify(x_t), self.latent_up(latents)], dim=1))
        cond = self.time_embed(t.to(device=x_t.device, dtype=torch.float32))
        activated, shared = shared_modulation(self.adaln_base, cond)

        def run(blocks: nn.ModuleList, x: Tensor, first_index: int) -> Tensor:
            # Global block index b selects the AdaLN delta: start 0.., middle, then end.
            for offset, block in enumerate(blocks):
                delta = self.adaln_deltas[first_index + offset](activated)
                x = block(x, adaln_m=shared + delta)
            return x

        start = run(self.start_blocks, features, 0)
        if drop_middle_blocks:
            middle = self.path_drop_mask_feature.to(start.dtype).expand_as(start)
        else:
            middle = run(self.middle_blocks, start, len(self.start_blocks))
        end = self.fuse_skip(torch.cat([start, middle], dim=1))
        end = run(self.end_blocks, end, len(self.start_blocks) + len(self.middle_blocks))
        return self.unpatchify(self.out_proj(end))
