"""`from_pretrained` / `save_pretrained` for every family: one loading convention (spec §15).

Build on the `meta` device (no memory, no init), load `model.safetensors` straight to the target
device with strict key matching and `assign=True`, then apply the dtype policy explicitly.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import torch
from safetensors.torch import save_file
from torch import Tensor

from .checkpoint import (
    AliasInspection,
    CheckpointMismatchError,
    KeyAliases,
    StateDiff,
    alias_renames,
    apply_key_aliases,
    diff_state,
    load_state_strict,
    load_tensors,
    read_header,
    state_info,
)
from .config import JsonConfig
from .hub import resolve_model_dir
from .io import atomic_write, atomic_write_text
from .precision import Float32BuffersModule, check_dtype
from .validation import check_device

ModelT = TypeVar("ModelT", bound="PretrainedModel")
CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
IDENTITY_NAME = "diffae.json"
"""A small file `save_pretrained` writes beside the published two: `{"family": "<name>"}`.

Several families accept one another's `config.json` and even hold the same tensor names
(fcdm_diffae and full_capacitor differ in what the weights mean, not in their layout), so a
folder's family cannot always be told from its files. We record it when we save instead, in a
file of its own: the published `config.json` stays exactly what the original loaders read
strictly. Folders without it (published ones) are known by repo id or by their config."""


class FamilyMismatchError(ValueError):
    """A folder saved by one family was given to another family's loader."""


def saved_family(folder: str | os.PathLike[str]) -> str | None:
    """The family recorded in `folder/diffae.json` by `save_pretrained`, or None without one.

    A damaged file is a ValueError naming it, never a guess.
    """
    path = Path(folder) / IDENTITY_NAME
    if not path.is_file():
        return None
    try:
        family = json.loads(path.read_text(encoding="utf-8")).get("family")
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
        family = None
    if not isinstance(family, str) or not family:
        raise ValueError(f'{path}: expected {{"family": "<name>"}} as written by save_pretrained')
    return family


class PretrainedModel(Float32BuffersModule):
    """Base of every family's model: `Model(config)` plus loading, saving and inspection.

    Subclasses set `config_class` and may set `checkpoint_key_aliases` or override
    `canonical_checkpoint_keys` (to accept other published spellings of a key) and
    `checkpoint_state` (to write the published spelling).
    """

    config_class: ClassVar[type[JsonConfig]]
    family_name: ClassVar[str]
    """The family's name in the `diffae.families` entry points, recorded by `save_pretrained`."""
    repo_id_aliases: ClassVar[Mapping[str, str]] = {}
    """Hub id -> another spelling of the same repo, tried when the first is not found."""
    checkpoint_key_aliases: ClassVar[KeyAliases] = {}
    """Other published spellings of our keys (see `checkpoint.KeyAliases`); none by default."""

    def __init__(self, config: Any) -> None:
        super().__init__()
        if not isinstance(config, self.config_class):
            raise TypeError(
                f"config: expected a {self.config_class.__name__}, got {type(config).__name__}"
            )
        self.config = config

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
