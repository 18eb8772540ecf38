"""The `encode-dataset` command: a folder tree or a list of images -> a Parquet latent dataset.

The inputs, in a fixed order (folder: sorted relative paths; list: its order), are cut into
shards of --shard-size images; shard k goes to rank k mod WORLD_SIZE, so under `torchrun` each
process encodes a disjoint, deterministic set. A shard is written under a temporary name and
renamed when complete, and carries its own record (statistics, skipped inputs) in its footer: a
re-run of the same command encodes only the shards missing. The ranks exchange nothing but their
shard records at the end (one `all_gather_object`), after which rank 0 writes the manifest with
the statistics merged in shard order, and a final barrier. The layout: `diffae.latent_dataset`.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any, NamedTuple

import torch
import torch.distributed as dist
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from diffae_core.io import atomic_write_text

from .. import __version__
from ..console import CliError, Console
from ..images import BadImage, find_image_tree, fit_image, read_image, resize_shorter_side
from ..latent_dataset import (
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
from ..models import (
    LoadedModel,
    ModelChoice,
    choose_device,
    choose_dtype,
    choose_model,
    load_model,
    require_encoder,
    resolve_model,
)
from ..runs import Run, output_folder, run_model

COLLECTIVE_TIMEOUT = timedelta(days=2)
"""How long a rank waits at the final exchange for the slowest: after a resume one rank may
have many shards left and another none."""


@dataclass(frozen=True)
class Source:
    """One input image: its row key and its file."""

    key: str
    path: Path


def list_sources(argument: str) -> tuple[list[Source], list[tuple[str, str]]]:
    """(images, (entry, reason) of list entries refused) of a folder tree or a list file.

    A list file holds one path a line (blank lines and lines starting with # are ignored);
    relative paths are relative to the list file's folder, and the key is the entry as written.
    """
    path = Path(argument)
    if path.is_dir():
        return [Source(p.relative_to(path).as_posix(), p) for p in find_image_tree(path)], []
    if not path.is_file():
        raise CliError(f"INPUT: expected a folder of images or a text file of paths, got {path}")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (UnicodeDecodeError, OSError) as error:
        raise CliError(f"INPUT {path}: not a readable text file of image paths ({error})") from None
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
    """[3, H, W] float32 in [-1, 1], sides multiples of the patch; None when skipped."""
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
            image, _ = read_image(self.sources[position].path)
            source_height, source_width = (int(size) for size in image.shape[-2:])
            if self.resize is not None:
                image = resize_shorter_side(image, self.resize)
            fitted = fit_image(image, self.patch, self.fit)
        except BadImage as error:
            return Prepared(position, None, "", str(error), 0, 0)
        image = fitted.image.squeeze(0).contiguous()  # [1, 3, H, W] -> [3, H, W]
        return Prepared(position, image, fitted.fit, "", source_height, source_width)


@dataclass(frozen=True)
class Ranks:
    """This process's place under torchrun (RANK, WORLD_SIZE, LOCAL_RANK), else 0 of 1."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @classmethod
    def from_environment(cls) -> Ranks:
        values = {}
        for name, default in (("RANK", 0), ("WORLD_SIZE", 1), ("LOCAL_RANK", 0)):
            text = os.environ.get(name, str(default))
            if not text.isdigit():
                raise CliError(f"environment variable {name}: expected an integer, got {text!r}")
            values[name] = int(text)
        if not 0 <= values["RANK"] < max(values["WORLD_SIZE"], 1):
            raise CliError(f"RANK={values['RANK']} is not below WORLD_SIZE={values['WORLD_SIZE']}")
        return cls(values["RANK"], values["WORLD_SIZE"], values["LOCAL_RANK"])

    def owns(self, shard: int) -> bool:
        return shard % self.world_size == self.rank


def rank_device(name: str | None, ranks: Ranks) -> torch.device:
    """--device (default cuda when available); under torchrun an unindexed cuda is the rank's
    own GPU, cuda:LOCAL_RANK."""
    device = choose_device(name)
    if device.type == "cuda" and device.index is None:
        device = choose_device(f"cuda:{ranks.local_rank}" if ranks.world_size > 1 else "cuda:0")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    return device


@contextmanager
def process_group(ranks: Ranks, device: torch.device) -> Iterator[None]:
    """torch.distributed (nccl on CUDA, gloo elsewhere) when WORLD_SIZE > 1, else nothing."""
    if ranks.world_size == 1:
        yield
        return
    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(backend, timeout=COLLECTIVE_TIMEOUT)
    try:
        yield
    finally:
        dist.destroy_process_group()


def model_revision(choice: ModelChoice, model: str) -> str | None:
    """The Hub commit of the model files (a `snapshots/<commit>` folder), else None."""
    folder = choice.location if isinstance(choice.location, Path) else resolve_model(model)
    return folder.name if folder.parent.name == "snapshots" else None


def dataset_settings(
    args: argparse.Namespace, loaded: LoadedModel, choice: ModelChoice, sources: list[Source]
) -> dict[str, Any]:
    """What the dataset's contents depend on: a re-run into the same folder must match it."""
    model_id = args.model
    if isinstance(choice.location, Path):
        model_id = str(choice.location.resolve())
    keys = "\n".join(source.key for source in sources).encode()
    settings = {
        "model": {
            "id": model_id,
            "revision": model_revision(choice, args.model),
            "family": loaded.family.name,
            "config": loaded.model.config.to_dict(),
        },
        "dtype": dtype_name(choose_dtype(args.dtype, loaded.device)),
        "whitened": callable(getattr(loaded.model, "whiten", None)),
        "preprocessing": {
            "pixels": "RGB, float32 in [-1, 1]",
            "resize_shorter_side": args.resize,
            "resize_filter": "bicubic, antialiased" if args.resize else None,
            "fit": args.fit,
            "patch": loaded.patch,
        },
        "shard_size": args.shard_size,
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
    """Whether `out` holds an earlier run of the same settings (False: a new dataset); a
    CliError naming what differs when it holds another."""
    path = out / MANIFEST
    if not path.exists():
        if any((out / DATA_FOLDER).glob("shard-*.parquet")):
            raise CliError(f"--out {out}: holds shards but no {MANIFEST}; use an empty folder")
        return False
    try:
        manifest = read_manifest(out)
    except BadDataset as error:
        raise CliError(f"--out: {error}; use another folder") from None
    changed = differences({key: manifest.get(key) for key in settings}, settings)
    if changed:
        shown = "; ".join(changed[:5]) + (f"; and {len(changed) - 5} more" if changed[5:] else "")
        raise CliError(
            f"--out {out} holds a dataset encoded with other settings ({shown}); "
            "re-run with the same model and options to finish it, or choose another --out"
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
        images = torch.stack([item.image for item in batch]).to(self.loaded.device)
        keys = [work.sources[item.position].key for item in batch]
        latents = run_model(work.run, keys, lambda: self.loaded.model.encode(images))
        self.bar.update(len(batch))
        if latents is None:
            return
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
    file of it; a CliError when the shard comes from other settings."""
    for stale in path.parent.glob(f".{path.name}.*.tmp"):
        stale.unlink(missing_ok=True)
    if not path.exists():
        return None
    try:
        record = read_shard_record(path)
    except BadDataset as error:
        raise CliError(f"{error}; delete it to encode that shard again") from None
    if record["settings_digest"] != settings_digest:
        raise CliError(f"{path} was encoded with other settings than {MANIFEST} records")
    return record


def encode_shards(
    args: argparse.Namespace,
    out: Path,
    sources: list[Source],
    loaded: LoadedModel,
    settings_digest: str,
    ranks: Ranks,
    console: Console,
) -> dict[int, dict[str, Any]]:
    """Encode this rank's missing shards; the records of all of its shards, by index."""
    size = args.shard_size
    count = -(-len(sources) // size)
    records: dict[int, dict[str, Any]] = {}
    pending: list[ShardWork] = []
    for index in filter(ranks.owns, range(count)):
        record = finished_record(shard_path(out, index, count), settings_digest)
        if record is not None:
            records[index] = record
        else:
            shard_sources = sources[index * size : (index + 1) * size]
            pending.append(ShardWork(index, shard_sources, Run(console)))
    if records:
        console.note(f"resuming: {len(records)} shard(s) already done, {len(pending)} to encode")
    # (shard, position in the shard, source) of every input still to encode, shard after shard
    stream = [(work, at, source) for work in pending for at, source in enumerate(work.sources)]
    images = FittedImages([source for *_, source in stream], loaded.patch, args.fit, args.resize)
    loader = DataLoader(
        images,
        batch_size=None,
        num_workers=args.num_workers,
        prefetch_factor=max(2, args.batch_size) if args.num_workers else None,
        pin_memory=loaded.device.type == "cuda",
    )
    start = time.perf_counter()
    with console.progress(len(stream), "encode-dataset") as bar:
        encoder = Encoder(out, count, loaded, args.batch_size, settings_digest, bar)
        current: ShardWork | None = None
        for item in loader:  # in stream order, so one shard after the other
            work, position, _ = stream[item.position]
            if work is not current:
                if current is not None:
                    records[current.index] = encoder.finish(current)
                current = work
            encoder.add(work, item._replace(position=position))
        if current is not None:
            records[current.index] = encoder.finish(current)
    seconds = time.perf_counter() - start
    if encoder.encoded:
        console.note(
            f"rank {ranks.rank}: encoded {encoder.encoded} images in {seconds:.2f} s "
            f"({encoder.encoded / seconds:.2f} images/s)"
        )
    return records


def gather_records(records: dict[int, dict[str, Any]], ranks: Ranks) -> dict[int, dict[str, Any]]:
    """Every rank's shard records (the one exchange between ranks)."""
    if ranks.world_size == 1:
        return records
    gathered: list[Any] = [None] * ranks.world_size
    dist.all_gather_object(gathered, records)
    return {index: record for part in gathered for index, record in part.items()}


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


def encode_dataset(args: argparse.Namespace, console: Console) -> int:
    """Images -> `DIR/manifest.json` and Parquet shards of latents (see the module docstring)."""
    ranks = Ranks.from_environment()
    if ranks.rank != 0:
        console = Console(quiet=True)  # problems still go to stderr; one progress bar, rank 0's
    if args.num_workers < 0:
        raise CliError(f"--num-workers: expected an integer >= 0, got {args.num_workers}")
    out = output_folder(args.out)
    sources, refused = list_sources(args.input)
    if not sources:
        raise CliError(f"INPUT {args.input}: no PNG/JPEG/WebP images found")
    device = rank_device(args.device, ranks)
    choice = choose_model(args.model, args.family)
    require_encoder(choice.family, "encode-dataset")
    loaded = load_model(choice, device, console, dtype=args.dtype, name=args.model)
    settings = dataset_settings(args, loaded, choice, sources)
    settings_digest = digest(settings)
    resumed = check_previous_run(out, settings)
    if ranks.rank == 0 and not resumed:
        write_manifest(out, manifest_of(settings, {}, refused, complete=False))
    with process_group(ranks, device):
        records = encode_shards(args, out, sources, loaded, settings_digest, ranks, console)
        records = gather_records(records, ranks)
        assert sorted(records) == list(range(-(-len(sources) // args.shard_size)))
        manifest = manifest_of(settings, records, refused, complete=True)
        if ranks.rank == 0:
            write_manifest(out, manifest)
        if ranks.world_size > 1:
            dist.barrier()  # nobody exits (and so ends the torchrun job) before the manifest
    counts = manifest["counts"]
    console.note(
        f"wrote {counts['rows']} rows in {counts['shards']} shards to {out}/ "
        f"(latents {settings['dtype']}, {len(manifest['latent_mean'] or [])} channels)"
    )
    run = Run(console, inputs=counts["inputs"])
    run.skipped = [(entry["key"], entry["reason"]) for entry in manifest["skipped"]]
    if ranks.rank != 0:
        return 1 if run.skipped else 0
    return run.exit_status()
