"""Saving and strict loading: alias spellings, round trips, mismatch reports, dtype policy."""

from __future__ import annotations

import functools
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from diffae_core.loading import CheckpointMismatchError, read_header
from diffae_testing import randomize_weights, randomize_whitening
from dinac_ae import DinacAE, DinacAEInferenceConfig
from dinac_ae.family import FAMILY

TINY = FAMILY.tiny_configs()
"""One tiny config per release structure (dinac_ae: 1 encoder block, dinac_ae_d2: 2)."""
HEAD = "dino_token_alignment_head"
FLOAT32_RELATIVE = 1e-5
"""Outputs of two float32 models with the same weights, relative to the output's scale."""
BF16_STEP = 2**-7
"""One bf16 step at |x| in [1, 2), relative to the output's scale (predict_class is bf16)."""


def alias_pairs(encoder_depth: int) -> list[tuple[str, str]]:
    """(attn_core spelling, short spelling) of every aliased weight."""
    owners = [f"encoder.blocks.{i}" for i in range(encoder_depth)] + [f"{HEAD}.block"]
    pairs = [
        (f"{owner}.attn_core.{leaf}.weight", f"{owner}.{leaf}.weight")
        for owner in owners
        for leaf in ("qkv", "proj_out")
    ]
    readout = f"{HEAD}.class_readout"
    pairs += [
        (f"{readout}.attn_core.{leaf}.weight", f"{readout}.{leaf}.weight")
        for leaf in ("kv_proj", "out_proj")
    ]
    return pairs


@functools.cache
def _saved(name: str, folder: Path) -> Path:
    model = DinacAE(TINY[name])
    randomize_whitening(randomize_weights(model, seed=0))
    model.save_pretrained(folder)
    return folder


@pytest.fixture(params=sorted(TINY), ids=sorted(TINY))
def name(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def saved(name: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with config.json and model.safetensors of a tiny random-weight model."""
    return _saved(name, tmp_path_factory.getbasetemp() / f"saved_{name}")


def assert_same_state(a: DinacAE, b: DinacAE) -> None:
    state_a, state_b = a.state_dict(), b.state_dict()
    assert list(state_a) == list(state_b)
    for key, tensor in state_a.items():
        assert tensor.dtype == state_b[key].dtype and torch.equal(tensor, state_b[key]), key


def with_weights(folder: Path, target: Path, state: dict[str, torch.Tensor]) -> Path:
    target.mkdir()
    (target / "config.json").write_bytes((folder / "config.json").read_bytes())
    save_file(state, target / "model.safetensors")
    return target


def test_saved_file_holds_both_spellings(name: str, saved: Path) -> None:
    header = read_header(saved / "model.safetensors")
    expected = DinacAE(TINY[name]).state_dict()
    assert set(header) == set(expected)
    for canonical, alias in alias_pairs(TINY[name].encoder_depth):
        assert canonical in header and alias in header
    weights = load_file(saved / "model.safetensors")
    for canonical, alias in alias_pairs(TINY[name].encoder_depth):
        assert torch.equal(weights[canonical], weights[alias])


def test_round_trip_is_bitwise_and_outputs_close(name: str, saved: Path, tmp_path: Path) -> None:
    model = DinacAE.from_pretrained(saved)
    assert not model.training and model.config == TINY[name]
    model.save_pretrained(tmp_path / "again")
    assert (tmp_path / "again" / "config.json").read_bytes() == (saved / "config.json").read_bytes()
    again = DinacAE.from_pretrained(tmp_path / "again")
    assert_same_state(model, again)
    images = torch.rand(1, 3, 8, 12, generator=torch.Generator().manual_seed(0)) * 2 - 1
    # Outputs with a tolerance: memory-mapped weights may take another kernel path.
    cfg = DinacAEInferenceConfig(seed=5)
    recon = model.reconstruct(images, inference_config=cfg)
    torch.testing.assert_close(
        again.reconstruct(images, inference_config=cfg),
        recon,
        rtol=0,
        atol=FLOAT32_RELATIVE * recon.abs().max().item(),
    )
    class_token = model.predict_class(model.encode(images))
    torch.testing.assert_close(
        again.predict_class(again.encode(images)),
        class_token,
        rtol=0,
        atol=BF16_STEP * class_token.abs().max().item(),
    )


@pytest.mark.parametrize("keep", ["attn_core", "short"])
def test_single_spelling_files_load(name: str, saved: Path, tmp_path: Path, keep: str) -> None:
    reference = DinacAE.from_pretrained(saved)
    weights = load_file(saved / "model.safetensors")
    for canonical, alias in alias_pairs(TINY[name].encoder_depth):
        del weights[alias if keep == "attn_core" else canonical]
    folder = with_weights(saved, tmp_path / keep, weights)
    assert DinacAE.inspect_checkpoint(folder / "model.safetensors").loadable
    assert_same_state(DinacAE.from_pretrained(folder), reference)


def test_spellings_that_disagree_are_refused(name: str, saved: Path, tmp_path: Path) -> None:
    weights = load_file(saved / "model.safetensors")
    canonical, alias = alias_pairs(TINY[name].encoder_depth)[0]
    weights[alias] = weights[alias] + 1
    folder = with_weights(saved, tmp_path / "bad", weights)
    with pytest.raises(ValueError, match=rf"{alias}.*{canonical}|{canonical}.*{alias}"):
        DinacAE.from_pretrained(folder)


def test_strict_loading_names_the_key(name: str, saved: Path, tmp_path: Path) -> None:
    weights = load_file(saved / "model.safetensors")
    # decoder.out_proj is not an alias of anything: removing it must fail.
    del weights["decoder.out_proj.bias"]
    weights["encoder.extra.weight"] = torch.zeros(2)
    weights[f"{HEAD}.register_tokens"] = torch.zeros(3, TINY[name].class_head_model_dim)
    folder = with_weights(saved, tmp_path / "bad", weights)
    with pytest.raises(CheckpointMismatchError) as error:
        DinacAE.from_pretrained(folder)
    message = str(error.value)
    assert "1 missing keys" in message and "decoder.out_proj.bias" in message
    assert "1 unexpected keys" in message and "encoder.extra.weight" in message
    assert f"{HEAD}.register_tokens: (3, 64) vs (4, 64)" in message
    diff = DinacAE.inspect_checkpoint(folder / "model.safetensors")
    assert diff.missing == ["decoder.out_proj.bias"]
    assert diff.unexpected == ["encoder.extra.weight"]


def test_from_pretrained_dtype_policy(name: str, saved: Path) -> None:
    model = DinacAE.from_pretrained(saved, dtype=torch.bfloat16)
    model.validate_inference_storage()
    assert model.ordinary_weight_storage_dtype == torch.bfloat16
    assert model.decoder.out_proj.weight.dtype == torch.float32
    assert model.encoder.blocks[0].attn_norm1._impl.weight.dtype == torch.float32
    assert model.encoder.rope.periods.dtype == torch.float32
    reference = DinacAE.from_pretrained(saved)
    assert torch.equal(model.latent_norm_running_var, reference.latent_norm_running_var)
    with pytest.raises(ValueError, match=r"^dtype: "):
        DinacAE.from_pretrained(saved, dtype=torch.float16)


def test_bf16_files_round_trip_and_islands_are_restored(
    name: str, saved: Path, tmp_path: Path
) -> None:
    """A bf16 model saves its island layout; an all-bf16 file loads with float32 islands."""
    model = DinacAE.from_pretrained(saved, dtype=torch.bfloat16)
    model.save_pretrained(tmp_path / "bf16")
    header = read_header(tmp_path / "bf16" / "model.safetensors")
    assert header["decoder.out_proj.weight"].dtype == torch.float32
    assert header["decoder.patchify.proj.weight"].dtype == torch.bfloat16
    assert_same_state(DinacAE.from_pretrained(tmp_path / "bf16"), model)
    weights = {
        k: v.bfloat16() if k.endswith("weight") else v
        for k, v in load_file(saved / "model.safetensors").items()
    }
    loaded = DinacAE.from_pretrained(with_weights(saved, tmp_path / "all_bf16", weights))
    loaded.validate_inference_storage()
    assert loaded.decoder.out_proj.weight.dtype == torch.float32


def test_files_with_every_tensor_bf16_load_with_float32_buffers(
    name: str, saved: Path, tmp_path: Path
) -> None:
    """Buffers stored bf16 too (latent statistics, RoPE periods, time frequencies) load float32."""
    weights = {k: v.bfloat16() for k, v in load_file(saved / "model.safetensors").items()}
    folder = with_weights(saved, tmp_path / "every_bf16", weights)
    buffers = ["latent_norm_running_var", "encoder.rope.periods", f"{HEAD}._axial_rope2d.periods"]
    for dtype in (None, torch.bfloat16, torch.float32):
        model = DinacAE.from_pretrained(folder, dtype=dtype)
        model.validate_inference_storage()
        assert all(b.dtype == torch.float32 for b in model.buffers())
        state = model.state_dict()
        for key in [*buffers, "decoder.time_embed.freqs", "decoder.out_proj.weight"]:
            assert state[key].dtype == torch.float32, key
            # Upcast from the file's bf16 values, not recomputed or rounded again.
            assert torch.equal(state[key], weights[key].float()), key
        assert model.ordinary_weight_storage_dtype == (dtype or torch.bfloat16)
