"""Throughput of `encode_dataset` (`diffae encode-dataset`) against a bare `model.encode` loop.

One preset (full size, PyTorch's default initialisation: the weights' values do not change the
work) is saved to a temporary folder, with --images random RGB images (PNG, or JPEG with
--image-format jpeg) of --resolution squared.
Both candidates run in this one process, interleaved (round-robin) after a warm-up:

- bare loop: `model.encode` over batches of the images already decoded to tensors, in
  inference mode (no file reading, no writing);
- tool: the encode phase of `diffae.dataset_encoding.encode_dataset`, as it reports it
  (reading and fitting the PNGs, bucketing, encoding, Parquet shards, statistics), and the
  whole of what `diffae encode-dataset` does (adding the listing and the model loading), each
  run into a fresh folder;
- with --against COMMIT, the encode phase of `diffae/dataset_encoding.py` as it was at that
  commit (loaded from git beside today's package): a change to the pipeline measured side by
  side with what it replaces, in one run.

    uv run python -m benchmarks.encode_dataset --preset semdisdiffae --images 32 --batch 4

writes benchmarks/results/encode-dataset-<machine>.md and .json. The tool's overhead is
1 - tool images/s / bare images/s.
"""

from __future__ import annotations

import argparse
import importlib.util
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import ModuleType
from typing import Any

import torch
from PIL import Image

from diffae import dataset_encoding
from diffae.console import Console
from diffae.dataset_encoding import FittedImages, list_sources
from diffae.images import read_image, write_png
from diffae.metrics import quantize_8bit
from diffae.models import choose_model, load_model, patch_multiple

from .flops import count_flops
from .models import save_preset
from .report import RESULTS_DIR, default_machine_name, header_lines, machine_info, markdown_table
from .report import write_results as write_result_files
from .timing import time_call

IMAGE_FORMATS = {"png": ".png", "jpeg": ".jpg"}
"""--image-format -> file suffix of the generated inputs."""


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.encode_dataset", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--family", default="fcdm_diffae")
    parser.add_argument("--preset", default="semdisdiffae", help="'tiny': the test config")
    parser.add_argument("--images", type=int, default=32)
    parser.add_argument("--resolution", type=int, default=256)
    parser.add_argument("--image-format", choices=IMAGE_FORMATS, default="png")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--shard-size", type=int, default=16)
    parser.add_argument("--num-workers", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, help="torch.set_num_threads")
    parser.add_argument(
        "--against", metavar="COMMIT", help="also time dataset_encoding.py as of this commit"
    )
    parser.add_argument("--machine", help="name in the results file names (default: device)")
    parser.add_argument("--out-dir", type=Path, default=RESULTS_DIR)
    return parser.parse_args(argv)


def save_model(args: argparse.Namespace, folder: Path) -> torch.nn.Module:
    """The preset with PyTorch's default initialisation, saved to `folder`; the model loaded
    back from there, as the command loads it (loaded weights can take other kernels)."""
    family = save_preset(args.family, args.preset, folder)
    return family.model_class.from_pretrained(folder, dtype=torch.float32).eval()


def write_images(args: argparse.Namespace, folder: Path) -> list[Path]:
    """--images random RGB images of --resolution squared, as PNG or JPEG (quality 90)."""
    generator = torch.Generator().manual_seed(0)
    side = args.resolution
    suffix = IMAGE_FORMATS[args.image_format]
    paths = [folder / f"image{index:04d}{suffix}" for index in range(args.images)]
    for path in paths:
        pixels = torch.rand(3, side, side, generator=generator) * 2 - 1
        if suffix == ".png":
            write_png(path, pixels)
        else:
            rgb = quantize_8bit(pixels).permute(1, 2, 0).numpy()
            Image.fromarray(rgb).save(path, quality=90)
    return paths


def bare_loop(model: torch.nn.Module, images: list[torch.Tensor], batch: int) -> None:
    with torch.inference_mode():
        for start in range(0, len(images), batch):
            model.encode(torch.cat(images[start : start + batch]))


def pipeline_at(commit: str) -> ModuleType:
    """`diffae.dataset_encoding` as of `commit`, loaded from git as a module of today's
    `diffae` package (its relative imports resolve there): DataLoader workers are forked, and
    what they send back is found again under the module's name in sys.modules."""
    repository = Path(__file__).resolve().parents[1]
    source = subprocess.run(
        ["git", "show", f"{commit}:packages/diffae/src/diffae/dataset_encoding.py"],
        cwd=repository,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    name = f"diffae.dataset_encoding_at_{commit[:12]}"
    spec = importlib.util.spec_from_loader(name, loader=None)
    module = importlib.util.module_from_spec(spec)
    module.__package__ = "diffae"
    sys.modules[name] = module
    exec(compile(source, f"{commit}:dataset_encoding.py", "exec"), module.__dict__)
    return module


def tool_run(
    args: argparse.Namespace,
    images: Path,
    model: Path,
    out: Path,
    pipeline: ModuleType = dataset_encoding,
) -> tuple[float, float]:
    """(seconds of the whole call, images/s of its encode phase), into a fresh `out`: what
    `diffae encode-dataset IMAGES --model MODEL --dtype float32 --device cpu` runs (with
    `pipeline`'s `encode_dataset`)."""
    shutil.rmtree(out, ignore_errors=True)
    start = time.perf_counter()
    sources, refused = list_sources(images)
    choice = choose_model(str(model), args.family)
    loaded = load_model(choice, torch.device("cpu"), Console(quiet=True), dtype="float32")
    dataset = pipeline.encode_dataset(
        sources,
        out,
        loaded,
        model_id=str(model.resolve()),
        batch_size=args.batch,
        num_workers=args.num_workers,
        preprocessing=pipeline.Preprocessing(shard_size=args.shard_size),
        refused=refused,
    )
    seconds = time.perf_counter() - start
    if dataset.encoded != args.images or dataset.skipped:
        raise RuntimeError(f"encode_dataset encoded {dataset.encoded} of {args.images} images")
    return seconds, dataset.encoded / dataset.encode_seconds


def cpu_costs(
    model: torch.nn.Module, images: Path, tensors: list[torch.Tensor], batch: int
) -> dict[str, float]:
    """CPU milliseconds per image (this process, all its threads): reading, decoding and
    fitting a file as a worker does (`FittedImages`), and the bare encode; the first's share
    of the sum is what the tool adds when nothing can overlap (every core busy with the
    model)."""
    sources, _ = list_sources(images)
    worker_items = FittedImages(sources, patch_multiple(model.config), "crop", None)
    start = time.process_time()
    for position in range(len(worker_items)):
        worker_items[position]
    read_ms = (time.process_time() - start) * 1e3 / len(worker_items)
    start = time.process_time()
    bare_loop(model, tensors, batch)
    encode_ms = (time.process_time() - start) * 1e3 / len(tensors)
    return {
        "read_fit_cpu_ms_per_image": read_ms,
        "encode_cpu_ms_per_image": encode_ms,
        "read_fit_share_of_cpu": read_ms / (read_ms + encode_ms),
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device("cpu")
    start_info = machine_info(device)  # the commit and the load before anything runs
    with tempfile.TemporaryDirectory() as temporary:
        root = Path(temporary)
        for name in ("model", "images"):
            (root / name).mkdir()
        model = save_model(args, root / "model")
        paths = write_images(args, root / "images")
        tensors = [read_image(path)[0] for path in paths]
        with count_flops() as flops:
            bare_loop(model, tensors[:1], 1)  # warm-up; FLOPs of one image
        pipelines = {"tool": dataset_encoding}
        if args.against:
            pipelines["earlier"] = pipeline_at(args.against)
        for pipeline in pipelines.values():  # warm-up
            tool_run(args, root / "images", root / "model", root / "out", pipeline)
        costs = cpu_costs(model, root / "images", tensors, args.batch)
        candidates = ["bare", *pipelines]
        samples: dict[str, list[float]] = {name: [] for name in ("bare", "phase", "whole")}
        if args.against:
            samples |= {"earlier_phase": [], "earlier_whole": []}
        for repeat in range(args.repeats):
            # the order rotates, so that a drift of the machine's speed favours none
            shift = repeat % len(candidates)
            for candidate in candidates[shift:] + candidates[:shift]:
                if candidate == "bare":
                    seconds = time_call(lambda: bare_loop(model, tensors, args.batch), device)
                    samples["bare"].append(args.images / seconds)
                    continue
                out, pipeline = root / "out", pipelines[candidate]
                seconds, per_second = tool_run(args, root / "images", root / "model", out, pipeline)
                prefix = "" if candidate == "tool" else "earlier_"
                samples[f"{prefix}phase"].append(per_second)
                samples[f"{prefix}whole"].append(args.images / seconds)
    parameters = sum(p.numel() for p in model.parameters())
    names = {
        "bare": "bare model.encode loop",
        "phase": "encode-dataset, encode phase",
        "whole": "encode-dataset, whole command",
        "earlier_phase": f"encode-dataset at {args.against}, encode phase",
        "earlier_whole": f"encode-dataset at {args.against}, whole command",
    }
    rows = []
    for key, values in samples.items():
        rows.append({"candidate": names[key], "images_per_s": statistics.median(values)})
        rows[-1]["overhead"] = 1.0 - rows[-1]["images_per_s"] / rows[0]["images_per_s"]
        # each repeat's ratio to the bare loop of the same repeat: what drifts between
        # repeats (a shared machine's speed) cancels out
        pairs = zip(values, samples["bare"], strict=True)
        rows[-1]["paired_ratio"] = statistics.median(t / b for t, b in pairs)
    info = start_info | {
        "model": f"{args.family}/{args.preset} (random weights)",
        "parameters": parameters,
        "encode_gflops_per_image": flops.total / 1e9,
        "dtype": "float32",
        "resolution": args.resolution,
        "image_format": args.image_format,
        "images": args.images,
        "batch": args.batch,
        "shard_size": args.shard_size,
        "num_workers": args.num_workers,
        "repeats": args.repeats,
        "against": args.against,
        **costs,
        "timed": "images/s, median of the repeats; overhead = 1 - candidate / bare loop; "
        "paired ratio: median over the repeats of candidate / bare loop in the same repeat "
        "(the order of the candidates rotates from one repeat to the next)",
    }
    table = markdown_table(
        ["candidate", "images/s", "overhead", "paired ratio"],
        [
            [
                r["candidate"],
                f"{r['images_per_s']:.2f}",
                f"{100 * r['overhead']:.1f}%",
                f"{r['paired_ratio']:.3f}",
            ]
            for r in rows
        ],
    )
    markdown = "\n".join(["# encode-dataset throughput", "", *header_lines(info), "", table, ""])
    print(markdown)
    data = {
        "info": info,
        "results": rows,
        "samples": samples,
    }
    machine = args.machine or default_machine_name(device)
    write_result_files(args.out_dir, f"encode-dataset-{machine}", markdown, data)
    return data


if __name__ == "__main__":
    main()
