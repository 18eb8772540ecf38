"""Files: safetensors headers and strict loading, the Hugging Face cache, and `PretrainedModel`
(from_pretrained, save_pretrained, inspection).
"""

from __future__ import annotations

import json
import math
import os
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from .config import JsonConfig
from .io import (
    IDENTITY_NAME,
    CheckpointError,
    atomic_write,
    atomic_write_text,
    resolve_model_dir,
    saved_family,
)
from .runtime import bf16_is_emulated, check_device, check_dtype, warn_cpu_bf16_upcast

# ---- checkpoint ------------------------------------------------------------------------
# Reading, checking and strictly loading `model.safetensors` files.
#
# `read_header` lists a file's tensors (name, dtype, shape) from its JSON header without reading
# any weights; `diff_state` compares such a listing with a model built on the `meta` device. The
# same comparison guards `load_state_strict`, so a mismatch is reported once, with every key named.

V = TypeVar("V")
MAX_LISTED = 10
"""How many keys of each kind a mismatch report names."""
STORED_FLOAT_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
"""The dtypes a floating tensor of a model may be stored in: float32 (every published file),
bfloat16 (dinac_ae's storage; what a bf16 model saves) and float16 (what an fp16 model saves).
A floating tensor stored as anything else (an integer, an 8-bit float) is refused, as is a
non-floating tensor stored in another dtype than the model's, and a file that mixes the two
16-bit floats (no model saves both: one is a forgery). A header forged to a dtype of the same
width (F32 -> I32 or U32, BF16 -> F16) passes safetensors' own checks and would load the same
bytes as other numbers."""
HALF_DTYPES = (torch.bfloat16, torch.float16)


@dataclass(frozen=True)
class TensorInfo:
    """What a checkpoint says of one tensor."""

    dtype: torch.dtype
    shape: tuple[int, ...]

    @property
    def numel(self) -> int:
        return math.prod(self.shape)


SAFETENSORS_HINTS = {
    "file not fully covered": "truncated or extended: its header's tensors do not cover the file "
    "exactly (an interrupted download or copy?)",
    "header too small": "too short to hold a safetensors header",
    "header too large": "its 8-byte header length is implausible (not safetensors, or forged)",
    "invalid UTF-8": "its header is not text (a wrong header length, or not safetensors)",
    "invalid JSON": "its header is not valid safetensors JSON",
    "invalid shape, data type, or offset": "its header's shapes, dtypes and offsets disagree "
    "(a forged or corrupted header)",
}
"""safetensors' error texts -> what they mean for a user, for the messages of CheckpointError."""


def checkpoint_error(path: Path, error: Exception) -> CheckpointError:
    """Our error for a safetensors failure on `path`, with a plain-words reason when known."""
    detail = str(error)
    reasons = [reason for text, reason in SAFETENSORS_HINTS.items() if text in detail]
    reason = reasons[0] if reasons else "not a readable safetensors file"
    return CheckpointError(f"{path}: {reason} ({detail})")


def _tensor_info(handle: Any, name: str) -> TensorInfo:
    """Dtype and shape of one tensor; the dtype comes from an empty slice, read through
    safetensors' own dtype mapping, so every dtype it and torch know is understood."""
    view = handle.get_slice(name)
    shape = tuple(int(size) for size in view.get_shape())
    empty = view[...] if not shape else view[0:0]  # a scalar reads its one value
    return TensorInfo(empty.dtype, shape)


def read_header(path: str | os.PathLike[str]) -> dict[str, TensorInfo]:
    """Tensor names, dtypes and shapes of a `.safetensors` file, reading no weights.

    Raises CheckpointError naming the file when it is not a complete, consistent safetensors
    file or holds a dtype this torch cannot represent; FileNotFoundError when it is missing.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    try:
        with safe_open(os.fspath(path), framework="pt") as handle:
            return {name: _tensor_info(handle, name) for name in handle.keys()}  # noqa: SIM118
    except SafetensorError as error:
        raise checkpoint_error(path, error) from None
    except (TypeError, ValueError, RuntimeError) as error:  # a dtype safetensors knows, torch not
        raise CheckpointError(f"{path}: holds a tensor this torch cannot read ({error})") from None


def load_tensors(path: str | os.PathLike[str], device: str = "cpu") -> dict[str, Tensor]:
    """Every tensor of a `.safetensors` file on `device`; CheckpointError naming the file if it
    cannot be read (safetensors checks the whole header before any tensor is allocated)."""
    path = Path(path)
    try:
        return load_file(os.fspath(path), device=device)
    except SafetensorError as error:
        raise checkpoint_error(path, error) from None


def state_info(state: Mapping[str, Tensor]) -> dict[str, TensorInfo]:
    """The (dtype, shape) listing of a state dict, e.g. of a model on `meta`."""
    return {name: TensorInfo(t.dtype, tuple(t.shape)) for name, t in state.items()}


@dataclass(frozen=True)
class StateDiff:
    """How a checkpoint's tensors differ from what a model expects."""

    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    shape_mismatches: list[tuple[str, tuple[int, ...], tuple[int, ...]]] = field(
        default_factory=list
    )
    dtype_differences: list[tuple[str, torch.dtype, torch.dtype]] = field(default_factory=list)
    """Accepted stored dtypes other than the model's (cast by the dtype policy on loading)."""
    refused_dtypes: list[tuple[str, torch.dtype, torch.dtype]] = field(default_factory=list)
    """Stored dtypes the model does not accept for that tensor (see `dtype_accepted`)."""

    @property
    def loadable(self) -> bool:
        """True when strict loading succeeds (accepted dtypes are cast by policy)."""
        return not (self.missing or self.unexpected or self.shape_mismatches or self.refused_dtypes)

    def report(self, limit: int = MAX_LISTED) -> str:
        """Counts of each kind of difference and the first `limit` keys of each, sorted."""

        def section(title: str, rows: list[str]) -> list[str]:
            if not rows:
                return []
            more = f" (first {limit})" if len(rows) > limit else ""
            return [f"{len(rows)} {title}{more}:"] + [f"  {row}" for row in rows[:limit]]

        lines = section("missing keys", self.missing)
        lines += section("unexpected keys", self.unexpected)
        lines += section(
            "shape mismatches (checkpoint vs model)",
            [f"{k}: {tuple(a)} vs {tuple(b)}" for k, a, b in self.shape_mismatches],
        )
        lines += section(
            "refused dtypes (checkpoint vs model; floating tensors are stored as float32 or "
            "bfloat16, other tensors in the model's dtype)",
            [f"{k}: {a} vs {b}" for k, a, b in self.refused_dtypes],
        )
        lines += section(
            "dtype differences (checkpoint vs model)",
            [f"{k}: {a} vs {b}" for k, a, b in self.dtype_differences],
        )
        return "\n".join(lines) if lines else "checkpoint matches the model"


def dtype_accepted(stored: torch.dtype, expected: torch.dtype) -> bool:
    """Whether a tensor the model holds as `expected` may be stored as `stored`: one of
    STORED_FLOAT_DTYPES for a floating tensor, the same dtype for any other."""
    if expected.is_floating_point:
        return stored in STORED_FLOAT_DTYPES
    return stored == expected


def diff_state(
    checkpoint: Mapping[str, TensorInfo], expected: Mapping[str, TensorInfo]
) -> StateDiff:
    """Compare a checkpoint listing with a model's (see `state_info`)."""
    shared = sorted(set(checkpoint) & set(expected))
    different = [
        (k, checkpoint[k].dtype, expected[k].dtype)
        for k in shared
        if checkpoint[k].dtype != expected[k].dtype
    ]
    halves = Counter(dtype for _, dtype, _ in different if dtype in HALF_DTYPES)
    # Both 16-bit floats in one file: the rarer one (both on a tie) is the forgery.
    forged_halves = (
        {d for d, n in halves.items() if n == min(halves.values())} if len(halves) > 1 else set()
    )

    def accepted(stored: torch.dtype, wanted: torch.dtype) -> bool:
        return dtype_accepted(stored, wanted) and stored not in forged_halves

    return StateDiff(
        missing=sorted(set(expected) - set(checkpoint)),
        unexpected=sorted(set(checkpoint) - set(expected)),
        shape_mismatches=[
            (k, checkpoint[k].shape, expected[k].shape)
            for k in shared
            if checkpoint[k].shape != expected[k].shape
        ],
        dtype_differences=[row for row in different if accepted(row[1], row[2])],
        refused_dtypes=[row for row in different if not accepted(row[1], row[2])],
    )


class CheckpointMismatchError(ValueError):
    """A checkpoint's keys, shapes or dtypes do not match the model it is loaded into."""

    def __init__(self, source: str, diff: StateDiff) -> None:
        self.diff = diff
        super().__init__(f"{source} does not match the model:\n{diff.report()}")


def load_state_strict(
    model: nn.Module, state: Mapping[str, Tensor], *, source: str = "checkpoint"
) -> None:
    """`load_state_dict(strict=True, assign=True)` after one check that names every problem.

    `assign=True` adopts the checkpoint's tensors (and dtypes) in place of a `meta` model's.
    """
    diff = diff_state(state_info(state), state_info(model.state_dict()))
    if not diff.loadable:
        raise CheckpointMismatchError(source, diff)
    model.load_state_dict(state, strict=True, assign=True)


# -- published spellings ------------------------------------------------------------------------
KeyAliases = Mapping[str, "str | None"]
"""A family's table of published key spellings: published name -> our name, None = ignore.

An entry applies to the key itself and to every key below it (`name.` prefix), so
{"patchify": "decoder.patchify"} renames `patchify.proj.weight` too."""


def _alias_target(key: str, aliases: KeyAliases) -> tuple[str, str | None] | None:
    """(the matching alias, key renamed by it or None when dropped); None when no alias applies."""
    for published, ours in aliases.items():
        if key == published or key.startswith(published + "."):
            renamed = None if ours is None else ours + key[len(published) :]
            return published, renamed
    return None


def apply_key_aliases(state: Mapping[str, V], aliases: KeyAliases) -> dict[str, V]:
    """Rename a checkpoint's keys by an alias table (values untouched: tensors or TensorInfo).

    Raises ValueError when two keys would land on one name (both spellings in one file).
    """
    renamed: dict[str, V] = {}
    sources: dict[str, str] = {}
    for key, value in state.items():
        match = _alias_target(key, aliases)
        target = key if match is None else match[1]
        if target is None:
            continue
        if target in renamed:
            raise ValueError(
                f"checkpoint: keys {sources[target]!r} and {key!r} both name {target!r}"
            )
        renamed[target], sources[target] = value, key
    return renamed


def alias_renames(keys: list[str] | Mapping[str, object], aliases: KeyAliases) -> list[str]:
    """'published -> ours' (or '-> ignored') for each key an alias table rewrites, sorted."""
    rows = []
    for key in sorted(keys):
        match = _alias_target(key, aliases)
        if match is not None:
            rows.append(f"{key} -> {'ignored' if match[1] is None else match[1]}")
    return rows


@dataclass(frozen=True)
class AliasInspection:
    """A checkpoint header against a model, as published and after the family's alias table."""

    as_published: StateDiff
    with_aliases: StateDiff
    renames: list[str]

    @property
    def fixed_by_aliases(self) -> bool:
        """True when the published spelling does not load but the alias table makes it load."""
        return not self.as_published.loadable and self.with_aliases.loadable

    def report(self) -> str:
        """What differs as published, which aliases apply, and what still differs after them."""
        if self.as_published.loadable:
            return "checkpoint matches the model under the published key names"
        lines = ["as published:", self.as_published.report()]
        if self.renames:
            lines += [f"alias table applies to {len(self.renames)} keys:"]
            lines += [f"  {row}" for row in self.renames[:MAX_LISTED]]
        else:
            lines += ["no alias in the table applies"]
        if self.with_aliases.loadable:
            lines += ["with the alias table: loadable"]
        else:
            lines += ["with the alias table, still:", self.with_aliases.report()]
        return "\n".join(lines)


# ---- pretrained ------------------------------------------------------------------------
# `from_pretrained` / `save_pretrained` for every family: one loading convention.
#
# Build on the `meta` device (no memory, no init), load `model.safetensors` straight to the target
# device with strict key matching and `assign=True`, then apply the dtype policy explicitly.

ModelT = TypeVar("ModelT", bound="PretrainedModel")
CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"


class FamilyMismatchError(ValueError):
    """A folder saved by one family was given to another family's loader."""


class PretrainedModel(nn.Module):
    """Base of every family's model: `Model(config)` plus loading, saving and inspection.

    Subclasses set `config_class` and may set `checkpoint_key_aliases` or override
    `canonical_checkpoint_keys` (to accept other published spellings of a key) and
    `checkpoint_state` (to write the published spelling).

    Floating buffers stay float32 through `.to()`, `.half()`, etc.: device moves apply to them,
    a dtype conversion does not (a float32 buffer is never rounded, and one that arrived in
    another floating dtype from a file is brought back to float32). On a CPU without native
    bf16, bf16 weights are upcast to float32 with a warning (`runtime.cpu_has_native_bf16`).
    """

    config_class: ClassVar[type[JsonConfig]]
    family_name: ClassVar[str]
    """The family's name in the `diffae.families` entry points, recorded by `save_pretrained`."""
    repo_id_aliases: ClassVar[Mapping[str, str]] = {}
    """Hub id -> another spelling of the same repo, tried when the first is not found."""
    checkpoint_key_aliases: ClassVar[KeyAliases] = {}
    """Other published spellings of our keys (see `KeyAliases`); none by default."""

    def __init__(self, config: Any) -> None:
        super().__init__()
        if not isinstance(config, self.config_class):
            raise TypeError(
                f"config: expected a {self.config_class.__name__}, got {type(config).__name__}"
            )
        self.config = config

    # -- dtype policy ------------------------------------------------------------------------
    def _apply(self, fn: Callable[[Tensor], Tensor], recurse: bool = True) -> nn.Module:
        floating_buffers = {id(b) for b in self.buffers() if b.is_floating_point()}

        def keep_float32(tensor: Tensor) -> Tensor:
            converted = fn(tensor)
            if id(tensor) in floating_buffers:
                # From the original, not from `converted`: a round trip through bf16 would round.
                return tensor.to(device=converted.device, dtype=torch.float32)
            return converted

        module = super()._apply(keep_float32, recurse)
        if bf16_is_emulated(self):
            warn_cpu_bf16_upcast()

            def upcast(tensor: Tensor) -> Tensor:
                on_cpu_bf16 = tensor.device.type == "cpu" and tensor.dtype == torch.bfloat16
                return tensor.float() if on_cpu_bf16 else tensor

            nn.Module._apply(self, upcast, recurse)  # not the overrides: one plain pass
        return module

    def restore_float32_buffers(self) -> nn.Module:
        """Make every floating buffer float32 in place (after loading a file that stored less)."""
        return self._apply(lambda tensor: tensor)

    # -- hooks -------------------------------------------------------------------------------
    @classmethod
    def canonical_checkpoint_keys(cls, state: Mapping[str, Any]) -> dict[str, Any]:
        """Map a checkpoint's key spellings to this model's through `checkpoint_key_aliases`."""
        return apply_key_aliases(state, cls.checkpoint_key_aliases)

    @classmethod
    def repo_id_alternatives(cls, path_or_repo_id: str | os.PathLike[str]) -> tuple[str, ...]:
        """Other Hub spellings of `path_or_repo_id` to try (from `repo_id_aliases`)."""
        other = cls.repo_id_aliases.get(os.fspath(path_or_repo_id))
        return () if other is None else (other,)

    def checkpoint_state(self) -> dict[str, Tensor]:
        """The tensors `save_pretrained` writes, under the published key names."""
        return self.state_dict()

    # -- construction ------------------------------------------------------------------------
    @classmethod
    def from_config_on_meta(cls: type[ModelT], config: Any) -> ModelT:
        """The model with every tensor on `meta`: shapes and key names, no memory."""
        with torch.device("meta"):
            return cls(config)

    @classmethod
    def from_pretrained(
        cls: type[ModelT],
        path_or_repo_id: str | os.PathLike[str],
        *,
        device: torch.device | str = "cpu",
        dtype: torch.dtype | None = None,
        revision: str | None = None,
        cache_dir: str | os.PathLike[str] | None = None,
        token: str | bool | None = None,
        local_files_only: bool = False,
        force_download: bool = False,
    ) -> ModelT:
        """Load a published checkpoint from a local directory or a Hugging Face repo id.

        device: where the weights go (loaded there directly). dtype: None keeps the stored
        dtype (float32 for every published file); torch.bfloat16 casts the weights while
        float32 buffers stay float32. The Hub keywords go to `huggingface_hub.snapshot_download`.
        Returns the model in eval mode.
        """
        dtype = check_dtype(dtype)
        device = check_device(device)
        folder = resolve_model_dir(
            path_or_repo_id,
            revision=revision,
            cache_dir=cache_dir,
            token=token,
            local_files_only=local_files_only,
            force_download=force_download,
            alternatives=cls.repo_id_alternatives(path_or_repo_id),
        )
        for name in (CONFIG_NAME, WEIGHTS_NAME):
            if not (folder / name).is_file():
                raise FileNotFoundError(f"path_or_repo_id: {folder} has no {name}")
        saved = saved_family(folder)
        if saved is not None and saved != cls.family_name:
            raise FamilyMismatchError(
                f"path_or_repo_id: {folder} holds a {saved} model (its {IDENTITY_NAME} says so), "
                f"not a {cls.family_name} one; load it with the {saved} package"
            )
        config = cls.config_class.load(folder / CONFIG_NAME)
        return cls.from_weights(config, folder / WEIGHTS_NAME, device=device, dtype=dtype)

    @classmethod
    def from_weights(
        cls: type[ModelT],
        config: Any,
        weights_path: str | os.PathLike[str],
        *,
        device: torch.device | str = "cpu",
        dtype: torch.dtype | None = None,
    ) -> ModelT:
        """Build `cls(config)` on meta and load a `.safetensors` file into it strictly."""
        dtype = check_dtype(dtype)
        device = check_device(device)
        model = cls.from_config_on_meta(config)
        # The header alone is checked against the model first: a file of the wrong shapes or
        # a forged one is refused before any weight is read or allocated.
        header = cls.canonical_checkpoint_keys(read_header(weights_path))
        diff = diff_state(header, state_info(model.state_dict()))
        if not diff.loadable:
            raise CheckpointMismatchError(os.fspath(weights_path), diff)
        state = cls.canonical_checkpoint_keys(load_tensors(weights_path, device=str(device)))
        load_state_strict(model, state, source=os.fspath(weights_path))
        # `assign=True` adopted the file's dtypes; the policy is applied explicitly here.
        model.restore_float32_buffers()
        model.to(device=device, dtype=dtype)  # also moves tables that no file holds
        tensors = [*model.named_parameters(), *model.named_buffers()]
        left_on_meta = [name for name, tensor in tensors if tensor.is_meta]
        assert not left_on_meta, f"tensors not materialised by the checkpoint: {left_on_meta}"
        return model.eval()

    # -- saving and inspection ---------------------------------------------------------------
    def save_pretrained(self, directory: str | os.PathLike[str]) -> None:
        """Write `config.json` and `model.safetensors` in the published layout, and
        `diffae.json` naming the family (so tools need no `--family` for this folder).

        Each file is written to a temporary name and renamed, so an interrupted save leaves no
        half-written file.
        """
        directory = Path(directory)
        state = {
            name: tensor.detach().to("cpu").contiguous()
            for name, tensor in self.checkpoint_state().items()
        }
        atomic_write(
            directory / WEIGHTS_NAME,
            lambda tmp: save_file(state, os.fspath(tmp), metadata={"format": "pt"}),
        )
        self.config.save(directory / CONFIG_NAME)
        identity = json.dumps({"family": self.family_name}, indent=2) + "\n"
        atomic_write_text(directory / IDENTITY_NAME, identity)

    @classmethod
    def inspect_checkpoint(
        cls, weights_path: str | os.PathLike[str], config: Any = None
    ) -> StateDiff:
        """Compare a `model.safetensors` header with this model built on `meta`, as loading would.

        Reads no weights. `config` defaults to the `config.json` next to the file. The keys are
        read through `canonical_checkpoint_keys`, so accepted alternative spellings do not count
        as differences (`inspect_checkpoint_aliases` shows them).
        """
        return cls.inspect_checkpoint_aliases(weights_path, config).with_aliases

    @classmethod
    def inspect_checkpoint_aliases(
        cls, weights_path: str | os.PathLike[str], config: Any = None
    ) -> AliasInspection:
        """Like `inspect_checkpoint`, also saying whether `checkpoint_key_aliases` fixes a mismatch.

        `.report()` lists the differences under the published names, the aliases that apply, and
        what still differs after them. Reads no weights.
        """
        weights_path = Path(weights_path)
        if config is None:
            config = cls.config_class.load(weights_path.parent / CONFIG_NAME)
        expected = state_info(cls.from_config_on_meta(config).state_dict())
        header = read_header(weights_path)
        return AliasInspection(
            as_published=diff_state(header, expected),
            # What loading accepts: the alias table and any family-specific spelling hook.
            with_aliases=diff_state(cls.canonical_checkpoint_keys(header), expected),
            renames=alias_renames(list(header), cls.checkpoint_key_aliases),
        )

    def num_parameters(self) -> int:
        """Learnable values, each shared tensor once (the cards' count); buffers excluded."""
        return sum(p.numel() for p in self.parameters())
