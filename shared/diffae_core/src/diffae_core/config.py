"""Published `config.json` <-> frozen dataclass, strictly: unknown or missing keys are errors.

A field whose default is `None` is optional: some releases of a family omit it from their file
(e.g. semdisdiffae p16 has no `latent_running_stats_eps`). Such a field is written back only when
it is set, so a config saves to exactly the keys of the release it came from.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any, ClassVar, TypeVar

from .io import atomic_write_text

ConfigT = TypeVar("ConfigT", bound="JsonConfig")


class ConfigError(TypeError, ValueError):
    """A config file or dict does not match the config class.

    A TypeError too: the published loaders build the class with `cls(**json)`, where an unknown
    key raises TypeError, and callers may catch that."""


class JsonConfig:
    """Mixin for frozen dataclass configs whose fields are a published JSON file's keys."""

    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {}

    @classmethod
    def from_dict(cls: type[ConfigT], data: dict[str, Any], *, source: str = "config") -> ConfigT:
        """Build from a JSON object; names every unknown and missing key in one error."""
        if not isinstance(data, dict):
            raise ConfigError(f"{source}: expected a JSON object, got {type(data).__name__}")
        fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        unknown = sorted(set(data) - set(fields))
        required = [name for name, f in fields.items() if f.default is not None]
        missing = [name for name in required if name not in data]
        if unknown or missing:
            problems = []
            if unknown:
                problems.append(f"unknown keys {unknown}")
            if missing:
                problems.append(f"missing keys {missing}")
            raise ConfigError(
                f"{source}: not a {cls.__name__}: {' and '.join(problems)}; "
                f"expected the keys {list(fields)}"
            )
        try:
            return cls(**data)
        except (TypeError, ValueError) as error:  # a field of the wrong type or value
            raise ConfigError(f"{source}: {error}") from None

    @classmethod
    def load(cls: type[ConfigT], path: str | os.PathLike[str]) -> ConfigT:
        """Read a published `config.json`."""
        path = Path(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise ConfigError(f"{path}: not valid JSON ({error})") from None
        return cls.from_dict(data, source=str(path))

    def to_dict(self) -> dict[str, Any]:
        """Fields in declaration order; optional fields only when set."""
        return {
            f.name: getattr(self, f.name)
            for f in dataclasses.fields(self)  # type: ignore[arg-type]
            if not (f.default is None and getattr(self, f.name) is None)
        }

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write `config.json` as the published files are: indent 2, trailing newline."""
        atomic_write_text(Path(path), json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def preset(cls: type[ConfigT], name: str) -> ConfigT:
        """The config of a published checkpoint, by its Hugging Face repo name."""
        if name not in cls.PRESETS:
            raise KeyError(f"preset: expected one of {sorted(cls.PRESETS)}, got {name!r}")
        return cls(**cls.PRESETS[name])


def check_choice(field: str, value: Any, choices: tuple[Any, ...]) -> None:
    """Raise ValueError naming `field` unless `value` is one of `choices`."""
    if value not in choices:
        raise ValueError(f"{field}: expected one of {choices}, got {value!r}")


def check_positive(field: str, value: Any, kind: type = int) -> None:
    """Raise ValueError naming `field` unless `value` is a positive `kind` (bools refused)."""
    kinds = (int, float) if kind is float else (kind,)
    if isinstance(value, bool) or not isinstance(value, kinds) or value <= 0:
        raise ValueError(f"{field}: expected a positive {kind.__name__}, got {value!r}")


def check_multiple(field: str, value: Any, divisor: int) -> None:
    """Raise ValueError naming `field` unless `value` is a positive int divisible by `divisor`."""
    check_positive(field, value)
    if value % divisor:
        raise ValueError(f"{field}: expected a multiple of {divisor}, got {value}")


ARCHITECTURE_INTS = (
    "in_channels",
    "patch_size",
    "model_dim",
    "encoder_depth",
    "decoder_depth",
    "bottleneck_dim",
    "depthwise_kernel_size",
    "adaln_low_rank_rank",
)
"""Positive int fields of every family's architecture (`encoder_depth` may be None: decoder-only
files can omit it)."""


def check_architecture_fields(config: Any) -> None:
    """Raise ValueError naming the first unusable architecture field every family shares:
    the `ARCHITECTURE_INTS`, `mlp_ratio`, `pixel_noise_std`, an odd depthwise kernel and
    `logsnr_min < logsnr_max`."""
    for name in ARCHITECTURE_INTS:
        value = getattr(config, name)
        if not (name == "encoder_depth" and value is None):
            check_positive(name, value)
    check_positive("mlp_ratio", config.mlp_ratio, float)
    check_positive("pixel_noise_std", config.pixel_noise_std, float)
    for name in ("logsnr_min", "logsnr_max"):
        value = getattr(config, name)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"{name}: expected a number, got {value!r}")
    if config.depthwise_kernel_size % 2 == 0:
        raise ValueError(
            f"depthwise_kernel_size: expected an odd size, got {config.depthwise_kernel_size}"
        )
    if not config.logsnr_min < config.logsnr_max:
        raise ValueError(
            f"logsnr_min, logsnr_max: expected min < max, got {config.logsnr_min}, "
            f"{config.logsnr_max}"
        )


DEFAULT_WHITENING_EPS = 1e-4
"""Whitening eps of the releases whose config has no `latent_running_stats_eps` (semdisdiffae
p16 and p32 v1). Open point: 1e-4 as in p32_v2, the value every other
release writes; it changes latent values only, never a reconstruction."""


class LatentLayout:
    """Mixin for configs with `patch_size`, `bottleneck_dim` and, optionally,
    `bottleneck_patchify_mode` (a config without that field has the direct layout) and
    `latent_running_stats_eps` (without it, whitening uses `DEFAULT_WHITENING_EPS`)."""

    patch_size: int
    bottleneck_dim: int

    @property
    def patchifies_bottleneck(self) -> bool:
        """True when latents are the 2x2-patchified bottleneck ("patch_2x2")."""
        return getattr(self, "bottleneck_patchify_mode", None) == "patch_2x2"

    @property
    def latent_channels(self) -> int:
        """Channels of `encode`'s latents: 4 * bottleneck_dim when 2x2-patchified."""
        return 4 * self.bottleneck_dim if self.patchifies_bottleneck else self.bottleneck_dim

    @property
    def effective_patch_size(self) -> int:
        """Pixels per latent cell along each side; image sizes must be multiples of it."""
        return 2 * self.patch_size if self.patchifies_bottleneck else self.patch_size

    @property
    def whitening_eps(self) -> float:
        """The eps of sqrt(running_var + eps) in whiten/dewhiten."""
        eps = getattr(self, "latent_running_stats_eps", None)
        return DEFAULT_WHITENING_EPS if eps is None else eps
