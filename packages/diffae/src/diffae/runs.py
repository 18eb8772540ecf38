"""What `reconstruct`, `encode` and `decode` share: inputs, output checks, batches, skips.

Only an input that cannot be read or decoded is skipped, reported by name with its reason
(`Run`); a command then ends with exit status 1. A model failure is never an input's fault: out
of memory retries the batch in halves down to one image, then that image tiled (`run_model`);
any other model error stops the run with a `ModelError`. Problems with the arguments raise an
`ArgumentError` naming the argument (`out`, `images`).
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
from torch import Tensor

from . import __version__
from .console import ArgumentError, Console, ModelError
from .images import BadImage, Fitted, find_images, fit_image, read_image, unique_names
from .models import LoadedModel
from .viewer import VIEWER, compression_ratio

ItemT = TypeVar("ItemT")
ResultT = TypeVar("ResultT", Tensor, tuple[Tensor, ...])
NAMES_SHOWN = 3
"""Inputs named in a model failure's message (then "and N more")."""


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


def out_of_memory(error: BaseException) -> bool:
    """Whether `error` is an allocation failure: CUDA's (and other accelerators')
    `torch.OutOfMemoryError`, or the CPU allocator's RuntimeError."""
    return isinstance(error, torch.OutOfMemoryError) or (
        isinstance(error, RuntimeError) and "can't allocate memory" in str(error)
    )


def model_failure(error: BaseException, names: Sequence[str]) -> ModelError:
    """The error that stops a run: what failed, on which inputs (a model failure is not an
    input's fault: nothing is skipped)."""
    shown = ", ".join(names[:NAMES_SHOWN])
    if len(names) > NAMES_SHOWN:
        shown += f" and {len(names) - NAMES_SHOWN} more"
    if isinstance(error, NotImplementedError):
        return ModelError(f"the model cannot do this: {error or 'not implemented'}")
    if out_of_memory(error):
        return ModelError(
            f"out of memory on {shown} even one image at a time with tiling; use a smaller "
            "image, a smaller dtype or a device with more memory"
        )
    return ModelError(f"the model failed on {shown}: {type(error).__name__}: {error}")


def run_model(
    model: Any, inputs: Tensor, step: Callable[[Tensor], ResultT], names: Sequence[str]
) -> ResultT:
    """`step(inputs)` without autograd, for a batch `inputs` [N, ...] of the inputs `names`.

    `step` maps a batch to a tensor (or a tuple of tensors) of N rows. Out of memory: the
    batch runs again in halves, down to one input, and one input once more with the model's
    tiling on (`enable_tiling`, when it has it); the rows are concatenated in order. Any other
    error (or out of memory even so) raises a ModelError naming the inputs.
    """
    try:
        with torch.inference_mode():
            return step(inputs)
    except Exception as error:  # every model error becomes one ModelError
        if not out_of_memory(error):
            raise model_failure(error, names) from error
    # Out of memory: retried outside the except clause, so the failed call's tensors are freed.
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    if len(inputs) > 1:
        half = len(inputs) // 2
        parts = [
            run_model(model, inputs[:half], step, names[:half]),
            run_model(model, inputs[half:], step, names[half:]),
        ]
        if isinstance(parts[0], Tensor):
            return torch.cat(parts)  # type: ignore[return-value]
        return tuple(torch.cat(rows) for rows in zip(*parts, strict=True))  # type: ignore[return-value]
    if not callable(getattr(model, "enable_tiling", None)) or model.tiling_enabled:
        raise model_failure(torch.OutOfMemoryError("out of memory"), names)
    model.enable_tiling()
    try:
        with torch.inference_mode():
            return step(inputs)
    except Exception as error:
        raise model_failure(error, names) from error
    finally:
        model.disable_tiling()


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
