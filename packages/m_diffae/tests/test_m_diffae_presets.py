"""The full-size preset on `meta`: the spec's key list and shapes, the card's parameter count."""

from __future__ import annotations

import pytest

from m_diffae import MDiffAE, MDiffAEConfig

CARD_PARAMETERS = 81_410_624
"""mdiffae_v1 card, architecture table. We assert reading A of the key layout: `parameters()`
(buffers
excluded, as the author's other cards count) with an affine encoder `norm_out` [64] + [64]."""

# (model_dim C, patch P, bottleneck Z, encoder depth, decoder depth, rank R, parameters, keys)
PRESET_FACTS = {"mdiffae_v1": (896, 16, 64, 4, 4, 128, CARD_PARAMETERS, 142)}


def dico_block_keys(prefix: str, c: int, k: int = 7) -> dict[str, tuple[int, ...]]:
    hidden = 4 * c
    return {
        f"{prefix}.conv1.weight": (c, c, 1, 1),
        f"{prefix}.conv1.bias": (c,),
        f"{prefix}.conv2.weight": (c, 1, k, k),
        f"{prefix}.conv2.bias": (c,),
        f"{prefix}.cca.proj.weight": (c, c, 1, 1),
        f"{prefix}.cca.proj.bias": (c,),
        f"{prefix}.conv3.weight": (c, c, 1, 1),
        f"{prefix}.conv3.bias": (c,),
        f"{prefix}.mlp.conv_in.weight": (hidden, c, 1, 1),
        f"{prefix}.mlp.conv_in.bias": (hidden,),
        f"{prefix}.mlp.conv_out.weight": (c, hidden, 1, 1),
        f"{prefix}.mlp.conv_out.bias": (c,),
    }


def expected_keys(
    c: int, p: int, z: int, encoder_depth: int, decoder_depth: int, rank: int
) -> dict[str, tuple[int, ...]]:
    """The state dict written out from the release's architecture table, independent of the model
    code."""
    keys: dict[str, tuple[int, ...]] = {
        "encoder.patchify.proj.weight": (c, 3, p, p),
        "encoder.patchify.proj.bias": (c,),
        "encoder.norm_in.weight": (c,),
        "encoder.norm_in.bias": (c,),
        "encoder.to_bottleneck.weight": (z, c, 1, 1),
        "encoder.to_bottleneck.bias": (z,),
        # Reading A: the 128 values the card counts beyond the spec's tree.
        "encoder.norm_out.weight": (z,),
        "encoder.norm_out.bias": (z,),
        "decoder.patchify.proj.weight": (c, 3, p, p),
        "decoder.patchify.proj.bias": (c,),
        "decoder.norm_in.weight": (c,),
        "decoder.norm_in.bias": (c,),
        "decoder.latent_up.weight": (c, z, 1, 1),
        "decoder.latent_up.bias": (c,),
        "decoder.latent_norm.weight": (c,),
        "decoder.latent_norm.bias": (c,),
        "decoder.fuse_in.weight": (c, 2 * c, 1, 1),
        "decoder.fuse_in.bias": (c,),
        "decoder.time_embed.freqs": (128,),
        "decoder.time_embed.proj_in.weight": (c, 256),
        "decoder.time_embed.proj_in.bias": (c,),
        "decoder.time_embed.proj_out.weight": (c, c),
        "decoder.time_embed.proj_out.bias": (c,),
        "decoder.adaln_base.proj.weight": (4 * c, c),
        "decoder.adaln_base.proj.bias": (4 * c,),
        "decoder.norm_out.weight": (c,),
        "decoder.norm_out.bias": (c,),
        "decoder.out_proj.weight": (3 * p * p, c, 1, 1),
        "decoder.out_proj.bias": (3 * p * p,),
        "decoder.mask_feature": (1, c, 1, 1),
    }
    for i in range(encoder_depth):
        keys |= dico_block_keys(f"encoder.blocks.{i}", c)
        keys[f"encoder.blocks.{i}.gate1"] = (c,)
        keys[f"encoder.blocks.{i}.gate2"] = (c,)
    for i in range(decoder_depth):
        keys |= dico_block_keys(f"decoder.blocks.{i}", c)
        keys[f"decoder.adaln_deltas.{i}.down.weight"] = (rank, c)
        keys[f"decoder.adaln_deltas.{i}.up.weight"] = (4 * c, rank)
    return keys


@pytest.mark.parametrize("preset", sorted(PRESET_FACTS))
def test_preset_state_dict_matches_spec(preset: str) -> None:
    c, p, z, encoder_depth, decoder_depth, rank, _, key_count = PRESET_FACTS[preset]
    model = MDiffAE.from_config_on_meta(MDiffAEConfig.preset(preset))
    state = {name: tuple(t.shape) for name, t in model.state_dict().items()}
    assert state == expected_keys(c, p, z, encoder_depth, decoder_depth, rank)
    assert len(state) == key_count


@pytest.mark.parametrize("preset", sorted(PRESET_FACTS))
def test_preset_parameter_count_is_the_cards(preset: str) -> None:
    """Reading A: parameters() (each tensor once, buffers excluded) = 81,410,624."""
    model = MDiffAE.from_config_on_meta(MDiffAEConfig.preset(preset))
    assert model.num_parameters() == PRESET_FACTS[preset][6]
    # The card's subtotals: encoder 36,287,168 + the affine norm_out's 128; decoder 45,123,328.
    assert sum(p.numel() for p in model.encoder.parameters()) == 36_287_168 + 128
    assert sum(p.numel() for p in model.decoder.parameters()) == 45_123_328
    stored = sum(t.numel() for t in model.state_dict().values())
    assert stored == PRESET_FACTS[preset][6] + 128  # + the persistent freqs buffer


def test_published_config_json_round_trips(tmp_path) -> None:
    """13 keys in the published order; the file is 310 bytes."""
    config = MDiffAEConfig.preset("mdiffae_v1")
    path = tmp_path / "config.json"
    config.save(path)
    text = path.read_text()
    assert list(config.to_dict()) == [
        "in_channels",
        "patch_size",
        "model_dim",
        "encoder_depth",
        "decoder_depth",
        "bottleneck_dim",
        "mlp_ratio",
        "depthwise_kernel_size",
        "adaln_low_rank_rank",
        "logsnr_min",
        "logsnr_max",
        "pixel_noise_std",
        "pdg_mask_ratio",
    ]
    assert text.startswith('{\n  "in_channels": 3,\n  "patch_size": 16,') and text.endswith("}\n")
    assert len(text.encode()) == 310
    assert MDiffAEConfig.load(path) == config == MDiffAEConfig()
