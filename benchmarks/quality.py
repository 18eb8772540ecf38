"""Reconstruction quality of one model on a folder of images, by the cards' protocol, plus SSIM.

Each image is encoded and decoded (`--steps`, default 1; PDG off); both the original and
the reconstruction are clamped to [-1, 1] and quantised to 8 bits, and PSNR is computed per
image; the summary is mean, std, median, P5, P95, min and max over the images, as on the cards.
SSIM (benchmarks/metrics.py) is summarised the same way. The model is a local directory or a
Hub repo id; its family is found as the `diffae` command line finds it
(`diffae.models.choose_model`: a published repo id, else the one family whose config class
accepts its config.json), or given with --family.
A decode-only model (capacitor_decoder) decodes the FLUX.2 VAE's latents: pass --flux2, which
also adds the FLUX.2 VAE's own reconstructions to the table.

    uv run python -m benchmarks.quality data-archetype/semdisdiffae_p32_v2 --dtype bf16

writes benchmarks/results/quality-<model>-<machine>.md and .json. `--runs DIR` also keeps each
model's reconstructions as a run folder of the results viewer (DIR/<model>/, DIR/flux-2-vae/), so

    uv run diffae viewer DIR/flux-2-vae DIR/<model> --out page/

shows them side by side, photo by photo (folder names: `benchmarks.report.slug` of the labels).
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from diffae import __version__ as diffae_version
from diffae.console import CliError
from diffae.images import BadImage, find_images, fit_image, read_image, sample_photos, write_png
from diffae.metrics import psnr_8bit, summarize
from diffae.models import DTYPES, choose_dtype, choose_model, patch_multiple
from diffae.viewer import compression_ratio, save_viewer_inputs, write_metrics_rows
from diffae.visuals import latent_pca
from diffae_core.families import Family

from .flux2 import (
    FLUX2_DOWNSAMPLING,
    FLUX2_NAME,
    build_flux2_vae,
    flux2_decode,
    flux2_encode,
    flux2_whitened_patchified,
)
from .metrics import ssim_8bit
from .report import (
    RESULTS_DIR,
    default_machine_name,
    header_lines,
    machine_info,
    markdown_table,
    slug,
    write_results,
)

FLUX2_PATCHIFIED_CELL = 2 * FLUX2_DOWNSAMPLING
"""Pixels per cell of the patchified FLUX.2 latents that capacitor_decoder takes."""
FLUX2_COMPRESSION = 3 * FLUX2_PATCHIFIED_CELL**2 / 128
"""Values per image over values per latent of the FLUX.2 VAE: 128 channels per 16x16 pixels."""
METRICS = ("psnr_db", "ssim")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.quality", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("model", help="model directory or Hugging Face repo id")
    parser.add_argument("--family", help="the family's name, when it cannot be detected")
    parser.add_argument(
        "--images",
        nargs="+",
        default=[str(path) for path in sample_photos()],
        help="image files or folders",
    )
    parser.add_argument("--device", help="cpu, cuda ... (default: cuda if available)")
    parser.add_argument("--dtype", choices=sorted(DTYPES), help="default bf16 on CUDA, else fp32")
    parser.add_argument("--steps", type=int, default=1, help="decoder sampling steps")
    parser.add_argument("--seed", type=int, default=0, help="seed of the decoder's noise")
    parser.add_argument("--flux2", help="FLUX.2 VAE directory or repo id (diffusers layout)")
    parser.add_argument("--flux2-subfolder", help="e.g. FLUX2-VAE for BiliSakura/VAEs")
    parser.add_argument("--machine", help="name in the results file names (default: device)")
    parser.add_argument("--out-dir", type=Path, default=RESULTS_DIR)
    parser.add_argument(
        "--runs", type=Path, help="also write a results-viewer run folder per model under RUNS"
    )
    return parser.parse_args(argv)


def model_name(model: str) -> str:
    """'data-archetype/semdisdiffae_p32_v2' or '/path/to/dir/' -> the last path part."""
    return Path(model.rstrip("/")).name


def reconstruct(
    model: Any, inference_config: Any, vae: Any, images: Tensor
) -> tuple[Tensor, Tensor | None, Tensor, Tensor | None]:
    """images [1, 3, H, W] in [-1, 1] -> (model's reconstruction, FLUX.2's or None) float32,
    and the latents each decoded.

    A model without `encode` decodes the FLUX.2 VAE's posterior mean, patchified and whitened.
    """
    height, width = int(images.shape[-2]), int(images.shape[-1])
    flux2_latents = flux2_reconstruction = None
    if vae is not None:
        flux2_latents = flux2_encode(vae, images.to(dtype=vae.dtype))
        flux2_reconstruction = flux2_decode(vae, flux2_latents).float()
    if callable(getattr(model, "encode", None)):
        latents = model.encode(images)
    else:
        latents = flux2_whitened_patchified(vae, flux2_latents)
    decoded = model.decode(latents, height, width, inference_config=inference_config)
    return decoded.float(), flux2_reconstruction, latents, flux2_latents


def render_markdown(name: str, info: dict[str, Any], data: dict[str, Any]) -> str:
    """The results page: machine and settings, the summaries, then one row per image."""
    lines = [f"# Reconstruction quality of {name}", "", *header_lines(info), ""]
    lines += [f"- {key}: `{value}`" for key, value in data["settings"].items()]
    statistics = ["mean", "std", "median", "p5", "p95", "min", "max"]
    summary_rows = [
        [f"{model} {metric}", *(f"{summary[s]:.4f}" for s in statistics)]
        for model, summaries in data["summary"].items()
        for metric, summary in summaries.items()
    ]
    lines += ["", "## Summary", "", markdown_table(["model, metric", *statistics], summary_rows)]
    models = list(data["summary"])
    headers = ["image", "size"] + [f"{m} {k}" for m in models for k in ("PSNR (dB)", "SSIM")]
    image_rows = [
        [row["image"], f"{row['width']}x{row['height']}"]
        + [cell for m in models for cell in (f"{row[m]['psnr_db']:.2f}", f"{row[m]['ssim']:.4f}")]
        for row in data["images"]
    ]
    lines += ["", "## Per image", "", markdown_table(headers, image_rows)]
    return "\n".join(lines) + "\n"


def load_models(
    args: argparse.Namespace, device: torch.device, dtype: torch.dtype
) -> tuple[Family, str, Any, Any]:
    """(family, how it was chosen, model, FLUX.2 VAE or None), both in eval mode."""
    try:
        choice = choose_model(args.model, args.family)
    except (CliError, FileNotFoundError) as error:
        raise SystemExit(str(error)) from None
    family, reason = choice.family, choice.reason
    model = family.model_class.from_pretrained(choice.location, device=device, dtype=dtype)
    if not callable(getattr(model, "encode", None)) and args.flux2 is None:
        raise SystemExit(
            f"{args.model}: the {family.name} model has no encoder; pass --flux2 (a FLUX.2 VAE "
            "directory or repo id, e.g. --flux2 BiliSakura/VAEs --flux2-subfolder FLUX2-VAE)"
        )
    vae = None
    if args.flux2 is not None:
        vae = build_flux2_vae(
            args.flux2, subfolder=args.flux2_subfolder, device=device, dtype=dtype
        )
    return family, reason, model, vae


def score_image(
    path: Path,
    name: str,
    model: Any,
    inference_config: Any,
    vae: Any,
    *,
    multiple: int,
    device: torch.device,
    dtype: torch.dtype,
    runs: Path | None = None,
) -> dict[str, Any]:
    """One table row: the image's size and, per model, its 8-bit PSNR and SSIM; with `runs`,
    each reconstruction is also kept in the model's viewer run folder."""
    try:
        fitted = fit_image(read_image(path)[0], multiple, "crop")
    except BadImage as error:
        # A failing image stops the run: a summary over fewer images would mislead.
        raise SystemExit(f"{path}: {error}") from None
    original = fitted.image  # [1, 3, H, W] float32 in [-1, 1], on the CPU
    with torch.inference_mode():
        images = original.to(device=device, dtype=dtype)
        recon, flux2_recon, latents, flux2_latents = reconstruct(
            model, inference_config, vae, images
        )
    outputs = {name: recon} | ({FLUX2_NAME: flux2_recon} if vae is not None else {})
    if runs is not None:
        height, width = int(original.shape[-2]), int(original.shape[-1])
        codes = {name: latents, FLUX2_NAME: flux2_latents}
        for label, output in outputs.items():
            folder = runs / slug(label)
            write_png(folder / f"{path.stem}.png", output[0].cpu())
            pca = latent_pca(codes[label][0].float().cpu(), height, width)
            save_viewer_inputs(folder, path.stem, original[0], pca)
    row: dict[str, Any] = {
        "image": path.name,
        "width": int(original.shape[-1]),
        "height": int(original.shape[-2]),
    }
    for label, output in outputs.items():
        output = output[0].cpu()
        row[label] = {
            "psnr_db": psnr_8bit(original[0], output),
            "ssim": ssim_8bit(original[0], output),
        }
    return row


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Evaluate, print the Markdown, write the results files; returns the JSON data."""
    args = parse_args(argv)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    dtype = choose_dtype(args.dtype, device)
    info = machine_info(device)  # the commit and the load before anything runs
    family, reason, model, vae = load_models(args, device, dtype)
    inference_config = family.inference_config_class(num_steps=args.steps, seed=args.seed)
    multiple = patch_multiple(model.config)
    if vae is not None:
        multiple = math.lcm(multiple, FLUX2_PATCHIFIED_CELL)
    paths, problems = find_images(args.images)
    if problems or not paths:
        raise SystemExit(f"--images: {problems or 'no images found'}")
    name = model_name(args.model)
    labels = [name] + ([FLUX2_NAME] if vae is not None else [])
    rows = []
    for path in paths:
        row = score_image(
            path,
            name,
            model,
            inference_config,
            vae,
            multiple=multiple,
            device=device,
            dtype=dtype,
            runs=args.runs,
        )
        print(f"{path.name}: " + ", ".join(f"{k} {row[k]['psnr_db']:.2f} dB" for k in labels))
        rows.append(row)
    summary = {
        label: {metric: summarize([r[label][metric] for r in rows]) for metric in METRICS}
        for label in labels
    }
    machine = args.machine or default_machine_name(device)
    settings = {
        "model": args.model,
        "family": f"{family.name} ({reason})",
        "dtype": str(dtype).removeprefix("torch."),
        "inference": repr(inference_config),
        "steps": args.steps,
        "images": f"{len(rows)} from {', '.join(args.images)} (centre-cropped to x{multiple})",
        "flux2": args.flux2,
        "protocol": "8-bit quantised images, per-image PSNR; SSIM 11x11 Gaussian sigma 1.5",
    }
    data = {"machine": machine, "info": info, "settings": settings, "summary": summary}
    data["images"] = rows
    if args.runs is not None:
        ratios = {name: compression_ratio(model.config), FLUX2_NAME: FLUX2_COMPRESSION}
        for label in labels:
            write_viewer_run(args.runs / slug(label), label, rows, settings, ratios[label])
    markdown = render_markdown(name, info, data)
    print(markdown)
    write_results(args.out_dir, f"quality-{slug(name)}-{machine}", markdown, data)
    return data


def write_viewer_run(
    folder: Path, label: str, rows: list[dict[str, Any]], settings: dict[str, Any], ratio: Any
) -> None:
    """metrics.json of one model's viewer run folder (its PNGs are written per image)."""
    metrics = [
        {
            "image": row["image"],
            "output": f"{Path(row['image']).stem}.png",
            "width": row["width"],
            "height": row["height"],
            "fit": "crop",
            "psnr_db": row[label]["psnr_db"],
        }
        for row in rows
    ]
    flux2 = label == FLUX2_NAME
    run_settings = {
        "model": settings["flux2"] if flux2 else settings["model"],
        "family": "FLUX.2 VAE (diffusers)" if flux2 else settings["family"],
        "dtype": settings["dtype"],
        "steps": None if flux2 else settings["steps"],
        "compression_ratio": ratio,
        "diffae_version": diffae_version,
    }
    write_metrics_rows(folder, metrics, run_settings)


if __name__ == "__main__":
    main()
