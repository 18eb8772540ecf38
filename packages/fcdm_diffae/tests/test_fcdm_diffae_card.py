"""The semdisdiffae_p32_v2 card's usage snippet, run unchanged against tiny saved models."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import torch

from diffae_core.testing import add_to_hub_cache, randomize_weights, randomize_whitening
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
IMAGE = "torch.rand(2, 3, 64, 32) * 2 - 1"


def card_code(model_reference: str) -> str:
    code = CARD_USAGE.replace('device = "cuda"', 'device = "cpu"')
    code = code.replace("image = ...", f"image = {IMAGE}")
    return code.replace('"data-archetype/semdisdiffae_p32_v2"', model_reference)


def save_tiny(folder: Path) -> None:
    model = randomize_whitening(randomize_weights(FCDMDiffAE(TINY_CONFIG)))
    model.save_pretrained(folder)


def test_card_usage_with_a_local_directory(tmp_path: Path) -> None:
    save_tiny(tmp_path / "model")
    namespace: dict = {}
    exec(card_code(repr(str(tmp_path / "model"))), namespace)
    latents, recon, image = namespace["latents"], namespace["recon"], namespace["image"]
    assert latents.shape == (2, TINY_CONFIG.latent_channels, 16, 8)
    assert latents.dtype == torch.bfloat16
    assert recon.shape == image.shape and recon.dtype == torch.float32
    assert recon.isfinite().all()


def test_card_usage_with_the_hub_id_from_an_offline_cache(tmp_path: Path) -> None:
    """The hub id itself resolves from a Hugging Face cache with HF_HUB_OFFLINE=1."""
    save_tiny(tmp_path / "model")
    files = {name: tmp_path / "model" / name for name in ("config.json", "model.safetensors")}
    add_to_hub_cache(tmp_path / "hub", "data-archetype/semdisdiffae_p32_v2", files)
    code = card_code('"data-archetype/semdisdiffae_p32_v2"') + "\nprint(tuple(recon.shape))\n"
    env = dict(os.environ, HF_HUB_CACHE=str(tmp_path / "hub"), HF_HUB_OFFLINE="1")
    result = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "(2, 3, 64, 32)"


def test_uncached_hub_id_offline_fails_with_instructions(tmp_path: Path) -> None:
    code = textwrap.dedent(
        """
        from fcdm_diffae import FCDMDiffAE
        FCDMDiffAE.from_pretrained("data-archetype/semdisdiffae_p32_v2")
        """
    )
    env = dict(os.environ, HF_HUB_CACHE=str(tmp_path / "empty"), HF_HUB_OFFLINE="1")
    result = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode != 0
    assert "ModelNotAvailableError" in result.stderr
    assert "'data-archetype/semdisdiffae_p32_v2'" in result.stderr
    assert "pass a local directory" in result.stderr
