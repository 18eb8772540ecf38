"""Bytes read per item and items/s of `LatentDataset`, before and after one-row row groups.

A latent dataset of --rows rows in --shards shards, each row a random [--channels, --side,
--side] float32 tensor (default 384 x 8 x 8, 96 KiB: semdisdiffae_p32_v2's latents of a 256²
image), written by `write_shard` twice in a temporary folder:

- before: the layout and reader up to commit c12eb19: 64-row row groups, and a reader that
  opens the shard for each row group it reads (reproduced here);
- after: one row per row group (`ROW_GROUP_ROWS`), read by the current `LatentDataset` (which
  reads ahead, up to `READ_AHEAD_ROWS`, while the indices come in order);
- after, old files: the current `LatentDataset` on the 64-row layout (datasets written before).

Each is read in random order (--items uniform indices, seeded) and in order (a full pass); the
memory the parsed footers take is measured in a fresh process.
Bytes read are the process's `rchar` in /proc/self/io (what the reads asked of the file
system, page cache or not) over the reads, divided by the items. `datasets.load_dataset` of
each layout into a fresh cache is timed too when `datasets` is installed (by default it converts
one row group at a time; `batch_size=1000` converts 1,000 rows at a time).

    nice -n 10 uv run python -m benchmarks.latent_reader

writes benchmarks/results/latent-reader-<machine>.md and .json.
"""

from __future__ import annotations

import argparse
import bisect
import contextlib
import gc
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import torch

from diffae import latent_dataset
from diffae.latent_dataset import (
    FORMAT,
    MANIFEST,
    LatentDataset,
    dtype_name,
    latents_from_bytes,
    latents_to_bytes,
    read_manifest,
    shard_path,
    write_shard,
)

from .report import RESULTS_DIR, machine_info, markdown_table, write_table_results

PREVIOUS_ROW_GROUP_ROWS = 64


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.latent_reader", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--rows", type=int, default=2000)
    parser.add_argument("--shards", type=int, default=4)
    parser.add_argument("--channels", type=int, default=384)
    parser.add_argument("--side", type=int, default=8)
    parser.add_argument("--items", type=int, default=300, help="random reads per candidate")
    parser.add_argument("--machine", help="name in the results file names (default: device)")
    parser.add_argument("--out-dir", type=Path, default=RESULTS_DIR)
    parser.add_argument(
        "--no-footer-memory", action="store_true", help="skip the fresh process (smoke runs)"
    )
    parser.add_argument("--footer-memory", type=Path, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def write_dataset(args: argparse.Namespace, root: Path, group_rows: int) -> None:
    """`args.rows` random rows in `args.shards` shards with `group_rows` rows per row group, and
    a manifest `LatentDataset` accepts."""
    generator = torch.Generator().manual_seed(0)
    shape = [args.channels, args.side, args.side]
    per_shard = -(-args.rows // args.shards)
    shards = []
    saved = latent_dataset.ROW_GROUP_ROWS
    latent_dataset.ROW_GROUP_ROWS = group_rows  # write_shard reads it when it writes
    try:
        for shard in range(args.shards):
            numbers = range(shard * per_shard, min(args.rows, (shard + 1) * per_shard))
            rows = [random_row(number, shape, generator) for number in numbers]
            path = shard_path(root, shard, args.shards)
            path.parent.mkdir(parents=True, exist_ok=True)
            write_shard(path, rows, {"shard": shard, "rows": len(rows)})
            shards.append({"file": path.relative_to(root).as_posix(), "rows": len(rows)})
    finally:
        latent_dataset.ROW_GROUP_ROWS = saved
    manifest = {"format": FORMAT, "complete": True, "shards": shards}
    (root / MANIFEST).write_text(json.dumps(manifest))


def random_row(number: int, shape: list[int], generator: torch.Generator) -> dict[str, Any]:
    """A row as `diffae encode-dataset` writes it, of random float32 latents."""
    latents = latents_to_bytes(torch.randn(shape, generator=generator))
    sizes = {"height": 256, "width": 256, "source_height": 256, "source_width": 256}
    return {"key": f"images/{number:06d}.jpg", "latents": latents, "shape": shape,
            "dtype": dtype_name(torch.float32), "fit": "none"} | sizes  # fmt: skip


class PreviousLatentDataset:
    """`LatentDataset.__getitem__` as at commit c12eb19: the row group is read through a fresh
    `pq.ParquetFile` (footer included) and the last group kept."""

    def __init__(self, root: Path) -> None:
        manifest = read_manifest(root)
        self._groups: list[tuple[Path, int]] = []
        self._starts: list[int] = []
        total = 0
        for shard in manifest["shards"]:
            path = root / shard["file"]
            metadata = pq.ParquetFile(os.fspath(path)).metadata
            for group in range(metadata.num_row_groups):
                self._groups.append((path, group))
                self._starts.append(total)
                total += metadata.row_group(group).num_rows
        self._length = total
        self._cached: tuple[int, list[dict[str, Any]]] | None = None

    def __len__(self) -> int:
        return self._length

    def __getitem__(self, index: int) -> dict[str, Any]:
        group = bisect.bisect_right(self._starts, index) - 1
        if self._cached is None or self._cached[0] != group:
            path, number = self._groups[group]
            rows = pq.ParquetFile(os.fspath(path)).read_row_group(number).to_pylist()
            self._cached = (group, rows)
        row = dict(self._cached[1][index - self._starts[group]])
        row["latents"] = latents_from_bytes(row["latents"], row.pop("shape"), row.pop("dtype"))
        return row


def bytes_read() -> int:
    """This process's `rchar`: bytes its read calls returned, from the page cache or not."""
    for line in Path("/proc/self/io").read_text().splitlines():
        if line.startswith("rchar:"):
            return int(line.split()[1])
    raise RuntimeError("/proc/self/io has no rchar")


def resident_mib() -> float:
    return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGESIZE") / 2**20


@contextlib.contextmanager
def measured(figures: dict[str, float], name: str, items: int) -> Iterator[None]:
    """Record `name`_bytes_per_item and `name`_items_per_s of the reads in the block."""
    start_bytes, start = bytes_read(), time.perf_counter()
    yield
    seconds = time.perf_counter() - start
    figures[f"{name}_bytes_per_item"] = (bytes_read() - start_bytes) / items
    figures[f"{name}_items_per_s"] = items / seconds


def footer_memory(root: Path) -> float:
    """MiB per 1,000 rows that `LatentDataset` holds for the footers of the shards it has read,
    measured in a fresh process (in this one, memory freed by the writing would be reused)."""
    command = [sys.executable, "-m", "benchmarks.latent_reader", "--footer-memory", str(root)]
    done = subprocess.run(command, capture_output=True, text=True, check=True)
    return float(done.stdout.strip().splitlines()[-1])


def print_footer_memory(root: Path) -> None:
    """`footer_memory`, in the fresh process: resident growth from reading one row of every
    shard but the first, per 1,000 rows of those shards."""
    manifest = read_manifest(root)
    dataset = LatentDataset(root, max_open_shards=len(manifest["shards"]))
    dataset[0]  # the imports and the first shard, before the baseline
    gc.collect()
    before = resident_mib()
    start = manifest["shards"][0]["rows"]
    for shard in manifest["shards"][1:]:
        dataset[start]
        start += shard["rows"]
    rows = start - manifest["shards"][0]["rows"]
    print((resident_mib() - before) / rows * 1000)


def read_all(dataset: Any, indices: list[int]) -> None:
    for index in indices:
        dataset[index]["latents"].sum()


def measure(make: Callable[[], Any], random_indices: list[int]) -> dict[str, float]:
    figures: dict[str, float] = {}
    dataset = make()
    with measured(figures, "random", len(random_indices)):
        read_all(dataset, random_indices)
    dataset = make()
    with measured(figures, "sequential", len(dataset)):
        read_all(dataset, list(range(len(dataset))))
    return figures


def load_dataset_seconds(root: Path, cache: Path, **options: Any) -> float | None:
    """Seconds of `datasets.load_dataset("parquet", ...)` of the shards into a fresh cache
    (None without `datasets`)."""
    try:
        import datasets
    except ImportError:
        return None
    start = time.perf_counter()
    files = str(root / "data" / "*.parquet")
    loaded = datasets.load_dataset(
        "parquet", data_files=files, split="train", cache_dir=cache, **options
    )
    seconds = time.perf_counter() - start
    assert loaded.num_rows == len(LatentDataset(root))
    return seconds


def main(argv: list[str] | None = None) -> dict[str, Any] | None:
    args = parse_args(argv)
    if args.footer_memory:
        print_footer_memory(args.footer_memory)
        return None
    info = machine_info(torch.device("cpu"))
    with tempfile.TemporaryDirectory() as temporary:
        old_layout, new_layout = Path(temporary, "old"), Path(temporary, "new")
        write_dataset(args, old_layout, PREVIOUS_ROW_GROUP_ROWS)
        write_dataset(args, new_layout, 1)
        draw = random.Random(0)
        indices = [draw.randrange(args.rows) for _ in range(args.items)]
        candidates = {
            "before": (lambda: PreviousLatentDataset(old_layout), old_layout),
            "after": (lambda: LatentDataset(new_layout), new_layout),
            "after, old files": (lambda: LatentDataset(old_layout), old_layout),
        }
        rows = []
        for name, (make, root) in candidates.items():
            figures = measure(make, indices)
            files = sorted((root / "data").glob("*.parquet"))
            if name != "before" and not args.no_footer_memory:  # "before" kept no footer
                figures["footer_mib_per_1000_rows"] = footer_memory(root)
            figures["file_mib"] = sum(path.stat().st_size for path in files) / 2**20
            figures["footer_bytes_per_row"] = (
                sum(pq.read_metadata(path).serialized_size for path in files) / args.rows
            )
            if name != "after, old files":
                figures["load_dataset_s"] = load_dataset_seconds(root, Path(temporary, name))
                figures["load_dataset_batch_1000_s"] = load_dataset_seconds(
                    root, Path(temporary, f"{name}-batch"), batch_size=1000
                )
            rows.append({"candidate": name} | figures)
            print(json.dumps(rows[-1]))
    row_bytes = args.channels * args.side**2 * 4
    info |= {
        "rows": args.rows,
        "shards": args.shards,
        "latents": f"[{args.channels}, {args.side}, {args.side}] float32",
        "row_bytes": row_bytes,
        "random_items": args.items,
        "measured": "bytes: /proc/self/io rchar over the reads / items; footers held: resident "
        "growth of a fresh process reading one row of each shard but the first, per 1,000 rows",
    }
    table = markdown_table(
        [
            "candidate", "bytes read / random item", "÷ row bytes", "random items/s",
            "sequential bytes / item", "sequential items/s", "footers held (MiB / 1,000 rows)",
            "files (MiB)", "footer bytes / row", "load_dataset (s)",
            "load_dataset batch_size=1000 (s)",
        ],
        [
            [
                row["candidate"],
                f"{row['random_bytes_per_item']:,.0f}",
                f"{row['random_bytes_per_item'] / row_bytes:.2f}",
                f"{row['random_items_per_s']:,.0f}",
                f"{row['sequential_bytes_per_item']:,.0f}",
                f"{row['sequential_items_per_s']:,.0f}",
                f"{row.get('footer_mib_per_1000_rows', 0.0):.1f}",
                f"{row['file_mib']:.1f}",
                f"{row['footer_bytes_per_row']:.0f}",
                *(
                    "" if row.get(key) is None else f"{row[key]:.2f}"
                    for key in ("load_dataset_s", "load_dataset_batch_1000_s")
                ),
            ]
            for row in rows
        ],
    )  # fmt: skip
    title = "LatentDataset: bytes read per item"
    return write_table_results(args, "latent-reader", title, table, info, rows)


if __name__ == "__main__":
    main()
