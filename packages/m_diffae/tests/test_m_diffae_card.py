"""The mdiffae_v1 card's snippets, run unchanged against tiny saved models."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch

from diffae_testing import add_to_hub_cache, randomize_weights, run_card_snippet
from m_diffae import MDiffAE
from m_diffae.family import TINY_CONFIG
from m_diffae.open_points import REPO_ID_ALIASES

# The card's "Quick Start" and "Recommended Settings" blocks verbatim
# (../shared/cards/mdiffae_v1.txt); only `images = ...` is given a value and "cuda" becomes
# "cpu". The card leaves H and W to the reader: they are defined before the snippet runs.
CARD_QUICK_START = """
import torch
from m_diffae import MDiffAE

# Load from HuggingFace Hub (or a local path)
model = MDiffAE.from_pretrained("data-archetype/mdiffae_v1", device="cuda")

# Encode
images = ... # [B, 3, H, W] in [-1, 1], H and W divisible by 16
latents = model.encode(images)

# Decode (1 step by default — PSNR-optimal)
recon = model.decode(latents, height=H, width=W)

# Reconstruct (encode + 1-step decode)
recon = model.reconstruct(images)
"""
CARD_SETTINGS = """
from m_diffae import MDiffAEInferenceConfig

# PSNR-optimal (fast, 1 step)
cfg = MDiffAEInferenceConfig(num_steps=1, sampler="ddim")
recon = model.decode(latents, height=H, width=W, inference_config=cfg)
"""
H, W = 32, 48
PRELUDE = f"H, W = {H}, {W}\n"
IMAGES = f"torch.rand(2, 3, {H}, {W}) * 2 - 1"


def replacements(model_reference: str) -> dict[str, str]:
    return {
        'device="cuda"': 'device="cpu"',
        "images = ...": f"images = {IMAGES}",
        '"data-archetype/mdiffae_v1"': model_reference,
    }


def card_code(model_reference: str) -> str:
    code = PRELUDE + CARD_QUICK_START + CARD_SETTINGS
    for old, new in replacements(model_reference).items():
        code = code.replace(old, new)
    return code


def save_tiny(folder: Path) -> None:
    randomize_weights(MDiffAE(TINY_CONFIG)).save_pretrained(folder)


def test_card_usage_with_a_local_directory(tmp_path: Path) -> None:
    save_tiny(tmp_path / "model")
    code = PRELUDE + CARD_QUICK_START + CARD_SETTINGS
    namespace = run_card_snippet(code, replacements(repr(str(tmp_path / "model"))))
    latents, recon, images = namespace["latents"], namespace["recon"], namespace["images"]
    assert latents.shape == (2, TINY_CONFIG.bottleneck_dim, H // 4, W // 4)
    assert latents.dtype == torch.float32
    assert recon.shape == images.shape and recon.dtype == torch.float32
    assert recon.isfinite().all()


def test_card_hub_id_resolves_to_the_served_spelling_offline(tmp_path: Path) -> None:
    """The card's `mdiffae_v1` loads from a cache holding the repo the Hub serves (`mdiffae-v1`);
    the served spelling itself works too."""
    save_tiny(tmp_path / "model")
    files = {name: tmp_path / "model" / name for name in ("config.json", "model.safetensors")}
    served = REPO_ID_ALIASES["data-archetype/mdiffae_v1"]
    assert served == "data-archetype/mdiffae-v1"
    add_to_hub_cache(tmp_path / "hub", served, files)
    code = card_code('"data-archetype/mdiffae_v1"') + "\nprint(tuple(recon.shape))\n"
    code += f"print(type(MDiffAE.from_pretrained({served!r})).__name__)\n"
    env = dict(
        os.environ, HF_HUB_CACHE=str(tmp_path / "hub"), HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["(2,", "3,", f"{H},", f"{W})", "MDiffAE"]
