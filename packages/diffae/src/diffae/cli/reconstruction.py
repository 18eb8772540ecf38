"""The `reconstruct` command: images -> encode -> decode -> PNGs, a PSNR table, comparison grids."""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from torch import Tensor

from ..console import Console
from ..images import write_png
from ..metrics import ImageResult, format_table, psnr_8bit, summarize, write_metrics
from ..models import choose_device, choose_model, inference_config, load_model, require_encoder
from ..viewer import VIEWER, build_viewer, save_viewer_inputs
from ..visuals import comparison_grid, latent_pca
from .runs import (
    ImageItem,
    Run,
    batched,
    claim_output_folder,
    fitted_images,
    list_images,
    output_folder,
    refuse_overwriting,
    run_model,
    settings_of,
)


def reconstruct(args: argparse.Namespace, console: Console) -> int:
    """Images -> encode -> decode -> PNGs, a PSNR table, and with --grid comparison images."""
    run = Run(console)
    out = output_folder(args.out)
    device = choose_device(args.device)
    choice = choose_model(args.model, args.family)
    require_encoder(choice.family, "reconstruct")
    decoding = inference_config(choice.family, args)
    named = list_images(args.images, run)
    planned = [out / f"{name}.png" for _, name in named]
    refuse_overwriting([path for path, _ in named], planned)
    claim_output_folder(out, args.overwrite)
    loaded = load_model(choice, args, device, console)
    # What the viewer needs is kept for --viewer, and for callers that build the page
    # themselves (`demo`: the model next to the bicubic baseline).
    viewer_inputs = args.viewer or getattr(args, "viewer_inputs", False)
    rows: list[ImageResult] = []
    with console.progress(len(named), "reconstruct") as bar:
        for batch in batched(
            fitted_images(named, loaded.patch, args.fit, run, bar),
            args.batch_size,
            lambda item: item.fitted.image.shape,
        ):
            images = torch.cat([item.fitted.image for item in batch]).to(loaded.device)
            height, width = int(images.shape[-2]), int(images.shape[-1])

            def step(images: Tensor = images, height: int = height, width: int = width):
                latents = loaded.model.encode(images)
                decoded = loaded.model.decode(latents, height, width, inference_config=decoding)
                return latents.float().cpu(), decoded.float().cpu()

            result = run_model(run, [str(item.path) for item in batch], step)
            if result is not None:
                for item, latents, decoded in zip(batch, *result, strict=True):
                    rows.append(
                        write_reconstruction(out, item, latents, decoded, args.grid, viewer_inputs)
                    )
            bar.update(len(batch))
    if rows or run.skipped:
        summary = summarize([row.psnr_db for row in rows]) if rows else {}
        settings = settings_of(loaded, args, decoding)
        paths = write_metrics(out, rows, summary, settings, run.skipped)
    if rows:
        console.note(format_table(rows, summary))
        console.note(f"wrote {len(rows)} reconstructions to {out}/, table: {paths[0]}, {paths[1]}")
    if rows and args.viewer:
        page = build_viewer([out], out / VIEWER, overwrite=True)
        console.note(f"viewer (open in a browser): {page}")
    return run.exit_status()


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
