"""What runs around the networks: the dtype policy (float32 buffers, CPU bf16), input checks,
and the torch.compile inference recipe.
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
import warnings
from collections.abc import Callable, Iterator
from contextlib import nullcontext
from typing import Any

import torch
from torch import Tensor, nn

# ---- precision -------------------------------------------------------------------------
# The dtype policy: weights in one dtype, float32 where the published models keep float32.
#
# Policy (the releases' precision convention): `dtype=torch.bfloat16` casts every
# parameter, and the encoder/decoder then compute in bf16 with no autocast, as the published
# fcdm_diffae does. Floating buffers (latent running statistics, time-embedding frequencies, RoPE
# periods) stay float32 through any `model.to(...)`: rounding them would shift every whitened
# latent and every timestep angle. Norm statistics, posterior moments, whitening, the schedule and
# sampler state are float32 islands in the code itself.
#
# No slow trap: on a CPU without native bf16 kernels (no AVX512-BF16 / AMX: AMD Zen 2/3, older
# Intel, many laptops), PyTorch runs bf16 matmuls and convolutions in reference kernels, ~100x
# slower than float32. There a bf16 model's weights are upcast once to float32 (their bf16-rounded
# values, unchanged) when the model is cast or loaded, so it computes in float32; a warning says
# so once per process. `DIFFAE_CPU_BF16=1` in the environment keeps true bf16 there. CUDA and CPUs
# with native bf16 are unaffected.

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


def warn_cpu_bf16_upcast() -> None:
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


def bf16_is_emulated(model: nn.Module) -> bool:
    """Whether `model` has bf16 parameters on a CPU that would emulate bf16 (no native kernels
    and `DIFFAE_CPU_BF16` unset): its loader then upcasts them to float32."""
    on_cpu_bf16 = any(
        p.dtype == torch.bfloat16 and p.device.type == "cpu" for p in model.parameters()
    )
    return on_cpu_bf16 and not cpu_bf16_forced() and not cpu_has_native_bf16()


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


# ---- validation ------------------------------------------------------------------------
# Checks at the public boundary: each error names the argument, what was expected, what came.
#
# Shapes and dtypes are always checked. Values (no NaN or inf; images not far outside [-1, 1])
# cost one `torch.aminmax` pass over the tensor and one device sync per call: skipped while
# torch.compile traces, on `meta` tensors, and while `value_checks(False)` is in force (hot loops
# that have validated their data once).

IMAGE_VALUE_LIMIT = 3.0
"""Images must lie within [-IMAGE_VALUE_LIMIT, IMAGE_VALUE_LIMIT]. Inputs are [-1, 1]; the margin
admits unclamped reconstructions (which overshoot a little) yet refuses [0, 255] pixels."""

_value_checks_enabled = True


def set_value_checks(enabled: bool) -> None:
    """Turn the value checks of images and latents on or off for this process (default on)."""
    global _value_checks_enabled
    if not isinstance(enabled, bool):
        raise TypeError(f"enabled: expected True or False, got {enabled!r}")
    _value_checks_enabled = enabled


@contextlib.contextmanager
def value_checks(enabled: bool) -> Iterator[None]:
    """Within the block, value checks are on or off (`with value_checks(False): ...`)."""
    previous = _value_checks_enabled
    set_value_checks(enabled)
    try:
        yield
    finally:
        set_value_checks(previous)


def _checking_values(tensor: Tensor) -> bool:
    """Whether to look at values: enabled, a real tensor, not inside a torch.compile trace."""
    if not _value_checks_enabled or tensor.is_meta or tensor.numel() == 0:
        return False
    return not torch.compiler.is_compiling()


def check_values(name: str, tensor: Tensor, limit: float | None = None) -> None:
    """Raise ValueError naming `name` if `tensor` holds NaN or inf, or values beyond +-limit."""
    if not _checking_values(tensor):
        return
    # One read-back of the (min, max) pair: one host sync on CUDA. NaN propagates to both.
    low, high = torch.stack(torch.aminmax(tensor.detach())).tolist()
    if not (math.isfinite(low) and math.isfinite(high)):
        raise ValueError(f"{name}: expected finite values, got NaN or inf (min {low}, max {high})")
    if limit is not None and (low < -limit or high > limit):
        hint = " (this looks like [0, 255] pixels: use x / 127.5 - 1)" if high > 2 else ""
        raise ValueError(
            f"{name}: expected values in [-1, 1], got min {low:.4g}, max {high:.4g}{hint}"
        )


def check_tensor(name: str, value: object) -> Tensor:
    """`value` must be a floating-point torch.Tensor."""
    if not isinstance(value, Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(value).__name__}")
    if not value.is_floating_point():
        raise TypeError(f"{name}: expected a floating-point tensor, got dtype {value.dtype}")
    return value


def check_size(name: str, value: object, multiple: int) -> int:
    """A pixel size: a positive int divisible by `multiple`."""
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{name}: expected a positive int, got {value!r}")
    if value % multiple:
        raise ValueError(f"{name}: expected a multiple of {multiple}, got {value}")
    return value


def check_images(images: object, channels: int, multiple: int, name: str = "images") -> Tensor:
    """images: [N, channels, H, W] with H and W multiples of `multiple`."""
    images = check_tensor(name, images)
    if images.ndim != 4 or images.shape[1] != channels:
        raise ValueError(
            f"{name}: expected [N, {channels}, H, W] in [-1, 1], got {tuple(images.shape)}"
        )
    height, width = images.shape[-2:]
    if height % multiple or width % multiple:
        raise ValueError(
            f"{name}: expected H and W divisible by {multiple}, got H={height}, W={width}"
        )
    check_values(name, images, IMAGE_VALUE_LIMIT)
    return images


def check_latents(
    latents: object, channels: int, height: int, width: int, patch: int, name: str = "latents"
) -> Tensor:
    """latents: [N, channels, height/patch, width/patch] for an image of height x width."""
    latents = check_tensor(name, latents)
    check_size("height", height, patch)
    check_size("width", width, patch)
    expected = (channels, height // patch, width // patch)
    if latents.ndim != 4 or tuple(latents.shape[1:]) != expected:
        raise ValueError(
            f"{name}: expected [N, {channels}, {expected[1]}, {expected[2]}] for a "
            f"{height}x{width} image (patch {patch}), got {tuple(latents.shape)}"
        )
    check_values(name, latents)
    return latents


def check_device(device: object) -> torch.device:
    """A torch device from a string or torch.device, with a clear error otherwise."""
    try:
        checked = torch.device(device)  # type: ignore[arg-type]
    except (RuntimeError, TypeError) as error:
        raise ValueError(f"device: expected e.g. 'cpu' or 'cuda', got {device!r}") from error
    # torch reads cpu:0 as the CPU; safetensors and some kernels take only the plain name.
    return torch.device("cpu") if checked.type == "cpu" else checked


# ---- compiling -------------------------------------------------------------------------
# The torch.compile recipe for inference, as one call: `model.compile_for_inference()`.
#
# What measured best on a CPU (benchmarks/README.md): inductor with `freezing` (weights folded
# into the graph as constants, so convolution weights are pre-packed once), channels_last
# weights and inputs, and the initial noise passed in (`decode(..., noise=...)`) so that no
# seeded `torch.Generator` enters the graph. The handle compiles the model's bound `encode` and
# `decode`, leaving the model's own methods eager; the inductor options are set only around
# each compiled call (`config.patch`), never globally, so importing or calling this changes no
# torch setting for other code.

COMPILED_METHODS = ("encode", "decode")
"""The model methods a `CompiledForInference` compiles."""
CUDA_GRAPH_MODES = ("reduce-overhead", "max-autotune")
"""torch.compile modes that replay CUDA graphs on a CUDA device."""


def _memory_format_of(value: Any, channels_last: bool) -> Any:
    """4-D tensors in channels_last (when asked); anything else unchanged."""
    if channels_last and isinstance(value, Tensor) and value.ndim == 4:
        return value.contiguous(memory_format=torch.channels_last)
    return value


def _compiled_method(
    method: Callable[..., Any],
    *,
    freezing: bool,
    channels_last: bool,
    dynamic_batch: bool,
    options: dict[str, Any],
    cuda_graphs: bool = False,
) -> Callable[..., Any]:
    """`method` under torch.compile, its inductor options patched in around every call.

    cuda_graphs: the mode replays CUDA graphs, whose outputs live in memory the next replay
    overwrites; each call then starts a new graph step and returns a copy (one output-size
    copy, small next to a decode) so results stay valid across calls, as in eager mode.
    """
    compiled = torch.compile(method, **options)

    @functools.wraps(method)
    def call(*args: Any, **kwargs: Any) -> Any:
        args = tuple(_memory_format_of(value, channels_last) for value in args)
        kwargs = {key: _memory_format_of(value, channels_last) for key, value in kwargs.items()}
        if dynamic_batch:
            for value in (*args, *kwargs.values()):
                if isinstance(value, Tensor) and value.ndim > 0:
                    torch._dynamo.maybe_mark_dynamic(value, 0)
        context: Any = nullcontext()
        if freezing:
            import torch._inductor.config as inductor_config  # imported on first use only

            context = inductor_config.patch(freezing=True)
        if cuda_graphs:
            torch.compiler.cudagraph_mark_step_begin()
        with context, torch.no_grad():
            result = compiled(*args, **kwargs)
        if cuda_graphs and isinstance(result, Tensor):
            result = result.clone(memory_format=torch.contiguous_format)
        if isinstance(result, Tensor) and result.ndim == 4:
            return result.contiguous()  # plain NCHW strides for the caller, as eager returns
        return result

    return call


class CompiledForInference:
    """A model's `encode`, `decode` and `reconstruct` under torch.compile, for inference.

    Made by `model.compile_for_inference(...)`; the model keeps its methods (and torch's
    `nn.Module.compile`). freezing: inductor's weight freezing (the graphs take the weights as
    constants: later weight updates are not seen; compile again). channels_last: None chooses
    it where it measured faster (CPU); the model's weights are then switched to channels_last
    in place (same values) and the inputs passed so. dynamic_batch: mark the batch dimension
    dynamic, one graph for every batch size (a size-1 batch still specialises). `options` go
    to `torch.compile` (`mode`, `backend`, `fullgraph`, ...); on CUDA, `mode="max-autotune"` or
    "reduce-overhead" replays CUDA graphs (each result is then copied out of the graph's
    memory). Pass `noise=` to `decode` for one graph without an RNG object; a seeded decode
    still works, with the noise draw outside the graph. Any other attribute (`config`,
    `whiten`, ...) is the model's. Copy the model, not this handle: `.model` is the eager one.
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        freezing: bool = True,
        channels_last: bool | None = None,
        dynamic_batch: bool = False,
        **options: Any,
    ) -> None:
        parameter = next(model.parameters(), None)
        device_type = "cpu" if parameter is None else parameter.device.type
        if channels_last is None:
            channels_last = device_type == "cpu"
        model.eval()
        if channels_last:
            model.to(memory_format=torch.channels_last)
        self.model = model
        cuda_graphs = device_type == "cuda" and options.get("mode") in CUDA_GRAPH_MODES
        for name in COMPILED_METHODS:
            if not hasattr(model, name):  # a decoder-only model has no encode
                continue
            compiled = _compiled_method(
                getattr(model, name),
                freezing=freezing,
                channels_last=channels_last,
                dynamic_batch=dynamic_batch,
                options=options,
                cuda_graphs=cuda_graphs,
            )
            setattr(self, name, compiled)

    def reconstruct(self, images: Tensor, *, inference_config: Any = None) -> Tensor:
        """encode then decode, both compiled: images [N, 3, H, W] in [-1, 1] -> float32."""
        height, width = int(images.shape[-2]), int(images.shape[-1])
        latents = self.encode(images)
        return self.decode(latents, height, width, inference_config=inference_config)

    def __getattr__(self, name: str) -> Any:
        if name == "model":  # not yet set: during construction or unpickling
            raise AttributeError(name)
        return getattr(self.model, name)
