"""encode and decode trace as one graph: no data-dependent Python branches, no `.item()`.

Every installed family, on its tiny config. `decode` gets its initial noise as an argument
(`noise=`): a seeded draw creates a torch.Generator, which dynamo cannot put in a graph.
"""

from __future__ import annotations

import pytest
import torch

from diffae_core.families import installed_families
from diffae_testing import randomize_weights

FLOAT32_ROUNDING = 1e-5
FAMILIES = installed_families()


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_encode_and_decode_compile_fullgraph(name: str) -> None:
    family = FAMILIES[name]
    config = family.tiny_config
    torch._dynamo.reset()
    model = randomize_weights(family.model_class(config)).eval()
    p = config.effective_patch_size
    height, width = 2 * p, 3 * p
    images = torch.rand(1, 3, height, width, generator=torch.Generator().manual_seed(0)) * 2 - 1
    noise = torch.randn(1, 3, height, width) * config.pixel_noise_std
    settings = family.inference_config_class(num_steps=2, pdg=True)

    with torch.no_grad():
        if hasattr(model, "encode"):
            encode = torch.compile(model.encode, fullgraph=True, backend="aot_eager")
            latents = encode(images)
            torch.testing.assert_close(latents, model.encode(images), rtol=0, atol=FLOAT32_ROUNDING)
        else:
            latents = torch.randn(1, config.latent_channels, height // p, width // p)
        decode = torch.compile(model.decode, fullgraph=True, backend="aot_eager")
        # The same global RNG state for both calls: m_diffae's unseeded PDG masks draw from it.
        torch.manual_seed(0)
        compiled = decode(latents, height, width, inference_config=settings, noise=noise)
        torch.manual_seed(0)
        eager = model.decode(latents, height, width, inference_config=settings, noise=noise)
    torch.testing.assert_close(
        compiled, eager, rtol=0, atol=FLOAT32_ROUNDING * max(1.0, eager.abs().max().item())
    )
