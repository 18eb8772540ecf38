"""The `bundle` command: a model folder to upload to the Hub, with the code that runs it."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..bundle import check_new_folder, export_bundle
from ..console import Console


def bundle(args: argparse.Namespace, console: Console) -> int:
    """Write the bundle of --model to the new folder --out."""
    out = Path(args.out)
    check_new_folder(out, "--out")  # before resolving (maybe downloading) the model
    viewer_runs = [Path(run) for run in args.viewer or ()]
    written = export_bundle(
        args.model, out, args.family, repo_id=args.repo_id, viewer_runs=viewer_runs
    )
    page = ", the results viewer viewer/index.html" if viewer_runs else ""
    console.note(
        f"wrote {written}: config.json, model.safetensors, README.md, the code{page}; "
        f"upload it with `hf upload {args.repo_id or '<user>/<repo>'} {written} .`"
    )
    return 0
