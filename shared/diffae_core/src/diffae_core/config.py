"""Configs, free of torch: published `config.json` <-> frozen dataclass, strictly (unknown or
missing keys are errors); `FCDMConfig`, the fields the FCDM families share; the inference
settings (`VPInferenceConfig`, `StrengthVPInferenceConfig`). Tools that only read a model's
files (`diffae inspect`) use these without importing torch.

A field whose default is `None` is optional: some releases of a family omit it from their file
(e.g. semdisdiffae p16 has no `latent_running_stats_eps`). Such a field is written back only when
it is set, so a config saves to exactly the keys of the release it came from.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

from .io import atomic_write_text

if TYPE_CHECKING:
    from torch import Tensor

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


# ---- fcdm config -----------------------------------------------------------------------
# `FCDMConfig`: the published `config.json` fields every FCDM family shares, declared once.
#
# fcdm_diffae, full_capacitor, capacitor_decoder and dinac_ae publish the same 18 architecture
# fields (`in_channels`, `patch_size`, `model_dim`, ... `latent_running_stats_eps`), in that order.
# A family's config subclasses `FCDMConfig`, re-declares only the fields whose default differs
# (a re-declared dataclass field keeps its place), adds its own fields after them, and narrows the
# accepted values through the `ALLOWED_*` class variables. Defaults here are the semdisdiffae (p16)
# release's.

POSTERIOR_KINDS = ("diagonal_gaussian", "deterministic")
"""How the encoder's projection is read: mean and logsnr halves, or a mean alone."""

BOTTLENECK_PATCHIFY_MODES = (None, "off", "patch_2x2")
"""None: the release's file has no such field; "patch_2x2": latents are 2x2-patchified."""
BOTTLENECK_NORM_MODES = ("disabled", "channel_wise")


@dataclass(frozen=True)
class FCDMConfig(LatentLayout, JsonConfig):
    """The shared FCDM architecture fields and their checks; defaults: semdisdiffae (p16).

    A field whose default is None is optional in the file (see `JsonConfig`): a family whose
    release may omit `encoder_depth` re-declares it `int | None = None`.
    """

    in_channels: int = 3
    patch_size: int = 16
    model_dim: int = 896
    encoder_depth: int = 4
    decoder_depth: int = 8
    decoder_start_blocks: int = 2
    decoder_end_blocks: int = 2
    bottleneck_dim: int = 128
    mlp_ratio: float = 4.0
    depthwise_kernel_size: int = 7
    adaln_low_rank_rank: int = 128
    bottleneck_posterior_kind: str = "diagonal_gaussian"
    bottleneck_norm_mode: str = "disabled"
    bottleneck_patchify_mode: str | None = None
    logsnr_min: float = -10.0
    logsnr_max: float = 10.0
    pixel_noise_std: float = 0.558
    latent_running_stats_eps: float | None = None

    ALLOWED_POSTERIOR_KINDS: ClassVar[tuple[Any, ...] | None] = POSTERIOR_KINDS
    """Accepted `bottleneck_posterior_kind` values; None: not checked (a decoder ignores it)."""
    ALLOWED_NORM_MODES: ClassVar[tuple[Any, ...] | None] = BOTTLENECK_NORM_MODES
    """Accepted `bottleneck_norm_mode` values; None: not checked."""
    ALLOWED_PATCHIFY_MODES: ClassVar[tuple[Any, ...]] = BOTTLENECK_PATCHIFY_MODES
    """Accepted `bottleneck_patchify_mode` values (None: absent from the file)."""

    def __post_init__(self) -> None:
        check_architecture_fields(self)
        start, end = self.decoder_start_blocks, self.decoder_end_blocks
        for name, value in (("decoder_start_blocks", start), ("decoder_end_blocks", end)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"{name}: expected an int >= 0, got {value!r}")
        if start + end > self.decoder_depth:
            raise ValueError(
                f"decoder_depth: expected >= decoder_start_blocks + decoder_end_blocks = "
                f"{start + end}, got {self.decoder_depth}"
            )
        for name, allowed in (
            ("bottleneck_posterior_kind", self.ALLOWED_POSTERIOR_KINDS),
            ("bottleneck_norm_mode", self.ALLOWED_NORM_MODES),
            ("bottleneck_patchify_mode", self.ALLOWED_PATCHIFY_MODES),
        ):
            if allowed is not None:
                check_choice(name, getattr(self, name), allowed)
        if self.latent_running_stats_eps is not None:
            check_positive("latent_running_stats_eps", self.latent_running_stats_eps, float)


# ---- inference -------------------------------------------------------------------------
# Inference settings shared by every VP decoder: steps, sampler, schedule, PDG, seed.

SCHEDULE_KINDS = ("linear", "cosine")
SAMPLER_NAMES = ("ddim", "dpmpp_2m")


class InferenceConfigBase:
    """Validation and derived values shared by the inference configs (no fields of its own)."""

    num_steps: int
    sampler: str
    schedule: str
    pdg: bool
    pdg_strength: float
    seed: int | None

    def validate(self) -> None:
        """Raise ValueError naming the first field that holds an unusable value."""
        if isinstance(self.num_steps, bool) or not isinstance(self.num_steps, int):
            raise ValueError(f"num_steps: expected an int >= 1, got {self.num_steps!r}")
        if self.num_steps < 1:
            raise ValueError(f"num_steps: expected an int >= 1, got {self.num_steps!r}")
        if self.sampler not in SAMPLER_NAMES:
            raise ValueError(f"sampler: expected one of {SAMPLER_NAMES}, got {self.sampler!r}")
        if self.schedule not in SCHEDULE_KINDS:
            raise ValueError(f"schedule: expected one of {SCHEDULE_KINDS}, got {self.schedule!r}")
        if not isinstance(self.pdg, bool):
            raise ValueError(f"pdg: expected True or False, got {self.pdg!r}")
        if isinstance(self.pdg_strength, bool) or not isinstance(self.pdg_strength, (int, float)):
            raise ValueError(f"pdg_strength: expected a number, got {self.pdg_strength!r}")
        seed_is_int = isinstance(self.seed, int) and not isinstance(self.seed, bool)
        if self.seed is not None and not seed_is_int:
            raise ValueError(f"seed: expected an int or None, got {self.seed!r}")

    def schedule_times(self) -> Tensor:
        """Descending times [num_steps + 1] from t = 1 to t = 0, float32 on the CPU."""
        from .diffusion import get_schedule  # torch, imported only when sampling

        return get_schedule(self.schedule, self.num_steps)

    @property
    def guidance_strength(self) -> float | None:
        """The PDG strength when PDG is on, else None (the samplers' convention)."""
        return float(self.pdg_strength) if self.pdg else None


@dataclass
class VPInferenceConfig(InferenceConfigBase):
    """How `decode` samples. Each family subclasses it under its own name and defaults.

    num_steps: decoder evaluations without PDG (each PDG step costs two); 1 is PSNR-optimal.
    sampler: "ddim" or "dpmpp_2m". schedule: "linear" or "cosine" in t.
    pdg: path-drop guidance, x0 = u + pdg_strength * (c - u); sharper images, lower PSNR.
    seed: an int draws the initial noise from a CPU generator (device-independent); None uses
    the global RNG of the latents' device.
    """

    num_steps: int = 1
    sampler: str = "ddim"
    schedule: str = "linear"
    pdg: bool = False
    pdg_strength: float = 2.0
    seed: int | None = None


@dataclass
class StrengthVPInferenceConfig(InferenceConfigBase):
    """`VPInferenceConfig` plus `strength`, in the newer exports' field order (dinac_ae, capacitor).

    strength: the schedule runs from t = strength instead of t = 1, 0 < strength <= 1; 1.0 (the
    default) leaves the schedule bitwise unchanged. The fields are declared here rather than
    inherited so that `strength` precedes `seed`, as in the published class (positional
    construction agrees with it).
    """

    num_steps: int = 1
    sampler: str = "ddim"
    schedule: str = "linear"
    pdg: bool = False
    pdg_strength: float = 2.0
    strength: float = 1.0
    seed: int | None = None

    def validate(self) -> None:
        """Raise ValueError naming the first field that holds an unusable value."""
        super().validate()
        strength = self.strength
        if isinstance(strength, bool) or not isinstance(strength, (int, float)):
            raise ValueError(f"strength: expected a number in (0, 1], got {strength!r}")
        if not 0.0 < strength <= 1.0:
            raise ValueError(f"strength: expected a number in (0, 1], got {strength!r}")

    def schedule_times(self) -> Tensor:
        """Descending times [num_steps + 1] from t = strength to t = 0, float32 on the CPU."""
        return super().schedule_times() * float(self.strength)
