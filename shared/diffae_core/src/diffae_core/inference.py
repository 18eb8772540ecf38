"""Inference settings shared by every VP decoder: steps, sampler, schedule, PDG, seed."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from .samplers import SAMPLER_NAMES
from .vp import SCHEDULE_KINDS, get_schedule


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
