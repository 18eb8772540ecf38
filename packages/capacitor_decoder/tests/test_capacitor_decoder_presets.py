"""The published capacitor_decoder on `meta`: key names, shapes, parameter count."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from capacitor_decoder import (
    CapacitorDecoder,
    CapacitorDecoderConfig,
    CapacitorDecoderInferenceConfig,
)
from capacitor_decoder.family import FAMILY, TINY_CONFIG
from capacitor_decoder.model import CHECKPOINT_KEY_ALIASES, DECODER_ATTRIBUTES
from diffae_core.families import installed_families
from diffae_core.loading import CheckpointMismatchError, apply_key_aliases, read_header
from diffae_testing import randomize_weights, randomize_whitening

PARAMETERS = {"capacitor_decoder": 61_933_184}
"""The release's count: 97 parameter tensors."""


def fcdm_decoder_keys(width: int, patch: int, latent: int, depth: int, rank: int) -> dict:
    """The FCDM decoder's tensors as the spec's table lists them, written out independently."""
    hidden = 4 * width
    keys = {
        "patchify.proj.weight": (width, 3, patch, patch),
        "patchify.proj.bias": (width,),
        "latent_up.weight": (width, latent, 1, 1),
        "latent_up.bias": (width,),
        "fuse_in.weight": (width, 2 * width, 1, 1),
        "fuse_in.bias": (width,),
        "time_embed.freqs": (128,),
        "time_embed.proj_in.weight": (width, 256),
        "time_embed.proj_in.bias": (width,),
        "time_embed.proj_out.weight": (width, width),
        "time_embed.proj_out.bias": (width,),
        "adaln_base.proj.weight": (2 * width, width),
        "adaln_base.proj.bias": (2 * width,),
        "fuse_skip.weight": (width, 2 * width, 1, 1),
        "fuse_skip.bias": (width,),
        "path_drop_mask_feature": (1, width, 1, 1),
        "out_proj.weight": (3 * patch * patch, width, 1, 1),
        "out_proj.bias": (3 * patch * patch,),
    }
    for i in range(depth):
        keys[f"adaln_deltas.{i}.down.weight"] = (rank, width)
        keys[f"adaln_deltas.{i}.up.weight"] = (2 * width, rank)
    blocks = [f"start_blocks.{i}" for i in range(2)]
    blocks += [f"middle_blocks.{i}" for i in range(depth - 4)]
    blocks += [f"end_blocks.{i}" for i in range(2)]
    for block in blocks:
        keys[f"{block}.dwconv.weight"] = (width, 1, 7, 7)
        keys[f"{block}.dwconv.bias"] = (width,)
        keys[f"{block}.pwconv1.weight"] = (hidden, width, 1, 1)
        keys[f"{block}.pwconv1.bias"] = (hidden,)
        keys[f"{block}.grn.gamma"] = (1, hidden, 1, 1)
        keys[f"{block}.grn.beta"] = (1, hidden, 1, 1)
        keys[f"{block}.pwconv2.weight"] = (width, hidden, 1, 1)
        keys[f"{block}.pwconv2.bias"] = (width,)
    return keys


def expected_keys() -> dict:
    keys = {f"decoder.{k}": v for k, v in fcdm_decoder_keys(896, 16, 128, 8, 128).items()}
    keys["latent_norm_running_mean"] = (128,)
    keys["latent_norm_running_var"] = (128,)
    return keys


@pytest.mark.parametrize("preset", sorted(PARAMETERS), ids=sorted(PARAMETERS))
def test_preset_keys_shapes_and_parameter_count(preset: str) -> None:
    model = CapacitorDecoder.from_config_on_meta(CapacitorDecoderConfig.preset(preset))
    found = {name: tuple(t.shape) for name, t in model.state_dict().items()}
    assert found == expected_keys()
    assert len(found) == 100
    assert model.num_parameters() == PARAMETERS[preset]
    assert model.latent_norm_running_mean.dtype == torch.float32


def test_config_round_trip_and_strictness(tmp_path: Path) -> None:
    config = CapacitorDecoderConfig.preset("capacitor_decoder")
    config.save(tmp_path / "config.json")
    data = json.loads((tmp_path / "config.json").read_text())
    assert "encoder_depth" not in data and data["latent_running_stats_eps"] == 0.0001
    assert CapacitorDecoderConfig.load(tmp_path / "config.json") == config
    with_encoder_fields = {**data, "encoder_depth": 8, "bottleneck_posterior_kind": "x"}
    assert CapacitorDecoderConfig.from_dict(with_encoder_fields).encoder_depth == 8
    with pytest.raises(ValueError, match="unknown keys"):
        CapacitorDecoderConfig.from_dict({**data, "no_such_field": 1})


def test_config_accepts_bottleneck_patchify_mode_off_only() -> None:
    """Every field the file may have is accepted; "patch_2x2" breaks the contract."""
    data = CapacitorDecoderConfig.preset("capacitor_decoder").to_dict()
    assert "bottleneck_patchify_mode" not in data  # absent stays absent when saved
    for mode in (None, "off"):
        config = CapacitorDecoderConfig.from_dict({**data, "bottleneck_patchify_mode": mode})
        assert config.bottleneck_patchify_mode == mode and config.latent_channels == 128
    with pytest.raises(ValueError, match=r"bottleneck_patchify_mode: expected absent or 'off'"):
        CapacitorDecoderConfig.from_dict({**data, "bottleneck_patchify_mode": "patch_2x2"})


@pytest.mark.parametrize(
    ("field", "value"), [("bottleneck_dim", 64), ("patch_size", 32), ("depthwise_kernel_size", 6)]
)
def test_config_refuses_values_off_the_flux2_contract(field: str, value: int) -> None:
    with pytest.raises(ValueError, match=field):
        CapacitorDecoderConfig(**{field: value})


def test_alias_table_names_every_decoder_attribute() -> None:
    model = CapacitorDecoder.from_config_on_meta(TINY_CONFIG)
    top_level = {key.split(".")[1] for key in model.state_dict() if key.startswith("decoder.")}
    assert top_level == set(DECODER_ATTRIBUTES)


def published_variant(state: dict, *, prefixed: bool, stats: str) -> dict:
    """The checkpoint under the alternative spellings of spec U1/U2."""
    out = {}
    for key, value in state.items():
        if key.startswith("latent_norm_running_"):
            suffix = key.removeprefix("latent_norm_running_")
            key = f"flux2_bn.running_{suffix}" if stats == "bn" else f"flux2_running_{suffix}"
        elif not prefixed:
            key = key.removeprefix("decoder.")
        out[key] = value
    if stats == "bn":
        out["flux2_bn.num_batches_tracked"] = torch.tensor(7, dtype=torch.int64)
    return out


@pytest.mark.parametrize(
    ("prefixed", "stats"),
    [(True, "bn"), (False, "bn"), (False, "plain"), (True, "plain")],
    ids=["flux2_bn", "flux2_bn-unprefixed", "flux2_running-unprefixed", "flux2_running"],
)
def test_alias_spellings_load_and_are_reported(prefixed: bool, stats: str, tmp_path: Path) -> None:
    model = randomize_whitening(randomize_weights(CapacitorDecoder(TINY_CONFIG)))
    model.save_pretrained(tmp_path)
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    save_file(
        published_variant(state, prefixed=prefixed, stats=stats), tmp_path / "model.safetensors"
    )
    loaded = CapacitorDecoder.from_pretrained(tmp_path)
    for key, tensor in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], tensor), key
    inspection = CapacitorDecoder.inspect_checkpoint_aliases(tmp_path / "model.safetensors")
    assert inspection.fixed_by_aliases
    report = inspection.report()
    assert "with the alias table: loadable" in report
    stats_key = f"flux2_{'bn.' if stats == 'bn' else ''}running_mean"
    assert f"{stats_key} -> latent_norm_running_mean" in inspection.renames
    assert CapacitorDecoder.inspect_checkpoint(tmp_path / "model.safetensors").loadable


def test_inspection_names_what_no_alias_fixes(tmp_path: Path) -> None:
    model = CapacitorDecoder(TINY_CONFIG)
    model.save_pretrained(tmp_path)
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    state["flux2_stats.mean"] = state.pop("latent_norm_running_mean")
    state["decoder.out_proj.bias"] = torch.zeros(5)
    save_file(state, tmp_path / "model.safetensors")
    inspection = CapacitorDecoder.inspect_checkpoint_aliases(tmp_path / "model.safetensors")
    assert not inspection.fixed_by_aliases
    report = inspection.report()
    assert "no alias in the table applies" in report
    assert "latent_norm_running_mean" in report and "flux2_stats.mean" in report
    assert "decoder.out_proj.bias: (5,) vs (768,)" in report
    with pytest.raises(CheckpointMismatchError, match=r"flux2_stats\.mean"):
        CapacitorDecoder.from_pretrained(tmp_path)


def test_aliases_work_on_header_entries_and_refuse_both_spellings(tmp_path: Path) -> None:
    state = {"flux2_running_mean": torch.zeros(128), "patchify.proj.bias": torch.zeros(16)}
    save_file(state, tmp_path / "x.safetensors")
    header = apply_key_aliases(read_header(tmp_path / "x.safetensors"), CHECKPOINT_KEY_ALIASES)
    assert sorted(header) == ["decoder.patchify.proj.bias", "latent_norm_running_mean"]
    both = {"flux2_running_mean": 0, "latent_norm_running_mean": 1}
    with pytest.raises(ValueError, match="flux2_running_mean"):
        apply_key_aliases(both, CHECKPOINT_KEY_ALIASES)


def test_family_entry_point() -> None:
    assert installed_families()["capacitor_decoder"] is FAMILY
    assert FAMILY.repo_ids == ("data-archetype/capacitor_decoder",)
    assert FAMILY.presets() == ["capacitor_decoder"]


def test_inference_config_field_order_puts_strength_before_seed() -> None:
    """The published class's order: positional construction agrees with it."""
    names = [field.name for field in dataclasses.fields(CapacitorDecoderInferenceConfig)]
    assert names == [
        "num_steps", "sampler", "schedule", "pdg", "pdg_strength", "strength", "seed",
    ]  # fmt: skip
    assert CapacitorDecoderInferenceConfig(1, "ddim", "linear", False, 2.0, 0.5, 7).seed == 7
