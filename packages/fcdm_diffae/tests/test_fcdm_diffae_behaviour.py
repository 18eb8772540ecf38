"""Tiny random-weight SemDisDiffAE models of each release's structure: the whole public API."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from diffae_testing import randomize_weights, randomize_whitening
from fcdm_diffae import EncoderPosterior, FCDMDiffAE, FCDMDiffAEConfig, FCDMDiffAEInferenceConfig
from fcdm_diffae.family import TINY_VARIANTS

FLOAT32_ROUNDING = 1e-6
BF16_RELATIVE = 0.05
"""bf16 vs fp32: max |diff| relative to the fp32 output's max |value| (8-bit mantissa)."""

TINY = TINY_VARIANTS  # one per release structure


def tiny_model(name: str, seed: int = 0) -> FCDMDiffAE:
    model = FCDMDiffAE(TINY[name])
    randomize_weights(model, seed)
    return randomize_whitening(model).eval()


def images_for(config: FCDMDiffAEConfig, n: int = 2, cells: tuple[int, int] = (2, 3)):
    p = config.effective_patch_size
    generator = torch.Generator().manual_seed(7)
    return torch.rand(n, 3, cells[0] * p, cells[1] * p, generator=generator) * 2 - 1


@pytest.fixture(params=sorted(TINY), ids=sorted(TINY))
def name(request: pytest.FixtureRequest) -> str:
    return request.param


def test_api_shapes_and_dtypes(name: str) -> None:
    model, config = tiny_model(name), TINY[name]
    images = images_for(config)
    p = config.effective_patch_size
    h, w = images.shape[-2] // p, images.shape[-1] // p
    latents = model.encode(images)
    assert latents.shape == (2, config.latent_channels, h, w) and latents.dtype == torch.float32
    posterior = model.encode_posterior(images)
    assert isinstance(posterior, EncoderPosterior)
    assert posterior.mean.shape == posterior.logsnr.shape == latents.shape
    recon = model.decode(latents, images.shape[-2], images.shape[-1])
    assert recon.shape == images.shape and recon.dtype == torch.float32
    assert recon.isfinite().all()
    assert model.reconstruct(images).shape == images.shape


def test_encode_is_whitened_posterior_mode(name: str) -> None:
    model = tiny_model(name)
    images = images_for(TINY[name])
    posterior = model.encode_posterior(images)
    assert torch.equal(model.encode(images), model.whiten(posterior.mode()))
    assert torch.equal(posterior.mode(), posterior.alpha * posterior.mean)
    total = posterior.alpha**2 + posterior.sigma**2
    torch.testing.assert_close(total, torch.ones_like(total), rtol=0, atol=FLOAT32_ROUNDING)


def test_whiten_dewhiten_are_inverses(name: str) -> None:
    model = tiny_model(name)
    latents = model.encode(images_for(TINY[name]))
    torch.testing.assert_close(model.whiten(model.dewhiten(latents)), latents)
    assert model.whiten(latents.bfloat16()).dtype == torch.float32


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    return ((actual.float() - expected.float()).abs().max() / expected.abs().max()).item()


def test_bf16_close_to_fp32_and_float32_islands(name: str) -> None:
    model = tiny_model(name)
    images = images_for(TINY[name])
    reference_latents = model.encode(images)
    seeded = FCDMDiffAEInferenceConfig(seed=0)
    reference = model.decode(reference_latents, *images.shape[-2:], inference_config=seeded)
    stats = model.latent_norm_running_var.clone()
    model.to(torch.bfloat16)
    assert model.latent_norm_running_var.dtype == torch.float32
    assert torch.equal(model.latent_norm_running_var, stats)
    assert model.decoder.time_embed.freqs.dtype == torch.float32
    latents = model.encode(images)
    assert latents.dtype == torch.bfloat16
    assert model.encode_posterior(images).mean.dtype == torch.bfloat16
    assert relative_error(latents, reference_latents) < BF16_RELATIVE
    recon = model.decode(latents, *images.shape[-2:], inference_config=seeded)
    assert recon.dtype == torch.float32
    assert relative_error(recon, reference) < BF16_RELATIVE


def test_cast_weights_matches_autocast_within_bf16(name: str) -> None:
    """Our policy (bf16 weights, no autocast) vs the autocast alternative on fp32 weights."""
    model = tiny_model(name)
    images = images_for(TINY[name])
    seeded = FCDMDiffAEInferenceConfig(seed=0)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        autocast_latents = model.encode(images)
        autocast_recon = model.decode(autocast_latents, *images.shape[-2:], inference_config=seeded)
    model.to(torch.bfloat16)
    latents = model.encode(images)
    recon = model.decode(latents, *images.shape[-2:], inference_config=seeded)
    assert relative_error(latents, autocast_latents) < BF16_RELATIVE
    assert relative_error(recon, autocast_recon) < BF16_RELATIVE


def test_inspect_checkpoint_of_a_good_file(tmp_path: Path) -> None:
    tiny_model("semdisdiffae_p32").save_pretrained(tmp_path)
    diff = FCDMDiffAE.inspect_checkpoint(tmp_path / "model.safetensors")
    assert diff.loadable and not diff.dtype_differences
    assert diff.report() == "checkpoint matches the model"


def test_bad_sizes_and_arguments_raise_value_errors() -> None:
    model = tiny_model("semdisdiffae_p32")  # effective patch 8
    with pytest.raises(ValueError, match="images: expected H and W divisible by 8, got H=12"):
        model.encode(torch.zeros(1, 3, 12, 16))
    with pytest.raises(ValueError, match=r"images: expected \[N, 3, H, W\]"):
        model.encode(torch.zeros(3, 16, 16))
    with pytest.raises(TypeError, match=r"images: expected a torch\.Tensor"):
        model.encode([[0.0]])
    latents = model.encode(torch.zeros(1, 3, 16, 16))
    with pytest.raises(ValueError, match="height: expected a multiple of 8, got 12"):
        model.decode(latents, 12, 16)
    with pytest.raises(ValueError, match=r"latents: expected \[N, 16, 2, 2\]"):
        model.decode(latents[:, :4], 16, 16)
    with pytest.raises(ValueError, match=r"latents: expected \[N, 16, 4, 2\]"):
        model.decode(latents, 32, 16)
    for field, value in [("num_steps", 0), ("sampler", "euler"), ("schedule", "karras")]:
        cfg = FCDMDiffAEInferenceConfig(**{field: value})
        with pytest.raises(ValueError, match=field):
            model.decode(latents, 16, 16, inference_config=cfg)


def test_config_validation_names_the_field() -> None:
    with pytest.raises(ValueError, match="patch_size: expected a positive int"):
        FCDMDiffAEConfig(patch_size=0)
    with pytest.raises(ValueError, match="bottleneck_patchify_mode"):
        FCDMDiffAEConfig(bottleneck_patchify_mode="patch_4x4")
    with pytest.raises(ValueError, match="decoder_depth"):
        FCDMDiffAEConfig(decoder_depth=3)
    with pytest.raises(ValueError, match="bottleneck_norm_mode: only 'disabled'"):
        FCDMDiffAE(
            dataclasses.replace(TINY["semdisdiffae_p32_v2"], bottleneck_norm_mode="channel_wise")
        )


def test_p32_v1_decoder_sees_unpatchified_raw_latents() -> None:
    model = tiny_model("semdisdiffae_p32")
    images = images_for(TINY["semdisdiffae_p32"], n=1)
    seen = {}

    def record(module, args, output) -> None:
        seen["z"] = args[0]

    # The decoder un-patchifies the [N, 4B, h, w] latents before its first latent layer.
    model.decoder.latent_up.register_forward_hook(record)
    latents = model.encode(images)  # [1, 16, 2, 3]: 4 x bottleneck 4, grid / 2
    model.decode(latents, *images.shape[-2:])
    model.encoder.patchify_bottleneck = False  # the encoder's own layout, before patchifying
    raw = model.encoder.posterior(images).mode()
    assert latents.shape == (1, 16, 2, 3) and seen["z"].shape == raw.shape == (1, 4, 4, 6)
    torch.testing.assert_close(seen["z"], raw, rtol=0, atol=1e-5)
