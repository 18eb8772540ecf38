"""Latent datasets: Parquet shards of latents, one row per image, and their `manifest.json`.

A dataset folder, as `diffae encode-dataset` writes it:

    DIR/manifest.json                        model, dtype, preprocessing, counts, skipped inputs,
                                             per-channel `latent_mean` / `latent_var`
    DIR/data/shard-00000-of-00012.parquet    one row per image, in input order

Columns: `key` (str: the path relative to the input folder, or the list entry), `latents`
(binary: the little-endian bytes of the [C, h, w] tensor exactly as `model.encode` returned it),
`shape` (list of int: [C, h, w]), `dtype` (str: "float32", "bfloat16", ...), `height`, `width`
(int: the pixels encoded), `fit` ("none", "crop" or "pad": see `images.fit_image`),
`source_height`, `source_width` (int: the file's pixels, before any --resize).

The shards are plain Parquet (`pyarrow.parquet.read_table`, `datasets.load_dataset("parquet",
data_files="DIR/data/*.parquet")`). Each also carries, under the schema metadata key "diffae",
its own record (`SHARD_RECORD_KEYS`): the settings digest, its inputs, rows, skipped inputs and
latent statistics, so that a resumed run reads only the footers of the finished shards.
`LatentDataset` reads a folder back as tensors for training loops.
"""

from __future__ import annotations

import bisect
import json
import os
import sys
from collections import OrderedDict
from dataclasses import dataclass
from functools import reduce
from itertools import accumulate
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import torch
from torch import Tensor
from torch.utils.data import Dataset

from diffae_core.io import atomic_write

MANIFEST = "manifest.json"
DATA_FOLDER = "data"
FORMAT = "diffae-latent-dataset"
FORMAT_VERSION = 1
METADATA_KEY = b"diffae"
ROW_GROUP_ROWS = 1
"""Rows per Parquet row group. A row group is the least pyarrow reads, so one row per group
lets `LatentDataset` read a row's bytes and no other row's (shards written before this, with
64-row groups, are read a group at a time). The cost is about 0.7 KB of footer per row."""
READ_AHEAD_ROWS = 64
"""The most rows `LatentDataset` reads at once: while the indices come in order, each read takes
twice as many rows as the last (1, 2, 4 ... 64), so reading in order costs what it did with
64-row groups, while a random index reads one row."""
MAX_OPEN_SHARDS = 16
"""Shards whose footer `LatentDataset` keeps parsed, per process (the least recently read is
closed): about 8 MB each for 1,000 one-row groups."""
SCHEMA = pa.schema([
    ("key", pa.string()),
    ("latents", pa.binary()),
    ("shape", pa.list_(pa.int32())),
    ("dtype", pa.string()),
    ("height", pa.int32()),
    ("width", pa.int32()),
    ("fit", pa.string()),
    ("source_height", pa.int32()),
    ("source_width", pa.int32()),
])  # fmt: skip
STATISTICS_COLUMNS = [name for name in SCHEMA.names if name != "latents"]
"""Columns with min/max statistics in the footer: not the latents' raw bytes (meaningless)."""
SHARD_RECORD_KEYS = ("settings_digest", "shard", "inputs", "rows", "skipped", "statistics")


class BadDataset(Exception):
    """A folder that is not a complete latent dataset, or a shard that cannot be read."""


def shard_path(root: Path, index: int, count: int) -> Path:
    """`root/data/shard-00003-of-00012.parquet` (indices from 0)."""
    return root / DATA_FOLDER / f"shard-{index:05d}-of-{count:05d}.parquet"


def require_little_endian() -> None:
    """The `latents` bytes are little-endian; this machine's tensors must be too."""
    if sys.byteorder != "little":
        raise NotImplementedError("latent datasets are little-endian; this machine is not")


def dtype_name(dtype: torch.dtype) -> str:
    """torch.bfloat16 -> "bfloat16"."""
    return str(dtype).removeprefix("torch.")


def latents_to_bytes(latents: Tensor) -> bytes:
    """A CPU tensor -> its elements' raw little-endian bytes, in C order."""
    require_little_endian()
    flat = latents.detach().contiguous().reshape(-1)
    return flat.view(torch.uint8).numpy().tobytes()  # uint8: numpy has no bfloat16


def latents_from_bytes(data: bytes, shape: list[int], dtype: str) -> Tensor:
    """The `latents`, `shape` and `dtype` of a row -> the tensor (a copy, writable)."""
    require_little_endian()
    torch_dtype = getattr(torch, dtype, None)
    if not isinstance(torch_dtype, torch.dtype):
        raise BadDataset(f"dtype: expected a torch dtype name such as 'float32', got {dtype!r}")
    return torch.frombuffer(bytearray(data), dtype=torch_dtype).view(shape)


@dataclass(frozen=True)
class LatentStatistics:
    """Per-channel count, mean and sum of squared deviations (M2) of latents, in float64.

    `merge` is exact up to float64 rounding and associative in the same sense, so statistics of
    shards and ranks combine into those of the whole dataset (Chan, Golub and LeVeque 1979).
    """

    count: int
    """Values per channel (images x h x w)."""
    mean: tuple[float, ...]
    m2: tuple[float, ...]

    @classmethod
    def of(cls, latents: list[Tensor]) -> LatentStatistics | None:
        """Statistics of [C, h, w] tensors (two passes, float64); None for an empty list."""
        if not latents:
            return None
        count = sum(int(x[0].numel()) for x in latents)
        mean = sum(x.double().sum(dim=(1, 2)) for x in latents) / count
        m2 = sum(((x.double() - mean[:, None, None]) ** 2).sum(dim=(1, 2)) for x in latents)
        return cls(count, tuple(mean.tolist()), tuple(m2.tolist()))

    def merge(self, other: LatentStatistics) -> LatentStatistics:
        """The statistics of both sets together (Chan et al.'s pairwise update)."""
        if len(self.mean) != len(other.mean):
            raise BadDataset(
                f"latent channels differ between shards: {len(self.mean)} and {len(other.mean)}"
            )
        count = self.count + other.count
        mean_a, mean_b, m2_a, m2_b = (
            torch.tensor(values, dtype=torch.float64)
            for values in (self.mean, other.mean, self.m2, other.m2)
        )
        delta = mean_b - mean_a
        mean = mean_a + delta * (other.count / count)
        m2 = m2_a + m2_b + delta**2 * (self.count * other.count / count)
        return LatentStatistics(count, tuple(mean.tolist()), tuple(m2.tolist()))

    @property
    def variance(self) -> tuple[float, ...]:
        """Population variance per channel (M2 / count): what whitening divides by."""
        return tuple(m2 / self.count for m2 in self.m2)

    def to_json(self) -> dict[str, Any]:
        return {"count": self.count, "mean": list(self.mean), "m2": list(self.m2)}

    @classmethod
    def from_json(cls, data: dict[str, Any] | None) -> LatentStatistics | None:
        if data is None:
            return None
        return cls(int(data["count"]), tuple(data["mean"]), tuple(data["m2"]))


def merge_statistics(parts: list[LatentStatistics | None]) -> LatentStatistics | None:
    """Merge in the order given (shard order, so any number of ranks gives the same bits)."""
    present = [part for part in parts if part is not None]
    return reduce(LatentStatistics.merge, present) if present else None


def write_shard(path: Path, rows: list[dict[str, Any]], record: dict[str, Any]) -> None:
    """Write rows (SCHEMA's columns) and the shard's record under a temporary name, then rename."""
    table = pa.Table.from_pylist(rows, schema=SCHEMA)
    table = table.replace_schema_metadata({METADATA_KEY: json.dumps(record)})

    def write(temporary: Path) -> None:
        pq.write_table(
            table,
            os.fspath(temporary),
            row_group_size=ROW_GROUP_ROWS,
            use_dictionary=["dtype", "fit"],
            write_statistics=STATISTICS_COLUMNS,
        )

    atomic_write(path, write)


def read_shard_record(path: Path) -> dict[str, Any]:
    """The record a finished shard carries in its Parquet footer."""
    try:
        metadata = pq.read_schema(os.fspath(path)).metadata or {}
        record = json.loads(metadata[METADATA_KEY])
    except (OSError, pa.ArrowException, KeyError, ValueError) as error:
        raise BadDataset(f"{path}: not a diffae encode-dataset shard ({error})") from None
    missing = [key for key in SHARD_RECORD_KEYS if key not in record]
    if missing:
        raise BadDataset(f"{path}: shard record lacks {missing}")
    return record


def read_manifest(root: Path) -> dict[str, Any]:
    """`root/manifest.json` as written by `diffae encode-dataset`."""
    path = Path(root) / MANIFEST
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise BadDataset(f"{path}: cannot read a latent dataset manifest ({error})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise BadDataset(f"{path}: not a {FORMAT} manifest")
    return manifest


class ShardReader:
    """One shard's row groups, its footer parsed once."""

    def __init__(self, path: Path) -> None:
        try:
            self.file = pq.ParquetFile(os.fspath(path))
        except (OSError, pa.ArrowException) as error:
            raise BadDataset(f"{path}: cannot read the shard ({error})") from None
        metadata = self.file.metadata
        group_rows = (
            metadata.row_group(group).num_rows for group in range(metadata.num_row_groups)
        )
        self.starts = list(accumulate(group_rows, initial=0))
        self.rows = self.starts[-1]
        self.path = path

    def read(self, number: int, count: int) -> tuple[int, list[dict[str, Any]]]:
        """The whole row groups that hold rows `number` .. `number + count - 1` (from 0; fewer
        at the end of the shard): (the number of their first row, their rows)."""
        first = bisect.bisect_right(self.starts, number) - 1
        end = bisect.bisect_left(self.starts, min(number + count, self.rows))
        try:
            rows = self.file.read_row_groups(list(range(first, end))).to_pylist()
        except (OSError, pa.ArrowException) as error:
            groups = f"row groups {first}..{end - 1}"
            raise BadDataset(f"{self.path}: cannot read {groups} ({error})") from None
        return self.starts[first], rows


class LatentDataset(Dataset):
    """A complete dataset folder as a map-style dataset: index -> one image's latents and facts.

    Items are dicts: "latents" ([C, h, w] tensor in the stored dtype), "key", "height", "width",
    "fit", "source_height", "source_width". The order is the shards' (the input order).

    Random access reads the row's own bytes (one Parquet row group per row) and, the first time
    a shard is read in a process, its footer; the footers of the `max_open_shards` shards read
    last stay parsed (`MAX_OPEN_SHARDS`). Indices in order read ahead (`READ_AHEAD_ROWS`). Each
    DataLoader worker opens its own files. Latents of different shapes need a `collate_fn` of
    your own (or batch size 1) in a DataLoader.
    """

    def __init__(
        self, root: str | os.PathLike[str], max_open_shards: int = MAX_OPEN_SHARDS
    ) -> None:
        if max_open_shards < 1:
            raise ValueError(f"max_open_shards: expected >= 1, got {max_open_shards}")
        self.root = Path(root)
        self.manifest = read_manifest(self.root)
        if not self.manifest.get("complete"):
            raise BadDataset(
                f"{self.root}: the encoding is not complete; re-run the same command to finish it"
            )
        self._shards = [
            (self.root / shard["file"], int(shard["rows"])) for shard in self.manifest["shards"]
        ]
        self._starts = list(accumulate((rows for _, rows in self._shards), initial=0))
        self._length = self._starts[-1]
        self.max_open_shards = max_open_shards
        self._open: OrderedDict[int, ShardReader] = OrderedDict()
        self._pid = os.getpid()
        self._read: tuple[int, list[dict[str, Any]]] = (0, [])  # (first index, rows) read last
        self._run, self._next = 1, -1  # rows to read at once; the index that continues in order

    def __len__(self) -> int:
        return self._length

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not -self._length <= index < self._length:
            raise IndexError(f"index {index} out of range for {self._length} rows")
        index %= self._length
        first, rows = self._read
        if not first <= index < first + len(rows):
            # In order: read twice as many rows as last time, up to READ_AHEAD_ROWS; else one.
            self._run = min(2 * self._run, READ_AHEAD_ROWS) if index == self._next else 1
            shard = bisect.bisect_right(self._starts, index) - 1
            start = self._starts[shard]
            first, rows = self._shard(shard).read(index - start, self._run)
            first += start
            self._read = (first, rows)
        self._next = index + 1
        row = dict(rows[index - first])
        row["latents"] = latents_from_bytes(row["latents"], row.pop("shape"), row.pop("dtype"))
        return row

    def _shard(self, number: int) -> ShardReader:
        """The open shard `number`, opened (and checked against the manifest) if need be."""
        if self._pid != os.getpid():  # a forked DataLoader worker opens files of its own
            self._open, self._pid = OrderedDict(), os.getpid()
        reader = self._open.pop(number, None)
        if reader is None:
            path, rows = self._shards[number]
            reader = ShardReader(path)
            if reader.rows != rows:
                raise BadDataset(f"{path}: {reader.rows} rows; the manifest says {rows}")
        self._open[number] = reader  # the most recently read last
        while len(self._open) > self.max_open_shards:
            self._open.popitem(last=False)
        return reader

    def __getstate__(self) -> dict[str, Any]:
        """Pickled (DataLoader workers started by spawn) without the open files."""
        return self.__dict__ | {"_open": OrderedDict(), "_read": (0, [])}

    @property
    def latent_mean(self) -> Tensor:
        """Per-channel mean of the dataset's latents, float64 [C]."""
        return torch.tensor(self.manifest["latent_mean"], dtype=torch.float64)

    @property
    def latent_var(self) -> Tensor:
        """Per-channel population variance of the dataset's latents, float64 [C]."""
        return torch.tensor(self.manifest["latent_var"], dtype=torch.float64)
