"""Settle a family's open points with the real weights: `diffae verify MODEL [IMAGES...]`.

Several choices that change outputs rest on inference, because the published weights could not
be read when the packages were written (each family declares them: `Family.open_variants`).
With the weights:

1. the header: the checkpoint against the model under every reading the family declares
   (`Family.open_variants`, through its key-alias table), plus what the family's investigation
   module (`diffae.investigation.<family>`) reads from the header; no weights are read;
2. reconstructions: the sample photos (or the given images) under every reading, 8-bit PSNR by
   the cards' protocol, beside the card's figure (2,000 other images: a reference, not a target).

The verdict: the default reading is confirmed when no other reading beats it by `MARGIN_DB` or
more; otherwise the best one is named and the exit status is 1.
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from diffae_core.families import Family

from .images import fit_image, read_image
from .metrics import psnr_8bit

MARGIN_DB = 0.5
"""A reading that beats the default by this much on the photos is taken as the right one."""


@dataclass
class ReadingResult:
    """One reading of the open points: does the header load under it, and its PSNR per image."""

    label: str
    header: str
    loadable: bool
    psnr_db: list[float] = field(default_factory=list)

    @property
    def mean_psnr_db(self) -> float:
        """Mean PSNR over the images (nan when nothing was reconstructed)."""
        return sum(self.psnr_db) / len(self.psnr_db) if self.psnr_db else math.nan


@dataclass(frozen=True)
class Verdict:
    """The outcome: which reading is best, and whether the default stands."""

    default_stands: bool
    best: str
    message: str


PUBLISHED_READING = "as published (nothing open changes outputs)"


def readings(family: Family) -> dict[str, type]:
    """Label -> model class of every reading the family declares (the default first)."""
    return dict(family.open_variants) or {PUBLISHED_READING: family.model_class}


def header_results(
    family: Family, weights: Path, config: Any
) -> tuple[list[ReadingResult], list[str]]:
    """Each reading's header check, and the investigation module's verdict lines (if any)."""
    results = []
    for label, model_class in readings(family).items():
        inspection = model_class.inspect_checkpoint_aliases(weights, config)
        results.append(ReadingResult(label, inspection.report(), inspection.with_aliases.loadable))
    try:
        module = importlib.import_module(f"diffae.investigation.{family.name}")
    except ModuleNotFoundError:
        return results, []
    verdicts = module.explain_open_points(weights, config)
    return results, [str(verdict) for verdict in verdicts]


def reconstruction_psnr(
    model: Any, images: Sequence[torch.Tensor], inference_config: Any
) -> list[float]:
    """8-bit PSNR of each image [1, 3, H, W] (sides fitting the model) after encode + decode."""
    device = next(model.parameters()).device
    scores = []
    for image in images:
        height, width = int(image.shape[-2]), int(image.shape[-1])
        with torch.inference_mode():
            latents = model.encode(image.to(device))
            output = model.decode(latents, height, width, inference_config=inference_config)
        scores.append(psnr_8bit(image[0], output[0].float().cpu()))
    return scores


def load_fitted(paths: Sequence[Path], multiple: int) -> list[torch.Tensor]:
    """The images, centre-cropped to multiples of the model's patch."""
    return [fit_image(read_image(path)[0], multiple, "crop").image for path in paths]


def judge(results: Sequence[ReadingResult], margin_db: float = MARGIN_DB) -> Verdict:
    """Whether the default (first) reading stands against the others, by header and PSNR."""
    default = results[0]
    scored = [r for r in results if r.loadable and r.psnr_db]
    if not default.loadable:
        loading = [r.label for r in results if r.loadable]
        best = loading[0] if loading else "none"
        message = (
            f"the default reading does not load this checkpoint; loadable readings: {loading}"
            if loading
            else "no reading loads this checkpoint: see the header reports"
        )
        return Verdict(False, best, message)
    if len(scored) < 2:
        return Verdict(True, default.label, "the default loads; no other reading to compare")
    best = max(scored, key=lambda r: r.mean_psnr_db)
    gain = best.mean_psnr_db - default.mean_psnr_db
    if best is default or gain < margin_db:
        return Verdict(
            True,
            best.label,
            f"the default reading stands (best other within {margin_db} dB)"
            if best is not default
            else "the default reading is the best",
        )
    return Verdict(
        False,
        best.label,
        f"{best.label!r} beats the default by {gain:.2f} dB: switch to it (and report it)",
    )


def format_report(
    family: Family,
    model: str,
    results: Sequence[ReadingResult],
    investigation: Sequence[str],
    images: Sequence[Path],
    verdict: Verdict,
) -> str:
    """The text `diffae verify` prints."""
    lines = [f"model: {model} (family {family.name})", "header, per reading:"]
    for result in results:
        state = "loads" if result.loadable else "does NOT load"
        lines.append(f"  {result.label}: {state}")
        if not result.loadable:
            lines += [f"    {line}" for line in result.header.splitlines()]
    if investigation:
        lines.append(f"what the header settles (diffae.investigation.{family.name}):")
        lines += [f"  {line}" for line in investigation]
    if images:
        lines.append(f"reconstruction PSNR (8-bit, 1 step), {len(images)} images:")
        for result in results:
            if result.psnr_db:
                lines.append(f"  {result.mean_psnr_db:6.2f} dB  {result.label}")
        card = family.card_psnr.get(model)
        if card is not None:
            lines.append(f"  card: {card:.2f} dB mean on its 2k-image benchmark (other images)")
    lines.append(f"verdict: {verdict.message}")
    return "\n".join(lines)
