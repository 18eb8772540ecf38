"""fcdm_diffae: SemDisDiffAE diffusion autoencoders (semdisdiffae, _p32, _p32_v2).

>>> model = FCDMDiffAE.from_pretrained("data-archetype/semdisdiffae_p32_v2")
>>> latents = model.encode(images)  # [N, 3, H, W] in [-1, 1] -> [N, 384, H/32, W/32]
>>> recon = model.decode(latents, height=H, width=W)  # float32 [N, 3, H, W]
"""

from typing import Any

from .config import FCDMDiffAEConfig, FCDMDiffAEInferenceConfig

__all__ = ["EncoderPosterior", "FCDMDiffAE", "FCDMDiffAEConfig", "FCDMDiffAEInferenceConfig"]


def __getattr__(name: str) -> Any:
    """The model-side names, imported on first use: loading this package's `diffae.families`
    entry point (`.family`) imports the package, and that must import no torch."""
    if name == "FCDMDiffAE":
        from .model import FCDMDiffAE

        return FCDMDiffAE
    if name == "EncoderPosterior":
        from diffae_core.diffusion import EncoderPosterior

        return EncoderPosterior
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
