"""Golden values: a fixed seed, the tiny well-conditioned model, a few outputs at fixed indices.

These are this implementation's own values (no reference outputs can be computed here), recorded
from a float64 run so that they hold on any CPU: they catch unintended numerical changes to
encode, the decoder, the PDG token masks and the samplers. Re-record (after a deliberate change)
with `uv run python packages/m_diffae/tests/test_m_diffae_golden.py`.
"""

from __future__ import annotations

import pytest
import torch
from torch import Tensor

from diffae_testing import assert_matches_golden, golden_values, randomize_weights, to_float64
from m_diffae import MDiffAE, MDiffAEInferenceConfig
from m_diffae.family import TINY_CONFIG

DECODE_SETTINGS = {
    "one_step": MDiffAEInferenceConfig(seed=42),
    "three_steps_pdg": MDiffAEInferenceConfig(
        num_steps=3, sampler="dpmpp_2m", schedule="cosine", pdg=True, pdg_strength=1.2, seed=42
    ),
    "three_steps_ddim_pdg": MDiffAEInferenceConfig(
        num_steps=3, sampler="ddim", pdg=True, pdg_strength=1.2, seed=42
    ),
}
INDICES = {
    "latents": [0, 5, -1],
    "one_step": [0, 100, -1],
    "three_steps_pdg": [0, 100, -1],
    "three_steps_ddim_pdg": [0, 100, -1],
}
GOLDEN = {
    "latents": (-0.1260688, -0.06436926, 0.2039726),
    "one_step": (-0.61207, -0.3847153, 0.47473),
    "three_steps_pdg": (-0.5919389, 0.1337898, 0.5739234),
    "three_steps_ddim_pdg": (-0.440918, -0.09325266, 0.5206583),
}
"""The float64 run: randomize_weights(seed 0, scale 0.2; outputs |x| < 1), images from seed 11."""


def golden_outputs(*, float64: bool = False) -> dict[str, Tensor]:
    model = randomize_weights(MDiffAE(TINY_CONFIG)).eval()
    if float64:
        to_float64(model)
    p = TINY_CONFIG.effective_patch_size
    height, width = 2 * p, 3 * p
    generator = torch.Generator().manual_seed(11)
    images = torch.rand(1, 3, height, width, generator=generator) * 2 - 1
    outputs = {"latents": model.encode(images)}
    for name, settings in DECODE_SETTINGS.items():
        outputs[name] = model.decode(outputs["latents"], height, width, inference_config=settings)
    return outputs


@pytest.mark.values
def test_golden_values() -> None:
    outputs = golden_outputs()
    for name, indices in INDICES.items():
        assert outputs[name].dtype == torch.float32
        assert_matches_golden(outputs[name].flatten()[indices], GOLDEN[name])


if __name__ == "__main__":
    print(golden_values(golden_outputs(float64=True), INDICES))
