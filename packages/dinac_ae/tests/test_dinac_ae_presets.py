"""Full-size presets on `meta`: the spec's key list and shapes, and the cards' parameter counts."""

from __future__ import annotations

import pytest

from dinac_ae import DinacAE, DinacAEConfig

# (encoder depth, parameters, encoder / decoder / head parameters, keys): the releases'
# architecture tables;
# the D2 card says 154.22M = 78.02M encoder + 61.93M decoder + 14.26M head.
PRESET_FACTS = {
    "dinac_ae": (6, 134_941_184, (58_743_680, 61_933_184, 14_264_320), 206),
    "dinac_ae_d2": (8, 154_216_192, (78_018_688, 61_933_184, 14_264_320), 230),
}
HEAD = "dino_token_alignment_head"


def dit_block_keys(prefix: str, d: int) -> dict[str, tuple[int, ...]]:
    """The 12 keys of a DiT block of width d, both spellings of the aliased linears."""
    keys = {f"{prefix}.{norm}._impl.weight": (d,) for norm in ("attn_norm1", "attn_norm2")}
    keys |= {f"{prefix}.{norm}._impl.weight": (d,) for norm in ("mlp_norm1", "mlp_norm2")}
    for spelling in (f"{prefix}.attn_core", prefix):
        keys[f"{spelling}.qkv.weight"] = (3 * d, d)
        keys[f"{spelling}.proj_out.weight"] = (d, d)
    keys[f"{prefix}.attn_core.q_norm._impl.weight"] = (64,)
    keys[f"{prefix}.attn_core.k_norm._impl.weight"] = (64,)
    keys[f"{prefix}.mlp.up.weight"] = (4 * d, d)
    keys[f"{prefix}.mlp.down.weight"] = (d, 4 * d)
    return keys


def fcdm_block_keys(prefix: str) -> dict[str, tuple[int, ...]]:
    return {
        f"{prefix}.dwconv.weight": (896, 1, 7, 7),
        f"{prefix}.dwconv.bias": (896,),
        f"{prefix}.pwconv1.weight": (3584, 896, 1, 1),
        f"{prefix}.pwconv1.bias": (3584,),
        f"{prefix}.grn.gamma": (1, 3584, 1, 1),
        f"{prefix}.grn.beta": (1, 3584, 1, 1),
        f"{prefix}.pwconv2.weight": (896, 3584, 1, 1),
        f"{prefix}.pwconv2.bias": (896,),
    }


def expected_keys(encoder_depth: int) -> dict[str, tuple[int, ...]]:
    """The release's state dict, written out independently of the model code."""
    keys: dict[str, tuple[int, ...]] = {
        "latent_norm_running_mean": (128,),
        "latent_norm_running_var": (128,),
        "encoder.patchify.proj.weight": (896, 3, 16, 16),
        "encoder.patchify.proj.bias": (896,),
        "encoder.rope.periods": (16,),
        "encoder.to_bottleneck.weight": (256, 896, 1, 1),
        "encoder.to_bottleneck.bias": (256,),
        "decoder.patchify.proj.weight": (896, 3, 16, 16),
        "decoder.patchify.proj.bias": (896,),
        "decoder.latent_up.weight": (896, 128, 1, 1),
        "decoder.latent_up.bias": (896,),
        "decoder.fuse_in.weight": (896, 1792, 1, 1),
        "decoder.fuse_in.bias": (896,),
        "decoder.fuse_skip.weight": (896, 1792, 1, 1),
        "decoder.fuse_skip.bias": (896,),
        "decoder.time_embed.freqs": (128,),
        "decoder.time_embed.proj_in.weight": (896, 256),
        "decoder.time_embed.proj_in.bias": (896,),
        "decoder.time_embed.proj_out.weight": (896, 896),
        "decoder.time_embed.proj_out.bias": (896,),
        "decoder.adaln_base.proj.weight": (1792, 896),
        "decoder.adaln_base.proj.bias": (1792,),
        "decoder.path_drop_mask_feature": (1, 896, 1, 1),
        "decoder.out_proj.weight": (768, 896, 1, 1),
        "decoder.out_proj.bias": (768,),
        f"{HEAD}.initial_class_token": (1, 768),
        f"{HEAD}.register_tokens": (4, 768),
        f"{HEAD}.in_proj.weight": (768, 128, 1, 1),
        f"{HEAD}.in_proj.bias": (768,),
        f"{HEAD}.class_readout.query_norm._impl.weight": (768,),
        f"{HEAD}.class_readout.context_norm._impl.weight": (768,),
        f"{HEAD}.class_readout.mlp_norm._impl.weight": (768,),
        f"{HEAD}.class_readout.q_proj.weight": (768, 768),
        f"{HEAD}.class_readout.attn_core.kv_proj.weight": (1536, 768),
        f"{HEAD}.class_readout.kv_proj.weight": (1536, 768),
        f"{HEAD}.class_readout.attn_core.out_proj.weight": (768, 768),
        f"{HEAD}.class_readout.out_proj.weight": (768, 768),
        f"{HEAD}.class_readout.attn_core.q_norm_heads._impl.weight": (64,),
        f"{HEAD}.class_readout.attn_core.k_norm_heads._impl.weight": (64,),
        f"{HEAD}.class_readout.mlp.up.weight": (3072, 768),
        f"{HEAD}.class_readout.mlp.down.weight": (768, 3072),
        f"{HEAD}._axial_rope2d.periods": (16,),
    }
    for i in range(encoder_depth):
        keys |= dit_block_keys(f"encoder.blocks.{i}", 896)
    keys |= dit_block_keys(f"{HEAD}.block", 768)
    for i in range(8):
        keys[f"decoder.adaln_deltas.{i}.down.weight"] = (128, 896)
        keys[f"decoder.adaln_deltas.{i}.up.weight"] = (1792, 128)
    blocks = ["start_blocks.0", "start_blocks.1", "end_blocks.0", "end_blocks.1"]
    for name in blocks + [f"middle_blocks.{i}" for i in range(4)]:
        keys |= fcdm_block_keys(f"decoder.{name}")
    return keys


@pytest.fixture(params=sorted(PRESET_FACTS), ids=sorted(PRESET_FACTS))
def preset(request: pytest.FixtureRequest) -> str:
    return request.param


def test_preset_state_dict_matches_spec(preset: str) -> None:
    depth, _, _, key_count = PRESET_FACTS[preset]
    model = DinacAE.from_config_on_meta(DinacAEConfig.preset(preset))
    state = {name: tuple(t.shape) for name, t in model.state_dict().items()}
    assert state == expected_keys(depth)
    assert len(state) == key_count


def test_preset_parameter_counts_match_cards(preset: str) -> None:
    depth, total, (encoder, decoder, head), key_count = PRESET_FACTS[preset]
    model = DinacAE.from_config_on_meta(DinacAEConfig.preset(preset))
    state = model.state_dict()
    assert model.num_parameters() == total
    assert sum(p.numel() for p in model.encoder.parameters()) == encoder
    assert sum(p.numel() for p in model.decoder.parameters()) == decoder
    assert sum(p.numel() for p in model.dino_token_alignment_head.parameters()) == head
    # Aliases are counted once: named_parameters = keys - 5 buffers - second spellings
    # (2 per DiT block + 2 in the class readout); the release lists 210 / 190 keys without
    # duplicates.
    second_spellings = 2 * (depth + 1) + 2
    assert len(state) == key_count
    assert len(dict(model.named_parameters())) == key_count - 5 - second_spellings
    assert key_count - second_spellings == {"dinac_ae": 190, "dinac_ae_d2": 210}[preset]


def test_preset_configs(preset: str) -> None:
    config = DinacAEConfig.preset(preset)
    assert config.encoder_depth == PRESET_FACTS[preset][0]
    assert config.latent_channels == 128 and config.effective_patch_size == 16
    assert len(config.to_dict()) == 24
