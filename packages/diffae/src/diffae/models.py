"""Which family a model belongs to, loading it, and its inference settings, for the command line.

Families come only from `installed_families()` (entry points): the command never imports a family
package by name, so a family installed later is served without a change here.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from diffae_core.config import ConfigError
from diffae_core.families import Family, installed_families
from diffae_core.io import IDENTITY_NAME, resolve_model_dir, saved_family

from .console import ArgumentError, Console, ModelError

if TYPE_CHECKING:
    import torch

# torch is imported inside the functions that load or run a model: choosing a family and reading
# a model's files (`diffae inspect`) need only the configs, and run without it.

DTYPES = {
    "float32": "float32",
    "fp32": "float32",
    "bfloat16": "bfloat16",
    "bf16": "bfloat16",
    "float16": "float16",
    "fp16": "float16",
}
"""dtype spellings -> torch's name of the dtype."""
EMBEDDED_MODEL = Path(__file__).resolve().parent / "data" / "model"
"""Our own small fcdm_diffae model, shipped in this package (see data/model/README.md): what
`reconstruct`, `encode`, `decode` and `demo` use when no model is given. No download."""
EMBEDDED_FAMILY = "fcdm_diffae"
EMBEDDED_NAME = "the embedded diffae model"


def available_families() -> dict[str, Family]:
    """The installed families, or a ModelError when there are none."""
    families = installed_families()
    if not families:
        raise ModelError(
            "no diffae model family is installed; install one, e.g. pip install fcdm-diffae"
        )
    return families


def read_config(folder: Path) -> dict[str, Any]:
    """The JSON object in `folder/config.json`."""
    path = folder / "config.json"
    if not path.is_file():
        raise ConfigError(f"{folder} has no config.json: is it a diffae model directory?")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ConfigError(f"{path}: not valid JSON ({error})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


def families_matching(config_data: dict[str, Any], families: dict[str, Family]) -> list[str]:
    """Names of the families whose `config_class.from_dict` accepts the config."""
    matching = []
    for name, family in families.items():
        try:
            family.config_class.from_dict(dict(config_data))
        except (ConfigError, ValueError, TypeError):
            continue
        matching.append(name)
    return matching


def weights_fit(family: Family, config_data: dict[str, Any], weights: Path) -> bool:
    """Whether `weights`' header (names, shapes) is what `family` builds from the config; reads
    no tensor data. Builds the family's model on `meta`, so it imports torch: reached only
    when several families accept the config."""
    from diffae_core.loading import read_header

    try:
        header = read_header(weights)
    except (OSError, ValueError):
        return False
    return family.fits_header(family.config_class.from_dict(dict(config_data)), header)


HUB_CACHE_FOLDER = re.compile(r"^models--(?P<owner>.+?)--(?P<name>.+)$")
"""`huggingface_hub`'s cache folder of a model repo: `models--<owner>--<name>/snapshots/<hash>`."""


def known_family(
    model: str, folder: Path | None, config_data: dict[str, Any] | None
) -> tuple[str, str] | None:
    """(family name, how it is known) when the folder's family is a fact, not a guess: a
    published repo id (given, or the Hub cache folder it was downloaded to), the `diffae.json`
    that `save_pretrained` writes, or a `config.json` equal to one family's published config."""
    families = available_families()
    repo_ids = [model]
    if folder is not None and folder.parent.name == "snapshots":
        cached = HUB_CACHE_FOLDER.search(folder.parent.parent.name)
        if cached:
            repo_ids.append(f"{cached['owner']}/{cached['name']}")
    for repo_id in repo_ids:
        for family in families.values():
            if repo_id in family.repo_ids:
                return family.name, f"published repo id {repo_id}"
    if folder is not None:
        try:
            saved = saved_family(folder)
        except ValueError as error:
            raise ConfigError(str(error)) from None
        if saved is not None:
            return saved, f"{folder / IDENTITY_NAME}"
    if config_data is not None:
        published = []
        for family in families.values():
            try:
                config = family.config_class.from_dict(dict(config_data))
            except (ConfigError, ValueError, TypeError):
                continue
            preset = family.preset_equal_to(config)
            if preset is not None:
                published.append((family.name, preset))
        if len(published) == 1:
            name, preset = published[0]
            return name, f"config.json is the published {preset} config"
    return None


def choose_family(
    model: str,
    config_data: dict[str, Any] | None,
    forced: str | None,
    *,
    folder: Path | None = None,
) -> tuple[Family, str]:
    """(family, how it was chosen) for `model` (a repo id or a folder holding `config_data`).

    A family that is known (`known_family`) is used, and a `forced` family that contradicts it
    is refused. Otherwise `forced` chooses among the families whose config class accepts the
    config and whose layout fits the weights; without it, that must be a single family, and
    the error lists the candidates to pass. Errors name the argument `family` (the command
    line's --family).
    """
    families = available_families()
    if forced is not None and forced not in families:
        raise ArgumentError("family", f": expected one of {list(families)}, got {forced!r}")
    known = known_family(model, folder, config_data)
    if known is not None:
        name, reason = known
        if name not in families:
            raise ModelError(
                f"{model} is a {name} model ({reason}), but that family is not installed: "
                f"pip install {name.replace('_', '-')}"
            )
        if forced not in (None, name):
            raise ArgumentError(
                "family",
                f" {forced}: {model} is a {name} model ({reason}); give no family or family={name}",
            )
        return families[name], reason
    if config_data is None:
        raise ConfigError(f"{model}: no config.json to detect the family from; pass family=NAME")
    accepting = families_matching(config_data, families)
    if forced is not None:
        # Among families whose config fits, the user decides; weights of another layout are
        # then refused by the loader with the keys that differ.
        if forced not in accepting:
            raise ArgumentError(
                "family",
                f" {forced}: {model}'s config.json is not a {forced} config; "
                f"it fits {accepting or 'no installed family'}",
            )
        return families[forced], "the family given"
    weights = None if folder is None else folder / "model.safetensors"
    fitting = [
        name
        for name in accepting
        if weights is None
        or not weights.is_file()
        or weights_fit(families[name], config_data, weights)
    ]
    if len(fitting) == 1:
        return families[fitting[0]], "config.json fields" + (
            "" if weights is None else " and weights"
        )
    if accepting and not fitting:
        raise ModelError(
            f"{model}: model.safetensors does not fit {', '.join(accepting)}, the families "
            f"whose config.json fits; `diffae inspect {model} --family {accepting[0]}` shows "
            "what differs"
        )
    if not fitting:
        raise ConfigError(
            f"{model}: config.json matches none of the installed families {list(families)}; "
            "is the family's package installed? (or pass family=NAME)"
        )
    choices = " or ".join(f"family={name}" for name in fitting)
    raise ArgumentError(
        "family",
        f": needed for {model}: its config.json and weights fit several families "
        f"({', '.join(fitting)}) and nothing records which it is; pass {choices}",
    )


def patch_multiple(config: Any) -> int:
    """Pixels per latent cell along each side: `effective_patch_size`, else `patch_size`."""
    for field in ("effective_patch_size", "patch_size"):
        value = getattr(config, field, None)
        if isinstance(value, int) and value > 0:
            return value
    raise ConfigError(f"{type(config).__name__} has no effective_patch_size or patch_size")


def default_device() -> str:
    """cuda when available, else cpu."""
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def choose_device(name: str | None) -> torch.device:
    """`name`, else the default; an ArgumentError (`device`), before any loading, for a device
    not present.

    `cpu:0` is the CPU (torch reads it so); an accelerator type (cuda, mps, xpu, ...) must be
    available in this torch build and on this machine, and its index must exist.
    """
    import torch

    try:
        device = torch.device(name or default_device())
    except RuntimeError:
        raise ArgumentError(
            "device", f": expected e.g. cpu, cuda or cuda:1, got {name!r}"
        ) from None
    if device.type == "cpu":
        if device.index not in (None, 0):
            raise ArgumentError("device", f" {name}: there is one CPU device, cpu (or cpu:0)")
        return torch.device("cpu")
    backend = torch.backends.mps if device.type == "mps" else getattr(torch, device.type, None)
    is_available = getattr(backend, "is_available", None)
    if not callable(is_available) or not is_available():
        raise ArgumentError(
            "device",
            f" {name}: no {device.type} device available to this torch "
            f"({torch.__version__}); use device=cpu",
        )
    count = getattr(backend, "device_count", lambda: 1)()
    if device.index is not None and device.index >= count:
        raise ArgumentError("device", f" {name}: only {count} {device.type} device(s) available")
    return device


def choose_dtype(name: str | None, device: torch.device) -> torch.dtype:
    """`name` (a `DTYPES` spelling), else bfloat16 on CUDA and float32 elsewhere."""
    import torch

    if name is not None:
        return getattr(torch, DTYPES[name])
    return torch.bfloat16 if device.type == "cuda" else torch.float32


def inference_config(family: Family, fields: Mapping[str, Any]) -> Any:
    """The family's inference config with `fields` (num_steps, sampler, ...) set, checked."""
    try:
        config = family.inference_config_class(**fields)
        if hasattr(config, "validate"):
            config.validate()
    except (TypeError, ValueError) as error:
        raise ConfigError(f"decoding options for {family.name}: {error}") from None
    return config


@dataclass(frozen=True)
class ModelChoice:
    """The family of a model and what to hand its `from_pretrained`, chosen before loading."""

    family: Family
    reason: str
    location: str | Path
    """The published repo id itself (so the family's id aliases apply), else the folder."""


def resolve_model(model: str) -> Path:
    """The folder of `model`: a directory, or a Hub id with the families' other spellings.
    Errors are ArgumentErrors naming `model`."""
    # A generator: the other spellings (which import the model classes, and torch) are looked
    # up only when the id as given is not found.
    alternatives = (
        other
        for family in available_families().values()
        for other in family.model_class.repo_id_alternatives(model)
    )
    try:
        return resolve_model_dir(model, alternatives=alternatives)
    except FileNotFoundError as error:
        message = str(error).removeprefix("path_or_repo_id: ")
        raise ArgumentError("model", f": {message}") from None


def choose_model(model: str | None, forced_family: str | None) -> ModelChoice:
    """The family from `forced_family`, a published repo id, or the model's config.json;
    without a model (None), the embedded model. Errors name `model` and `family`."""
    families = available_families()
    if model is None:
        if EMBEDDED_FAMILY not in families:
            raise ModelError(
                f"the embedded model needs the {EMBEDDED_FAMILY} family "
                f"(pip install {EMBEDDED_FAMILY.replace('_', '-')}); or pass model=NAME"
            )
        if forced_family not in (None, EMBEDDED_FAMILY):
            raise ArgumentError(
                "family", f" {forced_family}: the embedded model is {EMBEDDED_FAMILY}"
            )
        return ModelChoice(families[EMBEDDED_FAMILY], "no model given", EMBEDDED_MODEL)
    if any(model in family.repo_ids for family in families.values()):
        family, reason = choose_family(model, None, forced_family)
        return ModelChoice(family, reason, model)
    folder = resolve_model(model)
    family, reason = choose_family(model, read_config(folder), forced_family, folder=folder)
    return ModelChoice(family, reason, folder)


def model_folder(choice: ModelChoice) -> Path:
    """The local folder of a chosen model (a Hub id is resolved to its cached snapshot)."""
    if isinstance(choice.location, Path):
        return choice.location
    return resolve_model(choice.location)


FINGERPRINT_DATA_BYTES = 1 << 20


def model_fingerprint(folder: Path) -> str:
    """A short hash naming one model: its config.json, its weights' header and the first MiB
    of their data (two trainings of one layout differ there). Recorded in latent files, so
    `decode` can tell latents of another model; reads ~1 MiB whatever the model's size."""
    digest = hashlib.sha256((folder / "config.json").read_bytes())
    with open(folder / "model.safetensors", "rb") as weights:
        length = weights.read(8)
        digest.update(length)
        digest.update(weights.read(int.from_bytes(length, "little")))
        digest.update(weights.read(FINGERPRINT_DATA_BYTES))
    return digest.hexdigest()[:16]


@dataclass
class LoadedModel:
    """A model ready to run, with what the command needs to know about it."""

    family: Family
    model: Any
    device: torch.device
    patch: int
    source: str
    """What the user named (a repo id or a folder), or "embedded"."""
    dtype: torch.dtype
    """The dtype the model was loaded in."""


def load_model(
    choice: ModelChoice,
    device: torch.device,
    console: Console,
    *,
    dtype: str | None = None,
    name: str | None = None,
) -> LoadedModel:
    """Load the chosen model on `device` in `dtype` (a `DTYPES` name; None: `choose_dtype`'s
    default), in eval mode. `name`: the model as the user named it (None: the embedded one)."""
    torch_dtype = choose_dtype(dtype, device)
    model = choice.family.model_class.from_pretrained(
        choice.location, device=device, dtype=torch_dtype
    )
    console.note(
        f"model: {EMBEDDED_NAME if name is None else name} (family {choice.family.name}, from "
        f"{choice.reason}) on {device}, {str(torch_dtype).removeprefix('torch.')}"
    )
    source = "embedded" if name is None else name
    patch = patch_multiple(model.config)
    return LoadedModel(choice.family, model, device, patch, source, torch_dtype)


def decode_accepts(family: Family, keyword: str) -> bool:
    """Whether the family's `decode` takes the keyword argument `keyword`."""
    decode = getattr(family.model_class, "decode", None)
    return callable(decode) and keyword in inspect.signature(decode).parameters
