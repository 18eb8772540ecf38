"""Throughput of `diffae encode-dataset` against a bare `model.encode` loop on the same images.

One preset (full size, PyTorch's default initialisation: the weights' values do not change the
work) is saved to a temporary folder, with --images random RGB PNGs of --resolution squared.
Both candidates run in this one process, interleaved (round-robin) after a warm-up:

- bare loop: `model.encode` over batches of the images already decoded to tensors, in
  inference mode (no file reading, no writing);
- tool: the command's own encode phase, as it reports it (reading and fitting the PNGs,
  bucketing, encoding, Parquet shards, statistics), and the whole `encode-dataset` call
  (adding the model loading and the listing), each run into a fresh folder.

    uv run python -m benchmarks.encode_dataset --preset semdisdiffae --images 32 --batch 4

writes benchmarks/results/encode-dataset-<machine>.md and .json. The tool's overhead is
1 - tool images/s / bare images/s.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import re
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from diffae.cli import main as diffae_main
from diffae.images import read_image, write_png

from .flops import count_flops
from .models import save_preset
from .report import RESULTS_DIR, default_machine_name, header_lines, machine_info, markdown_table
from .report import write_results as write_result_files
from .timing import time_call

ENCODE_PHASE = re.compile(r"encoded (\d+) images in [\d.]+ s \(([\d.]+) images/s\)")
"""The note `encode-dataset` prints at the end of its encode phase."""


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.encode_dataset", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--family", default="fcdm_diffae")
    parser.add_argument("--preset", default="semdisdiffae", help="'tiny': the test config")
    parser.add_argument("--images", type=int, default=32)
    parser.add_argument("--resolution", type=int, default=256)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--shard-size", type=int, default=16)
    parser.add_argument("--num-workers", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, help="torch.set_num_threads")
    parser.add_argument("--machine", help="name in the results file names (default: device)")
    parser.add_argument("--out-dir", type=Path, default=RESULTS_DIR)
    return parser.parse_args(argv)


def save_model(args: argparse.Namespace, folder: Path) -> torch.nn.Module:
    """The preset with PyTorch's default initialisation, saved to `folder`; the model loaded
    back from there, as the command loads it (loaded weights can take other kernels)."""
    family = save_preset(args.family, args.preset, folder)
    return family.model_class.from_pretrained(folder, dtype=torch.float32).eval()


def write_images(args: argparse.Namespace, folder: Path) -> list[Path]:
    generator = torch.Generator().manual_seed(0)
    side = args.resolution
    paths = [folder / f"image{index:04d}.png" for index in range(args.images)]
    for path in paths:
        write_png(path, torch.rand(3, side, side, generator=generator) * 2 - 1)
    return paths


def bare_loop(model: torch.nn.Module, images: list[torch.Tensor], batch: int) -> None:
    with torch.inference_mode():
        for start in range(0, len(images), batch):
            model.encode(torch.cat(images[start : start + batch]))


def tool_run(args: argparse.Namespace, images: Path, model: Path, out: Path) -> tuple[float, float]:
    """(seconds of the whole command, images/s of its encode phase), into a fresh `out`."""
    shutil.rmtree(out, ignore_errors=True)
    command = [
        "encode-dataset", str(images), "--model", str(model), "--family", args.family,
        "--out", str(out), "--batch-size", str(args.batch), "--shard-size", str(args.shard_size),
        "--num-workers", str(args.num_workers), "--dtype", "float32", "--device", "cpu",
    ]  # fmt: skip
    notes = io.StringIO()
    start = time.perf_counter()
    with contextlib.redirect_stdout(notes):
        status = diffae_main(command)
    seconds = time.perf_counter() - start
    phase = ENCODE_PHASE.search(notes.getvalue())
    if status != 0 or phase is None or int(phase[1]) != args.images:
        raise RuntimeError(f"encode-dataset failed (status {status}): {notes.getvalue()}")
    return seconds, float(phase[2])


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device("cpu")
    with tempfile.TemporaryDirectory() as temporary:
        root = Path(temporary)
        for name in ("model", "images"):
            (root / name).mkdir()
        model = save_model(args, root / "model")
        paths = write_images(args, root / "images")
        tensors = [read_image(path)[0] for path in paths]
        with count_flops() as flops:
            bare_loop(model, tensors[:1], 1)  # warm-up; FLOPs of one image
        tool_run(args, root / "images", root / "model", root / "out")  # warm-up
        bare, phase, whole = [], [], []
        for _ in range(args.repeats):
            seconds = time_call(lambda: bare_loop(model, tensors, args.batch), device)
            bare.append(args.images / seconds)
            seconds, per_second = tool_run(args, root / "images", root / "model", root / "out")
            phase.append(per_second)
            whole.append(args.images / seconds)
    parameters = sum(p.numel() for p in model.parameters())
    rows = [
        {"candidate": "bare model.encode loop", "images_per_s": statistics.median(bare)},
        {"candidate": "encode-dataset, encode phase", "images_per_s": statistics.median(phase)},
        {"candidate": "encode-dataset, whole command", "images_per_s": statistics.median(whole)},
    ]
    for row in rows:
        row["overhead"] = 1.0 - row["images_per_s"] / rows[0]["images_per_s"]
    info = machine_info(device) | {
        "model": f"{args.family}/{args.preset} (random weights)",
        "parameters": parameters,
        "encode_gflops_per_image": flops.total / 1e9,
        "dtype": "float32",
        "resolution": args.resolution,
        "images": args.images,
        "batch": args.batch,
        "shard_size": args.shard_size,
        "num_workers": args.num_workers,
        "repeats": args.repeats,
        "timed": "images/s, median of the repeats; overhead = 1 - candidate / bare loop",
    }
    table = markdown_table(
        ["candidate", "images/s", "overhead"],
        [[r["candidate"], f"{r['images_per_s']:.2f}", f"{100 * r['overhead']:.1f}%"] for r in rows],
    )
    markdown = "\n".join(["# encode-dataset throughput", "", *header_lines(info), "", table, ""])
    print(markdown)
    data = {
        "info": info,
        "results": rows,
        "samples": {"bare": bare, "phase": phase, "whole": whole},
    }
    machine = args.machine or default_machine_name(device)
    write_result_files(args.out_dir, f"encode-dataset-{machine}", markdown, data)
    return data


if __name__ == "__main__":
    main()
