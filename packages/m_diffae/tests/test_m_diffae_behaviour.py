"""Tiny random-weight mDiffAE models of the release's structure: the whole public API."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from diffae_core.families import installed_families
from diffae_core.testing import assert_close, randomize_weights
from m_diffae import MDiffAE, MDiffAEConfig, MDiffAEInferenceConfig, OpenPoints
from m_diffae.dico import DiCoBlock
from m_diffae.family import TINY_CONFIG
from m_diffae.model import draw_token_mask

FLOAT32_ROUNDING = 1e-6
BF16_RELATIVE = 0.05
"""bf16 vs fp32: max |diff| relative to the fp32 output's max |value| (8-bit mantissa)."""

TINY = {name: TINY_CONFIG for name in MDiffAEConfig.PRESETS}

SWITCHES = {
    "s1s2g1g2": OpenPoints(modulation_order="s1s2g1g2"),
    "g1s1g2s2": OpenPoints(modulation_order="g1s1g2s2"),
    "no_mlp_renorm": OpenPoints(mlp_renorm=False),
    "mask_fused": OpenPoints(mask_at="fused"),
    "mask_grid_2x2": OpenPoints(mask_draw="grid_2x2"),
    "reading_b": OpenPoints(encoder_norm_out_affine=False),
}
"""Every alternative of spec §13's switch matrix, one switch away from the defaults."""


def variant(points: OpenPoints) -> type[MDiffAE]:
    return type("Variant", (MDiffAE,), {"open_points": points})


def tiny_model(name: str, seed: int = 0, model_class: type[MDiffAE] = MDiffAE) -> MDiffAE:
    return randomize_weights(model_class(TINY[name]), seed).eval()


def images_for(config: MDiffAEConfig, n: int = 2, cells: tuple[int, int] = (2, 3)):
    p = config.patch_size
    generator = torch.Generator().manual_seed(7)
    return torch.rand(n, 3, cells[0] * p, cells[1] * p, generator=generator) * 2 - 1


def seeded(**fields) -> MDiffAEInferenceConfig:
    return MDiffAEInferenceConfig(seed=fields.pop("seed", 1), **fields)


@pytest.fixture(params=sorted(TINY), ids=sorted(TINY))
def name(request: pytest.FixtureRequest) -> str:
    return request.param


def test_api_shapes_and_dtypes(name: str) -> None:
    model, config = tiny_model(name), TINY[name]
    images = images_for(config)
    latents = model.encode(images)
    assert latents.shape == (2, config.bottleneck_dim, 2, 3) and latents.dtype == torch.float32
    recon = model.decode(latents, images.shape[-2], images.shape[-1])
    assert recon.shape == images.shape and recon.dtype == torch.float32
    assert recon.isfinite().all()
    assert model.reconstruct(images).shape == images.shape
    assert not latents.requires_grad and not recon.requires_grad


def test_encoder_output_has_unit_rms_with_a_neutral_affine(name: str) -> None:
    """Spec §13 step 2: with norm_out's affine at identity, each latent position has RMS 1."""
    model = tiny_model(name)
    with torch.no_grad():
        model.encoder.norm_out.weight.fill_(1.0)
        model.encoder.norm_out.bias.zero_()
    latents = model.encode(images_for(TINY[name]))
    rms = latents.square().mean(dim=1).sqrt()
    # Not exactly 1: eps = 1e-6 sits next to a tiny model's small mean squares (~0.05).
    assert_close(rms, torch.ones_like(rms), atol=1e-4)


@pytest.mark.parametrize("points", [OpenPoints(), *SWITCHES.values()], ids=["default", *SWITCHES])
def test_pdg_strength_one_equals_no_pdg(points: OpenPoints) -> None:
    model = tiny_model("mdiffae_v1", model_class=variant(points))
    images = images_for(TINY["mdiffae_v1"])
    latents = model.encode(images)
    size = images.shape[-2:]
    plain = model.decode(latents, *size, inference_config=seeded())
    guided = model.decode(latents, *size, inference_config=seeded(pdg=True, pdg_strength=1.0))
    assert_close(guided, plain, atol=FLOAT32_ROUNDING)
    strong = model.decode(latents, *size, inference_config=seeded(pdg=True, pdg_strength=1.2))
    assert not torch.allclose(strong, plain, atol=1e-4)


@pytest.mark.parametrize("switch", sorted(SWITCHES))
def test_each_switch_changes_the_model(switch: str) -> None:
    """Each alternative loads the default's weights (minus norm_out's affine) and decodes
    differently: the switch matrix of spec §13 is live."""
    points = SWITCHES[switch]
    default, other = tiny_model("mdiffae_v1"), variant(points)(TINY["mdiffae_v1"])
    state = default.state_dict()
    if not points.encoder_norm_out_affine:
        state = {k: v for k, v in state.items() if not k.startswith("encoder.norm_out.")}
    other.load_state_dict(state, strict=True)
    images = images_for(TINY["mdiffae_v1"])
    cfg = seeded(pdg=True, pdg_strength=1.2)
    assert not torch.allclose(
        other.reconstruct(images, inference_config=cfg),
        default.reconstruct(images, inference_config=cfg),
        atol=1e-5,
    )


def test_zero_modulation_makes_a_decoder_block_the_identity() -> None:
    block = randomize_weights(DiCoBlock(8, use_external_adaln=True, depthwise_kernel_size=3))
    x = torch.randn(2, 8, 4, 5)
    assert torch.equal(block(x, adaln_m=torch.zeros(2, 32)), x)


@pytest.mark.parametrize("draw", ["uniform", "grid_2x2"])
def test_token_masks_are_seeded_and_sized(draw: str) -> None:
    def mask(seed: int, height: int = 6, width: int = 5) -> torch.Tensor:
        generator = torch.Generator().manual_seed(seed)
        return draw_token_mask(3, height, width, 0.75, draw=draw, generator=generator)

    first = mask(0)
    assert first.shape == (3, 1, 6, 5) and first.dtype == torch.bool
    assert torch.equal(first, mask(0)) and not torch.equal(first, mask(1))
    if draw == "uniform":
        assert first.flatten(1).sum(1).tolist() == [round(0.75 * 30)] * 3
    else:
        even = mask(0, 6, 4)  # one kept token in each 2x2 group
        groups = (~even).view(3, 3, 2, 2, 2).sum(dim=(2, 4))
        assert torch.equal(groups, torch.ones_like(groups))


def test_pixel_unshuffle_patchify_layout_loads_to_the_same_model(tmp_path: Path) -> None:
    """Spec §5.2: a [C, 3 P^2, 1, 1] patchify weight is accepted and means the same map."""
    model = tiny_model("mdiffae_v1")
    model.save_pretrained(tmp_path)
    state = load_file(tmp_path / "model.safetensors")
    for key in ("encoder.patchify.proj.weight", "decoder.patchify.proj.weight"):
        state[key] = state[key].reshape(state[key].shape[0], -1, 1, 1).contiguous()
    save_file(state, tmp_path / "model.safetensors")
    assert MDiffAE.inspect_checkpoint(tmp_path / "model.safetensors").loadable
    loaded = MDiffAE.from_pretrained(tmp_path)
    images = images_for(TINY["mdiffae_v1"])
    assert torch.equal(loaded.encode(images), model.encode(images))
    weight = model.encoder.patchify.proj.weight
    unshuffled = torch.nn.functional.pixel_unshuffle(images, 4)  # channel c*16 + 4i + j
    via_1x1 = torch.nn.functional.conv2d(
        unshuffled, weight.reshape(weight.shape[0], -1, 1, 1), model.encoder.patchify.proj.bias
    )
    assert_close(via_1x1, model.encoder.patchify(images), atol=1e-5)


def test_bad_sizes_and_arguments_raise_value_errors() -> None:
    model = tiny_model("mdiffae_v1")  # patch 4, 4 latent channels
    with pytest.raises(ValueError, match="images: expected H and W divisible by 4, got H=6"):
        model.encode(torch.zeros(1, 3, 6, 8))
    with pytest.raises(ValueError, match=r"images: expected \[N, 3, H, W\]"):
        model.encode(torch.zeros(3, 8, 8))
    latents = model.encode(torch.zeros(1, 3, 8, 8))
    with pytest.raises(ValueError, match="height: expected a multiple of 4, got 6"):
        model.decode(latents, 6, 8)
    with pytest.raises(ValueError, match=r"latents: expected \[N, 4, 2, 2\]"):
        model.decode(latents[:, :2], 8, 8)
    with pytest.raises(ValueError, match=r"latents: expected \[N, 4, 4, 2\]"):
        model.decode(latents, 16, 8)
    for field, value in [("num_steps", 0), ("sampler", "euler"), ("schedule", "karras")]:
        cfg = MDiffAEInferenceConfig(**{field: value})
        with pytest.raises(ValueError, match=field):
            model.decode(latents, 8, 8, inference_config=cfg)


def test_config_validation_names_the_field() -> None:
    with pytest.raises(ValueError, match="patch_size: expected a positive int"):
        MDiffAEConfig(patch_size=0)
    with pytest.raises(ValueError, match="pdg_mask_ratio"):
        MDiffAEConfig(pdg_mask_ratio=1.5)
    with pytest.raises(ValueError, match="depthwise_kernel_size"):
        MDiffAEConfig(depthwise_kernel_size=4)
    with pytest.raises(ValueError, match="modulation_order"):
        OpenPoints(modulation_order="s1s2")
    with pytest.raises(ValueError, match="mask_draw"):
        OpenPoints(mask_draw="random")


def test_inference_config_defaults_and_pdg_spellings() -> None:
    cfg = MDiffAEInferenceConfig(num_steps=1, sampler="ddim")
    assert (cfg.num_steps, cfg.sampler, cfg.schedule, cfg.seed) == (1, "ddim", "linear", None)
    assert cfg.pdg is False and cfg.pdg_enabled is False and cfg.pdg_strength == 1.05
    assert cfg.guidance_strength is None
    assert MDiffAEInferenceConfig(pdg_enabled=True).pdg is True
    assert MDiffAEInferenceConfig(pdg=True).pdg_enabled is True
    cfg.pdg_enabled = True
    assert cfg.pdg and cfg.guidance_strength == 1.05
    assert cfg == MDiffAEInferenceConfig(pdg=True)
    with pytest.raises(ValueError, match="pdg, pdg_enabled"):
        MDiffAEInferenceConfig(pdg=True, pdg_enabled=False)


def test_family_entry_point() -> None:
    family = installed_families()["m_diffae"]
    assert family.model_class is MDiffAE and family.inference_config_class is MDiffAEInferenceConfig
    assert family.repo_ids == ("data-archetype/mdiffae_v1", "data-archetype/mdiffae-v1")
    assert family.presets() == ["mdiffae_v1"]
    assert family.tiny_config == dataclasses.replace(
        MDiffAEConfig.preset("mdiffae_v1"),
        patch_size=4,
        model_dim=16,
        encoder_depth=2,
        decoder_depth=2,
        bottleneck_dim=4,
        adaln_low_rank_rank=4,
        depthwise_kernel_size=3,
    )
