"""full_capacitor: an FCDM diffusion autoencoder distilled from the FLUX.2 latent space.

model = FullCapacitor.from_pretrained("data-archetype/full_capacitor", dtype=torch.bfloat16)
latents = model.encode(images)  # [N, 3, H, W] in [-1, 1] -> [N, 128, H/16, W/16], float32
recon = model.decode(latents, height=H, width=W)  # [N, 3, H, W], float32, ~[-1, 1]
"""

from typing import Any

from .config import FullCapacitorConfig, FullCapacitorInferenceConfig

__all__ = [
    "EncoderPosterior",
    "FullCapacitor",
    "FullCapacitorConfig",
    "FullCapacitorInferenceConfig",
]


def __getattr__(name: str) -> Any:
    """The model-side names, imported on first use: loading this package's `diffae.families`
    entry point (`.family`) imports the package, and that must import no torch."""
    if name == "FullCapacitor":
        from .model import FullCapacitor

        return FullCapacitor
    if name == "EncoderPosterior":
        from diffae_core.diffusion import EncoderPosterior

        return EncoderPosterior
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
