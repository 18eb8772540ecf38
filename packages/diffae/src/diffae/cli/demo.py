"""The `demo` command: the embedded model on the bundled photos, grids, and PSNR vs bicubic."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..console import Console
from ..models import choose_device
from ..reconstruction import demo
from ..runs import Run
from .reconstruction import note_reconstructions


def demo_command(args: argparse.Namespace, console: Console) -> int:
    """Reconstruct the sample photos with the embedded model; print model vs bicubic PSNR."""
    out = Path(args.out)
    result = demo(out, device=choose_device(args.device), console=console)
    reconstructions = result.reconstructions
    note_reconstructions(reconstructions, out, console)
    console.note(format_comparison(result.comparison, result.compression_ratio))
    console.note(f"comparison grids (original | reconstruction | error | latent PCA): {out}/grids/")
    console.note(
        f"look through the results in a browser (bicubic vs the model): {result.viewer_page}"
    )
    return Run(console, reconstructions.inputs, reconstructions.skipped).exit_status()


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
