"""The torch.compile recipe for inference, as one call: `model.compile()`.

What measured best on a CPU (benchmarks/README.md): inductor with `freezing` (weights folded
into the graph as constants, so convolution weights are pre-packed once), channels_last
weights and inputs, and the initial noise passed in (`decode(..., noise=...)`) so that no
seeded `torch.Generator` enters the graph. The helper wraps the model's `encode` and `decode`
in place; the inductor options are set only around each compiled call (`config.patch`), never
globally, so importing or calling this changes no torch setting for other code.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from contextlib import nullcontext
from typing import Any

import torch
from torch import Tensor, nn

COMPILED_METHODS = ("encode", "decode")
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

    call.__wrapped_eager__ = method  # type: ignore[attr-defined]
    return call


def compile_for_inference(
    model: nn.Module,
    *,
    freezing: bool = True,
    channels_last: bool | None = None,
    dynamic_batch: bool = False,
    **options: Any,
) -> nn.Module:
    """Compile `model.encode` / `model.decode` in place for inference and return the model.

    freezing: inductor's weight freezing (inference only: later weight updates are not seen
    by the compiled graphs; call `uncompile` first). channels_last: None chooses it where it
    measured faster (CPU). dynamic_batch: mark the batch dimension dynamic, one graph for
    every batch size (a size-1 batch still specialises). `options` go to `torch.compile`
    (`mode`, `backend`, `fullgraph`, ...); on CUDA, `mode="max-autotune"` or "reduce-overhead"
    replays CUDA graphs (each result is then copied out of the graph's memory). Pass `noise=`
    to `decode` for one graph without an RNG object; a seeded decode still works, with the
    noise draw outside the graph.
    """
    parameter = next(model.parameters(), None)
    device_type = "cpu" if parameter is None else parameter.device.type
    if channels_last is None:
        channels_last = device_type == "cpu"
    uncompile(model)
    model.eval()
    if channels_last:
        model.to(memory_format=torch.channels_last)
    cuda_graphs = device_type == "cuda" and options.get("mode") in CUDA_GRAPH_MODES
    for name in COMPILED_METHODS:
        method = getattr(model, name, None)
        if method is None:
            continue
        wrapped = _compiled_method(
            method,
            freezing=freezing,
            channels_last=channels_last,
            dynamic_batch=dynamic_batch,
            options=options,
            cuda_graphs=cuda_graphs,
        )
        object.__setattr__(model, name, wrapped)  # an instance attribute shadows the method
    return model


def uncompile(model: nn.Module) -> nn.Module:
    """Undo `compile_for_inference`: the eager methods and contiguous (NCHW) weights again."""
    compiled = [name for name in COMPILED_METHODS if name in vars(model)]
    for name in compiled:
        object.__delattr__(model, name)
    if compiled:
        model.to(memory_format=torch.contiguous_format)
    return model
