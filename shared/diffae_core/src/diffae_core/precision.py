"""The dtype policy: weights in one dtype, float32 where the published models keep float32.

Policy (diffae_core spec §12, fcdm_diffae spec §7): `dtype=torch.bfloat16` casts every
parameter, and the encoder/decoder then compute in bf16 with no autocast, as the published
fcdm_diffae does. Floating buffers (latent running statistics, time-embedding frequencies, RoPE
periods) stay float32 through any `model.to(...)`: rounding them would shift every whitened
latent and every timestep angle. Norm statistics, posterior moments, whitening, the schedule and
sampler state are float32 islands in the code itself.

No slow trap: on a CPU without native bf16 kernels (no AVX512-BF16 / AMX: AMD Zen 2/3, older
Intel, many laptops), PyTorch runs bf16 matmuls and convolutions in reference kernels, ~100x
slower than float32. There a bf16 model's weights are upcast once to float32 (their bf16-rounded
values, unchanged) when the model is cast or loaded, so it computes in float32; a warning says
so once per process. `DIFFAE_CPU_BF16=1` in the environment keeps true bf16 there. CUDA and CPUs
with native bf16 are unaffected.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable

import torch
from torch import Tensor, nn

FLOATING_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
FORCE_CPU_BF16_ENV = "DIFFAE_CPU_BF16"
"""Set to 1 to keep bf16 weights in bf16 on a CPU without native bf16 kernels (slow, exact)."""
_warned_cpu_bf16 = False


def cpu_has_native_bf16() -> bool:
    """Whether this CPU runs bf16 matmuls and convolutions natively (oneDNN: AVX512 / AMX).

    Reads `torch.ops.mkldnn._is_mkldnn_bf16_supported()`; a PyTorch without it is trusted.
    """
    probe = getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", None)
    if probe is None:
        return True
    try:
        return bool(probe())
    except RuntimeError:
        return True


def cpu_bf16_forced() -> bool:
    """Whether the user asked for true bf16 on any CPU (`DIFFAE_CPU_BF16=1`)."""
    return os.environ.get(FORCE_CPU_BF16_ENV, "") == "1"


def _warn_cpu_bf16_upcast() -> None:
    global _warned_cpu_bf16
    if _warned_cpu_bf16:
        return
    _warned_cpu_bf16 = True
    warnings.warn(
        "diffae: this CPU has no native bfloat16 kernels (no AVX512-BF16/AMX), where bf16 "
        "matmuls and convolutions run ~100x slower than float32; the model's bfloat16 weights "
        "were upcast to float32 (same values) and it computes and returns float32. Set "
        f"{FORCE_CPU_BF16_ENV}=1 before casting or loading to keep true bf16.",
        RuntimeWarning,
        stacklevel=4,
    )


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

        module = super()._apply(keep_float32, recurse)
        if self._emulated_cpu_bf16():
            _warn_cpu_bf16_upcast()

            def upcast(tensor: Tensor) -> Tensor:
                on_cpu_bf16 = tensor.device.type == "cpu" and tensor.dtype == torch.bfloat16
                return tensor.float() if on_cpu_bf16 else tensor

            nn.Module._apply(self, upcast, recurse)  # not the overrides: one plain pass
        return module

    def _emulated_cpu_bf16(self) -> bool:
        """Whether bf16 parameters sit on a CPU that would emulate bf16 (see the module doc)."""
        on_cpu_bf16 = any(
            p.dtype == torch.bfloat16 and p.device.type == "cpu" for p in self.parameters()
        )
        return on_cpu_bf16 and not cpu_bf16_forced() and not cpu_has_native_bf16()

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
