"""Files, free of torch: writing that never leaves a half-written file behind, safetensors
headers read with the standard library, the Hugging Face cache, and the `diffae.json` sidecar.
`diffae inspect` reports a model from these alone, without importing torch.
"""

from __future__ import annotations

import json
import math
import os
import secrets
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

_NEW_FILE_MODE = 0o666
"""What `open(path, "w")` asks for; the kernel takes the umask off, so files are readable by others
wherever the user's umask allows it (`tempfile.mkstemp` would force 0600)."""


def _create_temporary(folder: Path, name: str) -> Path:
    """A new empty file `.<name>.<random>.tmp` in `folder`, created exclusively with the mode an
    ordinary `open()` gives."""
    while True:
        temporary = folder / f".{name}.{secrets.token_hex(6)}.tmp"
        try:
            handle = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, _NEW_FILE_MODE)
        except FileExistsError:
            continue
        os.close(handle)
        return temporary


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Call `write(tmp)` on a temporary file next to `path`, then rename it over `path`.

    The file gets the mode `open()` would give it (0666 less the umask), so outputs are as
    readable as the user's other files.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = _create_temporary(path.parent, path.name)
    try:
        write(temporary)
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    """Write UTF-8 text to `path` atomically."""
    atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


# ---- safetensors header ----------------------------------------------------------------
# A `.safetensors` file is an 8-byte little-endian header length N, N bytes of JSON
# ({name: {"dtype", "shape", "data_offsets": [begin, end]}, optional "__metadata__": {str: str}}),
# then the tensors' bytes, which the offsets (relative to the end of the header) cover exactly.


class CheckpointError(ValueError):
    """A `.safetensors` file that cannot be read as one: the message names the file and says
    what is wrong (truncated, forged header, unsupported dtype, not safetensors at all)."""


SAFETENSORS_DTYPES = {
    "BOOL": ("bool", 1),
    "U8": ("uint8", 1),
    "I8": ("int8", 1),
    "F8_E4M3": ("float8_e4m3fn", 1),
    "F8_E5M2": ("float8_e5m2", 1),
    "I16": ("int16", 2),
    "U16": ("uint16", 2),
    "F16": ("float16", 2),
    "BF16": ("bfloat16", 2),
    "I32": ("int32", 4),
    "U32": ("uint32", 4),
    "F32": ("float32", 4),
    "I64": ("int64", 8),
    "U64": ("uint64", 8),
    "F64": ("float64", 8),
}
"""A header's dtype code -> (torch's name for it, bytes per value)."""
MAX_HEADER_BYTES = 100_000_000
"""safetensors' own limit on the JSON header."""


@dataclass(frozen=True)
class StoredTensor:
    """One tensor as a safetensors header describes it."""

    dtype: str
    """torch's name of the dtype, e.g. "float32" (the header writes "F32")."""
    shape: tuple[int, ...]
    nbytes: int

    @property
    def numel(self) -> int:
        return math.prod(self.shape)


@dataclass(frozen=True)
class SafetensorsHeader:
    """A `.safetensors` file's tensors (in the header's order) and its metadata."""

    tensors: dict[str, StoredTensor]
    metadata: dict[str, str]


def _stored_tensor(name: str, entry: object) -> tuple[StoredTensor, tuple[int, int]]:
    """The tensor and its (begin, end) byte offsets; ValueError saying what is inconsistent."""
    if not isinstance(entry, dict) or set(entry) != {"dtype", "shape", "data_offsets"}:
        raise ValueError(f"tensor {name!r}: expected dtype, shape and data_offsets")
    code, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
    if not isinstance(code, str) or code not in SAFETENSORS_DTYPES:
        raise ValueError(f"tensor {name!r}: unknown dtype {code!r}")
    sizes = [*shape, *offsets] if isinstance(shape, list) and isinstance(offsets, list) else [-1]
    if any(type(size) is not int or size < 0 for size in sizes) or len(offsets) != 2:
        raise ValueError(f"tensor {name!r}: invalid shape, data type, or offset")
    dtype, itemsize = SAFETENSORS_DTYPES[code]
    tensor = StoredTensor(dtype, tuple(shape), offsets[1] - offsets[0])
    if tensor.nbytes != tensor.numel * itemsize:
        raise ValueError(f"tensor {name!r}: invalid shape, data type, or offset")
    return tensor, (offsets[0], offsets[1])


def read_safetensors_header(path: str | os.PathLike[str]) -> SafetensorsHeader:
    """The tensors (dtype, shape, bytes) and metadata of a `.safetensors` file, reading only its
    header, with the checks safetensors makes (the tensors cover the data exactly).

    Raises CheckpointError naming the file and what is wrong; FileNotFoundError when missing.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    file_bytes = path.stat().st_size
    with open(path, "rb") as handle:
        prefix = handle.read(8)
        length = int.from_bytes(prefix, "little") if len(prefix) == 8 else -1
        text = handle.read(length) if 0 < length <= MAX_HEADER_BYTES else b""
    try:
        if not 0 < length <= file_bytes - 8:
            raise ValueError(
                f"header too small or too large: its 8-byte length {length} does not fit "
                f"the file's {file_bytes} bytes"
            )
        data = json.loads(text.decode("utf-8"))
        if not isinstance(data, dict):
            raise ValueError("the header is not a JSON object")
        metadata = data.pop("__metadata__", None) or {}
        if not isinstance(metadata, dict) or not all(
            isinstance(value, str) for value in metadata.values()
        ):
            raise ValueError("__metadata__ is not a map of strings")
        entries = {name: _stored_tensor(name, entry) for name, entry in data.items()}
        end = 0
        for _, (begin, stop) in sorted(entries.values(), key=lambda item: item[1]):
            if begin != end:
                raise ValueError("the tensors' data offsets leave a gap or overlap")
            end = stop
        if end != file_bytes - 8 - length:
            raise ValueError(
                f"file not fully covered: the tensors hold {end} bytes, the file "
                f"{file_bytes - 8 - length} after its header (truncated or extended?)"
            )
    except (UnicodeDecodeError, ValueError, TypeError) as error:  # JSONDecodeError too
        raise CheckpointError(f"{path}: not a readable safetensors file ({error})") from None
    return SafetensorsHeader({name: tensor for name, (tensor, _) in entries.items()}, metadata)


# ---- hub -------------------------------------------------------------------------------
# Resolve a local directory or a Hugging Face repo id to a folder holding the model files.

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
    alternatives: Iterable[str] = (),
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


# ---- identity --------------------------------------------------------------------------

IDENTITY_NAME = "diffae.json"
"""A small file `save_pretrained` writes beside the published two: `{"family": "<name>"}`.

Several families accept one another's `config.json` and even hold the same tensor names
(fcdm_diffae and full_capacitor differ in what the weights mean, not in their layout), so a
folder's family cannot always be told from its files. We record it when we save instead, in a
file of its own: the published `config.json` stays exactly what the original loaders read
strictly. Folders without it (published ones) are known by repo id or by their config."""


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
