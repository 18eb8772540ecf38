"""What `reconstruct`, `encode` and `decode` share: inputs, output checks, batches, skips.

A bad input is reported by name and skipped (`Run`); a command then ends with exit status 1.
Problems with the arguments raise an `ArgumentError` naming the argument (`out`, `images`).
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import torch

from . import __version__
from .console import ArgumentError, Console, ModelError
from .images import BadImage, Fitted, find_images, fit_image, read_image, unique_names
from .models import LoadedModel
from .viewer import VIEWER, compression_ratio

ItemT = TypeVar("ItemT")
ResultT = TypeVar("ResultT")
MODEL_FAILURES = (ValueError, TypeError, RuntimeError)
"""What a model raises on inputs it cannot take (shapes, dtypes, memory): the batch is skipped."""


@dataclass
class Run:
    """What one command run skipped, for the report and the exit status."""

    console: Console
    inputs: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)
    """(input, reason) of each input skipped."""

    def skip(self, name: str, reason: str) -> None:
        self.skipped.append((name, reason))
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


def output_folder(out: str | Path) -> Path:
    """`out` as a folder: an ArgumentError, before any work, when it names an existing file."""
    path = Path(out)
    if path.exists() and not path.is_dir():
        raise ArgumentError("out", f": expected a folder (created if missing), got the file {path}")
    return path


OUR_OUTPUTS = (
    "*.png",
    "grids/*.png",
    "originals/*.png",
    "pca/*.png",
    "metrics.csv",
    "metrics.json",
    "*.safetensors",
)
"""What `reconstruct`, `encode` and `decode` write in their output folder; what `overwrite`
removes (with the results viewer's folder, `viewer/`)."""


def check_output_folder(path: Path, overwrite: bool) -> None:
    """The output folder must be new or empty, so one folder never mixes two runs' outputs,
    unless `overwrite` (see `claim_output_folder`): an ArgumentError otherwise."""
    if not overwrite and path.is_dir() and any(path.iterdir()):
        raise ArgumentError(
            "out",
            f": {path} is not empty; choose a new folder, or pass overwrite=True to replace "
            "the earlier run's outputs",
        )


def claim_output_folder(path: Path, overwrite: bool) -> None:
    """`check_output_folder`, then with `overwrite` remove what an earlier run wrote there
    (`OUR_OUTPUTS`), keeping any other file.

    Call it after the inputs are checked against the outputs (`refuse_overwriting`)."""
    check_output_folder(path, overwrite)
    if not path.is_dir():
        return
    for pattern in OUR_OUTPUTS:
        for old in path.glob(pattern):
            if old.is_file():
                old.unlink()
    shutil.rmtree(path / VIEWER, ignore_errors=True)


def earlier_run_of(path: Path, source: str) -> bool:
    """Whether `path` is empty or holds a run of the model `source` (its metrics.json says so)."""
    if not path.is_dir() or not any(path.iterdir()):
        return True
    try:
        report = json.loads((path / "metrics.json").read_text(encoding="utf-8"))
        return report["settings"]["model"] == source
    except (OSError, ValueError, KeyError, TypeError):
        return False


def claim_output_file(path: Path, overwrite: bool) -> None:
    """The output is one file: it must not exist, unless `overwrite`."""
    if path.exists() and not overwrite:
        raise ArgumentError("out", f": {path} exists; pass overwrite=True to replace it")


def no_inputs_error(argument: str, problems: list[tuple[str, str]]) -> ArgumentError:
    """The error, before any model loads, when not one input of `argument` can be used."""
    reasons = "; ".join(f"{name}: {reason}" for name, reason in problems)
    return ArgumentError(argument, f": nothing to read ({reasons})")


def list_images(arguments: Sequence[str | Path], run: Run) -> list[tuple[Path, str]]:
    """(file, output stem) of every image named or in a folder named; other arguments skipped.
    An ArgumentError naming `images` when there is none at all."""
    paths, problems = find_images([str(argument) for argument in arguments])
    if not paths:
        raise no_inputs_error("images", problems)
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
    """An ArgumentError, before any work, when an output would replace one of the input files."""
    clashes = sorted({path.resolve() for path in inputs} & {path.resolve() for path in outputs})
    if clashes:
        raise ArgumentError("out", f": would overwrite the input file {clashes[0]}")


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
        raise ModelError(f"the model cannot do this: {error or 'not implemented'}") from None
    except MODEL_FAILURES as error:
        for name in names:
            run.skip(name, f"the model failed: {error}")
        return None


def settings_of(
    loaded: LoadedModel, decoding: Any, *, fit: str | None, batch_size: int
) -> dict[str, Any]:
    """What a run used, for metrics.json."""
    parameter = next(loaded.model.parameters())
    return {
        "model": loaded.source,
        "family": loaded.family.name,
        "device": str(loaded.device),
        "dtype": str(parameter.dtype).removeprefix("torch."),
        "fit": fit,
        "batch_size": batch_size,
        "inference_config": dataclasses.asdict(decoding)
        if dataclasses.is_dataclass(decoding)
        else repr(decoding),
        "compression_ratio": compression_ratio(loaded.model.config),
        "diffae_version": __version__,
    }
