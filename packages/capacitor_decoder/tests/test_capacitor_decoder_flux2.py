"""FLUX.2 interop against diffusers' own code (test-only dependency) and the card's snippet.

Compared bit for bit in float32: `Flux2Pipeline._patchify_latents` / `_unpatchify_latents`, and
`Flux2Pipeline._encode_vae_image` (patchify + BN whitening) run on diffusers' own code with a
stand-in encoder output. The pipeline's final un-whitening is inline in `__call__` (no helper),
so `flux2_dewhiten` is compared with those two lines transcribed.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from capacitor_decoder import (
    CapacitorDecoder,
    Flux2Statistics,
    flux2_dewhiten,
    flux2_patchify,
    flux2_unpatchify,
    flux2_whiten,
)
from capacitor_decoder.family import TINY_CONFIG
from diffae_testing import randomize_weights

diffusers = pytest.importorskip("diffusers")
from diffusers.models import AutoencoderKLFlux2  # noqa: E402
from diffusers.pipelines.flux2.pipeline_flux2 import Flux2Pipeline  # noqa: E402

WHITENING_ROUND_TRIP = 1e-5


@pytest.fixture(scope="module")
def flux2_vae() -> AutoencoderKLFlux2:
    """diffusers' default FLUX.2 VAE config, random weights, non-trivial BN statistics."""
    torch.manual_seed(0)
    vae = AutoencoderKLFlux2().eval()
    generator = torch.Generator().manual_seed(11)
    with torch.no_grad():
        vae.bn.running_mean.copy_(torch.randn(128, generator=generator))
        vae.bn.running_var.copy_(0.2 + 3 * torch.rand(128, generator=generator))
    return vae


def flux2_latents(dtype: torch.dtype = torch.float32) -> torch.Tensor:
    generator = torch.Generator().manual_seed(5)
    return torch.randn(2, 32, 6, 8, generator=generator).to(dtype)


def card_patchify_and_whiten(latents: torch.Tensor, vae: AutoencoderKLFlux2) -> torch.Tensor:
    """The card's `flux2_patchify_and_whiten`, verbatim."""
    b, c, h, w = latents.shape
    if h % 2 != 0 or w % 2 != 0:
        raise ValueError(f"Expected even FLUX.2 latent grid, got H={h}, W={w}")
    z = latents.reshape(b, c, h // 2, 2, w // 2, 2)
    z = z.permute(0, 1, 3, 5, 2, 4).reshape(b, c * 4, h // 2, w // 2)
    mean = vae.bn.running_mean.view(1, -1, 1, 1).to(device=z.device, dtype=torch.float32)
    var = vae.bn.running_var.view(1, -1, 1, 1).to(device=z.device, dtype=torch.float32)
    std = torch.sqrt(var + float(vae.config.batch_norm_eps))
    return (z.to(torch.float32) - mean) / std


def test_patchify_is_bit_identical_to_the_pipeline_helpers() -> None:
    latents = flux2_latents()
    patchified = flux2_patchify(latents)
    assert patchified.dtype == torch.float32
    assert torch.equal(patchified, Flux2Pipeline._patchify_latents(latents))
    assert torch.equal(flux2_unpatchify(patchified), Flux2Pipeline._unpatchify_latents(patchified))
    assert torch.equal(flux2_unpatchify(patchified), latents)
    # FLUX.2's 2x2 patchify index map: channel c*4 + 2*i + j holds row offset i, column offset j.
    assert torch.equal(patchified[:, 4 * 5 + 2 * 1 + 0], latents[:, 5, 1::2, 0::2])
    assert torch.equal(flux2_patchify(flux2_latents(torch.bfloat16)), patchified.bfloat16().float())
    with pytest.raises(ValueError, match="even"):
        flux2_patchify(torch.zeros(1, 32, 3, 4))


def pipeline_encode_vae_image(vae: AutoencoderKLFlux2, latents: torch.Tensor) -> torch.Tensor:
    """diffusers' `Flux2Pipeline._encode_vae_image`, unmodified, on an encoder stand-in whose
    posterior mode is `latents`: its own patchify and BN whitening with `vae`'s statistics."""
    output = SimpleNamespace(latent_dist=SimpleNamespace(mode=lambda: latents))
    stand_in_vae = SimpleNamespace(encode=lambda image: output, bn=vae.bn, config=vae.config)
    pipeline = SimpleNamespace(vae=stand_in_vae, _patchify_latents=Flux2Pipeline._patchify_latents)
    image = torch.zeros(latents.shape[0], 3, 8 * latents.shape[-2], 8 * latents.shape[-1])
    return Flux2Pipeline._encode_vae_image(pipeline, image, generator=None)


def test_whitening_is_bit_identical_to_the_pipeline_and_card(flux2_vae) -> None:
    bn, eps = flux2_vae.bn, flux2_vae.config.batch_norm_eps
    patchified = flux2_patchify(flux2_latents())
    ours = flux2_whiten(patchified, bn.running_mean, bn.running_var)
    assert torch.equal(ours, pipeline_encode_vae_image(flux2_vae, flux2_latents()))
    assert torch.equal(ours, card_patchify_and_whiten(flux2_latents(), flux2_vae))
    # Flux2Pipeline.__call__'s final un-whitening (inline there, no helper to call).
    mean = bn.running_mean.view(1, -1, 1, 1)
    std = torch.sqrt(bn.running_var.view(1, -1, 1, 1) + eps)
    assert torch.equal(flux2_dewhiten(ours, bn.running_mean, bn.running_var), ours * std + mean)


def test_decoder_statistics_check_against_the_vae(flux2_vae) -> None:
    decoder = CapacitorDecoder(TINY_CONFIG)
    with torch.no_grad():
        decoder.latent_norm_running_mean.copy_(flux2_vae.bn.running_mean)
        decoder.latent_norm_running_var.copy_(flux2_vae.bn.running_var)
    decoder.check_flux2_statistics(flux2_vae)
    assert not decoder.flux2_statistics().differences(Flux2Statistics.from_vae(flux2_vae))
    with torch.no_grad():
        decoder.latent_norm_running_var[3] += 1e-3
    with pytest.raises(ValueError, match=r"running_var: 1 of 128 values differ"):
        decoder.check_flux2_statistics(flux2_vae)


def test_card_usage_snippet(flux2_vae, tmp_path: Path) -> None:
    """The card's Usage section; local folders replace the Hub ids, "cpu" replaces "cuda"."""
    vae_root = tmp_path / "VAEs"
    flux2_vae.save_pretrained(vae_root / "FLUX2-VAE")
    decoder_dir = tmp_path / "capacitor_decoder"
    tiny = randomize_weights(CapacitorDecoder(TINY_CONFIG))
    with torch.no_grad():
        tiny.latent_norm_running_mean.copy_(flux2_vae.bn.running_mean)
        tiny.latent_norm_running_var.copy_(flux2_vae.bn.running_var)
    tiny.save_pretrained(decoder_dir)

    # --- card snippet (the helper above is the card's flux2_patchify_and_whiten) ---
    from diffusers.models import AutoencoderKLFlux2

    from capacitor_decoder import CapacitorDecoder as CardDecoder
    from capacitor_decoder import CapacitorDecoderInferenceConfig

    flux2_patchify_and_whiten = card_patchify_and_whiten
    device = "cpu"
    flux2 = AutoencoderKLFlux2.from_pretrained(
        str(vae_root),
        subfolder="FLUX2-VAE",
        torch_dtype=torch.bfloat16,
    ).to(device)
    decoder = CardDecoder.from_pretrained(
        str(decoder_dir),
        device=device,
        dtype=torch.bfloat16,
    )
    image = torch.rand(1, 3, 32, 32) * 2 - 1  # [1, 3, H, W] in [-1, 1], H and W divisible by 16
    with torch.inference_mode():
        posterior = flux2.encode(image.to(device=device, dtype=torch.bfloat16))
        latent_mean = posterior.latent_dist.mean
        latents = flux2_patchify_and_whiten(latent_mean, flux2)
        recon = decoder.decode(
            latents,
            height=int(image.shape[-2]),
            width=int(image.shape[-1]),
            inference_config=CapacitorDecoderInferenceConfig(num_steps=1),
        )
    # --- end of snippet ---
    assert recon.shape == image.shape and recon.dtype == torch.float32
    assert recon.isfinite().all()
    decoder.check_flux2_statistics(flux2_vae)
    # torch_dtype=bfloat16 rounds the VAE's BN buffers too, so the card's helper whitens with
    # bf16-rounded statistics while the decoder un-whitens with the float32 ones.
    with pytest.raises(ValueError, match="running_mean"):
        decoder.check_flux2_statistics(flux2)
    with torch.inference_mode():
        raw = flux2_patchify(latent_mean)
        seeded = CapacitorDecoderInferenceConfig(seed=0)
        from_whitened = decoder.decode(latents, 32, 32, inference_config=seeded)
        from_raw = decoder.decode(
            raw, 32, 32, inference_config=seeded, latents_are_flux2_whitened=False
        )
    # Same bf16 decoder input up to the float32 whitening round trip (bf16-rounded after it).
    assert (from_whitened - from_raw).abs().max() < 0.05 * from_raw.abs().max()
