"""Golden values: a fixed seed, the tiny fp32 model on the CPU, a few outputs at fixed indices.

These are this implementation's own values (no reference outputs can be computed here): they
catch unintended numerical changes to encode, the decoder, the PDG token masks and the samplers.
"""

from __future__ import annotations

import torch

from diffae_core.testing import assert_close, randomize_weights
from m_diffae import MDiffAE, MDiffAEInferenceConfig
from m_diffae.family import TINY_CONFIG

GOLDEN_RTOL = 1e-5
GOLDEN_ATOL = 1e-5
"""Tight, not bitwise: CPU kernels may reorder float32 sums across torch builds."""

DECODE_SETTINGS = {
    "one_step": MDiffAEInferenceConfig(seed=42),
    "three_steps_pdg": MDiffAEInferenceConfig(
        num_steps=3, sampler="dpmpp_2m", schedule="cosine", pdg=True, pdg_strength=1.2, seed=42
    ),
}
INDICES = {"latents": [0, 5, -1], "one_step": [0, 100, -1], "three_steps_pdg": [0, 100, -1]}
GOLDEN = {
    "latents": (-0.1260687, -0.06436928, 0.2039726),
    "one_step": (-0.61207, -0.3847107, 0.4747312),
    "three_steps_pdg": (-0.5919404, 0.1337925, 0.5739236),
}
"""Recorded with torch 2.15 on the CPU: randomize_weights(seed 0), images from seed 11."""


def test_golden_values() -> None:
    model = randomize_weights(MDiffAE(TINY_CONFIG)).eval()
    p = TINY_CONFIG.effective_patch_size
    height, width = 2 * p, 3 * p
    generator = torch.Generator().manual_seed(11)
    images = torch.rand(1, 3, height, width, generator=generator) * 2 - 1
    latents = model.encode(images)
    outputs = {"latents": latents}
    for name, settings in DECODE_SETTINGS.items():
        outputs[name] = model.decode(latents, height, width, inference_config=settings)
    for name, indices in INDICES.items():
        actual = outputs[name].flatten()[indices]
        expected = torch.tensor(GOLDEN[name])
        assert_close(actual, expected, atol=GOLDEN_ATOL, rtol=GOLDEN_RTOL)
