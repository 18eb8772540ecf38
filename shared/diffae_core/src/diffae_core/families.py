"""The families installed beside the core, found through the `diffae.families` entry points.

Each model package declares, in its pyproject.toml, `[project.entry-points."diffae.families"]`
with `<name> = "<pkg>.family:FAMILY"`.
Tools that serve every family (command line, bundles, benchmarks) use `installed_families()`
and never import a family by name.

Reading the families imports no torch: a `Family` names its model class ("package.module:Class")
and imports it on first use of `model_class`, so a tool that needs only configs (`diffae inspect`,
`--help`) runs without it. A family's `family.py`, `config.py` and `__init__.py` (which loading
the entry point imports first) must therefore not import torch; tests/test_inspect.py checks.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from importlib.metadata import entry_points
from typing import Any

ENTRY_POINT_GROUP = "diffae.families"


@dataclass(frozen=True)
class DecodeSwitch:
    """A family-specific command-line switch: `--<flag>` passes `keyword=value` to `decode`.

    Declared by the family (in its `Family`), so tools offer it without knowing the family.
    """

    flag: str
    """The option's name without dashes, e.g. "raw-latents"."""
    keyword: str
    """The `decode` keyword argument it sets, e.g. "latents_are_flux2_whitened"."""
    value: Any
    """What the keyword is set to when the switch is given."""
    help: str


@dataclass(frozen=True)
class Family:
    """What a tool needs to know of one model family."""

    name: str
    model: str
    """The model class as "package.module:Class" (see `model_class`)."""
    config_class: type
    inference_config_class: type
    repo_ids: tuple[str, ...]
    """Published Hugging Face repos, e.g. 'data-archetype/semdisdiffae_p32_v2'."""
    tiny_config: Any = None
    """A small config with the family's structure, for tests and smoke runs."""
    tiny_variants: Mapping[str, Any] = field(default_factory=dict)
    """Small configs named after the published structures they mimic (e.g. one per preset whose
    layout differs); the shared contract tests run every one."""
    has_encoder: bool = True
    """False for a decode-only family: its model's `has_encoder` (the model has no `encode`),
    stated here too so tools can tell without importing the model."""
    decode_switches: tuple[DecodeSwitch, ...] = ()
    """Command-line switches of this family's `decode` (e.g. capacitor_decoder's raw FLUX.2
    latents); tools refuse them for the other families."""
    open_variants_of: Callable[[], Mapping[str, type]] | None = None
    """Builds `open_variants` (on first use: the classes import torch); None: nothing open
    changes outputs."""
    card_psnr: Mapping[str, float] = field(default_factory=dict)
    """Published repo id -> mean reconstruction PSNR (dB) on the card's 2k-image benchmark."""

    @cached_property
    def model_class(self) -> type:
        """The model class, imported on first use (it imports torch)."""
        module, _, name = self.model.partition(":")
        return getattr(importlib.import_module(module), name)

    @cached_property
    def open_variants(self) -> dict[str, type]:
        """The model class under each reading of the spec's open points that changes outputs
        (label -> class), the default reading first; empty when nothing open changes outputs.
        `diffae verify` reconstructs with each to settle them with the real weights."""
        return {} if self.open_variants_of is None else dict(self.open_variants_of())

    def tiny_configs(self) -> dict[str, Any]:
        """`tiny_variants`, or {"tiny": tiny_config} when the family declares no variants."""
        return dict(self.tiny_variants) or {"tiny": self.tiny_config}

    def presets(self) -> list[str]:
        """Names of the published configs (`config_class.preset(name)`)."""
        return sorted(getattr(self.config_class, "PRESETS", {}))

    def preset_equal_to(self, config: Any) -> str | None:
        """The published preset whose config equals `config`, or None: how a published folder
        names its family when another family's config class accepts the same fields."""
        return next(
            (name for name in self.presets() if config == self.config_class.preset(name)), None
        )

    def fits_header(self, config: Any, header: Mapping[str, Any]) -> bool:
        """Whether a checkpoint header (`loading.read_header`: names, shapes, dtypes) loads
        strictly into this family's model built from `config`; reads no tensor data."""
        from .loading import diff_state, state_info

        model_class = self.model_class
        expected = state_info(model_class.from_config_on_meta(config).state_dict())
        return diff_state(model_class.canonical_checkpoint_keys(header), expected).loadable


def model_variant(model_class: type, **class_attributes: Any) -> type:
    """A subclass of `model_class` with some class attributes set: one reading of an open point
    (e.g. `model_variant(FCDMDiffAE, encoder_normalizes_mean=False)`)."""
    label = ", ".join(f"{name}={value!r}" for name, value in class_attributes.items())
    return type(f"{model_class.__name__}[{label}]", (model_class,), dict(class_attributes))


def boolean_variants(model_class: type, attribute: str) -> dict[str, type]:
    """A yes/no open point's two readings: `model_class` as it is (its value, the default,
    first) and the subclass with the other value (e.g. fcdm_diffae's and full_capacitor's
    `encoder_normalizes_mean`)."""
    value = bool(getattr(model_class, attribute))
    return {
        f"{attribute}={value} (default)": model_class,
        f"{attribute}={not value}": model_variant(model_class, **{attribute: not value}),
    }


def installed_families() -> dict[str, Family]:
    """Every family whose package is installed, by name; a broken package is an error."""
    families: dict[str, Family] = {}
    for entry in entry_points(group=ENTRY_POINT_GROUP):
        try:
            family = entry.load()
        except Exception as error:
            raise ImportError(
                f"the diffae family entry point {entry.name!r} ({entry.value}) failed to load: "
                f"{error}"
            ) from error
        if not isinstance(family, Family):
            raise TypeError(
                f"entry point {entry.name!r}: expected a diffae_core.Family, got "
                f"{type(family).__name__}"
            )
        families[family.name] = family
    return dict(sorted(families.items()))
