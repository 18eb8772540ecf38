"""full_capacitor: the published layout on `meta`, and tiny random-weight models (L16 and L32)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from diffae_core.families import installed_families
from diffae_testing import randomize_weights, randomize_whitening
from full_capacitor import (
    EncoderPosterior,
    FullCapacitor,
    FullCapacitorConfig,
    FullCapacitorInferenceConfig,
)
from full_capacitor.family import FAMILY, TINY_CONFIG
from full_capacitor.model import normalized_mean_is_possible

BF16_RELATIVE = 0.05
LAYOUTS = {
    "full_capacitor": {},
    "full_capacitor_patch_2x2": {"bottleneck_patchify_mode": "patch_2x2"},
}
PARAMETERS = 114_690_816
TINY = {name: dataclasses.replace(TINY_CONFIG, **fields) for name, fields in LAYOUTS.items()}


def expected_keys(latent_channels: int) -> dict:
    """The releases' architecture tables, written out independently of the model code."""
    width, hidden, patch = 896, 3584, 16
    block = {
        "dwconv.weight": (width, 1, 7, 7),
        "dwconv.bias": (width,),
        "pwconv1.weight": (hidden, width, 1, 1),
        "pwconv1.bias": (hidden,),
        "grn.gamma": (1, hidden, 1, 1),
        "grn.beta": (1, hidden, 1, 1),
        "pwconv2.weight": (width, hidden, 1, 1),
        "pwconv2.bias": (width,),
    }
    keys = {
        "latent_norm_running_mean": (latent_channels,),
        "latent_norm_running_var": (latent_channels,),
        "encoder.patchify.proj.weight": (width, 3, patch, patch),
        "encoder.patchify.proj.bias": (width,),
        "encoder.to_bottleneck.weight": (256, width, 1, 1),
        "encoder.to_bottleneck.bias": (256,),
        "decoder.patchify.proj.weight": (width, 3, patch, patch),
        "decoder.patchify.proj.bias": (width,),
        "decoder.latent_up.weight": (width, 128, 1, 1),
        "decoder.latent_up.bias": (width,),
        "decoder.fuse_in.weight": (width, 2 * width, 1, 1),
        "decoder.fuse_in.bias": (width,),
        "decoder.time_embed.freqs": (128,),
        "decoder.time_embed.proj_in.weight": (width, 256),
        "decoder.time_embed.proj_in.bias": (width,),
        "decoder.time_embed.proj_out.weight": (width, width),
        "decoder.time_embed.proj_out.bias": (width,),
        "decoder.adaln_base.proj.weight": (2 * width, width),
        "decoder.adaln_base.proj.bias": (2 * width,),
        "decoder.fuse_skip.weight": (width, 2 * width, 1, 1),
        "decoder.fuse_skip.bias": (width,),
        "decoder.path_drop_mask_feature": (1, width, 1, 1),
        "decoder.out_proj.weight": (768, width, 1, 1),
        "decoder.out_proj.bias": (768,),
    }
    for i in range(8):
        keys[f"decoder.adaln_deltas.{i}.down.weight"] = (128, width)
        keys[f"decoder.adaln_deltas.{i}.up.weight"] = (2 * width, 128)
        keys.update({f"encoder.blocks.{i}.{k}": v for k, v in block.items()})
        keys[f"encoder.blocks.{i}.layer_scale"] = (width,)
    decoder_blocks = ["start_blocks.0", "start_blocks.1", "end_blocks.0", "end_blocks.1"]
    decoder_blocks += [f"middle_blocks.{i}" for i in range(4)]
    for name in decoder_blocks:
        keys.update({f"decoder.{name}.{k}": v for k, v in block.items()})
    return keys


@pytest.mark.parametrize("layout", sorted(LAYOUTS), ids=sorted(LAYOUTS))
def test_published_layout_on_meta(layout: str) -> None:
    config = dataclasses.replace(FullCapacitorConfig.preset("full_capacitor"), **LAYOUTS[layout])
    model = FullCapacitor.from_config_on_meta(config)
    found = {name: tuple(t.shape) for name, t in model.state_dict().items()}
    assert found == expected_keys(config.latent_channels)
    assert len(found) == 176 and model.num_parameters() == PARAMETERS
    assert config.latent_channels == (512 if layout.endswith("2x2") else 128)
    assert config.effective_patch_size == (32 if layout.endswith("2x2") else 16)


def test_family_entry_point_and_config_strictness() -> None:
    assert installed_families()["full_capacitor"] is FAMILY
    assert FAMILY.repo_ids == ("data-archetype/full_capacitor",)
    data = FullCapacitorConfig().to_dict()
    assert "bottleneck_patchify_mode" not in data
    with pytest.raises(ValueError, match="missing keys"):
        FullCapacitorConfig.from_dict({k: v for k, v in data.items() if k != "encoder_depth"})
    with pytest.raises(ValueError, match="bottleneck_patchify_mode"):
        FullCapacitorConfig(bottleneck_patchify_mode="patch_4x4")
    with pytest.raises(ValueError, match="bottleneck_norm_mode"):
        FullCapacitorConfig(bottleneck_norm_mode="channel_wise")


@pytest.fixture(params=sorted(TINY), ids=sorted(TINY))
def name(request: pytest.FixtureRequest) -> str:
    return request.param


def tiny_model(name: str) -> FullCapacitor:
    return randomize_whitening(randomize_weights(FullCapacitor(TINY[name]))).eval()


def images_for(config: FullCapacitorConfig, n: int = 2) -> torch.Tensor:
    p = config.effective_patch_size
    return torch.rand(n, 3, 2 * p, 3 * p, generator=torch.Generator().manual_seed(7)) * 2 - 1


def seeded(seed: int = 0, **fields) -> FullCapacitorInferenceConfig:
    return FullCapacitorInferenceConfig(seed=seed, **fields)


def test_api_shapes_dtypes_and_latent_maths(name: str) -> None:
    model, config = tiny_model(name), TINY[name]
    images = images_for(config)
    latents = model.encode(images)
    assert latents.shape == (2, config.latent_channels, 2, 3) and latents.dtype == torch.float32
    posterior = model.encode_posterior(images)
    assert isinstance(posterior, EncoderPosterior) and posterior.mean.shape == latents.shape
    assert torch.equal(latents, model.whiten(posterior.mode()))
    torch.testing.assert_close(model.whiten(model.dewhiten(latents)), latents)
    recon = model.decode(latents, *images.shape[-2:], inference_config=seeded())
    assert recon.shape == images.shape and recon.dtype == torch.float32
    assert torch.equal(model.reconstruct(images, inference_config=seeded()), recon)


def test_strength_one_is_the_full_schedule(name: str) -> None:
    """Seeded determinism and PDG at strength 1 are the contract suite's (every family)."""
    model = tiny_model(name)
    images = images_for(TINY[name])
    latents, size = model.encode(images), images.shape[-2:]
    first = model.decode(latents, *size, inference_config=seeded(42))
    assert torch.equal(
        first, model.decode(latents, *size, inference_config=seeded(42, strength=1.0))
    )


def test_sizes_follow_the_effective_patch_size(name: str) -> None:
    model, config = tiny_model(name), TINY[name]
    p = config.effective_patch_size
    with pytest.raises(ValueError, match=f"images: expected H and W divisible by {p}"):
        model.encode(torch.zeros(1, 3, p + p // 2, p))
    latents = model.encode(images_for(config, n=1))
    with pytest.raises(ValueError, match=f"height: expected a multiple of {p}"):
        model.decode(latents, 2 * p + p // 2, 3 * p)
    with pytest.raises(ValueError, match="latents: expected"):
        model.decode(latents, 4 * p, 3 * p)


def test_normalized_mean_check() -> None:
    model = FullCapacitor(TINY_CONFIG)
    assert normalized_mean_is_possible(model)  # mean 0, var 1: the bound holds exactly
    with torch.no_grad():
        model.latent_norm_running_var.fill_(2.0)
    assert not normalized_mean_is_possible(model)


def test_card_usage_snippet(tmp_path: Path) -> None:
    """The card's Usage section; a local folder replaces the Hub id, "cpu" replaces "cuda"."""
    randomize_whitening(randomize_weights(FullCapacitor(TINY_CONFIG))).save_pretrained(tmp_path)
    from full_capacitor import FullCapacitor as CardModel
    from full_capacitor import FullCapacitorInferenceConfig as CardInferenceConfig

    device = "cpu"
    model = CardModel.from_pretrained(
        str(tmp_path),
        device=device,
        dtype=torch.bfloat16,
    )
    image = torch.rand(1, 3, 32, 32) * 2 - 1  # [1, 3, H, W] in [-1, 1], H and W divisible by 32
    with torch.inference_mode():
        latents = model.encode(image.to(device=device, dtype=torch.bfloat16))
        recon = model.decode(
            latents,
            height=int(image.shape[-2]),
            width=int(image.shape[-1]),
            inference_config=CardInferenceConfig(num_steps=1),
        )
    assert recon.shape == image.shape and recon.dtype == torch.float32
    assert recon.isfinite().all()


def test_inference_config_field_order_puts_strength_before_seed() -> None:
    """The published class's order: positional construction agrees with it."""
    names = [field.name for field in dataclasses.fields(FullCapacitorInferenceConfig)]
    assert names == [
        "num_steps", "sampler", "schedule", "pdg", "pdg_strength", "strength", "seed",
    ]  # fmt: skip
    assert FullCapacitorInferenceConfig(1, "ddim", "linear", False, 2.0, 0.5, 7).seed == 7
