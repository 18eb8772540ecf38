"""DINAC-AE's storage policy: bf16 weights with float32 "islands" (spec §4.3 and §7).

With a bfloat16 base, norm weights, GRN gamma/beta, layer scales, the decoder's path-drop mask
feature and its `out_proj` stay float32; every floating buffer is float32 whatever the base. A
float32 base keeps everything float32; other base dtypes are refused.
"""

from __future__ import annotations

import torch
from torch import nn

STORAGE_DTYPES = (torch.float32, torch.bfloat16)
FLOAT32_PARAMETERS = (
    "decoder.path_drop_mask_feature",
    "decoder.out_proj.weight",
    "decoder.out_proj.bias",
)
FLOAT32_SUFFIXES = (".layer_scale", ".grn.gamma", ".grn.beta")


def is_float32_island(name: str) -> bool:
    """True for a parameter (dotted name) that the bf16 policy keeps in float32."""
    return (
        any("norm" in part for part in name.split("."))
        or name.endswith(FLOAT32_SUFFIXES)
        or name in FLOAT32_PARAMETERS
    )


def storage_dtype(name: str, base: torch.dtype) -> torch.dtype:
    """The dtype parameter `name` must have when ordinary weights are stored in `base`."""
    return torch.float32 if is_float32_island(name) else base


def storage_problems(model: nn.Module, base: torch.dtype, device: torch.device) -> list[str]:
    """Every tensor whose dtype breaks the policy for `base` or that is not on `device`."""
    if base not in STORAGE_DTYPES:
        return [f"ordinary weights are {base}; expected one of {STORAGE_DTYPES}"]
    problems = []
    for name, parameter in model.named_parameters():
        expected = storage_dtype(name, base)
        if parameter.dtype != expected:
            problems.append(f"parameter {name} is {parameter.dtype}, expected {expected}")
    for name, buffer in model.named_buffers():
        if buffer.is_floating_point() and buffer.dtype != torch.float32:
            problems.append(f"buffer {name} is {buffer.dtype}, expected torch.float32")
    for name, tensor in model.state_dict().items():
        if tensor.device != device:
            problems.append(f"{name} is on {tensor.device}, expected {device}")
    return problems
