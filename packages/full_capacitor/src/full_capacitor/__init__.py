"""full_capacitor: an FCDM diffusion autoencoder distilled from the FLUX.2 latent space.

model = FullCapacitor.from_pretrained("data-archetype/full_capacitor", dtype=torch.bfloat16)
latents = model.encode(images)  # [N, 3, H, W] in [-1, 1] -> [N, 128, H/16, W/16], float32
recon = model.decode(latents, height=H, width=W)  # [N, 3, H, W], float32, ~[-1, 1]
"""

from diffae_core.diffusion import EncoderPosterior

from .config import FullCapacitorConfig, FullCapacitorInferenceConfig
from .model import FullCapacitor

__all__ = [
    "EncoderPosterior",
    "FullCapacitor",
    "FullCapacitorConfig",
    "FullCapacitorInferenceConfig",
]
