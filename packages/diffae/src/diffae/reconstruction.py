"""Reconstruct image files with a loaded model: PNGs, metrics, comparison grids; the demo.

    loaded = load_model(choose_model(None, None), torch.device("cpu"), Console())
    result = reconstruct([Path("photo.png")], Path("out"), loaded, grid=True)
    result.rows[0].psnr_db

`reconstruct` writes `out/<name>.png` per image (cropped back to the source's pixels),
`metrics.csv` and `metrics.json`, with `grid` `grids/<name>.png` (original | reconstruction |
error | latent PCA), and with `viewer` the results page `viewer/index.html`. `demo` runs it on
the bundled sample photos with the embedded model and sets the bicubic baseline beside it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from .console import ArgumentError, Console
from .images import fit_image, read_image, sample_photos, unique_names, write_png
from .metrics import ImageResult, bicubic_baseline, psnr_8bit, summarize, write_metrics
from .models import (
    EMBEDDED_FAMILY,
    EMBEDDED_MODEL,
    LoadedModel,
    available_families,
    choose_model,
    default_device,
    load_model,
)
from .runs import (
    ImageItem,
    Run,
    batched,
    check_output_folder,
    claim_output_folder,
    earlier_run_of,
    fitted_images,
    output_folder,
    refuse_overwriting,
    run_model,
    settings_of,
)
from .viewer import (
    VIEWER,
    build_viewer,
    build_viewer_with_bicubic,
    compression_ratio,
    save_viewer_inputs,
)
from .visuals import comparison_grid, latent_pca

FIT_MODES = ("crop", "pad")


@dataclass(frozen=True)
class Reconstructions:
    """What `reconstruct` wrote: a row per image reconstructed, and the inputs skipped."""

    rows: list[ImageResult]
    inputs: int
    """How many inputs there were: the images given and the inputs refused by the caller."""
    skipped: list[tuple[str, str]]
    """(input, reason) of every input not reconstructed, those refused by the caller first."""
    summary: dict[str, float]
    """Statistics of the rows' PSNR (dB): mean, std, median, p5, p95, min, max ({} if none)."""
    metrics_files: tuple[Path, Path] | None
    """metrics.csv and metrics.json; None when there was nothing to report."""
    viewer_page: Path | None


def named_outputs(images: Sequence[Path]) -> list[tuple[Path, str]]:
    """(file, output stem) of each image: its stem, made unique among the images."""
    return list(zip(images, unique_names([path.stem for path in images]), strict=True))


def check_outputs(images: Sequence[Path], out: Path, *, overwrite: bool = False) -> None:
    """What `reconstruct` checks before any work, for callers that check before they load the
    model: no output would replace an input, and `out` is new or empty unless `overwrite`."""
    planned = [out / f"{name}.png" for _, name in named_outputs(images)]
    refuse_overwriting(images, planned)
    check_output_folder(out, overwrite)


def reconstruct(
    images: Sequence[Path],
    out: Path,
    model: LoadedModel,
    *,
    inference_config: Any = None,
    batch_size: int = 1,
    fit: str = "crop",
    grid: bool = False,
    viewer: bool = False,
    viewer_inputs: bool = False,
    overwrite: bool = False,
    refused: Sequence[tuple[str, str]] = (),
    console: Console | None = None,
) -> Reconstructions:
    """Image files -> encode -> decode -> PNGs in `out`, with their 8-bit PSNR.

    images: PNG/JPEG/WebP files; one that cannot be read is skipped with its reason.
    out: a new or empty folder (created); with `overwrite`, an earlier run's outputs there are
        removed first and other files kept.
    inference_config: the family's inference config (None: its defaults).
    batch_size: images of one size per `encode` / `decode` call.
    fit: sides not multiples of the patch are centre-cropped ("crop") or edge-padded ("pad");
        the outputs are cropped back to what the model saw.
    grid, viewer: also write comparison grids / the results page; `viewer_inputs` keeps only
        what a page needs (originals, latent PCA), for callers that build it themselves.
    refused: (input, reason) of inputs the caller could not use, reported with the skipped.
    Problems with the arguments raise an ArgumentError naming the argument (`out`, ...).
    """
    console = console or Console(quiet=True)
    if batch_size < 1:
        raise ArgumentError("batch_size", f": expected an integer >= 1, got {batch_size}")
    if fit not in FIT_MODES:
        raise ArgumentError("fit", f": expected one of {FIT_MODES}, got {fit!r}")
    out = output_folder(out)
    named = named_outputs([Path(path) for path in images])
    refuse_overwriting([path for path, _ in named], [out / f"{name}.png" for _, name in named])
    claim_output_folder(out, overwrite)
    if inference_config is None:
        inference_config = model.family.inference_config_class()
    run = Run(console, inputs=len(named) + len(refused), skipped=list(refused))
    keep_inputs = viewer or viewer_inputs

    def round_trip(images: Tensor) -> tuple[Tensor, Tensor]:
        """images [n, 3, H, W] -> (latents, decoded [n, 3, H, W]), float32 on the CPU."""
        height, width = int(images.shape[-2]), int(images.shape[-1])
        latents = model.model.encode(images)
        decoded = model.model.decode(latents, height, width, inference_config=inference_config)
        return latents.float().cpu(), decoded.float().cpu()

    rows: list[ImageResult] = []
    with console.progress(len(named), "reconstruct") as bar:
        for batch in batched(
            fitted_images(named, model.patch, fit, run, bar),
            batch_size,
            lambda item: item.fitted.image.shape,
        ):
            images = torch.cat([item.fitted.image for item in batch]).to(model.device)
            names = [str(item.path) for item in batch]
            latents, decoded = run_model(model.model, images, round_trip, names)
            for item, item_latents, item_decoded in zip(batch, latents, decoded, strict=True):
                rows.append(
                    write_reconstruction(out, item, item_latents, item_decoded, grid, keep_inputs)
                )
            bar.update(len(batch))
    summary = summarize([row.psnr_db for row in rows]) if rows else {}
    paths = None
    if rows or run.skipped:
        settings = settings_of(model, inference_config, fit=fit, batch_size=batch_size)
        paths = write_metrics(out, rows, summary, settings, run.skipped)
    page = build_viewer([out], out / VIEWER, overwrite=True) if rows and viewer else None
    return Reconstructions(rows, run.inputs, run.skipped, summary, paths, page)


def write_reconstruction(
    out: Path, item: ImageItem, latents: Tensor, decoded: Tensor, grid: bool, viewer: bool = False
) -> ImageResult:
    """Write one reconstruction (and its grid; with `viewer` the original and latent PCA the
    page needs), cropped back to the source's pixels; its row."""
    original = item.fitted.content(item.fitted.image[0])
    reconstruction = item.fitted.content(decoded)
    write_png(out / f"{item.name}.png", reconstruction)
    if grid or viewer:
        height, width = item.fitted.image.shape[-2:]
        pca = item.fitted.content(latent_pca(latents, int(height), int(width)))
    if grid:
        write_png(
            out / "grids" / f"{item.name}.png", comparison_grid(original, reconstruction, pca)
        )
    if viewer:
        save_viewer_inputs(out, item.name, original, pca)
    return ImageResult(
        image=str(item.path),
        output=f"{item.name}.png",
        width=int(original.shape[-1]),
        height=int(original.shape[-2]),
        fit=item.fitted.fit,
        psnr_db=psnr_8bit(original, reconstruction),
    )


# -- the demo ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class DemoResult:
    """The embedded model on the sample photos, against bicubic resampling."""

    reconstructions: Reconstructions
    comparison: list[tuple[str, float, float]]
    """(photo file name, model PSNR dB, bicubic PSNR dB) per photo."""
    compression_ratio: float
    """Values per image over values per latent; bicubic keeps as many (each side / sqrt)."""
    viewer_page: Path


def demo(
    out: Path, *, device: torch.device | None = None, console: Console | None = None
) -> DemoResult:
    """Reconstruct the bundled sample photos with the embedded model (no download) into `out`:
    PNGs, grids, metrics, and a results page of the model next to bicubic resampling that
    keeps as many values. Running it again into the same folder replaces its own outputs (and
    refuses a folder holding anything else). Returns a `DemoResult`."""
    console = console or Console(quiet=True)
    photos = sample_photos()
    out = output_folder(out)
    own_earlier_run = earlier_run_of(out, "embedded")
    check_outputs(photos, out, overwrite=own_earlier_run)
    device = device or torch.device(default_device())
    loaded = load_model(choose_model(None, None), device, console, dtype="float32")
    reconstructions = reconstruct(
        photos,
        out,
        loaded,
        inference_config=loaded.family.inference_config_class(seed=0),
        batch_size=1,
        fit="crop",
        grid=True,
        viewer_inputs=True,
        overwrite=own_earlier_run,
        console=console,
    )
    config = available_families()[EMBEDDED_FAMILY].config_class.load(EMBEDDED_MODEL / "config.json")
    ratio = compression_ratio(config)
    comparison = []
    for row in reconstructions.rows:
        image, _ = read_image(Path(row.image))
        fitted = fit_image(image, config.effective_patch_size, "crop").image[0]
        bicubic = psnr_8bit(fitted, bicubic_baseline(fitted, ratio))
        comparison.append((Path(row.image).name, row.psnr_db, bicubic))
    title = "diffae demo: the embedded model"
    page = build_viewer_with_bicubic(out, ratio, "embedded model", title)
    return DemoResult(reconstructions, comparison, ratio, page)
