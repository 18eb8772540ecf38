"""The dinac_ae_d2 card's usage snippet, run unchanged against a tiny saved model.

Loading every hub id from an offline cache is the contract suite's
(tests/test_families_contract.py)."""

from __future__ import annotations

from pathlib import Path

import torch

from diffae_testing import randomize_weights, randomize_whitening, run_card_snippet
from dinac_ae import DinacAE
from dinac_ae.family import TINY_CONFIG

# The card's "Usage" block verbatim (../shared/cards/dinac_ae_d2.txt), with the indentation the
# page lost restored; only `image = ...` is given a value, and "cuda" becomes "cpu".
CARD_USAGE = """
import torch
from dinac_ae import DinacAE, DinacAEInferenceConfig
device = "cuda"
model = DinacAE.from_pretrained(
"data-archetype/dinac_ae_d2",
device=device,
dtype=torch.bfloat16,
)
image = ... # [1, 3, H, W] in [-1, 1], H and W divisible by 16
with torch.inference_mode():
    latents = model.encode(image.to(device=device, dtype=torch.bfloat16))
    class_token = model.predict_class(latents)
    recon = model.decode(
        latents,
        height=int(image.shape[-2]),
        width=int(image.shape[-1]),
        inference_config=DinacAEInferenceConfig(num_steps=1),
    )
"""


def test_card_usage_with_a_local_directory(tmp_path: Path) -> None:
    model = randomize_whitening(randomize_weights(DinacAE(TINY_CONFIG)))
    model.save_pretrained(tmp_path / "model")
    namespace = run_card_snippet(
        CARD_USAGE,
        {
            'device = "cuda"': 'device = "cpu"',
            "image = ...": "image = torch.rand(1, 3, 16, 24) * 2 - 1",
            '"data-archetype/dinac_ae_d2"': repr(str(tmp_path / "model")),
        },
    )
    latents, recon, image = namespace["latents"], namespace["recon"], namespace["image"]
    assert latents.shape == (1, TINY_CONFIG.latent_channels, 4, 6)
    assert latents.dtype == torch.float32
    class_token = namespace["class_token"]
    assert class_token.shape == (1, TINY_CONFIG.class_head_feature_dim)
    assert class_token.dtype == torch.float32
    assert recon.shape == image.shape and recon.dtype == torch.float32
    assert recon.isfinite().all()
    assert namespace["model"].ordinary_weight_storage_dtype == torch.bfloat16
