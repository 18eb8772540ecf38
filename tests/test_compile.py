"""encode and decode trace as one graph: no data-dependent Python branches, no `.item()`."""

from __future__ import annotations

import pytest
import torch

from diffae_core.testing import assert_close, randomize_weights, randomize_whitening

fcdm_diffae = pytest.importorskip("fcdm_diffae")
from fcdm_diffae.family import TINY_CONFIG  # noqa: E402

FLOAT32_ROUNDING = 1e-5


def test_fcdm_diffae_encode_and_decode_compile_fullgraph() -> None:
    torch._dynamo.reset()
    model = randomize_whitening(randomize_weights(fcdm_diffae.FCDMDiffAE(TINY_CONFIG))).eval()
    images = torch.rand(1, 3, 8, 12) * 2 - 1
    noise = torch.randn(1, 3, 8, 12) * TINY_CONFIG.pixel_noise_std
    cfg = fcdm_diffae.FCDMDiffAEInferenceConfig(num_steps=2, pdg=True)

    encode = torch.compile(model.encode, fullgraph=True, backend="aot_eager")
    decode = torch.compile(model.decode, fullgraph=True, backend="aot_eager")
    with torch.no_grad():
        latents = encode(images)
        recon = decode(latents, 8, 12, inference_config=cfg, noise=noise)
        assert_close(latents, model.encode(images), atol=FLOAT32_ROUNDING)
        eager = model.decode(latents, 8, 12, inference_config=cfg, noise=noise)
    assert_close(recon, eager, atol=FLOAT32_ROUNDING)
