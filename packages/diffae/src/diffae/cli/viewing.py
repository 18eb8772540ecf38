"""The `viewer` command: reconstruction runs over the same photos -> one static page."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..console import Console
from ..viewer import build_viewer


def viewer(args: argparse.Namespace, console: Console) -> int:
    """Build the page of the run folders (the first is the reference) in --out."""
    page = build_viewer(
        [Path(folder) for folder in args.runs],
        Path(args.out),
        labels=args.labels,
        title=args.title,
        overwrite=args.overwrite,
    )
    console.note(f"viewer (open in a browser): {page}")
    return 0


def add_viewer_parser(
    commands: argparse._SubParsersAction, common: argparse.ArgumentParser, help_text: str
):
    """The `viewer` sub-command: no model is loaded."""
    parser = commands.add_parser(
        "viewer",
        parents=[common],
        help=help_text,
    )

    parser.add_argument(
        "runs",
        nargs="+",
        metavar="RUN_DIR",
        help="run folders; the first is the reference the others' gains are measured against",
    )
    parser.add_argument("--out", required=True, help="a new (or empty) folder for the page")
    parser.add_argument("--labels", nargs="+", help="a name per run (default: the model's name)")
    parser.add_argument("--title", help="the page's title (default: the labels)")
    parser.add_argument(
        "--overwrite", action="store_true", help="replace --out when it is not empty"
    )
    return parser
