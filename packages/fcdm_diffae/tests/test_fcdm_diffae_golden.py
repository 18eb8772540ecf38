"""Golden values: fixed seeds, tiny well-conditioned models, a few outputs at fixed indices.

These are this implementation's own values (no reference outputs can be computed here), recorded
from a float64 run so that they hold on any CPU: they catch unintended numerical changes to
encode, the whitening and the samplers. Re-record (after a deliberate change) with
`uv run python packages/fcdm_diffae/tests/test_fcdm_diffae_golden.py`.
"""

from __future__ import annotations

import pytest
import torch
from torch import Tensor

from diffae_testing import (
    assert_matches_golden,
    golden_values,
    randomize_weights,
    randomize_whitening,
    to_float64,
)
from fcdm_diffae import FCDMDiffAE, FCDMDiffAEInferenceConfig
from fcdm_diffae.family import TINY_VARIANTS

WEIGHT_SCALE = 0.1
"""Std of the random weights: outputs stay of order 1 (|x| < 3). At the default 0.2 they reach
|70| and one float32 ulp of one time-embedding frequency moves them by 2.5e-4."""

INDICES = {
    "latents": [0, 5, -1],
    "one_step": [0, 100, -1],
    "three_steps_pdg": [0, 100, -1],
    "three_steps_ddim_pdg": [0, 100, -1],
}
# name: {output: values at INDICES} for the whitened latents, a 1-step DDIM decode, a 3-step
# DPM++(2M) cosine PDG decode and a 3-step DDIM linear PDG decode, the README's multi-step
# setting (the float64 run; torch 2.x, CPU).
GOLDEN = {
    "semdisdiffae_p32": {
        "latents": (1.357662, 1.437335, -0.9487864),
        "one_step": (-0.1495183, -0.1297974, 0.03631176),
        "three_steps_pdg": (-0.1629557, -0.08366054, 0.05919868),
        "three_steps_ddim_pdg": (-0.1556825, -0.1115647, 0.05157565),
    },
    "semdisdiffae_p32_v2": {
        "latents": (-0.5402834, -0.01132024, -0.9035432),
        "one_step": (-0.07857233, -0.02991682, -0.001650159),
        "three_steps_pdg": (-0.1841875, -0.05431147, 0.04012249),
        "three_steps_ddim_pdg": (-0.09842214, -0.02025519, 0.01747888),
    },
}


def golden_outputs(name: str, *, float64: bool = False) -> dict[str, Tensor]:
    config = TINY_VARIANTS[name]
    model = randomize_whitening(randomize_weights(FCDMDiffAE(config), scale=WEIGHT_SCALE)).eval()
    if float64:
        to_float64(model)
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
    ddim = FCDMDiffAEInferenceConfig(num_steps=3, sampler="ddim", pdg=True, seed=42)
    return {
        "latents": latents,
        "one_step": one_step,
        "three_steps_pdg": three_steps,
        "three_steps_ddim_pdg": model.decode(latents, 2 * p, 2 * p, inference_config=ddim),
    }


@pytest.mark.values
@pytest.mark.parametrize("name", sorted(GOLDEN))
def test_golden_values(name: str) -> None:
    outputs = golden_outputs(name)
    for kind, indices in INDICES.items():
        assert outputs[kind].dtype == torch.float32
        assert_matches_golden(outputs[kind].flatten()[indices], GOLDEN[name][kind])


if __name__ == "__main__":
    for name in TINY_VARIANTS:
        print(f'"{name}": {golden_values(golden_outputs(name, float64=True), INDICES)},')
