"""The dinac_ae_d2 card's usage snippet, run unchanged against tiny saved models."""

from __future__ import annotations

from pathlib import Path

import huggingface_hub.constants
import pytest
import torch

from diffae_core.testing import add_to_hub_cache, randomize_weights, randomize_whitening
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
IMAGE = "torch.rand(1, 3, 16, 24) * 2 - 1"


def card_code(model_reference: str) -> str:
    code = CARD_USAGE.replace('device = "cuda"', 'device = "cpu"')
    code = code.replace("image = ...", f"image = {IMAGE}")
    return code.replace('"data-archetype/dinac_ae_d2"', model_reference)


def save_tiny(folder: Path) -> None:
    model = randomize_whitening(randomize_weights(DinacAE(TINY_CONFIG)))
    model.save_pretrained(folder)


def test_card_usage_with_a_local_directory(tmp_path: Path) -> None:
    save_tiny(tmp_path / "model")
    namespace: dict = {}
    exec(card_code(repr(str(tmp_path / "model"))), namespace)
    latents, recon, image = namespace["latents"], namespace["recon"], namespace["image"]
    assert latents.shape == (1, TINY_CONFIG.latent_channels, 4, 6)
    assert latents.dtype == torch.float32
    class_token = namespace["class_token"]
    assert class_token.shape == (1, TINY_CONFIG.class_head_feature_dim)
    assert class_token.dtype == torch.float32
    assert recon.shape == image.shape and recon.dtype == torch.float32
    assert recon.isfinite().all()
    assert namespace["model"].ordinary_weight_storage_dtype == torch.bfloat16


def test_card_usage_with_the_hub_id_from_an_offline_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The hub id itself resolves from a Hugging Face cache in offline mode (no network)."""
    save_tiny(tmp_path / "model")
    files = {name: tmp_path / "model" / name for name in ("config.json", "model.safetensors")}
    add_to_hub_cache(tmp_path / "hub", "data-archetype/dinac_ae_d2", files)
    # In-process equivalent of HF_HUB_CACHE=... HF_HUB_OFFLINE=1 (read when the hub is imported).
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    namespace: dict = {}
    exec(card_code('"data-archetype/dinac_ae_d2"'), namespace)
    assert namespace["recon"].shape == (1, 3, 16, 24)
    assert namespace["class_token"].shape == (1, TINY_CONFIG.class_head_feature_dim)
