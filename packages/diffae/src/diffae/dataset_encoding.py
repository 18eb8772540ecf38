"""Encode a folder tree or a list of images into a Parquet latent dataset (`encode_dataset`).

    sources, refused = list_sources(Path("photos/"))
    dataset = encode_dataset(sources, Path("dataset/"), loaded, model_id="my/model")
    dataset.manifest["counts"]

The inputs, in a fixed order (folder: sorted relative paths; list: its order), are cut into
shards of `shard_size` images; shard k goes to rank k mod WORLD_SIZE, so under `torchrun` each
process encodes a disjoint, deterministic set. A shard is written under a temporary name and
renamed when complete, and carries its own record (statistics, skipped inputs) in its footer: a
re-run with the same settings encodes only the shards missing. The ranks exchange nothing but
their shard records at the end (one `all_gather_object`), after which rank 0 writes the
manifest with the statistics merged in shard order, and a final barrier. The layout:
`diffae.latent_dataset`.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, get_worker_info

from diffae_core.io import atomic_write_text

from . import __version__
from .console import ArgumentError, Console
from .distributed import Processes, process_group
from .faults import (
    FolderLock,
    Interrupted,
    StopRequest,
    disk_full,
    disk_full_error,
    ignore_interrupts,
    stop_requests,
)
from .images import (
    BadImage,
    find_image_tree,
    fit_image,
    read_image_compact,
    resize_shorter_side,
    to_unit_range,
)
from .latent_dataset import (
    DATA_FOLDER,
    FORMAT,
    FORMAT_VERSION,
    MANIFEST,
    BadDataset,
    LatentStatistics,
    dtype_name,
    latents_to_bytes,
    merge_statistics,
    read_manifest,
    read_shard_record,
    shard_path,
    write_shard,
)
from .models import LoadedModel
from .runs import Run, output_folder, run_model

FIT_MODES = ("crop", "pad")
COLLECTIVE_TIMEOUT = timedelta(days=2)
"""How long a rank waits at the final exchange for the slowest: after a resume one rank may
have many shards left and another none."""


@dataclass(frozen=True)
class Source:
    """One input image: its row key and its file."""

    key: str
    path: Path


def list_sources(folder_or_list: Path) -> tuple[list[Source], list[tuple[str, str]]]:
    """(images, (entry, reason) of list entries refused) of a folder tree or a list file.

    A folder is searched recursively for PNG/JPEG/WebP files, keyed by their relative path. A
    list file holds one path a line (blank lines and lines starting with # are ignored);
    relative paths are relative to the list file's folder, and the key is the entry as written.
    """
    path = Path(folder_or_list)
    if path.is_dir():
        return [Source(p.relative_to(path).as_posix(), p) for p in find_image_tree(path)], []
    if not path.is_file():
        raise ArgumentError(
            "folder_or_list", f": expected a folder of images or a text file of paths, got {path}"
        )
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (UnicodeDecodeError, OSError) as error:
        raise ArgumentError(
            "folder_or_list", f" {path}: not a readable text file of image paths ({error})"
        ) from None
    sources: list[Source] = []
    refused: list[tuple[str, str]] = []
    seen: set[str] = set()
    for line in lines:
        entry = line.strip()
        if not entry or entry.startswith("#"):
            continue
        if entry in seen:
            refused.append((entry, "listed twice (encoded once)"))
            continue
        seen.add(entry)
        sources.append(Source(entry, path.parent / entry))
    return sources, refused


class Prepared(NamedTuple):
    """One input read and fitted (in a DataLoader worker), or why it cannot be used."""

    position: int
    image: Tensor | None
    """[3, H, W], sides multiples of the patch, as compact as the file allows (uint8 in
    [0, 255], or float32 in [-1, 1]: see `read_image_compact`; `to_unit_range` makes it the
    model's input); None when skipped."""
    fit: str
    problem: str
    source_height: int
    source_width: int


class FittedImages(Dataset):
    """Sources -> `Prepared` images: read, optionally resized, fitted to the patch grid."""

    def __init__(self, sources: list[Source], patch: int, fit: str, resize: int | None) -> None:
        self.sources, self.patch, self.fit, self.resize = sources, patch, fit, resize

    def __len__(self) -> int:
        return len(self.sources)

    def __getitem__(self, position: int) -> Prepared:
        try:
            # uint8 for 8-bit files: a quarter of the bytes to hand over, no float conversion
            image = read_image_compact(self.sources[position].path).unsqueeze(0)
            source_height, source_width = (int(size) for size in image.shape[-2:])
            if self.resize is not None:
                image = resize_shorter_side(to_unit_range(image), self.resize)
            fitted = fit_image(image, self.patch, self.fit)
        except BadImage as error:
            return Prepared(position, None, "", str(error), 0, 0)
        image = fitted.image.squeeze(0).contiguous()  # [1, 3, H, W] -> [3, H, W]
        return Prepared(position, image, fitted.fit, "", source_height, source_width)


class PreparedChunk(NamedTuple):
    """Consecutive `Prepared` images as a DataLoader worker hands them over: the pixels of all
    of them in one tensor. The main process pays a fixed cost for every tensor it receives
    from a worker (a shared-memory file whose descriptor comes over a socket, then its
    mapping): about 1 ms, as much as decoding a 256² JPEG, and on the encoding process's time."""

    items: list[Prepared]
    """The images' facts; `image` None when the chunk is packed."""
    pixels: Tensor | None
    """The images' pixels, flattened and concatenated in order (uint8 when all of them are,
    else float32 in [-1, 1]); None when the chunk is not packed (no workers: `items` keep
    their images)."""
    sizes: list[tuple[int, int] | None]
    """(H, W) of each item's image in `pixels`, None for an item skipped."""

    def unpacked(self) -> list[Prepared]:
        """The `Prepared` images, each `image` a [3, H, W] view of `pixels`."""
        if self.pixels is None:
            return self.items
        views = iter(self.pixels.split([3 * h * w for h, w in filter(None, self.sizes)]))
        return [
            item if size is None else item._replace(image=next(views).view(3, *size))
            for item, size in zip(self.items, self.sizes, strict=True)
        ]


def pack_chunk(items: list[Prepared]) -> PreparedChunk:
    """A DataLoader `collate_fn`: `items` as one `PreparedChunk`, packed in a worker."""
    if get_worker_info() is None:
        return PreparedChunk(items, None, [])
    images = [item.image for item in items if item.image is not None]
    if any(image.is_floating_point() for image in images):  # a 16-bit or resized image
        images = [to_unit_range(image) for image in images]
    pixels = torch.cat([image.reshape(-1) for image in images]) if images else torch.empty(0)
    sizes = [
        None if i.image is None else (int(i.image.shape[-2]), int(i.image.shape[-1])) for i in items
    ]
    return PreparedChunk([item._replace(image=None) for item in items], pixels, sizes)


def model_input(images: list[Tensor]) -> Tensor:
    """`Prepared` images of one size -> [N, 3, H, W] float32 in [-1, 1], converted on the CPU
    as `read_image` converts (one conversion of the batch when all are uint8)."""
    if all(image.dtype == torch.uint8 for image in images):
        return to_unit_range(torch.stack(images))
    return torch.stack([to_unit_range(image) for image in images])


def owns(processes: Processes, shard: int) -> bool:
    """Whether shard `shard` is this process's to encode."""
    return shard % processes.world_size == processes.rank


@dataclass(frozen=True)
class Preprocessing:
    """How each image becomes the model's input, and how the inputs are sharded."""

    fit: str = "crop"
    """Sides not multiples of the patch: centre-cropped ("crop") or edge-padded ("pad")."""
    resize: int | None = None
    """Resize the shorter side to this many pixels (bicubic, antialiased) before fitting."""
    shard_size: int = 1000
    """Images per shard: the unit of resuming and of the split over processes."""

    def __post_init__(self) -> None:
        if self.fit not in FIT_MODES:
            raise ArgumentError("fit", f": expected one of {FIT_MODES}, got {self.fit!r}")
        if self.resize is not None and self.resize < 1:
            raise ArgumentError("resize", f": expected an integer >= 1, got {self.resize}")
        if self.shard_size < 1:
            raise ArgumentError("shard_size", f": expected an integer >= 1, got {self.shard_size}")


def dataset_settings(
    loaded: LoadedModel,
    sources: Sequence[Source],
    preprocessing: Preprocessing,
    model_id: str,
    model_revision: str | None,
) -> dict[str, Any]:
    """What the dataset's contents depend on: a re-run into the same folder must match it."""
    keys = "\n".join(source.key for source in sources).encode()
    settings = {
        "model": {
            "id": model_id,
            "revision": model_revision,
            "family": loaded.family.name,
            "config": loaded.model.config.to_dict(),
        },
        "dtype": dtype_name(loaded.dtype),
        "whitened": callable(getattr(loaded.model, "whiten", None)),
        "preprocessing": {
            "pixels": "RGB, float32 in [-1, 1]",
            "resize_shorter_side": preprocessing.resize,
            "resize_filter": "bicubic, antialiased" if preprocessing.resize else None,
            "fit": preprocessing.fit,
            "patch": loaded.patch,
        },
        "shard_size": preprocessing.shard_size,
        "inputs": {"count": len(sources), "keys_sha256": hashlib.sha256(keys).hexdigest()},
    }
    return json.loads(json.dumps(settings))  # as read back from the manifest (tuples -> lists)


def digest(settings: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()


def differences(before: Any, now: Any, where: str = "") -> list[str]:
    """'field: before -> now' for every leaf that differs between two JSON values."""
    if isinstance(before, dict) and isinstance(now, dict):
        found = []
        for key in sorted(set(before) | set(now), key=str):
            found += differences(before.get(key), now.get(key), f"{where}.{key}".lstrip("."))
        return found
    return [] if before == now else [f"{where}: {before!r} -> {now!r}"]


def check_previous_run(out: Path, settings: dict[str, Any]) -> bool:
    """Whether `out` holds an earlier run of the same settings (False: a new dataset); an
    ArgumentError naming what differs when it holds another."""
    path = out / MANIFEST
    if not path.exists():
        if any((out / DATA_FOLDER).glob("shard-*.parquet")):
            raise ArgumentError(
                "out", f" {out}: holds shards but no {MANIFEST}; use an empty folder"
            )
        return False
    try:
        manifest = read_manifest(out)
    except BadDataset as error:
        raise ArgumentError("out", f": {error}; use another folder") from None
    changed = differences({key: manifest.get(key) for key in settings}, settings)
    if changed:
        shown = "; ".join(changed[:5]) + (f"; and {len(changed) - 5} more" if changed[5:] else "")
        raise ArgumentError(
            "out",
            f" {out} holds a dataset encoded with other settings ({shown}); encode again with "
            "the same model and settings to finish it, or choose another folder",
        )
    return True


@dataclass
class ShardWork:
    """One shard being encoded: its inputs, latents so far, size buckets and skips."""

    index: int
    sources: list[Source]
    run: Run
    prepared: dict[int, Prepared] = field(default_factory=dict)
    latents: dict[int, Tensor] = field(default_factory=dict)
    buckets: dict[tuple[int, int], list[Prepared]] = field(default_factory=dict)

    def copy_out_of(self, chunk: PreparedChunk) -> None:
        """Copy the images still waiting in a bucket out of `chunk`'s pixels, so that a chunk
        is freed once it is handled: a bucket of a rare size can wait a whole shard."""
        if chunk.pixels is None:
            return
        pixels = chunk.pixels.untyped_storage().data_ptr()
        for bucket in self.buckets.values():
            for at, item in enumerate(bucket):
                if item.image is not None and item.image.untyped_storage().data_ptr() == pixels:
                    bucket[at] = item._replace(image=item.image.clone())


@dataclass
class Encoder:
    """Encodes this rank's pending shards from one DataLoader stream; writes each when done."""

    out: Path
    shard_count: int
    loaded: LoadedModel
    batch_size: int
    settings_digest: str
    bar: Any
    encoded: int = 0

    def add(self, work: ShardWork, item: Prepared) -> None:
        """File an image in its size bucket; encode the bucket when it holds a batch."""
        key = work.sources[item.position].key
        if item.image is None:
            work.run.skip(key, item.problem)
            self.bar.update(1)
            return
        # Only the facts a row needs stay with the shard; the pixels live in the bucket until
        # encoded, so a shard never holds all its images in memory.
        work.prepared[item.position] = item._replace(image=None)
        size = (int(item.image.shape[-2]), int(item.image.shape[-1]))
        bucket = work.buckets.setdefault(size, [])
        bucket.append(item)
        if len(bucket) == self.batch_size:
            self.encode(work, work.buckets.pop(size))

    def encode(self, work: ShardWork, batch: list[Prepared]) -> None:
        images = model_input([item.image for item in batch]).to(self.loaded.device)
        keys = [work.sources[item.position].key for item in batch]
        latents = run_model(self.loaded.model, images, self.loaded.model.encode, keys)
        self.bar.update(len(batch))
        for item, item_latents in zip(batch, latents.cpu(), strict=True):
            work.latents[item.position] = item_latents
        self.encoded += len(batch)

    def finish(self, work: ShardWork) -> dict[str, Any]:
        """Encode the partial buckets, write the shard; its record."""
        for size in list(work.buckets):
            self.encode(work, work.buckets.pop(size))
        positions = sorted(work.latents)
        rows = [self.row(work, position) for position in positions]
        record = {
            "settings_digest": self.settings_digest,
            "shard": work.index,
            "inputs": len(work.sources),
            "rows": len(rows),
            "skipped": [{"key": key, "reason": reason} for key, reason in work.run.skipped],
            "statistics": (
                statistics.to_json()
                if (statistics := LatentStatistics.of([work.latents[p] for p in positions]))
                else None
            ),
        }
        write_shard(shard_path(self.out, work.index, self.shard_count), rows, record)
        return record

    def row(self, work: ShardWork, position: int) -> dict[str, Any]:
        item, latents = work.prepared[position], work.latents[position]
        return {
            "key": work.sources[position].key,
            "latents": latents_to_bytes(latents),
            "shape": list(latents.shape),
            "dtype": dtype_name(latents.dtype),
            "height": int(latents.shape[-2]) * self.loaded.patch,  # the fitted image's pixels
            "width": int(latents.shape[-1]) * self.loaded.patch,
            "fit": item.fit,
            "source_height": item.source_height,
            "source_width": item.source_width,
        }


def finished_record(path: Path, settings_digest: str) -> dict[str, Any] | None:
    """The record of a finished shard (None when missing), removing a killed run's temporary
    file of it; a BadDataset error when the shard comes from other settings."""
    for stale in path.parent.glob(f".{path.name}.*.tmp"):
        stale.unlink(missing_ok=True)
    if not path.exists():
        return None
    try:
        record = read_shard_record(path)
    except BadDataset as error:
        raise BadDataset(f"{error}; delete it to encode that shard again") from None
    if record["settings_digest"] != settings_digest:
        raise BadDataset(f"{path} was encoded with other settings than {MANIFEST} records")
    return record


WORKER_NICENESS = 10
"""How much lower the decoding workers' CPU priority is than the encoding process's when the
model runs on the CPU (Linux `nice`): there the workers compete with the model's own threads,
and a worker that preempts one thread of a parallel region stalls all of them until it is
done; at a lower priority they decode while a core would idle. Not on an accelerator, where
the CPU is the workers'."""


def background_worker(worker_id: int = 0) -> None:
    """A DataLoader `worker_init_fn` for CPU encoding: `ignore_interrupts`, at a lower
    priority (`WORKER_NICENESS`; where the OS has no `nice`, as it was)."""
    ignore_interrupts(worker_id)
    if hasattr(os, "nice"):
        os.nice(WORKER_NICENESS)


def encode_shards(
    out: Path,
    sources: Sequence[Source],
    loaded: LoadedModel,
    preprocessing: Preprocessing,
    processes: Processes,
    console: Console,
    *,
    batch_size: int,
    num_workers: int,
    settings_digest: str,
    stop: StopRequest,
) -> tuple[dict[int, dict[str, Any]], int, float]:
    """Encode this rank's missing shards: the records of all of its shards, by index; how many
    images it encoded, in how many seconds. `stop.requested` (Ctrl-C) raises `Interrupted`
    before the next image, so the shard being encoded is not written."""
    size = preprocessing.shard_size
    count = -(-len(sources) // size)
    records: dict[int, dict[str, Any]] = {}
    pending: list[ShardWork] = []
    for index in range(count):
        if not owns(processes, index):
            continue
        record = finished_record(shard_path(out, index, count), settings_digest)
        if record is not None:
            records[index] = record
        else:
            shard_sources = list(sources[index * size : (index + 1) * size])
            pending.append(ShardWork(index, shard_sources, Run(console)))
    if records:
        console.note(f"resuming: {len(records)} shard(s) already done, {len(pending)} to encode")
    # (shard, position in the shard, source) of every input still to encode, shard after shard
    stream = [(work, at, source) for work in pending for at, source in enumerate(work.sources)]
    images = FittedImages(
        [source for *_, source in stream], loaded.patch, preprocessing.fit, preprocessing.resize
    )
    # A worker hands over a batch's worth of images at a time, in one tensor (PreparedChunk).
    loader = DataLoader(
        images,
        batch_size=batch_size,
        collate_fn=pack_chunk,
        num_workers=num_workers,
        prefetch_factor=2 if num_workers else None,
        pin_memory=loaded.device.type == "cuda",
        worker_init_fn=background_worker if loaded.device.type == "cpu" else ignore_interrupts,
    )
    start = time.perf_counter()
    with console.progress(len(stream), "encode-dataset") as bar:
        encoder = Encoder(out, count, loaded, batch_size, settings_digest, bar)
        current: ShardWork | None = None
        for chunk in loader:  # in stream order, so one shard after the other
            for item in chunk.unpacked():
                if stop.requested:
                    mine = sum(1 for index in range(count) if owns(processes, index))
                    raise Interrupted(
                        f"interrupted: {len(records)} of {mine} shards are "
                        "written and kept, the one being encoded is not; run again with the "
                        "same arguments to finish"
                    )
                work, position, _ = stream[item.position]
                if work is not current:
                    if current is not None:
                        records[current.index] = encoder.finish(current)
                    current = work
                encoder.add(work, item._replace(position=position))
            if current is not None:
                current.copy_out_of(chunk)
        if current is not None:
            records[current.index] = encoder.finish(current)
    seconds = time.perf_counter() - start
    if encoder.encoded:
        console.note(
            f"rank {processes.rank}: encoded {encoder.encoded} images in {seconds:.2f} s "
            f"({encoder.encoded / seconds:.2f} images/s)"
        )
    return records, encoder.encoded, seconds


def manifest_of(
    settings: dict[str, Any],
    records: dict[int, dict[str, Any]],
    refused: list[tuple[str, str]],
    complete: bool,
) -> dict[str, Any]:
    """The manifest: settings, shards, counts, skipped inputs, merged latent statistics."""
    count = len(records)
    ordered = [records[index] for index in sorted(records)]
    statistics = merge_statistics([LatentStatistics.from_json(r["statistics"]) for r in ordered])
    skipped = [{"key": key, "reason": reason} for key, reason in refused]
    skipped += [entry for record in ordered for entry in record["skipped"]]
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "diffae_version": __version__,
        "complete": complete,
        **settings,
        "counts": {
            "inputs": settings["inputs"]["count"] + len(refused),
            "rows": sum(record["rows"] for record in ordered),
            "skipped": len(skipped),
            "shards": count,
        },
        "shards": [
            {"file": shard_path(Path(), r["shard"], count).as_posix(), "rows": r["rows"]}
            for r in ordered
        ],
        "skipped": skipped,
        "latent_count": statistics.count if statistics else 0,
        "latent_mean": list(statistics.mean) if statistics else None,
        "latent_var": list(statistics.variance) if statistics else None,
    }


def write_manifest(out: Path, manifest: dict[str, Any]) -> None:
    atomic_write_text(out / MANIFEST, json.dumps(manifest, indent=2) + "\n")


@dataclass(frozen=True)
class EncodedDataset:
    """What `encode_dataset` wrote: the dataset folder and its manifest as written."""

    out: Path
    manifest: dict[str, Any]
    """Settings, counts (inputs, rows, skipped, shards), skipped inputs with their reasons,
    and the merged latent statistics (see `diffae.latent_dataset`)."""
    encoded: int
    """Images this process encoded in this call (a resume encodes only what is missing)."""
    encode_seconds: float
    """How long this process's encode phase took (reading, fitting, encoding, writing)."""

    @property
    def skipped(self) -> list[tuple[str, str]]:
        """(input key, reason) of every input without a row."""
        return [(entry["key"], entry["reason"]) for entry in self.manifest["skipped"]]


def encode_dataset(
    sources: Sequence[Source],
    out: Path,
    model: LoadedModel,
    *,
    model_id: str,
    model_revision: str | None = None,
    batch_size: int = 1,
    num_workers: int = 0,
    preprocessing: Preprocessing | None = None,
    refused: Sequence[tuple[str, str]] = (),
    console: Console | None = None,
) -> EncodedDataset:
    """Images -> `out/manifest.json` and Parquet shards of latents (see the module docstring).

    sources: the images in dataset order (`list_sources`); model: loaded on this process's
    device (under torchrun, each rank calls this with the same arguments).
    model_id, model_revision: what the manifest records as the model (a repo id or a folder,
        and the Hub commit when known); a re-run must name the same.
    batch_size: images of one size per `encode` call; num_workers: DataLoader processes
        reading the images (0: this one).
    refused: (entry, reason) of inputs the caller could not use, listed as skipped.
    Problems with the arguments raise an ArgumentError naming the argument (`out`, ...): `out`
    (created if missing, its parent must exist) not writable, held by another run (its lock
    file, see `diffae.faults`), or its disk full. A shard that cannot be read raises
    `BadDataset`; Ctrl-C, `Interrupted` at the next batch boundary (in one process).
    """
    processes = Processes.from_environment()
    console = console or Console(quiet=True)
    if not processes.main:
        console = Console(quiet=True)  # problems still go to stderr; one progress bar, rank 0's
    preprocessing = preprocessing or Preprocessing()
    if num_workers < 0:
        raise ArgumentError("num_workers", f": expected an integer >= 0, got {num_workers}")
    if batch_size < 1:
        raise ArgumentError("batch_size", f": expected an integer >= 1, got {batch_size}")
    if not sources:
        raise ArgumentError("sources", ": no images to encode")
    out = output_folder(out)
    settings = dataset_settings(model, sources, preprocessing, model_id, model_revision)
    # One run at a time in `out` (rank 0 holds the lock for all); Ctrl-C stops at a batch
    # boundary in one process (under torchrun, torchrun stops the processes).
    with (
        FolderLock(out) if processes.main else nullcontext(),
        stop_requests(console, enabled=processes.world_size == 1) as stop,
    ):
        try:
            manifest, encoded, seconds = encode_into(
                out, sources, model, settings, preprocessing, processes, console, stop,
                batch_size=batch_size, num_workers=num_workers, refused=list(refused),
            )  # fmt: skip
        except Exception as error:  # pyarrow's, the OS's
            if not disk_full(error):
                raise
            written = len(list((out / DATA_FOLDER).glob("shard-*.parquet")))
            raise disk_full_error(out, f"{written} finished shards kept") from None
    return EncodedDataset(out, manifest, encoded, seconds)


def encode_into(
    out: Path,
    sources: Sequence[Source],
    model: LoadedModel,
    settings: dict[str, Any],
    preprocessing: Preprocessing,
    processes: Processes,
    console: Console,
    stop: StopRequest,
    *,
    batch_size: int,
    num_workers: int,
    refused: list[tuple[str, str]],
) -> tuple[dict[str, Any], int, float]:
    """`encode_dataset` in a folder this run holds: (manifest, images encoded, seconds)."""
    settings_digest = digest(settings)
    resumed = check_previous_run(out, settings)
    if processes.main and not resumed:
        write_manifest(out, manifest_of(settings, {}, refused, complete=False))
    with process_group(processes, model.device, COLLECTIVE_TIMEOUT):
        records, encoded, seconds = encode_shards(
            out,
            sources,
            model,
            preprocessing,
            processes,
            console,
            batch_size=batch_size,
            num_workers=num_workers,
            settings_digest=settings_digest,
            stop=stop,
        )
        records = {
            index: record
            for part in processes.all_gather(records)  # the one exchange between ranks
            for index, record in part.items()
        }
        assert sorted(records) == list(range(-(-len(sources) // preprocessing.shard_size)))
        manifest = manifest_of(settings, records, refused, complete=True)
        if processes.main:
            write_manifest(out, manifest)
        processes.barrier()  # nobody exits (and so ends the torchrun job) before the manifest
    return manifest, encoded, seconds
