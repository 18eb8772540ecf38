"""The `encode-dataset` command: a folder tree or a list of images -> a Parquet latent dataset
(`diffae.dataset_encoding`); under torchrun, one share of the shards per process."""

from __future__ import annotations

import argparse
from contextlib import ExitStack
from pathlib import Path

from ..console import CliError, Console
from ..dataset_encoding import Preprocessing, encode_dataset, list_sources
from ..distributed import Processes
from ..faults import FolderLock
from ..latent_dataset import BadDataset
from ..models import (
    ModelChoice,
    choose_device,
    choose_model,
    load_model,
    resolve_model,
)
from ..runs import Run, output_folder
from .arguments import require_encoder


def model_revision(choice: ModelChoice, model: str | None) -> str | None:
    """The Hub commit of the model files (a `snapshots/<commit>` folder), else None."""
    folder = choice.location if isinstance(choice.location, Path) else resolve_model(str(model))
    return folder.name if folder.parent.name == "snapshots" else None


def encode_dataset_command(args: argparse.Namespace, console: Console) -> int:
    """Images -> `DIR/manifest.json` and Parquet shards of latents, with statistics."""
    processes = Processes.from_environment()
    if not processes.main:
        console = Console(quiet=True)  # problems still go to stderr; one progress bar, rank 0's
    if args.num_workers < 0:
        raise CliError(f"--num-workers: expected an integer >= 0, got {args.num_workers}")
    out = output_folder(args.out)
    sources, refused = list_sources(Path(args.input))
    if not sources:
        raise CliError(f"INPUT {args.input}: no PNG/JPEG/WebP images found")
    device = processes.device_for(choose_device(args.device))
    choice = choose_model(args.model, args.family)
    require_encoder(choice.family, "encode-dataset")
    # The folder is checked writable and claimed before the model loads (rank 0 for all): a
    # second run into it is refused now, not after its model loaded.
    with ExitStack() as claimed:
        if processes.main:
            claimed.enter_context(FolderLock(out))
        loaded = load_model(choice, device, console, dtype=args.dtype, name=args.model)
        # A folder (the embedded model's too) is recorded by its absolute path, a repo id as is.
        location = choice.location
        model_id = str(location.resolve()) if isinstance(location, Path) else args.model
        try:
            dataset = encode_dataset(
                sources,
                out,
                loaded,
                model_id=model_id,
                model_revision=model_revision(choice, args.model),
                batch_size=args.batch_size,
                num_workers=args.num_workers,
                preprocessing=Preprocessing(args.fit, args.resize, args.shard_size),
                refused=refused,
                console=console,
            )
        except BadDataset as error:
            raise CliError(str(error)) from None
    counts = dataset.manifest["counts"]
    console.note(
        f"wrote {counts['rows']} rows in {counts['shards']} shards to {out}/ "
        f"(latents {dataset.manifest['dtype']}, "
        f"{len(dataset.manifest['latent_mean'] or [])} channels)"
    )
    run = Run(console, inputs=counts["inputs"], skipped=dataset.skipped)
    if not processes.main:
        return 1 if run.skipped else 0
    return run.exit_status()
