"""The semdisdiffae_p32_v2 card's usage snippet, run unchanged against a tiny saved model.

Loading every hub id from an offline cache, and the error without one, are the contract
suite's (tests/test_families_contract.py)."""

from __future__ import annotations

from pathlib import Path

import torch

from diffae_testing import randomize_weights, randomize_whitening, run_card_snippet
from fcdm_diffae import FCDMDiffAE
from fcdm_diffae.family import TINY_CONFIG

# The card's "Usage" block verbatim (../shared/cards/semdisdiffae_p32_v2.txt); only `image = ...`
# is given a value, and "cuda" becomes "cpu" where the test needs it.
CARD_USAGE = """
import torch
from fcdm_diffae import FCDMDiffAE, FCDMDiffAEInferenceConfig
device = "cuda"
model = FCDMDiffAE.from_pretrained(
"data-archetype/semdisdiffae_p32_v2",
device=device,
dtype=torch.bfloat16,
)
image = ... # [B, 3, H, W] in [-1, 1], H and W divisible by 32
with torch.inference_mode():
    latents = model.encode(image.to(device=device, dtype=torch.bfloat16))
    recon = model.decode(
        latents,
        height=int(image.shape[-2]),
        width=int(image.shape[-1]),
        inference_config=FCDMDiffAEInferenceConfig(num_steps=1),
    )
"""


def test_card_usage_with_a_local_directory(tmp_path: Path) -> None:
    model = randomize_whitening(randomize_weights(FCDMDiffAE(TINY_CONFIG)))
    model.save_pretrained(tmp_path / "model")
    namespace = run_card_snippet(
        CARD_USAGE,
        {
            'device = "cuda"': 'device = "cpu"',
            "image = ...": "image = torch.rand(2, 3, 64, 32) * 2 - 1",
            '"data-archetype/semdisdiffae_p32_v2"': repr(str(tmp_path / "model")),
        },
    )
    latents, recon, image = namespace["latents"], namespace["recon"], namespace["image"]
    assert latents.shape == (2, TINY_CONFIG.latent_channels, 16, 8)
    assert latents.dtype == torch.bfloat16
    assert recon.shape == image.shape and recon.dtype == torch.float32
    assert recon.isfinite().all()
