"""Tiny random-weight DINAC-AE models of each release's structure: the whole public API."""

from __future__ import annotations

import copy
import dataclasses
import functools

import pytest
import torch

from diffae_core.config import ConfigError
from diffae_testing import randomize_weights, randomize_whitening
from dinac_ae import DinacAE, DinacAEConfig, DinacAEInferenceConfig, EncoderPosterior
from dinac_ae.family import FAMILY, TINY_CONFIG

FLOAT32_ROUNDING = 1e-6
BF16_RELATIVE = 0.05
"""bf16 vs fp32: max |diff| relative to the fp32 output's max |value| (8-bit mantissa)."""
BF16_VISIBLE = 1e-3
"""bf16 autocast leaves a difference to the float32 head above this fraction of the scale
(one bf16 step is 2^-8 to 2^-7 of it; float32 rounding ~1e-7)."""
BF16_STEP = 2**-7
"""One bf16 step at |x| in [1, 2), relative to the output's scale."""
BF16_UNIT_RMS = 0.05
"""How far a bf16-computed, RMS-normalised vector's RMS may be from 1."""

TINY = FAMILY.tiny_configs()
"""One tiny config per release structure (dinac_ae: 1 encoder block, dinac_ae_d2: 2)."""


@functools.cache
def _tiny_model(name: str) -> DinacAE:
    model = DinacAE(TINY[name])
    randomize_weights(model, seed=0)
    return randomize_whitening(model).eval()


def tiny_model(name: str) -> DinacAE:
    """A fresh copy of the seeded random-weight tiny model of a release (tests may mutate it)."""
    return copy.deepcopy(_tiny_model(name))


def images_for(config: DinacAEConfig, n: int = 2, cells: tuple[int, int] = (2, 3)) -> torch.Tensor:
    p = config.effective_patch_size
    generator = torch.Generator().manual_seed(7)
    return torch.rand(n, 3, cells[0] * p, cells[1] * p, generator=generator) * 2 - 1


def is_island(name: str) -> bool:
    """The bf16 storage policy's float32 parameters, restated independently of the model code."""
    parts = name.split(".")
    return (
        any("norm" in part for part in parts)
        or parts[-1] == "layer_scale"
        or parts[-2:] in (["grn", "gamma"], ["grn", "beta"])
        or name in ("decoder.path_drop_mask_feature", "decoder.out_proj.weight")
        or name == "decoder.out_proj.bias"
    )


@pytest.fixture(params=sorted(TINY), ids=sorted(TINY))
def name(request: pytest.FixtureRequest) -> str:
    return request.param


def test_api_shapes_and_dtypes(name: str) -> None:
    model, config = tiny_model(name), TINY[name]
    images = images_for(config)
    latent_shape = (2, config.latent_channels, 2, 3)
    latents = model.encode(images)
    assert latents.shape == latent_shape and latents.dtype == torch.float32
    posterior = model.encode_posterior(images)
    assert isinstance(posterior, EncoderPosterior)
    assert posterior.mean.shape == posterior.logsnr.shape == latent_shape
    assert posterior.mean.dtype == torch.float32
    assert posterior.mode().dtype == posterior.sample().dtype == torch.float32
    recon = model.decode(latents, images.shape[-2], images.shape[-1])
    assert recon.shape == images.shape and recon.dtype == torch.float32
    assert recon.isfinite().all()
    assert model.reconstruct(images).shape == images.shape
    class_token = model.predict_class(latents)
    assert class_token.shape == (2, config.class_head_feature_dim)
    assert class_token.dtype == torch.float32


def test_encode_is_whitened_posterior_mode(name: str) -> None:
    model = tiny_model(name)
    images = images_for(TINY[name])
    posterior = model.encode_posterior(images)
    assert torch.equal(model.encode(images), model.whiten(posterior.mode()))
    assert torch.equal(posterior.mode(), posterior.alpha * posterior.mean)
    assert torch.equal(model.encoder(images), posterior.mode())
    total = posterior.alpha**2 + posterior.sigma**2
    torch.testing.assert_close(total, torch.ones_like(total), rtol=0, atol=FLOAT32_ROUNDING)
    generator = torch.Generator().manual_seed(3)
    eps = torch.randn(posterior.mean.shape, generator=generator)
    sample = posterior.sample(generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(
        sample, posterior.mode() + posterior.sigma * eps, rtol=0, atol=FLOAT32_ROUNDING
    )


def test_whiten_dewhiten_are_inverses(name: str) -> None:
    model = tiny_model(name)
    latents = model.encode(images_for(TINY[name]))
    torch.testing.assert_close(model.whiten(model.dewhiten(latents)), latents, rtol=0, atol=1e-5)
    assert model.dewhiten(latents.bfloat16()).dtype == torch.float32


def test_strength_scales_the_schedule(name: str) -> None:
    model = tiny_model(name)
    images = images_for(TINY[name])
    latents = model.encode(images)
    size = images.shape[-2:]
    default = model.decode(latents, *size, inference_config=DinacAEInferenceConfig(seed=2))
    full = DinacAEInferenceConfig(seed=2, strength=1.0)
    assert torch.equal(model.decode(latents, *size, inference_config=full), default)
    half = DinacAEInferenceConfig(num_steps=2, seed=2, strength=0.5)
    assert half.schedule_times().tolist() == [0.5, 0.25, 0.0]
    times = []
    handle = model.decoder.register_forward_hook(lambda _, args, __: times.append(args[1]))
    model.decode(latents, *size, inference_config=half)
    handle.remove()
    assert [t.tolist() for t in times] == [[0.5, 0.5], [0.25, 0.25]]  # the decoder's t per step


def test_bf16_storage_islands_and_dtypes(name: str) -> None:
    model = tiny_model(name).to(torch.bfloat16)
    for key, parameter in model.named_parameters():
        expected = torch.float32 if is_island(key) else torch.bfloat16
        assert parameter.dtype == expected, key
    assert all(b.dtype == torch.float32 for b in model.buffers())
    assert model.ordinary_weight_storage_dtype == torch.bfloat16
    model.validate_inference_storage()
    images = images_for(TINY[name])
    posterior = model.encode_posterior(images)
    assert posterior.mean.dtype == posterior.logsnr.dtype == torch.bfloat16
    assert posterior.mode().dtype == torch.float32
    latents = model.encode(images)
    assert latents.dtype == torch.float32
    # The mode is rounded to bf16 before whitening, as in the reference.
    assert torch.equal(latents, model.whiten(posterior.mode().bfloat16()))
    assert model.decode(latents, *images.shape[-2:]).dtype == torch.float32
    assert model.predict_class(latents).dtype == torch.float32
    # Back to float32 restores a uniform float32 layout.
    model.float()
    assert all(p.dtype == torch.float32 for p in model.parameters())
    model.validate_inference_storage()


def test_float16_storage_is_refused(name: str) -> None:
    model = tiny_model(name).to(torch.float16)
    assert model.decoder.out_proj.weight.dtype == torch.float32
    with pytest.raises(RuntimeError, match=r"float16"):
        model.validate_inference_storage()


def test_float32_model_runs_without_autocast(name: str) -> None:
    """encode/decode of a float32 model must not pick up an autocast the caller opened."""
    model = tiny_model(name)
    images = images_for(TINY[name])
    seeded = DinacAEInferenceConfig(seed=0)
    latents = model.encode(images)
    recon = model.decode(latents, *images.shape[-2:], inference_config=seeded)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.equal(model.encode(images), latents)
        assert torch.equal(
            model.decode(latents, *images.shape[-2:], inference_config=seeded), recon
        )


def test_predict_class_runs_the_head_under_bf16_autocast(name: str) -> None:
    model = tiny_model(name)
    latents = model.encode(images_for(TINY[name], n=3))
    class_token = model.predict_class(latents)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        expected = model.dino_token_alignment_head(model.dewhiten(latents)).class_token
    assert torch.equal(class_token, expected.float())
    plain = model.dino_token_alignment_head(model.dewhiten(latents)).class_token
    # bf16 rounding shows (float32 alone would stay within ~1e-6 of the scale), within bounds.
    scale = plain.abs().max().item()
    assert (class_token - plain).abs().max() > BF16_VISIBLE * scale
    torch.testing.assert_close(class_token, plain, rtol=0, atol=BF16_RELATIVE * scale)
    rms = class_token.square().mean(dim=-1).sqrt()
    torch.testing.assert_close(rms, torch.ones_like(rms), rtol=0, atol=BF16_UNIT_RMS)
    # One sample's prediction does not depend on the others in the batch (another batch size
    # may take another bf16 matmul blocking: equal to a bf16 step).
    torch.testing.assert_close(
        model.predict_class(latents[1:2]),
        class_token[1:2],
        rtol=0,
        atol=BF16_STEP * class_token.abs().max().item(),
    )


def test_alignment_head_outputs(name: str) -> None:
    model, config = tiny_model(name), TINY[name]
    latents = model.dewhiten(model.encode(images_for(config)))
    alignment = model.dino_token_alignment_head(latents)
    width = config.class_head_model_dim
    assert alignment.class_token.shape == (2, width)
    assert alignment.spatial_tokens.shape == (2, 2 * 3, width)
    rms = alignment.spatial_tokens.square().mean(dim=-1).sqrt()
    torch.testing.assert_close(rms, torch.ones_like(rms), rtol=0, atol=1e-5)


def test_bad_inputs_name_the_argument(name: str) -> None:
    model, config = tiny_model(name), TINY[name]
    p = config.patch_size
    images = images_for(config)
    latents = model.encode(images)
    with pytest.raises(ValueError, match=r"^images: .*divisible by 4"):
        model.encode(images[..., : 2 * p - 1, :])
    with pytest.raises(ValueError, match=r"^images: expected \[N, 3, H, W\]"):
        model.encode_posterior(images[:, :2])
    with pytest.raises(ValueError, match=r"^height: expected a multiple of 4, got 7"):
        model.decode(latents, 7, 3 * p)
    with pytest.raises(ValueError, match=r"^latents: expected \[N, 4, 3, 3\]"):
        model.decode(latents, 3 * p, 3 * p)
    with pytest.raises(ValueError, match=r"^latents: expected \[N, 4, h, w\], got \(2, 3, 2, 3\)"):
        model.predict_class(latents[:, :3])
    with pytest.raises(TypeError, match=r"^latents: expected a torch.Tensor"):
        model.predict_class(latents.tolist())
    for field, value in [
        ("num_steps", 0),
        ("sampler", "euler"),
        ("schedule", "karras"),
        ("strength", 0.0),
        ("strength", 1.5),
    ]:
        cfg = dataclasses.replace(DinacAEInferenceConfig(), **{field: value})
        with pytest.raises(ValueError, match=rf"^{field}: "):
            model.decode(latents, 2 * p, 3 * p, inference_config=cfg)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("model_dim", 100),
        ("class_head_model_dim", 72),
        ("class_head_feature_dim", 32),
        ("encoder_mlp_type", "tanh"),
        ("class_head_mlp_type", "swiglu"),
        ("bottleneck_norm_mode", "channel_wise"),
        ("bottleneck_posterior_kind", "gaussian"),
        ("depthwise_kernel_size", 4),
        ("class_head_register_token_count", -1),
        ("class_head_register_token_count", 3),
        ("class_head_register_token_count", 5),
        ("class_head_register_token_count", 4.0),
        ("latent_running_stats_eps", 0.0),
    ],
)
def test_bad_config_fields_name_the_field(field: str, value: object) -> None:
    with pytest.raises(ValueError, match=rf"^{field}: "):
        dataclasses.replace(TINY_CONFIG, **{field: value})


def test_inference_config_fields_follow_the_published_order() -> None:
    """The reference field order: strength precedes seed, so positional construction matches the
    reference."""
    names = [field.name for field in dataclasses.fields(DinacAEInferenceConfig)]
    assert names == ["num_steps", "sampler", "schedule", "pdg", "pdg_strength", "strength", "seed"]
    defaults = DinacAEInferenceConfig()
    assert (defaults.num_steps, defaults.sampler, defaults.schedule) == (1, "ddim", "linear")
    assert (defaults.pdg, defaults.pdg_strength, defaults.strength) == (False, 2.0, 1.0)
    assert defaults.seed is None
    positional = DinacAEInferenceConfig(4, "dpmpp_2m", "cosine", True, 1.5, 0.5, 9)
    assert positional == DinacAEInferenceConfig(
        num_steps=4,
        sampler="dpmpp_2m",
        schedule="cosine",
        pdg=True,
        pdg_strength=1.5,
        strength=0.5,
        seed=9,
    )
    positional.validate()


def test_config_file_keys_are_strict() -> None:
    data = DinacAEConfig().to_dict()
    with pytest.raises(ConfigError, match="unknown keys \\['extra'\\]"):
        DinacAEConfig.from_dict({**data, "extra": 1})
    del data["class_head_head_dim"]
    with pytest.raises(ConfigError, match="missing keys \\['class_head_head_dim'\\]"):
        DinacAEConfig.from_dict(data)


def test_deterministic_posterior_variant() -> None:
    config = dataclasses.replace(TINY_CONFIG, bottleneck_posterior_kind="deterministic")
    model = randomize_whitening(randomize_weights(DinacAE(config))).eval()
    assert model.encoder.to_bottleneck.out_channels == config.bottleneck_dim
    images = images_for(config)
    posterior = model.encode_posterior(images)
    assert torch.equal(posterior.mode(), posterior.mean)
    assert model.encode(images).shape == (2, config.latent_channels, 2, 3)


def test_modes_and_copies_do_not_change_outputs(name: str) -> None:
    model = tiny_model(name)
    images = images_for(TINY[name])
    latents = model.encode(images)
    assert torch.equal(copy.deepcopy(model).train().encode(images), latents)
