"""The `demo` command: the embedded model on the bundled photos, grids, and PSNR vs bicubic."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..console import Console
from ..images import fit_image, read_image, sample_photos
from ..metrics import bicubic_baseline, psnr_8bit
from ..models import EMBEDDED_FAMILY, EMBEDDED_MODEL, available_families
from ..viewer import build_viewer_with_bicubic, compression_ratio
from .reconstruction import reconstruct
from .runs import earlier_run_of


def demo(args: argparse.Namespace, console: Console) -> int:
    """Reconstruct the sample photos with the embedded model; print model vs bicubic PSNR."""
    photos = sample_photos()
    reconstruct_args = argparse.Namespace(
        **vars(args)
        | {
            "images": [str(path) for path in photos],
            "model": None,
            "family": None,
            "dtype": "float32",
            "batch_size": 1,
            "fit": "crop",
            "grid": True,
            "viewer": False,
            "viewer_inputs": True,
            # Running the demo again replaces its own earlier outputs, nothing else.
            "overwrite": earlier_run_of(Path(args.out), "embedded"),
            "steps": None,
            "sampler": None,
            "schedule": None,
            "pdg_strength": None,
            "seed": 0,
        }
    )
    status = reconstruct(reconstruct_args, console)
    out = Path(args.out)
    report = json.loads((out / "metrics.json").read_text(encoding="utf-8"))
    config = available_families()[EMBEDDED_FAMILY].config_class.load(EMBEDDED_MODEL / "config.json")
    ratio = compression_ratio(config)
    rows = []
    for row in report["images"]:
        image, _ = read_image(Path(row["image"]))
        fitted = fit_image(image, config.effective_patch_size, "crop").image[0]
        bicubic = psnr_8bit(fitted, bicubic_baseline(fitted, ratio))
        rows.append((Path(row["image"]).name, row["psnr_db"], bicubic))
    console.note(format_comparison(rows, ratio))
    console.note(f"comparison grids (original | reconstruction | error | latent PCA): {out}/grids/")
    page = build_viewer_with_bicubic(
        out, ratio, "embedded model", "diffae demo: the embedded model"
    )
    console.note(f"look through the results in a browser (bicubic vs the model): {page}")
    return status


def format_comparison(rows: list[tuple[str, float, float]], ratio: float) -> str:
    """image | model PSNR | bicubic PSNR | gain, then the means and how many photos it wins."""
    width = max(len("image"), *(len(name) for name, _, _ in rows))
    lines = [
        f"compression {ratio:g}:1; bicubic keeps as many values (each side / {ratio**0.5:.2f})",
        f"{'image':<{width}}  {'model dB':>8}  {'bicubic dB':>10}  {'gain':>6}",
    ]
    for name, model, bicubic in rows:
        lines.append(f"{name:<{width}}  {model:8.2f}  {bicubic:10.2f}  {model - bicubic:+6.2f}")
    model = sum(row[1] for row in rows) / len(rows)
    bicubic = sum(row[2] for row in rows) / len(rows)
    lines.append(f"{'mean':<{width}}  {model:8.2f}  {bicubic:10.2f}  {model - bicubic:+6.2f}")
    name, worst = min(((name, m - b) for name, m, b in rows), key=lambda row: row[1])
    wins = sum(m > b for _, m, b in rows)
    lines.append(
        f"the model wins on {wins} of {len(rows)} photos; worst gain {worst:+.2f} ({name})"
    )
    return "\n".join(lines)


def add_demo_parser(
    commands: argparse._SubParsersAction, common: argparse.ArgumentParser, help_text: str
):
    """The `demo` sub-command: no network, nothing to download."""
    parser = commands.add_parser(
        "demo",
        parents=[common],
        help=help_text,
    )

    parser.add_argument("--out", default="diffae-demo", help="output folder (default diffae-demo)")
    parser.add_argument("--device", help="torch device (default: cuda when available, else cpu)")
    return parser
