"""`diffae inspect` reads a model's files without torch, and its header reader agrees with
safetensors' own (values, dtypes, and what it refuses)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.torch import save_file

from diffae.latents import write_latent_file
from diffae_core.families import installed_families
from diffae_core.io import CheckpointError, read_safetensors_header
from diffae_core.loading import read_header
from diffae_testing import add_to_hub_cache, randomize_weights

FAMILIES = installed_families()
SUBPROCESS_TIMEOUT = 120

INSPECT_IN_A_FRESH_INTERPRETER = """
import json, sys
from diffae.cli import main
status = main(["inspect", *sys.argv[1:]])
print(json.dumps({"status": status, "torch": sorted(m for m in sys.modules if m == "torch")}))
"""


def inspect_without_torch(*arguments: str, env: dict[str, str] | None = None):
    """(exit status, the torch modules imported, the report) of `diffae inspect` in a new
    Python process."""
    result = subprocess.run(
        [sys.executable, "-c", INSPECT_IN_A_FRESH_INTERPRETER, *arguments],
        capture_output=True,
        text=True,
        timeout=SUBPROCESS_TIMEOUT,
        env=env,
    )
    assert result.returncode == 0, result.stderr
    *report, verdict = result.stdout.strip().splitlines()
    outcome = json.loads(verdict)
    return outcome["status"], outcome["torch"], "\n".join(report)


@pytest.fixture(scope="module")
def saved_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Each family's tiny model with random weights, saved as `save_pretrained` does."""
    folders = {}
    for name, family in FAMILIES.items():
        folder = tmp_path_factory.mktemp(name)
        randomize_weights(family.model_class(family.tiny_config)).save_pretrained(folder)
        folders[name] = folder
    return folders


def test_installed_families_and_their_configs_import_no_torch():
    code = (
        "import sys\n"
        "from diffae_core.families import installed_families\n"
        "families = installed_families()\n"
        "configs = [f.config_class.from_dict(f.tiny_config.to_dict()) for f in families.values()]\n"
        "print(len(configs), 'torch' in sys.modules)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=SUBPROCESS_TIMEOUT
    )
    assert result.stdout.split() == [str(len(FAMILIES)), "False"], result.stderr


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_inspect_of_a_saved_model_imports_no_torch(name: str, saved_models: dict[str, Path]):
    status, torch_modules, report = inspect_without_torch(str(saved_models[name]))
    assert (status, torch_modules) == (0, [])
    assert f"family: {name} (from " in report and "values stored: " in report
    assert "checkpoint vs model: not checked; add --check" in report


def test_inspect_of_a_published_repo_id_in_the_hub_cache_imports_no_torch(
    saved_models: dict[str, Path], tmp_path: Path
):
    name = "fcdm_diffae" if "fcdm_diffae" in FAMILIES else next(iter(FAMILIES))
    repo_id = FAMILIES[name].repo_ids[0]
    files = {file: saved_models[name] / file for file in ("config.json", "model.safetensors")}
    add_to_hub_cache(tmp_path, repo_id, files)
    offline = os.environ | {"HF_HUB_CACHE": str(tmp_path), "HF_HUB_OFFLINE": "1"}
    status, torch_modules, report = inspect_without_torch(repo_id, env=offline)
    assert (status, torch_modules) == (0, [])
    assert f"family: {name} (from published repo id {repo_id})" in report


def test_inspect_of_latent_and_foreign_files_imports_no_torch(tmp_path: Path):
    latents = tmp_path / "latents.safetensors"
    items = [{"tensor": "cat", "source": "cat.png", "source_height": 32, "source_width": 48}]
    header = {"family": "fcdm_diffae", "model": "m", "whitened": True, "patch": 16}
    write_latent_file(latents, {"cat": torch.zeros(1, 4, 2, 3)}, items, header)
    foreign = tmp_path / "foreign.safetensors"
    save_file({"z": torch.zeros(2, 3, dtype=torch.bfloat16)}, str(foreign))
    status, torch_modules, report = inspect_without_torch(str(latents))
    assert (status, torch_modules) == (0, [])
    assert "cat: 1x4x2x3 from cat.png (48x32, fit None)" in report
    status, torch_modules, report = inspect_without_torch(str(foreign))
    assert (status, torch_modules) == (0, [])
    assert "z: 2x3 bfloat16" in report


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_header_reader_agrees_with_safetensors_on_models(name: str, saved_models: dict[str, Path]):
    weights = saved_models[name] / "model.safetensors"
    ours = read_safetensors_header(weights).tensors
    theirs = read_header(weights)
    assert list(ours) == list(theirs)
    for key, info in theirs.items():
        assert (ours[key].dtype, ours[key].shape) == (str(info.dtype).split(".")[1], info.shape)
        assert ours[key].nbytes == info.numel * info.dtype.itemsize


def test_header_reader_reads_every_dtype_and_the_metadata(tmp_path: Path):
    dtypes = [torch.bool, torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64]
    dtypes += [torch.float16, torch.bfloat16, torch.float32, torch.float64]
    dtypes += [torch.float8_e4m3fn, torch.float8_e5m2]
    path = tmp_path / "all.safetensors"
    tensors = {str(dtype): torch.zeros(2, 3, dtype=dtype) for dtype in dtypes}
    tensors["scalar"] = torch.tensor(1.0)
    save_file(tensors, str(path), metadata={"note": "kept"})
    header = read_safetensors_header(path)
    assert header.metadata == {"note": "kept"}
    for key, info in read_header(path).items():
        stored = header.tensors[key]
        assert (stored.dtype, stored.shape) == (str(info.dtype).split(".")[1], info.shape)
        assert stored.nbytes == info.numel * info.dtype.itemsize


def damaged(data: bytes, how: str) -> bytes:
    """A model file's bytes, damaged the way `how` names."""
    length = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + length])
    if how == "truncated":
        return data[:-1]
    if how == "extended":
        return data + b"\0"
    if how == "junk":
        return b"junk"
    if how == "length beyond the file":
        return (len(data)).to_bytes(8, "little") + data[8:]
    if how == "not json":
        return data[:8] + b"{" * length + data[8 + length :]
    first = next(key for key in header if key != "__metadata__")
    if how == "shape disagrees with offsets":
        header[first]["shape"] = [size + 1 for size in header[first]["shape"]]
    elif how == "unknown dtype":
        header[first]["dtype"] = "F7"
    text = json.dumps(header, separators=(",", ":")).encode().ljust(length)
    assert len(text) == length
    return data[:8] + text + data[8 + length :]


DAMAGES = [
    "truncated",
    "extended",
    "junk",
    "length beyond the file",
    "not json",
    "shape disagrees with offsets",
    "unknown dtype",
]


@pytest.mark.parametrize("how", DAMAGES)
def test_header_reader_refuses_what_safetensors_refuses(how: str, tmp_path: Path):
    source = tmp_path / "good.safetensors"
    save_file({"a": torch.zeros(3, 4), "b": torch.ones(5)}, str(source))
    path = tmp_path / "bad.safetensors"
    path.write_bytes(damaged(source.read_bytes(), how))
    with pytest.raises(CheckpointError):
        read_header(path)
    with pytest.raises(CheckpointError, match="not a readable safetensors file"):
        read_safetensors_header(path)


@settings(max_examples=100, deadline=None)
@given(position=st.integers(min_value=0), byte=st.integers(min_value=0, max_value=255))
def test_header_reader_and_safetensors_agree_on_any_one_byte_change(position: int, byte: int):
    """One byte of a header changed anywhere: both readers refuse it, or both read the same."""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "x.safetensors"
        save_file({"a": torch.zeros(3, 4), "b": torch.ones(5, dtype=torch.bfloat16)}, str(path))
        data = bytearray(path.read_bytes())
        data[position % (8 + int.from_bytes(data[:8], "little"))] = byte
        path.write_bytes(bytes(data))
        try:
            theirs = read_header(path)
        except CheckpointError:
            theirs = None
        try:
            ours = read_safetensors_header(path).tensors
        except CheckpointError:
            ours = None
    if theirs is None or ours is None:
        assert theirs is ours is None, (theirs, ours)
    else:
        assert {k: (v.dtype, v.shape) for k, v in ours.items()} == {
            k: (str(v.dtype).split(".")[1], v.shape) for k, v in theirs.items()
        }
