"""m_diffae: mDiffAE v1, the masked diffusion autoencoder (data-archetype/mdiffae_v1).

model = MDiffAE.from_pretrained("data-archetype/mdiffae_v1", device="cuda")
latents = model.encode(images)            # [N, 3, H, W] in [-1, 1] -> [N, 64, H/16, W/16]
recon = model.decode(latents, height=H, width=W)   # 1 DDIM step, float32
"""

from .config import MDiffAEConfig, MDiffAEInferenceConfig
from .model import MDiffAE
from .open_points import OpenPoints

__all__ = ["MDiffAE", "MDiffAEConfig", "MDiffAEInferenceConfig", "OpenPoints"]
