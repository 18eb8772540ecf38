"""Config files, safetensors headers, state diffs, Hub resolution and the float32-buffer policy."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from diffae_core.config import ConfigError, JsonConfig
from diffae_core.io import ModelNotAvailableError, resolve_model_dir
from diffae_core.loading import PretrainedModel, TensorInfo, diff_state, read_header, state_info
from diffae_core.runtime import check_dtype
from diffae_testing import add_to_hub_cache


@dataclass(frozen=True)
class ToyConfig(JsonConfig):
    width: int = 8
    ratio: float = 4.0
    optional_eps: float | None = None

    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {"wide": {"width": 16}}


def test_config_round_trip_writes_published_format(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "config.json"
    ToyConfig(width=3).save(path)
    assert path.read_text() == '{\n  "width": 3,\n  "ratio": 4.0\n}\n'
    assert ToyConfig.load(path) == ToyConfig(width=3)
    ToyConfig(optional_eps=1e-4).save(path)
    assert json.loads(path.read_text()) == {"width": 8, "ratio": 4.0, "optional_eps": 0.0001}
    assert ToyConfig.load(path).optional_eps == 1e-4


def test_config_names_unknown_and_missing_keys(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"unknown keys \['depth'\]"):
        ToyConfig.from_dict({"width": 1, "ratio": 1.0, "depth": 2})
    with pytest.raises(ConfigError, match=r"missing keys \['ratio'\]"):
        ToyConfig.from_dict({"width": 1})
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ConfigError, match="not valid JSON"):
        ToyConfig.load(tmp_path / "bad.json")


def test_config_presets() -> None:
    assert ToyConfig.preset("wide").width == 16
    with pytest.raises(KeyError, match="preset: expected one of"):
        ToyConfig.preset("narrow")


def test_read_header_lists_tensors_without_loading(tmp_path: Path) -> None:
    path = tmp_path / "model.safetensors"
    save_file({"a.weight": torch.zeros(2, 3), "b": torch.zeros(4, dtype=torch.bfloat16)}, path)
    assert read_header(path) == {
        "a.weight": TensorInfo(torch.float32, (2, 3)),
        "b": TensorInfo(torch.bfloat16, (4,)),
    }
    (tmp_path / "junk.safetensors").write_bytes(b"\x01")
    with pytest.raises(ValueError, match="too short"):
        read_header(tmp_path / "junk.safetensors")


def test_state_diff_reports_each_kind() -> None:
    expected = state_info({"a": torch.zeros(2), "b": torch.zeros(3), "c": torch.zeros(1)})
    found = state_info(
        {"a": torch.zeros(2, dtype=torch.bfloat16), "b": torch.zeros(4), "d": torch.zeros(1)}
    )
    diff = diff_state(found, expected)
    assert diff.missing == ["c"] and diff.unexpected == ["d"]
    assert diff.shape_mismatches == [("b", (4,), (3,))]
    assert diff.dtype_differences == [("a", torch.bfloat16, torch.float32)]
    assert not diff.loadable
    report = diff.report()
    assert "1 missing keys" in report and "  c" in report and "b: (4,) vs (3,)" in report


def make_model_files(folder: Path) -> dict[str, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text("{}\n")
    save_file({"w": torch.zeros(1)}, folder / "model.safetensors")
    return {name: folder / name for name in ("config.json", "model.safetensors")}


def test_resolve_local_directory_and_bad_paths(tmp_path: Path) -> None:
    make_model_files(tmp_path / "m")
    assert resolve_model_dir(tmp_path / "m") == tmp_path / "m"
    with pytest.raises(FileNotFoundError, match="neither a local directory"):
        resolve_model_dir(tmp_path / "m" / "config.json")
    with pytest.raises(FileNotFoundError, match="neither a local directory"):
        resolve_model_dir("not a repo id")
    with pytest.raises(TypeError, match="path_or_repo_id"):
        resolve_model_dir(3)  # type: ignore[arg-type]


def test_resolve_from_hub_cache_offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A snapshot laid out as huggingface_hub stores it loads with the Hub out of reach."""
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    files = make_model_files(tmp_path / "src")
    snapshot = add_to_hub_cache(tmp_path / "cache", "data-archetype/toy", files)
    folder = resolve_model_dir("data-archetype/toy", cache_dir=tmp_path / "cache")
    assert folder == snapshot
    assert (folder / "model.safetensors").read_bytes() == files["model.safetensors"].read_bytes()


def test_uncached_repo_offline_gives_actionable_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(ModelNotAvailableError) as caught:
        resolve_model_dir("data-archetype/absent", cache_dir=tmp_path / "cache")
    message = str(caught.value)
    assert "'data-archetype/absent'" in message
    assert "pass a local directory" in message and "hf download" in message


def test_uncached_repo_with_local_files_only(tmp_path: Path) -> None:
    with pytest.raises(ModelNotAvailableError, match="local_files_only"):
        resolve_model_dir(
            "data-archetype/absent", cache_dir=tmp_path / "cache", local_files_only=True
        )


@dataclass(frozen=True)
class BuffersConfig(JsonConfig):
    pass


class WithBuffers(PretrainedModel):
    config_class = BuffersConfig

    def __init__(self) -> None:
        super().__init__(BuffersConfig())
        self.linear = nn.Linear(2, 2)
        self.register_buffer("stats", torch.tensor([1.0 + 2**-20, 3.0]))
        self.register_buffer("count", torch.tensor(3))


def test_float32_buffers_survive_dtype_casts() -> None:
    module = WithBuffers()
    original = module.stats.clone()
    for cast in (lambda m: m.to(torch.bfloat16), lambda m: m.half(), lambda m: m.to("meta")):
        cast(module)
        assert module.stats.dtype == torch.float32
    module = WithBuffers().to(torch.bfloat16)
    assert module.linear.weight.dtype == torch.bfloat16
    assert torch.equal(module.stats, original)  # not rounded to bf16
    assert module.count.dtype == torch.int64
    assert module.float().linear.weight.dtype == torch.float32


def test_check_dtype() -> None:
    assert check_dtype(None) is None and check_dtype(torch.bfloat16) is torch.bfloat16
    with pytest.raises(TypeError, match="dtype: expected None or one of"):
        check_dtype("bfloat16")
    with pytest.raises(TypeError, match="dtype"):
        check_dtype(torch.int8)


def test_alternative_spellings_are_tried_in_order(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    files = make_model_files(tmp_path / "src")
    snapshot = add_to_hub_cache(tmp_path / "cache", "data-archetype/toy-v1", files)
    folder = resolve_model_dir(
        "data-archetype/toy_v1",
        cache_dir=tmp_path / "cache",
        alternatives=["data-archetype/absent", "data-archetype/toy-v1"],
    )
    assert folder == snapshot
    with pytest.raises(ModelNotAvailableError, match="'data-archetype/toy_v2'"):
        resolve_model_dir(
            "data-archetype/toy_v2",
            cache_dir=tmp_path / "cache",
            alternatives=["data-archetype/absent"],
        )
