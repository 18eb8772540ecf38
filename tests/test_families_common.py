"""What every installed family must do, parametrised over the `diffae.families` entry points."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from diffae_core.families import Family, installed_families
from diffae_core.pretrained import PretrainedModel
from diffae_core.testing import add_to_hub_cache, randomize_weights

FAMILIES = installed_families()


@pytest.fixture(params=sorted(FAMILIES), ids=sorted(FAMILIES))
def family(request: pytest.FixtureRequest) -> Family:
    return FAMILIES[request.param]


def tiny(family: Family) -> PretrainedModel:
    return randomize_weights(family.model_class(family.tiny_config)).eval()


def test_the_foundation_family_is_installed() -> None:
    assert "fcdm_diffae" in FAMILIES


def test_family_declaration(family: Family) -> None:
    assert issubclass(family.model_class, PretrainedModel)
    assert family.model_class.config_class is family.config_class
    assert isinstance(family.tiny_config, family.config_class)
    assert family.repo_ids and all(r.startswith("data-archetype/") for r in family.repo_ids)
    assert family.presets()
    family.inference_config_class().validate()


def test_presets_build_on_meta(family: Family) -> None:
    for name in family.presets():
        model = family.model_class.from_config_on_meta(family.config_class.preset(name))
        assert model.num_parameters() > 0
        assert all(t.is_meta for t in model.state_dict().values())


def test_round_trip_and_float32_buffers(family: Family, tmp_path: Path) -> None:
    model = tiny(family)
    model.save_pretrained(tmp_path)
    loaded = family.model_class.from_pretrained(tmp_path, dtype=torch.bfloat16)
    original = model.state_dict()
    for key, tensor in loaded.state_dict().items():
        source = original[key]
        if source.dtype == torch.float32 and key in dict(loaded.named_buffers()):
            assert tensor.dtype == torch.float32 and torch.equal(tensor, source), key
    assert family.model_class.inspect_checkpoint(tmp_path / "model.safetensors").loadable


def test_loads_from_an_offline_hub_cache(
    family: Family, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    tiny(family).save_pretrained(tmp_path / "files")
    files = {name: tmp_path / "files" / name for name in ("config.json", "model.safetensors")}
    # Every published spelling is cached: a family may map one spelling to another.
    for repo_id in family.repo_ids:
        add_to_hub_cache(tmp_path / "hub", repo_id, files)
    for repo_id in family.repo_ids:
        model = family.model_class.from_pretrained(repo_id, cache_dir=tmp_path / "hub")
        assert model.config == family.tiny_config
