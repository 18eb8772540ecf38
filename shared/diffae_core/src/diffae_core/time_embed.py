"""Sinusoidal timestep embedding followed by a two-layer MLP (diffae_core spec §5)."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn


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
