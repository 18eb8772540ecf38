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
    """An nn.Module whose floating buffers are float32 through `.to()`, `.half()`, etc.

    Device moves still apply to them; a dtype conversion does not: a float32 buffer is never
    rounded (contrast a plain module, whose `.to(torch.bfloat16)` rounds buffers too), and a
    buffer that arrived in another floating dtype (a bf16 file) is brought back to float32.
    """

    def _apply(self, fn: Callable[[Tensor], Tensor], recurse: bool = True) -> nn.Module:
        floating_buffers = {id(b) for b in self.buffers() if b.is_floating_point()}

        def keep_float32(tensor: Tensor) -> Tensor:
            converted = fn(tensor)
            if id(tensor) in floating_buffers:
                # From the original, not from `converted`: a round trip through bf16 would round.
                return tensor.to(device=converted.device, dtype=torch.float32)
            return converted

        return super()._apply(keep_float32, recurse)

    def restore_float32_buffers(self) -> nn.Module:
        """Make every floating buffer float32 in place (after loading a file that stored less)."""
        return self._apply(lambda tensor: tensor)


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
