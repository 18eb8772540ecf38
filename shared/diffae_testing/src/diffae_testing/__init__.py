"""Helpers for the test suites of diffae packages: random weights, golden values, a fake Hub cache.

Not used by the models themselves; importing it has no side effects.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn


def randomize_weights(model: nn.Module, seed: int = 0, scale: float = 0.2) -> nn.Module:
    """Overwrite every parameter with seeded N(0, scale^2) values (buffers untouched).

    Fresh models are near-identities (zero-initialised AdaLN, GRN and gates), which would hide
    most bugs; random weights exercise every path.
    """
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in model.parameters():
            values = torch.randn(parameter.shape, generator=generator) * scale
            parameter.copy_(values.to(parameter.dtype))
    return model


def randomize_whitening(model: nn.Module, seed: int = 1) -> nn.Module:
    """Give the latent running statistics non-trivial values (mean ~ N(0, 1), var in [0.5, 2])."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        mean = model.latent_norm_running_mean
        mean.copy_(torch.randn(mean.shape, generator=generator))
        var = model.latent_norm_running_var
        var.copy_(0.5 + 1.5 * torch.rand(var.shape, generator=generator))
    return model


FLOAT32_GOLDEN_TOLERANCE = 1e-4
"""float32 outputs vs golden values from a float64 run, relative to the output's scale (at
least 1): ~1e3 float32 ulps, room for any CPU's kernels and summation order in a
well-conditioned tiny model (measured: <= 3e-6), far below what a change of maths moves."""
BF16_GOLDEN_STEPS = 4
"""bf16 outputs vs golden values from a float64 run: this many bf16 steps (2^-7 relative) at
the output's scale (measured: <= 1.5 steps for the tiny dinac_ae class head)."""


def to_float64(model: nn.Module) -> nn.Module:
    """Every parameter in float64, in place; buffers stay float32 (the dtype policy keeps them).

    Bypasses `Module.to`, which some families' storage policies restrict: golden values are
    recorded from this float64 run, so they depend on no CPU's float32 kernels.
    """
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.data = parameter.data.double()
    return model


def assert_matches_golden(
    actual: Tensor, golden: Sequence[float], dtype: torch.dtype = torch.float32
) -> None:
    """actual (computed in `dtype`) vs float64 golden values, with a dtype-aware tolerance.

    float32: FLOAT32_GOLDEN_TOLERANCE x scale; bfloat16: BF16_GOLDEN_STEPS bf16 steps at the
    scale, where scale = max(1, max |golden|). Fails with torch.testing's report (max diff,
    where, how many).
    """
    expected = torch.tensor(golden, dtype=torch.float64)
    scale = max(1.0, expected.abs().max().item())
    if dtype == torch.float32:
        atol = FLOAT32_GOLDEN_TOLERANCE * scale
    elif dtype == torch.bfloat16:
        atol = BF16_GOLDEN_STEPS * torch.finfo(torch.bfloat16).eps * scale
    else:
        raise ValueError(f"dtype: expected torch.float32 or torch.bfloat16, got {dtype}")
    torch.testing.assert_close(actual.detach().double().cpu(), expected, rtol=0.0, atol=atol)


def golden_values(outputs: Mapping[str, Tensor], indices: Mapping[str, Sequence[int]]) -> str:
    """The values at `indices` of each output, as Python source for a GOLDEN table."""
    lines = []
    for name, where in indices.items():
        values = outputs[name].detach().double().flatten()[list(where)].tolist()
        numbers = ", ".join(f"{value:.7g}" for value in values)
        lines.append(f'    "{name}": ({numbers}),')
    return "{\n" + "\n".join(lines) + "\n}"


def run_card_snippet(code: str, replacements: Mapping[str, str]) -> dict[str, Any]:
    """Execute a model card's code block with `replacements` applied; returns its namespace.

    Each replaced text must occur in `code` (e.g. `image = ...` given a value, "cuda" made
    "cpu", the Hub id made a local folder), so an edited card fails here rather than silently
    running something else.
    """
    for old, new in replacements.items():
        assert old in code, f"{old!r} is not in the card snippet"
        code = code.replace(old, new)
    namespace: dict[str, Any] = {}
    exec(code, namespace)
    return namespace


def add_to_hub_cache(
    cache_dir: Path, repo_id: str, files: dict[str, Path], revision: str = "main"
) -> Path:
    """Lay files out as `huggingface_hub` caches a model repo; returns the snapshot folder.

    models--{owner}--{name}/blobs/<sha256>, snapshots/<commit>/<file> -> ../../blobs/<sha256>,
    refs/<revision> = <commit>. A name may hold folders ("pkg/model.py"): its link goes one
    level further up per folder, as the hub's does.
    """
    repo = Path(cache_dir) / ("models--" + repo_id.replace("/", "--"))
    commit = hashlib.sha1(repo_id.encode()).hexdigest()
    snapshot = repo / "snapshots" / commit
    (repo / "blobs").mkdir(parents=True, exist_ok=True)
    snapshot.mkdir(parents=True, exist_ok=True)
    for name, source in files.items():
        digest = hashlib.sha256(Path(source).read_bytes()).hexdigest()
        blob = repo / "blobs" / digest
        shutil.copyfile(source, blob)
        link = snapshot / name
        link.parent.mkdir(parents=True, exist_ok=True)
        link.unlink(missing_ok=True)
        link.symlink_to(Path(os.path.relpath(blob, link.parent)))
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / revision).write_text(commit)
    return snapshot
