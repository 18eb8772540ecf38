"""Golden values: fixed seeds, tiny fp32 models on the CPU, a few outputs at fixed indices.

These are this implementation's own values (no reference outputs can be computed here): they
catch unintended numerical changes to encode, the whitening and the samplers.
"""

from __future__ import annotations

import pytest
import torch

from diffae_core.testing import assert_close, randomize_weights, randomize_whitening
from fcdm_diffae import FCDMDiffAE, FCDMDiffAEInferenceConfig
from fcdm_diffae.family import TINY_VARIANTS

GOLDEN_RTOL = 1e-5
GOLDEN_ATOL = 1e-5
"""Tight, not bitwise: CPU kernels may reorder float32 sums across torch builds."""

INDICES = {"latents": [0, 5, -1], "one_step": [0, 100, -1], "three_steps_pdg": [0, 100, -1]}
# name: (latents, 1-step DDIM decode, 3-step DPM++(2M) cosine PDG decode) at INDICES
GOLDEN = {
    "semdisdiffae": (
        (-1.060503, 0.1571874, -0.6578363),
        (4.103938, 0.1264453, -2.548759),
        (21.39711, -1.483915, -4.763389),
    ),
    "semdisdiffae_p32": (
        (1.257071, 1.942575, -0.7948816),
        (1.897732, -4.375809, -2.069778),
        (-0.1408353, 16.90368, 8.248348),
    ),
    "semdisdiffae_p32_v2": (
        (-1.060503, 0.1571874, -0.6578363),
        (4.103938, 0.1264453, -2.548759),
        (21.39711, -1.483915, -4.763389),
    ),
}


@pytest.mark.parametrize("name", sorted(GOLDEN))
def test_golden_values(name: str) -> None:
    config = TINY_VARIANTS[name]
    model = randomize_whitening(randomize_weights(FCDMDiffAE(config))).eval()
    p = config.effective_patch_size
    images = torch.rand(1, 3, 2 * p, 2 * p, generator=torch.Generator().manual_seed(11)) * 2 - 1
    latents = model.encode(images)
    one_step = model.decode(
        latents, 2 * p, 2 * p, inference_config=FCDMDiffAEInferenceConfig(seed=42)
    )
    settings = FCDMDiffAEInferenceConfig(
        num_steps=3, sampler="dpmpp_2m", schedule="cosine", pdg=True, seed=42
    )
    three_steps = model.decode(latents, 2 * p, 2 * p, inference_config=settings)
    outputs = {"latents": latents, "one_step": one_step, "three_steps_pdg": three_steps}
    for (kind, indices), expected in zip(INDICES.items(), GOLDEN[name], strict=True):
        actual = outputs[kind].flatten()[indices]
        assert_close(actual, torch.tensor(expected), atol=GOLDEN_ATOL, rtol=GOLDEN_RTOL)
