"""Peak memory and throughput of `diffae.training.train` against the number of training images.

--images-small and --images-large generated JPEGs of --resolution squared (smooth random colour
fields, as photos compress) in a temporary folder; fcdm_diffae's tiny test config trained for
--steps steps with --workers DataLoader workers (1 torch thread), each run in a fresh process
(so that its peak resident set is its own), candidates round-robin, --repeats times:

- before: `CropDataset` as it was up to commit c12eb19: every decoded file kept, in each worker
  (reproduced here by patching `CropDataset.pixels` back; the `read_image` it calls is today's,
  which makes two fewer copies of each image than it did then);
- after: the current `CropDataset`: decoded files kept up to `IMAGE_CACHE_BYTES` per process,
  the others decoded per sample (straight to uint8);
- after, no cache: the same with `cache_bytes=0` (every sample decoded).

    nice -n 10 uv run python -m benchmarks.training_memory

writes benchmarks/results/training-memory-<machine>.md and .json. Peak RSS is the run's main
process (`ru_maxrss`) and its largest DataLoader worker (`RUSAGE_CHILDREN`); the tiny model
makes the data path, not the model, set the pace.
"""

from __future__ import annotations

import argparse
import functools
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .report import RESULTS_DIR, machine_info, markdown_table, write_table_results

CANDIDATES = ("before", "after", "after, no cache")
FAMILY = "fcdm_diffae"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.training_memory", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--images-small", type=int, default=200)
    parser.add_argument("--images-large", type=int, default=2000)
    parser.add_argument("--resolution", type=int, default=1024)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--crop", type=int, default=64)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--candidates", nargs="+", choices=CANDIDATES, default=list(CANDIDATES))
    parser.add_argument("--machine", help="name in the results file names (default: device)")
    parser.add_argument("--out-dir", type=Path, default=RESULTS_DIR)
    parser.add_argument(
        "--run", nargs=3, metavar=("CANDIDATE", "DATA", "OUT"), help=argparse.SUPPRESS
    )
    return parser.parse_args(argv)


def write_images(folder: Path, first: int, count: int, side: int) -> None:
    """JPEGs image{first}..: random 6 x 6 colour fields upscaled (bicubic) to side x side."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    for index in range(first, first + count):
        rng = np.random.default_rng(index)
        small = Image.fromarray(rng.integers(0, 256, (6, 6, 3), dtype=np.uint8))
        image = small.resize((side, side), Image.Resampling.BICUBIC)
        image.save(folder / f"image{index:05d}.jpg", quality=90)


def patch_previous_pixels() -> None:
    """`CropDataset.pixels` as at commit c12eb19: decoded through floats, every file kept."""
    from diffae import training
    from diffae.images import read_image

    def pixels(self: Any, file_index: int) -> torch.Tensor:
        if file_index not in self.cache:
            image, _ = read_image(self.files[file_index])
            self.cache[file_index] = ((image[0] + 1.0) * 127.5).round().to(torch.uint8)
        return self.cache[file_index]

    training.CropDataset.pixels = pixels


def run_training(args: argparse.Namespace) -> dict[str, Any]:
    """One training run (in this fresh process): steps/s after the first log window, peak RSS."""
    from diffae import training
    from diffae.console import Console
    from diffae_core.families import installed_families

    candidate, data, out = args.run
    torch.set_num_threads(1)  # the README's advice on a shared CPU (workers take 1 each)
    if candidate == "before":
        patch_previous_pixels()
    elif candidate == "after, no cache":
        training.CropDataset = functools.partial(training.CropDataset, cache_bytes=0)
    family = installed_families()[FAMILY]
    torch.manual_seed(0)
    model = family.model_class(family.tiny_config)
    log_every = max(1, args.steps // 10)
    settings = training.TrainingSettings(
        steps=args.steps, batch_size=args.batch, crop_size=args.crop, warmup_steps=1,
        workers=args.workers, log_every=log_every, save_every=args.steps,
    )  # fmt: skip
    config = training.TrainingConfig(data=Path(data), out=Path(out), settings=settings)
    training.train(model, config, console=Console(quiet=True))
    records = [
        json.loads(line) for line in (Path(out) / training.LOG_NAME).read_text().splitlines()
    ]
    first, last = records[0], records[-1]
    kib = 1024  # ru_maxrss is in KiB on Linux
    return {
        "steps_per_s": (last["step"] - first["step"])
        / max(last["elapsed_s"] - first["elapsed_s"], 0.1),
        "peak_rss_main_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / kib,
        "peak_rss_worker_mib": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / kib,
    }


def child_run(args: argparse.Namespace, candidate: str, data: Path, out: Path) -> dict[str, Any]:
    command = [
        sys.executable, "-m", "benchmarks.training_memory", "--run", candidate, str(data),
        str(out), "--steps", str(args.steps), "--batch", str(args.batch), "--crop",
        str(args.crop), "--workers", str(args.workers),
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{candidate} on {data}: {done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> dict[str, Any] | None:
    args = parse_args(argv)
    if args.run:
        print(json.dumps(run_training(args)))
        return None
    info = machine_info(torch.device("cpu"))
    rows = []
    with tempfile.TemporaryDirectory() as temporary:
        root = Path(temporary)
        start = time.perf_counter()
        small, rest = root / "images" / "first", root / "images" / "rest"
        write_images(small, 0, args.images_small, args.resolution)
        write_images(
            rest, args.images_small, args.images_large - args.images_small, args.resolution
        )
        print(f"wrote {args.images_large} images in {time.perf_counter() - start:.0f} s")
        folders = {args.images_small: small, args.images_large: root / "images"}
        runs: dict[tuple[str, int], list[dict[str, Any]]] = {}
        for repeat in range(args.repeats):  # round-robin: load from elsewhere hits all alike
            for count, folder in folders.items():
                for candidate in args.candidates:
                    out = root / f"run-{repeat}-{count}-{args.candidates.index(candidate)}"
                    figures = child_run(args, candidate, folder, out)
                    runs.setdefault((candidate, count), []).append(figures)
                    print(json.dumps({"candidate": candidate, "images": count} | figures))
    for (candidate, count), figures in runs.items():
        rows.append({
            "candidate": candidate,
            "images": count,
            "steps_per_s": statistics.median(run["steps_per_s"] for run in figures),
            "steps_per_s_runs": [run["steps_per_s"] for run in figures],
            "peak_rss_main_mib": max(run["peak_rss_main_mib"] for run in figures),
            "peak_rss_worker_mib": max(run["peak_rss_worker_mib"] for run in figures),
        })  # fmt: skip
    megapixels = 3 * args.resolution**2 / 2**20
    info |= {
        "model": f"{FAMILY} tiny_config (random weights)",
        "resolution": args.resolution,
        "decoded_mib_per_image": round(megapixels, 2),
        "steps": args.steps,
        "batch": args.batch,
        "crop": args.crop,
        "workers": args.workers,
        "repeats": args.repeats,
        "timed": "steps/s between the first and last log records (after worker start-up), "
        "median of the repeats; peak RSS: the largest of the repeats",
    }
    table = markdown_table(
        ["candidate", "images", "steps/s", "peak RSS main (MiB)", "peak RSS largest worker (MiB)"],
        [
            [
                row["candidate"],
                row["images"],
                f"{row['steps_per_s']:.2f}",
                f"{row['peak_rss_main_mib']:.0f}",
                f"{row['peak_rss_worker_mib']:.0f}",
            ]
            for row in rows
        ],
    )
    title = "Training memory against the number of images"
    return write_table_results(args, "training-memory", title, table, info, rows)


if __name__ == "__main__":
    main()
