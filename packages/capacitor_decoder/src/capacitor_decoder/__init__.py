"""capacitor_decoder: a fast FCDM diffusion decoder for FLUX.2 latents.

decoder = CapacitorDecoder.from_pretrained("data-archetype/capacitor_decoder")
stats = decoder.flux2_statistics()
z128 = flux2_patchify(z32)                  # [N, 32, H/8, W/8] -> [N, 128, H/16, W/16]
latents = flux2_whiten(z128, stats.running_mean, stats.running_var, stats.eps)
recon = decoder.decode(latents, height=H, width=W)  # [N, 3, H, W], float32, ~[-1, 1]
"""

from typing import Any

from .config import CapacitorDecoderConfig, CapacitorDecoderInferenceConfig

__all__ = [
    "CapacitorDecoder",
    "CapacitorDecoderConfig",
    "CapacitorDecoderInferenceConfig",
    "Flux2Statistics",
    "flux2_dewhiten",
    "flux2_patchify",
    "flux2_unpatchify",
    "flux2_whiten",
]


def __getattr__(name: str) -> Any:
    """The model-side names, imported on first use: loading this package's `diffae.families`
    entry point (`.family`) imports the package, and that must import no torch."""
    if name == "CapacitorDecoder":
        from .model import CapacitorDecoder

        return CapacitorDecoder
    if name in __all__:
        from . import flux2

        return getattr(flux2, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
