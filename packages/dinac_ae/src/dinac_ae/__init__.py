"""dinac_ae: DINAC-AE and DINAC-AE-D2, transformer-encoder diffusion autoencoders.

model = DinacAE.from_pretrained("data-archetype/dinac_ae_d2", dtype=torch.bfloat16)
latents = model.encode(images)             # [N, 3, H, W] in [-1, 1] -> [N, 128, H/16, W/16]
class_token = model.predict_class(latents)  # [N, 768] DINO class-token prediction
recon = model.decode(latents, height=H, width=W)
"""

from typing import Any

from .config import DinacAEConfig, DinacAEInferenceConfig

__all__ = ["DinacAE", "DinacAEConfig", "DinacAEInferenceConfig", "EncoderPosterior"]


def __getattr__(name: str) -> Any:
    """The model-side names, imported on first use: loading this package's `diffae.families`
    entry point (`.family`) imports the package, and that must import no torch."""
    if name in ("DinacAE", "EncoderPosterior"):
        from . import model

        return getattr(model, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
