"""The results viewer: reconstruction runs as one static HTML page to look through.

A run folder (what `diffae reconstruct --viewer` and `diffae demo` write) holds what the page
needs, so pages are rebuilt without the model:

    metrics.json         settings (model, family, dtype, steps, compression, diffae version)
                         and one row per photo with its PSNR (`diffae.metrics.write_metrics`)
    <name>.png           the reconstruction of each photo
    originals/<name>.png the photo as the model saw it (after --fit), the PSNR's reference
    pca/<name>.png       latent PCA (optional: a baseline such as bicubic has no latents)

`build_viewer(runs, out)` writes `out/index.html` with its images beside it:

    images/<name>/original.png, thumb.png         the photo and a small copy for the table
    images/<name>/run<k>.png, run<k>-error.png, run<k>-pca.png    per run k

The page is one template (`viewer_template.html`, vanilla HTML/CSS/JS) with the data embedded
as JSON: it opens from file:// (where browsers refuse fetch()) and as a Hugging Face static
Space, and loads nothing from the network. The first run is the reference: the table shows
every other run's gain over it.
"""

from __future__ import annotations

import html
import json
import math
import secrets
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path
from typing import Any
from urllib.parse import quote

import numpy as np
import torch
from torch import Tensor

from . import __version__
from .console import ArgumentError
from .images import require_pillow, write_png
from .metrics import bicubic_baseline, psnr_8bit, summarize, write_metrics
from .visuals import ERROR_GAIN

ORIGINALS = "originals"
PCA = "pca"
VIEWER = "viewer"
"""The viewer's folder inside a run folder (`reconstruct --viewer`, `demo`)."""
TEMPLATE = "viewer_template.html"
DATA_MARKER = "/*VIEWER_DATA*/"
TITLE_MARKER = "<!--VIEWER_TITLE-->"
THUMB_SIZE = 96
"""Longer side (px) of the thumbnails in the table: 39 full-size photos would be ~60 MB."""
STATISTICS = ("mean", "std", "median", "p5", "p95")
"""The cards' summary rows, under the table."""
SPACE_CARD = """\
---
title: diffae results viewer
sdk: static
app_file: index.html
pinned: false
---

{title}: reconstructions looked through side by side, a static page written by diffae
{version}. Open `index.html`.
"""
"""README.md of the page's folder: the front matter that makes it a Hugging Face static Space."""


@dataclass(frozen=True)
class RunPhoto:
    """One photo of a run: its files and PSNR (None when not finite: identical images)."""

    name: str
    width: int
    height: int
    psnr_db: float | None
    reconstruction: Path
    original: Path
    pca: Path | None


@dataclass(frozen=True)
class ViewerRun:
    """A run folder read back: what the page's header says of it, and its photos by name."""

    folder: Path
    facts: dict[str, Any]
    photos: dict[str, RunPhoto]


# -- writing a run's viewer inputs --------------------------------------------------------------
def save_viewer_inputs(run: Path, name: str, original: Tensor, pca: Tensor | None) -> None:
    """Keep the photo as the model saw it ([3, H, W] in [-1, 1]) and its latent PCA (uint8)."""
    write_png(run / ORIGINALS / f"{name}.png", original)
    if pca is not None:
        write_png(run / PCA / f"{name}.png", pca)


def compression_ratio(config: Any) -> float | None:
    """Values per image over values per latent: in_channels * p^2 / latent channels, or None
    when the config does not say (a decode-only family's)."""
    try:
        return config.in_channels * config.effective_patch_size**2 / config.latent_channels
    except AttributeError:
        return None


def run_facts(settings: dict[str, Any]) -> dict[str, Any]:
    """The header facts of a run from its metrics.json settings (missing ones are None)."""
    decoding = settings.get("inference_config")
    steps = decoding.get("num_steps") if isinstance(decoding, dict) else settings.get("steps")
    return {
        "model": settings.get("model"),
        "family": settings.get("family"),
        "dtype": settings.get("dtype"),
        "steps": steps,
        "compression_ratio": settings.get("compression_ratio"),
        "diffae_version": settings.get("diffae_version"),
    }


def write_bicubic_run(reference: Path, out: Path, ratio: float) -> Path:
    """A run folder of the bicubic baseline (`diffae.metrics.bicubic_baseline`) over the
    originals of the run folder `reference`, keeping as many values as a `ratio`:1 latent."""
    from .images import read_image

    source = load_run(reference)
    rows = []
    for photo in source.photos.values():
        original = read_image(photo.original)[0][0]
        baseline = bicubic_baseline(original, ratio)
        write_png(out / f"{photo.name}.png", baseline)
        save_viewer_inputs(out, photo.name, original, None)
        rows.append(
            {
                "image": photo.name,
                "output": f"{photo.name}.png",
                "width": photo.width,
                "height": photo.height,
                "fit": "none",
                "psnr_db": psnr_8bit(original, baseline),
            }
        )
    settings = {
        "model": "bicubic",
        "family": "bicubic resampling (antialiased down, then up)",
        "dtype": "float32",
        "steps": None,
        "compression_ratio": ratio,
        "diffae_version": __version__,
    }
    write_metrics_rows(out, rows, settings)
    return out


def build_viewer_with_bicubic(run: Path, ratio: float, label: str, title: str) -> Path:
    """The page of the run folder `run` next to the bicubic baseline that keeps as many values
    (the reference, first): writes run/bicubic/ and run/viewer/; returns the page."""
    write_bicubic_run(run, run / "bicubic", ratio)
    return build_viewer(
        [run / "bicubic", run],
        run / VIEWER,
        labels=["bicubic", label],
        title=f"{title} vs bicubic resampling (both {ratio:g}:1)",
        overwrite=True,
    )


def write_metrics_rows(out: Path, rows: list[dict[str, Any]], settings: dict[str, Any]) -> None:
    """metrics.json and metrics.csv of a run written here (not by `reconstruct`)."""
    from .metrics import ImageResult

    results = [ImageResult(**row) for row in rows]
    write_metrics(out, results, summarize([row.psnr_db for row in results]), settings)


# -- reading runs -------------------------------------------------------------------------------
def load_run(folder: Path) -> ViewerRun:
    """Read a run folder back; an ArgumentError naming the folder when something the page needs is
    missing."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ArgumentError(
            "run_folders", f": expected a run folder, got {folder} (no such folder)"
        )
    try:
        report = json.loads((folder / "metrics.json").read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ArgumentError(
            "run_folders",
            f" {folder}: no metrics.json (expected the output folder of "
            "`diffae reconstruct ... --viewer`)",
        ) from None
    except (ValueError, UnicodeDecodeError) as error:
        raise ArgumentError(
            "run_folders", f" {folder}: metrics.json is not JSON ({error})"
        ) from None
    if not isinstance(report, dict) or not isinstance(report.get("images"), list):
        raise ArgumentError("run_folders", f" {folder}: metrics.json has no list of images")
    if not report["images"]:
        raise ArgumentError("run_folders", f" {folder}: metrics.json lists no images")
    photos: dict[str, RunPhoto] = {}
    for index, row in enumerate(report["images"]):
        try:
            name, width, height = Path(row["output"]).stem, int(row["width"]), int(row["height"])
            value = float(row["psnr_db"])
        except (KeyError, TypeError, ValueError) as error:
            raise ArgumentError(
                "run_folders",
                f" {folder}: image {index} of metrics.json: expected output, width, "
                f"height and psnr_db as `diffae reconstruct` writes them, got {error!r}",
            ) from None
        original = folder / ORIGINALS / f"{name}.png"
        for path in (folder / row["output"], original):
            if not path.is_file():
                raise ArgumentError(
                    "run_folders",
                    f" {folder}: missing {path.relative_to(folder)} (write runs for the "
                    "viewer with `diffae reconstruct ... --viewer`)",
                )
        pca = folder / PCA / f"{name}.png"
        photos[name] = RunPhoto(
            name=name,
            width=width,
            height=height,
            psnr_db=value if math.isfinite(value) else None,
            reconstruction=folder / row["output"],
            original=original,
            pca=pca if pca.is_file() else None,
        )
    return ViewerRun(folder, run_facts(report.get("settings") or {}), photos)


def check_same_photos(runs: Sequence[ViewerRun]) -> None:
    """An ArgumentError when the runs are not over the same photos at the same sizes."""
    first = runs[0]
    for run in runs[1:]:
        if set(run.photos) != set(first.photos):
            only_first = sorted(set(first.photos) - set(run.photos))
            only_run = sorted(set(run.photos) - set(first.photos))
            raise ArgumentError(
                "run_folders",
                f": the runs are over different photos: {first.folder} has "
                f"{only_first or 'no others'}, {run.folder} has {only_run or 'no others'}",
            )
        for name, photo in run.photos.items():
            size, expected = (
                (photo.width, photo.height),
                (
                    first.photos[name].width,
                    first.photos[name].height,
                ),
            )
            if size != expected:
                raise ArgumentError(
                    "run_folders",
                    f": {name} is {expected[0]}x{expected[1]} in {first.folder} but "
                    f"{size[0]}x{size[1]} in {run.folder} (runs must see the same pixels)",
                )


def run_labels(runs: Sequence[ViewerRun], labels: Sequence[str] | None = None) -> list[str]:
    """One distinct label per run: given, else the model's name (with the steps when two runs
    share a model), else the folder's name."""
    if labels is not None:
        if len(labels) != len(runs):
            raise ArgumentError(
                "labels", f": expected {len(runs)} labels (one per run), got {len(labels)}"
            )
        if len(set(labels)) != len(labels):
            raise ArgumentError("labels", f": expected distinct labels, got {list(labels)}")
        return list(labels)
    names = [Path(str(run.facts["model"] or run.folder.name)).name for run in runs]
    if len(set(names)) < len(names):
        names = [
            name if run.facts["steps"] is None else f"{name}, {run.facts['steps']} steps"
            for name, run in zip(names, runs, strict=True)
        ]
    if len(set(names)) < len(names):
        names = [f"{name} ({run.folder.name})" for name, run in zip(names, runs, strict=True)]
    if len(set(names)) < len(names):
        names = [f"{name} #{index + 1}" for index, name in enumerate(names)]
    return names


# -- the page -----------------------------------------------------------------------------------
def read_rgb(path: Path) -> Tensor:
    """A PNG written by a run -> [3, H, W] uint8."""
    Image = require_pillow()
    with Image.open(path) as picture:
        array = torch.from_numpy(np.array(picture.convert("RGB")))  # [H, W, 3] uint8
    return array.permute(2, 0, 1)


def rgb_error(original: Tensor, reconstruction: Tensor) -> Tensor:
    """Two [3, H, W] uint8 images -> [3, H, W] uint8: |difference| per channel x ERROR_GAIN,
    so a channel is at full brightness from 255 / ERROR_GAIN levels of error."""
    difference = (original.float() - reconstruction.float()).abs() * ERROR_GAIN
    return difference.clamp(0.0, 255.0).round().to(torch.uint8)


def write_thumbnail(source: Path, target: Path) -> None:
    """A copy of `source` whose longer side is THUMB_SIZE px (antialiased), as PNG."""
    Image = require_pillow()
    with Image.open(source) as picture:
        small = picture.convert("RGB")
        small.thumbnail((THUMB_SIZE, THUMB_SIZE), Image.Resampling.LANCZOS)
        small.save(target, format="PNG")


def finite(value: float | None) -> float | None:
    """JSON has no inf or nan: those become null (shown as "inf" by the page)."""
    return value if value is not None and math.isfinite(value) else None


def column_statistics(values: list[float | None]) -> dict[str, float | None]:
    """The cards' summary of one column (mean, std, median, P5, P95), None when not finite."""
    present = [value for value in values if value is not None]
    if len(present) != len(values) or not present:
        return dict.fromkeys(STATISTICS)
    summary = summarize(present)
    return {name: finite(summary[name]) for name in STATISTICS}


def write_page_images(runs: Sequence[ViewerRun], folder: Path) -> list[dict[str, Any]]:
    """Every panel of every photo under folder/images/; the photos' entries of the page data."""
    photos = []
    for name in sorted(runs[0].photos):
        target = folder / "images" / name
        target.mkdir(parents=True)
        first = runs[0].photos[name]
        shutil.copyfile(first.original, target / "original.png")
        write_thumbnail(first.original, target / "thumb.png")
        original = read_rgb(first.original)
        entry: dict[str, Any] = {
            "name": name,
            "width": first.width,
            "height": first.height,
            "original": f"images/{quote(name)}/original.png",
            "thumb": f"images/{quote(name)}/thumb.png",
            "psnr": [],
            "reconstructions": [],
            "errors": [],
            "pca": [],
        }
        for index, run in enumerate(runs):
            photo = run.photos[name]
            if index and not torch.equal(read_rgb(photo.original), original):
                raise ArgumentError(
                    "run_folders",
                    f": the original of {name} differs between {runs[0].folder} and "
                    f"{run.folder} (runs must see the same pixels)",
                )
            stem = f"run{index}"
            shutil.copyfile(photo.reconstruction, target / f"{stem}.png")
            write_png(
                target / f"{stem}-error.png", rgb_error(original, read_rgb(photo.reconstruction))
            )
            pca = None
            if photo.pca is not None:
                shutil.copyfile(photo.pca, target / f"{stem}-pca.png")
                pca = f"images/{quote(name)}/{stem}-pca.png"
            entry["psnr"].append(photo.psnr_db)
            entry["reconstructions"].append(f"images/{quote(name)}/{stem}.png")
            entry["errors"].append(f"images/{quote(name)}/{stem}-error.png")
            entry["pca"].append(pca)
        photos.append(entry)
    return photos


def page_data(
    runs: Sequence[ViewerRun], labels: list[str], photos: list[dict[str, Any]], title: str
) -> dict[str, Any]:
    """What the page shows, as embedded in it: runs, photos, and the summary rows."""
    columns = [[photo["psnr"][k] for photo in photos] for k in range(len(runs))]
    gains = [
        [None if a is None or b is None else b - a for a, b in zip(columns[0], column, strict=True)]
        for column in columns[1:]
    ]
    for photo in photos:
        psnr = photo["psnr"]
        photo["gain"] = [
            None if psnr[0] is None or value is None else value - psnr[0] for value in psnr[1:]
        ]
    return {
        "title": title,
        "error_gain": ERROR_GAIN,
        "diffae_version": __version__,
        "runs": [
            run.facts | {"label": label, "folder": run.folder.name}
            for run, label in zip(runs, labels, strict=True)
        ],
        "photos": photos,
        "statistics": {
            "psnr": [column_statistics(column) for column in columns],
            "gain": [column_statistics(column) for column in gains],
        },
    }


def render_page(data: dict[str, Any]) -> str:
    """The template with the data embedded (a JSON literal, so file:// needs no fetch)."""
    template = files("diffae").joinpath(TEMPLATE).read_text(encoding="utf-8")
    # "</" would end the <script> element early; "<\/" is the same string to JSON.
    literal = json.dumps(data, allow_nan=False).replace("</", "<\\/")
    page = template.replace(TITLE_MARKER, html.escape(data["title"]))
    return page.replace(DATA_MARKER, literal)


def check_output_folder(out: Path, runs: Sequence[Path], overwrite: bool) -> None:
    """An ArgumentError before any work: `out` not empty without `overwrite`, a file, or holding a
    run (replacing it would delete the run)."""
    if out.exists() and not out.is_dir():
        raise ArgumentError("out", f": expected a folder, got the file {out}")
    resolved = out.resolve()
    for run in runs:
        run_path = Path(run).resolve()
        if resolved == run_path or resolved in run_path.parents:
            raise ArgumentError("out", f": {out} holds the run folder {run}; give another folder")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise ArgumentError("out", f": {out} is not empty; give a new folder or overwrite=True")


def build_viewer(
    run_folders: Sequence[Path],
    out: Path,
    *,
    labels: Sequence[str] | None = None,
    title: str | None = None,
    overwrite: bool = False,
) -> Path:
    """Write the page of `run_folders` (the first is the reference) to `out`; returns
    out/index.html. Built beside `out` and renamed into place: `out` is whole or untouched."""
    out = Path(out)
    check_output_folder(out, run_folders, overwrite)
    runs = [load_run(Path(folder)) for folder in run_folders]
    if not runs:
        raise ArgumentError("run_folders", ": expected at least one run folder")
    check_same_photos(runs)
    names = run_labels(runs, labels)
    title = title or " vs ".join(names)
    out.parent.mkdir(parents=True, exist_ok=True)
    building = out.parent / f".{out.name}.{secrets.token_hex(4)}.tmp"
    building.mkdir()
    try:
        photos = write_page_images(runs, building)
        page = render_page(page_data(runs, names, photos, title))
        (building / "index.html").write_text(page, encoding="utf-8")
        card = SPACE_CARD.format(title=title.replace("\n", " "), version=__version__)
        (building / "README.md").write_text(card, encoding="utf-8")
        if out.exists():
            shutil.rmtree(out)
        building.rename(out)
    except BaseException:
        shutil.rmtree(building, ignore_errors=True)
        raise
    return out / "index.html"
