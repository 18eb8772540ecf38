"""The `reconstruct` command: images -> encode -> decode -> PNGs, a PSNR table, comparison grids."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..console import Console
from ..metrics import format_table
from ..models import choose_device, choose_model, inference_config, load_model
from ..reconstruction import Reconstructions, check_outputs, reconstruct
from ..runs import Run, list_images, output_folder
from .arguments import inference_fields, require_encoder


def reconstruct_command(args: argparse.Namespace, console: Console) -> int:
    """Images -> encode -> decode -> PNGs, a PSNR table, and with --grid comparison images."""
    run = Run(console)
    out = output_folder(args.out)
    device = choose_device(args.device)
    choice = choose_model(args.model, args.family)
    require_encoder(choice.family, "reconstruct")
    decoding = inference_config(choice.family, inference_fields(args))
    images = [path for path, _ in list_images(args.images, run)]
    check_outputs(images, out, overwrite=args.overwrite)  # before the model loads
    loaded = load_model(choice, device, console, dtype=args.dtype, name=args.model)
    result = reconstruct(
        images,
        out,
        loaded,
        inference_config=decoding,
        batch_size=args.batch_size,
        fit=args.fit,
        grid=args.grid,
        viewer=args.viewer,
        overwrite=args.overwrite,
        refused=run.skipped,
        console=console,
    )
    note_reconstructions(result, out, console)
    if result.viewer_page is not None:
        console.note(f"viewer (open in a browser): {result.viewer_page}")
    return Run(console, result.inputs, result.skipped).exit_status()


def note_reconstructions(result: Reconstructions, out: Path, console: Console) -> None:
    """The PSNR table and where it all went."""
    if not result.rows:
        return
    assert result.metrics_files is not None  # written whenever there are rows
    csv_path, json_path = result.metrics_files
    console.note(format_table(result.rows, result.summary))
    console.note(
        f"wrote {len(result.rows)} reconstructions to {out}/, table: {csv_path}, {json_path}"
    )
