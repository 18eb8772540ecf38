"""fcdm_diffae: SemDisDiffAE diffusion autoencoders (semdisdiffae, _p32, _p32_v2).

>>> model = FCDMDiffAE.from_pretrained("data-archetype/semdisdiffae_p32_v2")
>>> latents = model.encode(images)  # [N, 3, H, W] in [-1, 1] -> [N, 384, H/32, W/32]
>>> recon = model.decode(latents, height=H, width=W)  # float32 [N, 3, H, W]
"""

from diffae_core.diffusion import EncoderPosterior

from .config import FCDMDiffAEConfig, FCDMDiffAEInferenceConfig
from .model import FCDMDiffAE

__all__ = ["EncoderPosterior", "FCDMDiffAE", "FCDMDiffAEConfig", "FCDMDiffAEInferenceConfig"]
