"""What the VAE objects ask of ComfyUI, in one place: imported from `comfy` at call time.

The VAE objects never import `comfy` themselves; they hold a runtime. `ComfyRuntime` is the real
one (ComfyUI's model management); tests pass a small fake written from the same contract.
"""

from __future__ import annotations

from typing import Any, Protocol

import torch


class Runtime(Protocol):
    """The part of ComfyUI's model management the VAE objects use."""

    def load_device(self) -> torch.device:
        """Where VAEs run (`model_management.vae_device()`)."""

    def offload_device(self) -> torch.device:
        """Where VAEs wait between runs (`model_management.vae_offload_device()`)."""

    def intermediate_device(self) -> torch.device:
        """Where IMAGE and LATENT tensors live between nodes."""

    def intermediate_dtype(self) -> torch.dtype:
        """Their dtype."""

    def make_patcher(self, model: torch.nn.Module, load_device: torch.device) -> Any:
        """A `ModelPatcher` managing `model` (moved to `load_device` when loaded)."""

    def load(self, patcher: Any, memory_required: int) -> None:
        """Load the model, first freeing `memory_required` bytes on its device."""

    def free_memory(self, patcher: Any, device: torch.device) -> int:
        """Bytes free on `device` once the model is loaded."""

    def is_out_of_memory(self, error: BaseException) -> bool:
        """Whether `error` is the device running out of memory."""

    def empty_cache(self) -> None:
        """Return cached blocks to the device after an out-of-memory error."""


class ComfyRuntime:
    """`Runtime` over `comfy.model_management` and `comfy.model_patcher` (ComfyUI's own)."""

    @staticmethod
    def _management() -> Any:
        import comfy.model_management

        return comfy.model_management

    def load_device(self) -> torch.device:
        return self._management().vae_device()

    def offload_device(self) -> torch.device:
        return self._management().vae_offload_device()

    def intermediate_device(self) -> torch.device:
        return self._management().intermediate_device()

    def intermediate_dtype(self) -> torch.dtype:
        return self._management().intermediate_dtype()

    def make_patcher(self, model: torch.nn.Module, load_device: torch.device) -> Any:
        import comfy.model_patcher

        return comfy.model_patcher.ModelPatcher(
            model, load_device=load_device, offload_device=self.offload_device()
        )

    def load(self, patcher: Any, memory_required: int) -> None:
        self._management().load_models_gpu([patcher], memory_required=memory_required)

    def free_memory(self, patcher: Any, device: torch.device) -> int:
        return int(self._management().get_free_memory(device))

    def is_out_of_memory(self, error: BaseException) -> bool:
        return bool(self._management().is_oom(error))

    def empty_cache(self) -> None:
        self._management().soft_empty_cache()
