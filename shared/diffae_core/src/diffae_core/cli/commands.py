"""The `reconstruct`, `encode` and `decode` commands: loops over images in batches of equal size.

A bad input is reported by name and skipped; the command then ends with exit status 1.
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import torch
from torch import Tensor

from .console import CliError, Console
from .images import BadImage, Fitted, find_images, fit_image, read_image, unique_names, write_png
from .latents import (
    BadLatentFile,
    LatentItem,
    find_latent_files,
    read_description,
    read_latent_file,
)
from .latents import write_latent_file as write_latents
from .metrics import ImageResult, format_table, psnr_8bit, summarize, write_metrics
from .models import LoadedModel, inference_config, load_model, require_encoder
from .visuals import comparison_grid, latent_pca

ItemT = TypeVar("ItemT")
ResultT = TypeVar("ResultT")


@dataclass
class Run:
    """What one command run skipped, for the report and the exit status."""

    console: Console
    inputs: int = 0
    skipped: list[str] = field(default_factory=list)

    def skip(self, name: str, reason: str) -> None:
        self.skipped.append(name)
        self.console.problem(f"skipped {name}: {reason}")

    def exit_status(self) -> int:
        """0 when every input was used, else 1 after saying how many were skipped."""
        if not self.skipped:
            return 0
        self.console.problem(f"{len(self.skipped)} of {self.inputs} inputs skipped")
        return 1


@dataclass(frozen=True)
class ImageItem:
    """An image file read and fitted to the patch grid; `name` is its output stem."""

    name: str
    path: Path
    fitted: Fitted


def list_images(arguments: list[str], run: Run) -> list[tuple[Path, str]]:
    """(file, output stem) of every image named or in a folder named; other arguments skipped."""
    paths, problems = find_images(arguments)
    for argument, reason in problems:
        run.skip(argument, reason)
    run.inputs = len(paths) + len(problems)
    return list(zip(paths, unique_names([path.stem for path in paths]), strict=True))


def fitted_images(
    named: list[tuple[Path, str]], patch: int, fit: str, run: Run, bar: Any
) -> Iterator[ImageItem]:
    """Read and fit each image in turn, saying what was done; bad files are skipped."""
    for path, name in named:
        try:
            image, conversion = read_image(path)
            fitted = fit_image(image, patch, fit)
        except BadImage as error:
            run.skip(str(path), str(error))
            bar.update(1)
            continue
        notes = [note for note in (conversion, fitted.describe()) if note]
        if notes:
            run.console.note(f"{path}: {'; '.join(notes)}")
        yield ImageItem(name, path, fitted)


def refuse_overwriting(inputs: Iterable[Path], outputs: Iterable[Path]) -> None:
    """A CliError, before any work, when an output would replace one of the input files."""
    clashes = sorted({path.resolve() for path in inputs} & {path.resolve() for path in outputs})
    if clashes:
        raise CliError(f"--out: would overwrite the input file {clashes[0]}")


def batched(
    items: Iterable[ItemT], batch_size: int, size: Callable[[ItemT], tuple[int, ...]]
) -> Iterator[list[ItemT]]:
    """Consecutive items of equal `size`, at most `batch_size` at a time."""
    batch: list[ItemT] = []
    for item in items:
        if batch and (len(batch) == batch_size or size(item) != size(batch[0])):
            yield batch
            batch = []
        batch.append(item)
    if batch:
        yield batch


def run_model(run: Run, names: list[str], step: Callable[[], ResultT]) -> ResultT | None:
    """`step()` without autograd; a model error skips the batch's inputs instead of aborting."""
    try:
        with torch.inference_mode():
            return step()
    except NotImplementedError as error:
        raise CliError(f"the model cannot do this: {error or 'not implemented'}") from None
    except (ValueError, RuntimeError) as error:
        for name in names:
            run.skip(name, f"the model failed: {error}")
        return None


def settings_of(loaded: LoadedModel, args: argparse.Namespace, decoding: Any) -> dict[str, Any]:
    """What a run used, for metrics.json."""
    parameter = next(loaded.model.parameters())
    return {
        "model": loaded.source,
        "family": loaded.family.name,
        "device": str(loaded.device),
        "dtype": str(parameter.dtype).removeprefix("torch."),
        "fit": getattr(args, "fit", None),
        "batch_size": args.batch_size,
        "inference_config": dataclasses.asdict(decoding)
        if dataclasses.is_dataclass(decoding)
        else repr(decoding),
    }


def reconstruct(args: argparse.Namespace, console: Console) -> int:
    """Images -> encode -> decode -> PNGs, a PSNR table, and with --grid comparison images."""
    run = Run(console)
    loaded = load_model(args, console)
    require_encoder(loaded, "reconstruct")
    decoding = inference_config(loaded.family, args)
    out = Path(args.out)
    named = list_images(args.images, run)
    planned = [out / f"{name}.png" for _, name in named]
    refuse_overwriting([path for path, _ in named], planned)
    rows: list[ImageResult] = []
    with console.progress(len(named), "reconstruct") as bar:
        for batch in batched(
            fitted_images(named, loaded.patch, args.fit, run, bar),
            args.batch_size,
            lambda item: item.fitted.image.shape,
        ):
            images = torch.cat([item.fitted.image for item in batch]).to(loaded.device)
            height, width = int(images.shape[-2]), int(images.shape[-1])

            def step(images: Tensor = images, height: int = height, width: int = width):
                latents = loaded.model.encode(images)
                decoded = loaded.model.decode(latents, height, width, inference_config=decoding)
                return latents.float().cpu(), decoded.float().cpu()

            result = run_model(run, [str(item.path) for item in batch], step)
            if result is not None:
                for item, latents, decoded in zip(batch, *result, strict=True):
                    rows.append(write_reconstruction(out, item, latents, decoded, args.grid))
            bar.update(len(batch))
    if rows:
        summary = summarize([row.psnr_db for row in rows])
        console.note(format_table(rows, summary))
        paths = write_metrics(out, rows, summary, settings_of(loaded, args, decoding))
        console.note(f"wrote {len(rows)} reconstructions to {out}/, table: {paths[0]}, {paths[1]}")
    return run.exit_status()


def write_reconstruction(
    out: Path, item: ImageItem, latents: Tensor, decoded: Tensor, grid: bool
) -> ImageResult:
    """Write one reconstruction (and its grid), cropped back to the source's pixels; its row."""
    original = item.fitted.content(item.fitted.image[0])
    reconstruction = item.fitted.content(decoded)
    write_png(out / f"{item.name}.png", reconstruction)
    if grid:
        height, width = item.fitted.image.shape[-2:]
        pca = item.fitted.content(latent_pca(latents, int(height), int(width)))
        write_png(
            out / "grids" / f"{item.name}.png", comparison_grid(original, reconstruction, pca)
        )
    return ImageResult(
        image=str(item.path),
        output=f"{item.name}.png",
        width=int(original.shape[-1]),
        height=int(original.shape[-2]),
        fit=item.fitted.fit,
        psnr_db=psnr_8bit(original, reconstruction),
    )


def encode(args: argparse.Namespace, console: Console) -> int:
    """Images -> latents (as `model.encode` returns them) in safetensors files."""
    run = Run(console)
    loaded = load_model(args, console)
    require_encoder(loaded, "encode")
    out = Path(args.out)
    one_file = out.suffix == ".safetensors"
    header = {
        "family": loaded.family.name,
        "model": loaded.source,
        "whitened": callable(getattr(loaded.model, "whiten", None)),
        "patch": loaded.patch,
    }
    tensors: dict[str, Tensor] = {}
    descriptions: list[dict[str, Any]] = []
    shapes: set[str] = set()
    named = list_images(args.images, run)
    planned = [out] if one_file else [out / f"{name}.safetensors" for _, name in named]
    refuse_overwriting([path for path, _ in named], planned)
    with console.progress(len(named), "encode") as bar:
        for batch in batched(
            fitted_images(named, loaded.patch, args.fit, run, bar),
            args.batch_size,
            lambda item: item.fitted.image.shape,
        ):
            images = torch.cat([item.fitted.image for item in batch]).to(loaded.device)
            names = [str(item.path) for item in batch]
            latents = run_model(run, names, lambda images=images: loaded.model.encode(images))
            bar.update(len(batch))
            if latents is None:
                continue
            for item, item_latents in zip(batch, latents.float().cpu().split(1), strict=True):
                descriptions.append(describe(item))
                if one_file:
                    tensors[item.name] = item_latents
                else:
                    path = out / f"{item.name}.safetensors"
                    write_latents(path, {item.name: item_latents}, descriptions[-1:], header)
                shapes.add("x".join(str(size) for size in item_latents.shape[1:]))
    if one_file and tensors:
        write_latents(out, tensors, descriptions, header)
    if descriptions:
        console.note(
            f"wrote latents of {len(descriptions)} images to {out} "
            f"(C x h x w: {', '.join(sorted(shapes))})"
        )
    return run.exit_status()


def describe(item: ImageItem) -> dict[str, Any]:
    """The metadata item of one image's latents (see `latents`)."""
    height, width = item.fitted.source_size
    return {
        "tensor": item.name,
        "source": str(item.path),
        "source_height": height,
        "source_width": width,
        "fit": item.fitted.fit,
        "box": list(item.fitted.box),
    }


def read_latent_items(
    arguments: list[str], loaded: LoadedModel, run: Run
) -> list[tuple[str, LatentItem]]:
    """(output stem, latents) of every image in the files given; unreadable files skipped."""
    files, problems = find_latent_files(arguments)
    for argument, reason in problems:
        run.skip(argument, reason)
    items: list[LatentItem] = []
    for path in files:
        try:
            description = read_description(path) or {}
            items += read_latent_file(path)
        except BadLatentFile as error:
            run.skip(str(path), str(error))
            continue
        family = description.get("family")
        if family not in (None, loaded.family.name):
            run.console.note(
                f"{path}: written by a {family} model, decoding with {loaded.family.name}"
            )
    run.inputs = len(items) + len(problems)
    names = unique_names([item.name for item in items])
    return list(zip(names, items, strict=True))


def decode(args: argparse.Namespace, console: Console) -> int:
    """Latents in safetensors files -> PNG images (cropped back where the encoder padded)."""
    run = Run(console)
    loaded = load_model(args, console)
    decoding = inference_config(loaded.family, args)
    out = Path(args.out)
    named = read_latent_items(args.latents, loaded, run)
    written = 0
    with console.progress(len(named), "decode") as bar:
        for batch in batched(named, args.batch_size, lambda pair: tuple(pair[1].latents.shape)):
            latents = torch.cat([item.latents for _, item in batch]).to(loaded.device)
            height, width = (int(size) * loaded.patch for size in latents.shape[-2:])

            def step(latents: Tensor = latents, height: int = height, width: int = width):
                decoded = loaded.model.decode(latents, height, width, inference_config=decoding)
                return decoded.float().cpu()

            images = run_model(run, [name for name, _ in batch], step)
            bar.update(len(batch))
            if images is None:
                continue
            for (name, item), image in zip(batch, images, strict=True):
                write_png(out / f"{name}.png", item.content(image))
                written += 1
    if written:
        console.note(f"wrote {written} images to {out}/")
    return run.exit_status()
