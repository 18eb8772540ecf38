"""Reconstruction PSNR by the model cards' protocol, its summary statistics, and the table."""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from diffae_core.io import atomic_write_text

PIXEL_MAX = 255.0
"""PSNR is computed on 8-bit images: both sides clamped to [-1, 1], scaled to [0, 255], rounded."""
SUMMARY_QUANTILES = {"median": 0.5, "p5": 0.05, "p95": 0.95}
"""Linear interpolation between order statistics (numpy's default), as in the cards' tables."""


def quantize_8bit(images: Tensor) -> Tensor:
    """Images [..., H, W] in [-1, 1] (any float) -> uint8 in [0, 255], clamped and rounded."""
    scaled = (images.detach().float().clamp(-1.0, 1.0) + 1.0) * (PIXEL_MAX / 2.0)
    return scaled.round().to(torch.uint8)


def psnr_8bit(original: Tensor, reconstruction: Tensor) -> float:
    """PSNR (dB) of two [3, H, W] images in [-1, 1] after 8-bit quantisation; inf if equal."""
    difference = quantize_8bit(original).double() - quantize_8bit(reconstruction).double()
    mse = float(difference.square().mean())
    return math.inf if mse == 0.0 else 10.0 * math.log10(PIXEL_MAX**2 / mse)


def summarize(values: list[float]) -> dict[str, float]:
    """mean, std (population), median, p5, p95, min and max of a non-empty list."""
    data = torch.tensor(values, dtype=torch.float64)
    summary = {"mean": float(data.mean()), "std": float(data.std(correction=0))}
    summary |= {name: float(torch.quantile(data, q)) for name, q in SUMMARY_QUANTILES.items()}
    return summary | {"min": float(data.min()), "max": float(data.max())}


@dataclass(frozen=True)
class ImageResult:
    """One row of the reconstruction table."""

    image: str
    output: str
    width: int
    height: int
    fit: str
    psnr_db: float


def format_table(rows: list[ImageResult], summary: dict[str, float]) -> str:
    """A fixed-width table: one line per image, then the summary line."""
    name_width = max([len("image")] + [len(row.image) for row in rows])
    lines = [f"{'image':<{name_width}}  {'size':>11}  {'fit':<5}  {'PSNR (dB)':>9}"]
    for row in rows:
        size = f"{row.width}x{row.height}"
        lines.append(f"{row.image:<{name_width}}  {size:>11}  {row.fit:<5}  {row.psnr_db:9.2f}")
    lines.append(
        f"{len(rows)} images, PSNR (dB): "
        + "  ".join(f"{name} {value:.2f}" for name, value in summary.items())
    )
    return "\n".join(lines)


def write_metrics(
    folder: Path,
    rows: list[ImageResult],
    summary: dict[str, float],
    settings: dict[str, Any],
    skipped: Sequence[tuple[str, str]] = (),
) -> tuple[Path, Path]:
    """Write metrics.csv (one row per image, skipped inputs last with their reason in
    `skipped`) and metrics.json (settings, summary, images, skipped)."""
    table = io.StringIO()
    writer = csv.DictWriter(table, fieldnames=[*ImageResult.__dataclass_fields__, "skipped"])
    writer.writeheader()
    for row in rows:
        writer.writerow(asdict(row) | {"skipped": ""})
    for name, reason in skipped:
        writer.writerow({"image": name, "skipped": reason})
    csv_path, json_path = folder / "metrics.csv", folder / "metrics.json"
    atomic_write_text(csv_path, table.getvalue())
    report = {
        "settings": settings,
        "summary": summary,
        "images": [asdict(row) for row in rows],
        "skipped": [{"input": name, "reason": reason} for name, reason in skipped],
    }
    atomic_write_text(json_path, json.dumps(report, indent=2) + "\n")
    return csv_path, json_path


def bicubic_baseline(image: Tensor, ratio: float) -> Tensor:
    """[3, H, W] in [-1, 1] -> the same size after bicubic down- and up-sampling, float32.

    The small image keeps 1/ratio of the values (each side divided by sqrt(ratio), rounded),
    as many as the latents of a model with that compression ratio: the resampling baseline an
    autoencoder must beat. Down-sampling is antialiased.
    """
    height, width = int(image.shape[-2]), int(image.shape[-1])
    scale = math.sqrt(ratio)
    small = (max(1, round(height / scale)), max(1, round(width / scale)))
    batch = image.float().unsqueeze(0)
    down = F.interpolate(batch, size=small, mode="bicubic", antialias=True, align_corners=False)
    up = F.interpolate(down, size=(height, width), mode="bicubic", align_corners=False)
    return up[0]


def patch_grid_db(error: Tensor, period: int, neighbours: int = 4) -> float:
    """How much a reconstruction error [C, H, W] repeats with the patch `period` (dB).

    Along each axis: the power spectrum of the error (lines' means removed), averaged over the
    other axis and the channels; the energy in the bins of the period's harmonics (k n / period,
    k = 1 .. period / 2) over the mean energy of the `neighbours` bins on each side of each
    harmonic (other harmonics excluded), summed over the harmonics, as 10 log10. 0 dB: no more
    error at the patch period than at nearby frequencies (no grid); a visible grid is several
    dB. The larger of the two axes is returned. Both sides must be at least 4 periods.
    """
    if error.dim() != 3:
        raise ValueError(f"error: expected [C, H, W], got shape {list(error.shape)}")
    values = []
    for axis in (-1, -2):
        length = int(error.shape[axis])
        if length < 4 * period:
            raise ValueError(f"error: each side must be >= {4 * period} pixels, got {length}")
        centred = error.double() - error.double().mean(dim=axis, keepdim=True)
        spectrum = torch.fft.rfft(centred, dim=axis).abs().square()
        spectrum = spectrum.movedim(axis, -1).flatten(0, -2).mean(0)  # [length // 2 + 1]
        harmonics = {round(k * length / period) for k in range(1, period // 2 + 1)}
        peak, around = 0.0, 0.0
        for centre in harmonics:
            near = [
                b
                for offset in range(1, neighbours + 1)
                for b in (centre - offset, centre + offset)
                if 0 < b < len(spectrum) and b not in harmonics
            ]
            peak += float(spectrum[centre])
            around += float(spectrum[near].mean())
        values.append(10.0 * math.log10(max(peak, 1e-30) / max(around, 1e-30)))
    return max(values)
