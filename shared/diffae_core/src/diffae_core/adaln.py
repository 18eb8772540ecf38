"""AdaLN-Zero modulation: one shared base projection plus low-rank per-block deltas (spec §4)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


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
