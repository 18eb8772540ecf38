"""Helpers for the test suites of diffae packages: random weights, close-ness, a fake Hub cache.

Not used by the models themselves; importing it has no side effects.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

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


def describe_difference(actual: Tensor, expected: Tensor, atol: float, rtol: float = 0.0) -> str:
    """'' when close; otherwise the max abs difference, where, and how many elements fail."""
    if actual.shape != expected.shape:
        return f"shapes differ: {tuple(actual.shape)} vs {tuple(expected.shape)}"
    actual, expected = actual.detach().double().cpu(), expected.detach().double().cpu()
    difference = (actual - expected).abs()
    failing = difference > atol + rtol * expected.abs()
    if not failing.any():
        return ""
    flat_index = int(difference.argmax())
    where = tuple(int(i) for i in torch.unravel_index(torch.tensor(flat_index), difference.shape))
    return (
        f"max |diff| {difference.max().item():.3e} at {where} "
        f"(actual {actual[where].item():.6g}, expected {expected[where].item():.6g}); "
        f"{int(failing.sum())} of {difference.numel()} elements exceed atol={atol}, rtol={rtol}"
    )


def assert_close(actual: Tensor, expected: Tensor, atol: float, rtol: float = 0.0) -> None:
    """Assert |actual - expected| <= atol + rtol |expected| everywhere, reporting the worst."""
    message = describe_difference(actual, expected, atol, rtol)
    assert not message, message


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
