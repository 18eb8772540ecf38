"""A tiny random-weight capacitor decoder: the whole public API on CPU."""

from __future__ import annotations

import pytest
import torch

from capacitor_decoder import (
    CapacitorDecoder,
    CapacitorDecoderInferenceConfig,
    flux2_patchify,
    flux2_whiten,
)
from capacitor_decoder.family import TINY_CONFIG
from diffae_testing import randomize_weights, randomize_whitening

WHITENING_ROUND_TRIP = 1e-5
"""whiten then dewhiten in float32 before the decoder: a few ulps of the latents, amplified."""
BF16_RELATIVE = 0.05
TINY = {"capacitor_decoder_tiny": TINY_CONFIG}
HEIGHT, WIDTH = 32, 48


def tiny_model(seed: int = 0) -> CapacitorDecoder:
    return randomize_whitening(randomize_weights(CapacitorDecoder(TINY_CONFIG), seed)).eval()


def raw_latents(n: int = 2) -> torch.Tensor:
    """Raw patchified FLUX.2-like latents [n, 128, H/16, W/16]."""
    generator = torch.Generator().manual_seed(3)
    return flux2_patchify(torch.randn(n, 32, HEIGHT // 8, WIDTH // 8, generator=generator))


@pytest.fixture(params=sorted(TINY), ids=sorted(TINY))
def model(request: pytest.FixtureRequest) -> CapacitorDecoder:
    return tiny_model()


def seeded(seed: int = 0, **fields) -> CapacitorDecoderInferenceConfig:
    return CapacitorDecoderInferenceConfig(seed=seed, **fields)


def test_decode_shapes_and_whitening_contract(model: CapacitorDecoder) -> None:
    raw = raw_latents()
    stats = model.flux2_statistics()
    whitened = flux2_whiten(raw, stats.running_mean, stats.running_var, stats.eps)
    assert torch.equal(whitened, model.whiten(raw))
    recon = model.decode(whitened, HEIGHT, WIDTH, inference_config=seeded())
    assert recon.shape == (2, 3, HEIGHT, WIDTH) and recon.dtype == torch.float32
    assert recon.isfinite().all()
    from_raw = model.decode(
        raw, HEIGHT, WIDTH, inference_config=seeded(), latents_are_flux2_whitened=False
    )
    torch.testing.assert_close(recon, from_raw, rtol=0, atol=WHITENING_ROUND_TRIP)
    # Treating raw latents as whitened un-whitens them a second time.
    torch.testing.assert_close(
        model.decode(raw, HEIGHT, WIDTH, inference_config=seeded()),
        model.decode(
            model.dewhiten(raw),
            HEIGHT,
            WIDTH,
            inference_config=seeded(),
            latents_are_flux2_whitened=False,
        ),
        rtol=0,
        atol=WHITENING_ROUND_TRIP,
    )
    assert model.dewhiten(whitened.bfloat16()).dtype == torch.float32


@pytest.mark.parametrize("sampler", ["ddim", "dpmpp_2m"])
def test_steps_samplers_and_strength(model: CapacitorDecoder, sampler: str) -> None:
    latents = model.whiten(raw_latents(1))
    calls = []
    handle = model.decoder.register_forward_hook(lambda *_: calls.append(1))
    cfg = seeded(num_steps=3, sampler=sampler, schedule="cosine", pdg=True)
    assert model.decode(latents, HEIGHT, WIDTH, inference_config=cfg).isfinite().all()
    handle.remove()
    assert len(calls) == 6
    default = model.decode(latents, HEIGHT, WIDTH, inference_config=seeded())
    assert torch.equal(
        default, model.decode(latents, HEIGHT, WIDTH, inference_config=seeded(strength=1.0))
    )
    times = []
    handle = model.decoder.register_forward_hook(lambda _, args, __: times.append(args[1]))
    model.decode(latents, HEIGHT, WIDTH, inference_config=seeded(strength=0.5))
    handle.remove()
    assert [t.tolist() for t in times] == [[0.5]]  # one step, from t = 0.5
    with pytest.raises(ValueError, match="strength"):
        model.decode(latents, HEIGHT, WIDTH, inference_config=seeded(strength=1.5))


def test_bad_inputs_name_the_argument_and_contract(model: CapacitorDecoder) -> None:
    latents = model.whiten(raw_latents(1))
    with pytest.raises(ValueError, match="height: expected a multiple of 16"):
        model.decode(latents, HEIGHT + 8, WIDTH)
    with pytest.raises(ValueError, match=r"latents: expected FLUX\.2 2x2-patchified, BN-whitened"):
        model.decode(latents, HEIGHT * 2, WIDTH)
    unpatchified = torch.zeros(1, 32, HEIGHT // 8, WIDTH // 8)
    with pytest.raises(ValueError, match=r"raw.*apply flux2_patchify first"):
        model.decode(unpatchified, HEIGHT, WIDTH, latents_are_flux2_whitened=False)
    with pytest.raises(TypeError, match="latents_are_flux2_whitened"):
        model.decode(latents, HEIGHT, WIDTH, latents_are_flux2_whitened="no")
    with pytest.raises(ValueError, match="num_steps"):
        model.decode(latents, HEIGHT, WIDTH, inference_config=seeded(num_steps=0))
