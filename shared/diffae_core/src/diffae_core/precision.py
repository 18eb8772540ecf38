"""The dtype policy: weights in one dtype, float32 where the published models keep float32.

Policy (diffae_core spec §12, fcdm_diffae spec §7): `dtype=torch.bfloat16` casts every
parameter, and the encoder/decoder then compute in bf16 with no autocast, as the published
fcdm_diffae does. Floating buffers (latent running statistics, time-embedding frequencies, RoPE
periods) stay float32 through any `model.to(...)`: rounding them would shift every whitened
latent and every timestep angle. Norm statistics, posterior moments, whitening, the schedule and
sampler state are float32 islands in the code itself.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

FLOATING_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


class Float32BuffersModule(nn.Module):
    """An nn.Module whose float32 buffers keep their dtype through `.to()`, `.half()`, etc.

    Device moves still apply to them; only the dtype conversion is skipped, so no value is
    rounded (contrast a plain module, whose `.to(torch.bfloat16)` rounds buffers too).
    """

    def _apply(self, fn: Callable[[Tensor], Tensor], recurse: bool = True) -> nn.Module:
        protected = {id(b) for b in self.buffers() if b.dtype == torch.float32}

        def keep_float32(tensor: Tensor) -> Tensor:
            converted = fn(tensor)
            if id(tensor) in protected and converted.dtype != torch.float32:
                return tensor.to(device=converted.device)
            return converted

        return super()._apply(keep_float32, recurse)


def compute_dtype(model: nn.Module) -> torch.dtype:
    """The dtype the model's weights are in (float32 for a model without parameters)."""
    for parameter in model.parameters():
        if parameter.is_floating_point():
            return parameter.dtype
    return torch.float32


def check_dtype(dtype: object) -> torch.dtype | None:
    """Validate a user `dtype` argument: None or a floating torch.dtype."""
    if dtype is None or dtype in FLOATING_DTYPES:
        return dtype  # type: ignore[return-value]
    raise TypeError(
        f"dtype: expected None or one of {[str(d) for d in FLOATING_DTYPES]}, got {dtype!r}"
    )
