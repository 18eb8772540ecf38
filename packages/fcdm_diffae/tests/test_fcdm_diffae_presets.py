"""Full-size presets on `meta`: the spec's key list and shapes, and the cards' parameter counts."""

from __future__ import annotations

import pytest

from fcdm_diffae import FCDMDiffAE, FCDMDiffAEConfig

# (model_dim C, patch P, bottleneck B, encoder depth, latent-stat channels, parameters, keys)
# from the releases' architecture tables; parameter totals 88.8M and 156.6M on the cards.
PRESET_FACTS = {
    "semdisdiffae": (896, 16, 128, 4, 128, 88_771_328, 140),
    "semdisdiffae_p32": (896, 16, 128, 4, 512, 88_771_328, 140),
    "semdisdiffae_p32_v2": (1024, 32, 384, 8, 384, 156_636_928, 176),
}


def fcdm_block_keys(prefix: str, c: int, k: int = 7) -> dict[str, tuple[int, ...]]:
    hidden = 4 * c
    return {
        f"{prefix}.dwconv.weight": (c, 1, k, k),
        f"{prefix}.dwconv.bias": (c,),
        f"{prefix}.pwconv1.weight": (hidden, c, 1, 1),
        f"{prefix}.pwconv1.bias": (hidden,),
        f"{prefix}.grn.gamma": (1, hidden, 1, 1),
        f"{prefix}.grn.beta": (1, hidden, 1, 1),
        f"{prefix}.pwconv2.weight": (c, hidden, 1, 1),
        f"{prefix}.pwconv2.bias": (c,),
    }


def expected_keys(c: int, p: int, b: int, depth: int, stats: int) -> dict[str, tuple[int, ...]]:
    """The state dict written out from the release's architecture table, independent of the model
    code."""
    keys: dict[str, tuple[int, ...]] = {
        "latent_norm_running_mean": (stats,),
        "latent_norm_running_var": (stats,),
        "encoder.patchify.proj.weight": (c, 3, p, p),
        "encoder.patchify.proj.bias": (c,),
        "encoder.to_bottleneck.weight": (2 * b, c, 1, 1),
        "encoder.to_bottleneck.bias": (2 * b,),
        "decoder.path_drop_mask_feature": (1, c, 1, 1),
        "decoder.patchify.proj.weight": (c, 3, p, p),
        "decoder.patchify.proj.bias": (c,),
        "decoder.latent_up.weight": (c, b, 1, 1),
        "decoder.latent_up.bias": (c,),
        "decoder.fuse_in.weight": (c, 2 * c, 1, 1),
        "decoder.fuse_in.bias": (c,),
        "decoder.time_embed.freqs": (128,),
        "decoder.time_embed.proj_in.weight": (c, 256),
        "decoder.time_embed.proj_in.bias": (c,),
        "decoder.time_embed.proj_out.weight": (c, c),
        "decoder.time_embed.proj_out.bias": (c,),
        "decoder.adaln_base.proj.weight": (2 * c, c),
        "decoder.adaln_base.proj.bias": (2 * c,),
        "decoder.fuse_skip.weight": (c, 2 * c, 1, 1),
        "decoder.fuse_skip.bias": (c,),
        "decoder.out_proj.weight": (3 * p * p, c, 1, 1),
        "decoder.out_proj.bias": (3 * p * p,),
    }
    for i in range(depth):
        keys |= fcdm_block_keys(f"encoder.blocks.{i}", c)
        keys[f"encoder.blocks.{i}.layer_scale"] = (c,)
    for i in range(8):
        keys[f"decoder.adaln_deltas.{i}.down.weight"] = (128, c)
        keys[f"decoder.adaln_deltas.{i}.up.weight"] = (2 * c, 128)
    blocks = [f"start_blocks.{i}" for i in range(2)] + [f"middle_blocks.{i}" for i in range(4)]
    for name in [*blocks, "end_blocks.0", "end_blocks.1"]:
        keys |= fcdm_block_keys(f"decoder.{name}", c)
    return keys


@pytest.mark.parametrize("preset", sorted(PRESET_FACTS))
def test_preset_state_dict_matches_spec(preset: str) -> None:
    c, p, b, depth, stats, parameters, key_count = PRESET_FACTS[preset]
    model = FCDMDiffAE.from_config_on_meta(FCDMDiffAEConfig.preset(preset))
    state = {name: tuple(t.shape) for name, t in model.state_dict().items()}
    assert state == expected_keys(c, p, b, depth, stats)
    assert len(state) == key_count
    assert model.num_parameters() == parameters


def test_preset_latent_interfaces() -> None:
    layouts = {
        name: (config.latent_channels, config.effective_patch_size)
        for name in PRESET_FACTS
        for config in [FCDMDiffAEConfig.preset(name)]
    }
    assert layouts == {
        "semdisdiffae": (128, 16),
        "semdisdiffae_p32": (512, 32),
        "semdisdiffae_p32_v2": (384, 32),
    }


def test_published_config_json_round_trips(tmp_path) -> None:
    """The p32_v2 file has 17 keys, p16 16, p32 v1 17; `save` writes exactly those back."""
    p32_v2 = FCDMDiffAEConfig.preset("semdisdiffae_p32_v2")
    path = tmp_path / "config.json"
    p32_v2.save(path)
    text = path.read_text()
    assert text.startswith('{\n  "in_channels": 3,\n  "patch_size": 32,') and text.endswith("}\n")
    assert '"latent_running_stats_eps": 0.0001' in text
    assert "bottleneck_patchify_mode" not in text
    assert len(FCDMDiffAEConfig.preset("semdisdiffae").to_dict()) == 16
    assert len(FCDMDiffAEConfig.preset("semdisdiffae_p32").to_dict()) == 17
    assert len(p32_v2.to_dict()) == 17
    # Byte sizes of the published files: 431 (p16) and 470 (p32_v2).
    assert len(text.encode()) == 470
    FCDMDiffAEConfig.preset("semdisdiffae").save(path)
    assert len(path.read_bytes()) == 431
