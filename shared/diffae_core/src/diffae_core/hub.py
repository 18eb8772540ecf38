"""Resolve a local directory or a Hugging Face repo id to a folder holding the model files."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

MODEL_FILES = ("config.json", "model.safetensors")


class ModelNotAvailableError(FileNotFoundError):
    """The model is neither a local directory nor in the Hugging Face cache, and the Hub is
    out of reach (offline mode or no network)."""


def _looks_like_repo_id(name: str) -> bool:
    parts = name.split("/")
    return len(parts) == 2 and all(parts) and not name.startswith((".", "~"))


def resolve_model_dir(
    path_or_repo_id: str | os.PathLike[str],
    *,
    revision: str | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    token: str | bool | None = None,
    local_files_only: bool = False,
    force_download: bool = False,
    alternatives: Sequence[str] = (),
) -> Path:
    """A local directory as is; otherwise a Hub repo id, downloaded (or found in the cache).

    Only `config.json` and `model.safetensors` are fetched. The keywords go to
    `huggingface_hub.snapshot_download`; `HF_HUB_OFFLINE=1` is honoured by it. `alternatives`
    are other spellings of the same repo id, tried in order when the id as given is found
    neither in the cache nor on the Hub; if none is, the error of the id as given is raised.
    """
    if not isinstance(path_or_repo_id, (str, os.PathLike)):
        raise TypeError(
            "path_or_repo_id: expected a local directory or a Hub repo id such as "
            f"'data-archetype/semdisdiffae_p32_v2', got {type(path_or_repo_id).__name__}"
        )
    local = Path(path_or_repo_id).expanduser()
    if local.is_dir():
        return local
    name = os.fspath(path_or_repo_id)
    if local.exists() or not _looks_like_repo_id(name):
        raise FileNotFoundError(
            f"path_or_repo_id: {name!r} is neither a local directory holding "
            f"{' and '.join(MODEL_FILES)} nor a Hub repo id of the form 'owner/name'"
        )
    options = dict(
        revision=revision,
        cache_dir=cache_dir,
        token=token,
        local_files_only=local_files_only,
        force_download=force_download,
    )
    try:
        return _snapshot(name, **options)
    except (ModelNotAvailableError, _repository_not_found()) as first_error:
        for other in alternatives:
            try:
                return _snapshot(other, **options)
            except (ModelNotAvailableError, _repository_not_found()):
                continue
        raise first_error


def _repository_not_found() -> type[Exception]:
    from huggingface_hub.errors import RepositoryNotFoundError

    return RepositoryNotFoundError


def _snapshot(
    name: str,
    *,
    revision: str | None,
    cache_dir: str | os.PathLike[str] | None,
    token: str | bool | None,
    local_files_only: bool,
    force_download: bool,
) -> Path:
    """`snapshot_download` of the model files, with an actionable error when out of reach."""
    try:
        from huggingface_hub import snapshot_download
        from huggingface_hub.errors import LocalEntryNotFoundError
    except ImportError as error:  # pragma: no cover - huggingface_hub is a dependency
        raise ImportError(
            f"{name!r} is not a local directory, and downloading it needs huggingface_hub: "
            "pip install huggingface_hub"
        ) from error
    try:
        folder = snapshot_download(
            name,
            revision=revision,
            cache_dir=None if cache_dir is None else os.fspath(cache_dir),
            token=token,
            local_files_only=local_files_only,
            force_download=force_download,
            allow_patterns=list(MODEL_FILES),
        )
    except LocalEntryNotFoundError as error:
        raise ModelNotAvailableError(
            f"{name!r} (revision {revision or 'main'}) is not in the Hugging Face cache"
            f"{f' at {cache_dir}' if cache_dir else ''}, and the Hub cannot be reached "
            "(offline mode, local_files_only=True, or no network). Either pass a local "
            "directory holding config.json and model.safetensors, or download the model once "
            f"where the Hub is reachable: `hf download {name}` (then it loads "
            "offline from the cache)."
        ) from error
    return Path(folder)
