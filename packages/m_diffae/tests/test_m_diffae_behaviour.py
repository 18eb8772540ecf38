"""What is mDiffAE's own, on tiny random-weight models: the open-point switches, token-mask PDG,
the decoder's interface, loading spellings and config checks. The behaviour every family shares
(shapes, determinism, PDG at strength 1, round trip, strict loading, bf16, bad sizes, step
counts) is tested once in tests/test_families_contract.py."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from diffae_core.families import installed_families
from diffae_core.io import ModelNotAvailableError
from diffae_testing import add_to_hub_cache, randomize_weights
from m_diffae import MDiffAE, MDiffAEConfig, MDiffAEInferenceConfig, OpenPoints
from m_diffae.dico import DiCoBlock
from m_diffae.family import TINY_CONFIG
from m_diffae.model import draw_token_mask

FLOAT32_ROUNDING = 1e-6
"""PDG at strength 1 vs no PDG, relative to the output's magnitude: u + 1 * (c - u) is c up to
float32 rounding."""
DIFFERENT = 0.01
"""Outputs meant to differ (another switch, PDG at 1.2, another token mask) differ somewhere by
more than this fraction of the output's max |value| (measured: 4% to 87%)."""
UNIT_RMS_ATOL = 1e-4
"""Per-position latent RMS vs 1: eps = 1e-6 sits next to a tiny model's small mean squares
(~0.05), so the RMS is 1 - O(1e-5), not exactly 1."""
PATCHIFY_ATOL = 1e-5
"""A PxP-stride conv vs PixelUnshuffle + 1x1 conv: the same sums in another order, by another
kernel (float32; outputs |x| < 1, so ~100 ulps)."""

SWITCHES = {
    "s1s2g1g2": OpenPoints(modulation_order="s1s2g1g2"),
    "g1s1g2s2": OpenPoints(modulation_order="g1s1g2s2"),
    "no_mlp_renorm": OpenPoints(mlp_renorm=False),
    "mask_fused": OpenPoints(mask_at="fused"),
    "mask_grid_2x2": OpenPoints(mask_draw="grid_2x2"),
    "reading_b": OpenPoints(encoder_norm_out_affine=False),
    "freqs_not_stored": OpenPoints(time_embed_freqs_persistent=False),
}
"""Every alternative of the open points' switch matrix, one switch away from the defaults."""


def variant(points: OpenPoints) -> type[MDiffAE]:
    return type("Variant", (MDiffAE,), {"open_points": points})


def tiny_model(seed: int = 0, model_class: type[MDiffAE] = MDiffAE) -> MDiffAE:
    return randomize_weights(model_class(TINY_CONFIG), seed).eval()


def tiny_images(n: int = 2, cells: tuple[int, int] = (2, 3)) -> torch.Tensor:
    p = TINY_CONFIG.patch_size
    generator = torch.Generator().manual_seed(7)
    return torch.rand(n, 3, cells[0] * p, cells[1] * p, generator=generator) * 2 - 1


def differs(actual: torch.Tensor, expected: torch.Tensor) -> bool:
    return bool((actual - expected).abs().max() > DIFFERENT * expected.abs().max())


def seeded(**fields) -> MDiffAEInferenceConfig:
    return MDiffAEInferenceConfig(seed=fields.pop("seed", 1), **fields)


def test_encoder_output_has_unit_rms_with_a_neutral_affine() -> None:
    """Reading A of the encoder norm: with norm_out's affine at identity, each latent position has
    RMS 1."""
    model = tiny_model()
    with torch.no_grad():
        model.encoder.norm_out.weight.fill_(1.0)
        model.encoder.norm_out.bias.zero_()
    latents = model.encode(tiny_images())
    rms = latents.square().mean(dim=1).sqrt()
    torch.testing.assert_close(rms, torch.ones_like(rms), rtol=0, atol=UNIT_RMS_ATOL)


@pytest.mark.parametrize("switch", sorted(SWITCHES))
def test_pdg_strength_one_equals_no_pdg_under_each_switch(switch: str) -> None:
    model = tiny_model(model_class=variant(SWITCHES[switch]))
    images = tiny_images()
    latents = model.encode(images)
    size = images.shape[-2:]
    plain = model.decode(latents, *size, inference_config=seeded())
    guided = model.decode(latents, *size, inference_config=seeded(pdg=True, pdg_strength=1.0))
    torch.testing.assert_close(
        guided, plain, rtol=0, atol=FLOAT32_ROUNDING * max(1.0, plain.abs().max().item())
    )
    strong = model.decode(latents, *size, inference_config=seeded(pdg=True, pdg_strength=1.2))
    assert differs(strong, plain)


@pytest.mark.parametrize("switch", sorted(set(SWITCHES) - {"freqs_not_stored"}))
def test_each_switch_changes_the_model(switch: str) -> None:
    """Each alternative loads the default's weights (minus norm_out's affine) and decodes
    differently: the open points' switch matrix is live. (Not storing `freqs` changes only the
    file, tested below.)"""
    points = SWITCHES[switch]
    default, other = tiny_model(), variant(points)(TINY_CONFIG)
    state = default.state_dict()
    if not points.encoder_norm_out_affine:
        state = {k: v for k, v in state.items() if not k.startswith("encoder.norm_out.")}
    other.load_state_dict(state, strict=True)
    images = tiny_images()
    cfg = seeded(pdg=True, pdg_strength=1.2)
    assert differs(
        other.reconstruct(images, inference_config=cfg),
        default.reconstruct(images, inference_config=cfg),
    )


def test_freqs_switch_changes_only_the_stored_keys(tmp_path: Path) -> None:
    model = tiny_model(model_class=variant(SWITCHES["freqs_not_stored"]))
    assert "decoder.time_embed.freqs" not in model.state_dict()
    assert "decoder.time_embed.freqs" in MDiffAE(TINY_CONFIG).state_dict()
    model.save_pretrained(tmp_path)
    assert "decoder.time_embed.freqs" not in load_file(tmp_path / "model.safetensors")
    loaded = variant(SWITCHES["freqs_not_stored"]).from_pretrained(tmp_path)
    assert torch.equal(
        loaded.decoder.time_embed.freqs, MDiffAE(TINY_CONFIG).decoder.time_embed.freqs
    )


def test_zero_modulation_makes_a_decoder_block_the_identity() -> None:
    block = randomize_weights(DiCoBlock(8, use_external_adaln=True, depthwise_kernel_size=3))
    x = torch.randn(2, 8, 4, 5)
    assert torch.equal(block(x, adaln_m=torch.zeros(2, 32)), x)


@pytest.mark.parametrize("draw", ["uniform", "grid_2x2"])
def test_token_masks_are_seeded_and_sized(draw: str) -> None:
    def mask(seed: int, grid_height: int = 6, grid_width: int = 5) -> torch.Tensor:
        generator = torch.Generator().manual_seed(seed)
        return draw_token_mask(3, grid_height, grid_width, 0.75, draw=draw, generator=generator)

    first = mask(0)
    assert first.shape == (3, 1, 6, 5) and first.dtype == torch.bool
    assert torch.equal(first, mask(0)) and not torch.equal(first, mask(1))
    if draw == "uniform":
        assert first.flatten(1).sum(1).tolist() == [round(0.75 * 30)] * 3
    else:
        even = mask(0, 6, 4)  # one kept token in each 2x2 group
        groups = (~even).view(3, 3, 2, 2, 2).sum(dim=(2, 4))
        assert torch.equal(groups, torch.ones_like(groups))


def test_decoder_owns_its_mask_ratio_and_draw() -> None:
    """The decoder call: forward(x_t, t, latents, *, mask_tokens=False); the ratio is the
    decoder's."""
    model = tiny_model()
    decoder = model.decoder
    assert decoder.pdg_mask_ratio == TINY_CONFIG.pdg_mask_ratio == 0.75
    images = tiny_images()
    latents = model.encode(images)
    x_t, t = torch.randn_like(images), torch.full((2,), 0.5)

    def weak(seed: int) -> torch.Tensor:
        return decoder(
            x_t, t, latents, mask_tokens=True, generator=torch.Generator().manual_seed(seed)
        )

    with torch.no_grad():
        assert torch.equal(weak(3), weak(3)) and differs(weak(4), weak(3))
        token_mask = decoder.draw_token_mask(latents, torch.Generator().manual_seed(3))
        assert token_mask.shape == (2, 1, 2, 3)
        assert token_mask.flatten(1).sum(1).tolist() == [round(0.75 * 6)] * 2
        explicit = decoder(x_t, t, latents, mask_tokens=True, token_mask=token_mask)
        assert torch.equal(explicit, weak(3))
        assert differs(decoder(x_t, t, latents), weak(3))
        with pytest.raises(ValueError, match="token_mask: given with mask_tokens=False"):
            decoder(x_t, t, latents, token_mask=token_mask)


@pytest.mark.values
def test_pixel_unshuffle_patchify_layout_loads_to_the_same_model(tmp_path: Path) -> None:
    """A published layout: a [C, 3 P^2, 1, 1] patchify weight is accepted and means the same map."""
    model = tiny_model()
    model.save_pretrained(tmp_path)
    state = load_file(tmp_path / "model.safetensors")
    for key in ("encoder.patchify.proj.weight", "decoder.patchify.proj.weight"):
        state[key] = state[key].reshape(state[key].shape[0], -1, 1, 1).contiguous()
    save_file(state, tmp_path / "model.safetensors")
    assert MDiffAE.inspect_checkpoint(tmp_path / "model.safetensors").loadable
    loaded = MDiffAE.from_pretrained(tmp_path)
    images = tiny_images()
    # Another kernel (and memory-mapped weights): equal up to float32 summation order.
    torch.testing.assert_close(
        loaded.encode(images), model.encode(images), rtol=0, atol=PATCHIFY_ATOL
    )
    weight = model.encoder.patchify.proj.weight
    unshuffled = torch.nn.functional.pixel_unshuffle(images, 4)  # channel c*16 + 4i + j
    via_1x1 = torch.nn.functional.conv2d(
        unshuffled, weight.reshape(weight.shape[0], -1, 1, 1), model.encoder.patchify.proj.bias
    )
    torch.testing.assert_close(via_1x1, model.encoder.patchify(images), rtol=0, atol=PATCHIFY_ATOL)


@pytest.mark.parametrize("cached", ["data-archetype/mdiffae_v1", "data-archetype/mdiffae-v1"])
def test_either_hub_spelling_loads_from_a_cache_holding_the_other(
    cached: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Offline: each id is tried as given first, then its other spelling (REPO_ID_ALIASES)."""
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    tiny_model().save_pretrained(tmp_path / "files")
    files = {name: tmp_path / "files" / name for name in ("config.json", "model.safetensors")}
    add_to_hub_cache(tmp_path / "hub", cached, files)
    for repo_id in ("data-archetype/mdiffae_v1", "data-archetype/mdiffae-v1"):
        model = MDiffAE.from_pretrained(repo_id, cache_dir=tmp_path / "hub")
        assert model.config == TINY_CONFIG
    with pytest.raises(ModelNotAvailableError, match="'data-archetype/mdiffae_v1'"):
        MDiffAE.from_pretrained("data-archetype/mdiffae_v1", cache_dir=tmp_path / "empty")


def test_config_validation_names_the_field() -> None:
    with pytest.raises(ValueError, match="patch_size: expected a positive int"):
        MDiffAEConfig(patch_size=0)
    with pytest.raises(ValueError, match="pdg_mask_ratio"):
        MDiffAEConfig(pdg_mask_ratio=1.5)
    with pytest.raises(ValueError, match="depthwise_kernel_size"):
        MDiffAEConfig(depthwise_kernel_size=4)
    with pytest.raises(ValueError, match="logsnr_min: expected a number, got 'a'"):
        MDiffAEConfig(logsnr_min="a")
    with pytest.raises(ValueError, match="modulation_order"):
        OpenPoints(modulation_order="s1s2")
    with pytest.raises(ValueError, match="modulation_order"):
        DiCoBlock(8, modulation_order="x")
    with pytest.raises(ValueError, match="mask_draw"):
        OpenPoints(mask_draw="random")
    for value in (1, 1.0, "yes"):
        with pytest.raises(ValueError, match="mlp_renorm: expected True or False"):
            OpenPoints(mlp_renorm=value)
    with pytest.raises(ValueError, match="time_embed_freqs_persistent"):
        OpenPoints(time_embed_freqs_persistent=0)


def test_inference_config_defaults_and_pdg_spellings() -> None:
    cfg = MDiffAEInferenceConfig(num_steps=1, sampler="ddim")
    assert (cfg.num_steps, cfg.sampler, cfg.schedule, cfg.seed) == (1, "ddim", "linear", None)
    assert cfg.pdg is False and cfg.pdg_enabled is False and cfg.pdg_strength == 1.05
    assert cfg.guidance_strength is None
    assert MDiffAEInferenceConfig(pdg_enabled=True).pdg is True
    assert MDiffAEInferenceConfig(pdg=True).pdg_enabled is True
    assert dataclasses.replace(cfg, pdg=True).pdg_enabled is True
    cfg.pdg_enabled = True
    assert cfg.pdg and cfg.guidance_strength == 1.05
    assert cfg == MDiffAEInferenceConfig(pdg=True)
    with pytest.raises(ValueError, match="pdg, pdg_enabled"):
        MDiffAEInferenceConfig(pdg=True, pdg_enabled=False)
    with pytest.raises(ValueError, match=r"pdg \(alias pdg_enabled\): expected True or False"):
        MDiffAEInferenceConfig(pdg_enabled=1).validate()


def test_family_entry_point() -> None:
    family = installed_families()["m_diffae"]
    assert family.model_class is MDiffAE and family.inference_config_class is MDiffAEInferenceConfig
    assert family.repo_ids == ("data-archetype/mdiffae-v1", "data-archetype/mdiffae_v1")
    assert family.presets() == ["mdiffae_v1"]
    assert family.tiny_configs() == {"mdiffae_v1": TINY_CONFIG}
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
    assert (TINY_CONFIG.latent_channels, TINY_CONFIG.effective_patch_size) == (4, 4)
