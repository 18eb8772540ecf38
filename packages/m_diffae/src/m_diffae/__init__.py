"""m_diffae: mDiffAE v1, the masked diffusion autoencoder (data-archetype/mdiffae_v1).

model = MDiffAE.from_pretrained("data-archetype/mdiffae_v1", device="cuda")
latents = model.encode(images)            # [N, 3, H, W] in [-1, 1] -> [N, 64, H/16, W/16]
recon = model.decode(latents, height=H, width=W)   # 1 DDIM step, float32
"""

from typing import Any

from .config import MDiffAEConfig, MDiffAEInferenceConfig
from .open_points import OpenPoints

__all__ = ["MDiffAE", "MDiffAEConfig", "MDiffAEInferenceConfig", "OpenPoints"]


def __getattr__(name: str) -> Any:
    """The model-side names, imported on first use: loading this package's `diffae.families`
    entry point (`.family`) imports the package, and that must import no torch."""
    if name == "MDiffAE":
        from .model import MDiffAE

        return MDiffAE
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
