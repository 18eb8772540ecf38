"""A model's reconstruction PSNR next to bicubic resampling that keeps as many values.

The baseline an autoencoder must beat: bicubic down-sampling (antialiased) of each side by
sqrt(ratio), ratio = 3 p^2 / C the model's compression, then bicubic up-sampling
(`diffae.metrics.bicubic_baseline`). PSNR by the cards' 8-bit protocol; the model decodes with
its default inference config (1 DDIM step, seed 0). Images are centre-cropped to `--crop`
(when both sides allow it), then to multiples of the patch. "grid": how much more of the
error sits at the patch period than at nearby frequencies (`diffae.metrics.patch_grid_db`;
about 0 dB: no patch grid).

    uv run python -m benchmarks.baseline                       # the embedded model, sample photos
    uv run python -m benchmarks.baseline photos/ --crop 512 --model DIR --label NAME

writes benchmarks/results/baseline-<label or model>-<machine>.md and .json.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import torch

from diffae.images import find_images, fit_image, read_image, sample_photos
from diffae.metrics import bicubic_baseline, patch_grid_db, psnr_8bit, summarize
from diffae.models import choose_model, patch_multiple

from .report import (
    RESULTS_DIR,
    default_machine_name,
    header_lines,
    machine_info,
    markdown_table,
    slug,
    write_results,
)

HEADERS = ["image", "size", "model PSNR (dB)", "bicubic PSNR (dB)", "gain (dB)"]
HEADERS += ["grid, model (dB)", "grid, bicubic (dB)"]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.baseline", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("images", nargs="*", help="files or folders (default: the sample photos)")
    parser.add_argument("--model", help="repo id or directory (default: the embedded model)")
    parser.add_argument("--family", help="the model's family, when it cannot be detected")
    parser.add_argument("--crop", type=int, help="centre crop to CROP x CROP first")
    parser.add_argument("--label", help="name of the model in the results (default: --model)")
    parser.add_argument("--machine", help="name of this machine in the results file")
    parser.add_argument("--out-dir", type=Path, default=RESULTS_DIR)
    return parser.parse_args(argv)


def centre_crop(image: torch.Tensor, size: int | None) -> torch.Tensor:
    """[1, 3, H, W] -> its centre size x size, when both sides are at least `size`."""
    height, width = int(image.shape[-2]), int(image.shape[-1])
    if size is None or height < size or width < size:
        return image
    top, left = (height - size) // 2, (width - size) // 2
    return image[..., top : top + size, left : left + size]


@torch.no_grad()
def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    files = sample_photos() if not args.images else find_images(args.images)[0]
    choice = choose_model(args.model, args.family)
    model = choice.family.model_class.from_pretrained(choice.location, device="cpu")
    config = model.config
    patch = patch_multiple(config)
    ratio = config.in_channels * config.effective_patch_size**2 / config.latent_channels
    rows = []
    for path in files:
        image = centre_crop(read_image(path)[0], args.crop)
        image = fit_image(image, patch, "crop").image
        reconstruction = model.reconstruct(image)[0]
        bicubic = bicubic_baseline(image[0], ratio)
        rows.append(
            {
                "image": path.name,
                "size": f"{image.shape[-1]}x{image.shape[-2]}",
                "model": psnr_8bit(image[0], reconstruction),
                "bicubic": psnr_8bit(image[0], bicubic),
                "grid_model": patch_grid_db(reconstruction - image[0], config.effective_patch_size),
                "grid_bicubic": patch_grid_db(bicubic - image[0], config.effective_patch_size),
            }
        )
    keys = ("model", "bicubic", "grid_model", "grid_bicubic")
    summary = {key: summarize([row[key] for row in rows])["mean"] for key in keys}
    name = args.label or ("embedded" if args.model is None else str(args.model))
    info = machine_info(torch.device("cpu"))
    table = markdown_table(
        HEADERS,
        [
            [
                r["image"],
                r["size"],
                f"{r['model']:.2f}",
                f"{r['bicubic']:.2f}",
                f"{r['model'] - r['bicubic']:+.2f}",
                f"{r['grid_model']:.1f}",
                f"{r['grid_bicubic']:.1f}",
            ]
            for r in [*rows, summary | {"image": "**mean**", "size": ""}]
        ],
    )
    gains = [row["model"] - row["bicubic"] for row in rows]
    wins = f"the model wins on {sum(g > 0 for g in gains)} of {len(gains)} images; "
    worst = min(range(len(rows)), key=gains.__getitem__)
    wins += f"worst gain {gains[worst]:+.2f} dB ({rows[worst]['image']})"
    markdown = "\n".join(
        [f"# {name}: PSNR vs bicubic at {ratio:g}:1", "", *header_lines(info), "", table, "", wins]
    )
    print(table)
    print(wins)
    data = {
        "model": name,
        "ratio": ratio,
        "crop": args.crop,
        "machine": info,
        "images": rows,
        "mean": summary,
    }
    machine = args.machine or default_machine_name(torch.device("cpu"))
    write_results(args.out_dir, f"baseline-{slug(name)}-{slug(machine)}", markdown, data)
    return data


if __name__ == "__main__":
    main()
