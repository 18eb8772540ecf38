"""Loading never trusts its files: every problem with `model.safetensors` or `config.json` is our
error naming the file, and a fuzzed checkpoint either loads the same tensors or is refused.

The fuzz (hypothesis) mutates a valid tiny checkpoint: byte flips in the header and its length
prefix, truncations, forged header lengths, forged shapes and dtypes. Flips in the tensor data
are not fuzzed: safetensors carries no checksum, so such a file loads other values by design
(docs/reliability.md).
"""

from __future__ import annotations

import ast
import json
import shutil
import struct
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import save_file

from diffae_core.config import ConfigError
from diffae_core.families import installed_families
from diffae_core.io import CheckpointError, ModelNotAvailableError
from diffae_core.loading import CheckpointMismatchError, read_header
from diffae_testing import randomize_weights

FAMILIES = installed_families()
FAMILY = FAMILIES.get("fcdm_diffae") or next(iter(FAMILIES.values()))
OUR_ERRORS = (CheckpointError, CheckpointMismatchError, ConfigError)
FUZZ = settings(
    max_examples=100,
    deadline=2000,  # ms per example: a hang or a huge allocation shows as a failure
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    database=None,
)


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, torch.Tensor]]:
    """A tiny model of one family saved in the published layout, and its state."""
    folder = tmp_path_factory.mktemp("model")
    model = randomize_weights(FAMILY.model_class(FAMILY.tiny_config))
    model.save_pretrained(folder)
    return folder, {k: v.detach().clone() for k, v in model.state_dict().items()}


def header_and_data(path: Path) -> tuple[dict, bytes]:
    """The JSON header and the data bytes of a safetensors file."""
    raw = path.read_bytes()
    (length,) = struct.unpack("<Q", raw[:8])
    return json.loads(raw[8 : 8 + length]), raw[8 + length :]


def with_header(header: dict, data: bytes) -> bytes:
    """A safetensors file from a header object and data bytes (header padded to 8 bytes)."""
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text + data


def load_mutated(folder: Path, target: Path, weights: bytes) -> dict[str, torch.Tensor] | None:
    """Load a copy of the model folder whose weights are `weights`: its state, or None when
    refused with one of our errors (any other exception fails the test)."""
    target.mkdir(exist_ok=True)
    shutil.copyfile(folder / "config.json", target / "config.json")
    (target / "model.safetensors").write_bytes(weights)
    try:
        model = FAMILY.model_class.from_pretrained(target)
    except OUR_ERRORS as error:
        assert str(target) in str(error), f"the error does not name the file: {error}"
        return None
    return model.state_dict()


def assert_same_state(state: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> None:
    assert state.keys() == expected.keys()
    for name, tensor in expected.items():
        # A save/load round trip of the same bytes: bitwise equality is the contract.
        assert state[name].dtype == tensor.dtype and torch.equal(state[name], tensor), name


@FUZZ
@given(data=st.data())
def test_header_byte_flips_load_the_same_tensors_or_are_refused(saved, tmp_path, data) -> None:
    folder, expected = saved
    raw = bytearray((folder / "model.safetensors").read_bytes())
    (length,) = struct.unpack("<Q", bytes(raw[:8]))
    for _ in range(data.draw(st.integers(1, 3), label="flips")):
        position = data.draw(st.integers(0, 8 + length - 1), label="position")
        raw[position] ^= data.draw(st.integers(1, 255), label="mask")
    state = load_mutated(folder, tmp_path / "flipped", bytes(raw))
    if state is not None:
        assert_same_state(state, expected)


@FUZZ
@given(data=st.data())
def test_truncations_and_forged_lengths_are_refused(saved, tmp_path, data) -> None:
    folder, _ = saved
    raw = (folder / "model.safetensors").read_bytes()
    if data.draw(st.booleans(), label="truncate"):
        weights = raw[: data.draw(st.integers(0, len(raw) - 1), label="size")]
    else:
        forged = data.draw(st.integers(0, 2**64 - 1), label="length")
        (length,) = struct.unpack("<Q", raw[:8])
        weights = struct.pack("<Q", forged) + raw[8:]
        if forged == length:
            return
    assert load_mutated(folder, tmp_path / "cut", weights) is None


@pytest.fixture(scope="module")
def saved_bf16(saved, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same model with every tensor stored as bfloat16 (a file the loader accepts)."""
    folder, state = saved
    target = tmp_path_factory.mktemp("model_bf16")
    shutil.copyfile(folder / "config.json", target / "config.json")
    save_file({k: v.bfloat16() for k, v in state.items()}, target / "model.safetensors")
    FAMILY.model_class.from_pretrained(target)
    return target


FORGED_DTYPES = [
    *("F32", "F16", "BF16", "F64", "F8_E4M3", "F8_E5M2"),
    *("I64", "I32", "U32", "I16", "U16", "I8", "U8", "BOOL"),
    *("Q7", ""),
]
"""Every dtype safetensors names, and two it does not. Those of the stored dtype's width (I32
and U32 for F32; F16, I16 and U16 for BF16) pass safetensors' own checks: ours refuse them."""


@FUZZ
@given(data=st.data())
@pytest.mark.parametrize("stored", ["float32", "bfloat16"])
def test_forged_shapes_and_dtypes_are_refused_without_allocating(
    saved, saved_bf16, tmp_path, data, stored
) -> None:
    folder = saved[0] if stored == "float32" else saved_bf16
    header, tensors = header_and_data(folder / "model.safetensors")
    name = data.draw(st.sampled_from(sorted(k for k in header if k != "__metadata__")))
    entry = dict(header[name])
    if data.draw(st.booleans(), label="forge shape"):
        # Up to ~10^18 elements: allocating what the header claims would fail loudly.
        dims = st.integers(0, 10**6)
        entry["shape"] = data.draw(st.lists(dims, min_size=0, max_size=3), label="shape")
    else:
        entry["dtype"] = data.draw(st.sampled_from(FORGED_DTYPES), label="dtype")
    if entry == header[name]:
        return
    header[name] = entry
    assert load_mutated(folder, tmp_path / "forged", with_header(header, tensors)) is None


@pytest.mark.parametrize(
    ("stored", "forged"),
    [("float32", "I32"), ("float32", "U32"), ("bfloat16", "F16"), ("bfloat16", "I16")],
)
@pytest.mark.parametrize("name", ["latent_norm_running_var", "decoder.out_proj.weight"])
def test_same_width_dtype_forgeries_name_the_file_and_tensor(
    saved, saved_bf16, tmp_path, stored, forged, name
) -> None:
    """A buffer or a parameter relabelled to a dtype of the same width: our error, naming the
    file and the tensor, before any weight is read (else int32 statistics of ~1e9 would load)."""
    folder = saved[0] if stored == "float32" else saved_bf16
    header, tensors = header_and_data(folder / "model.safetensors")
    header[name] = header[name] | {"dtype": forged}
    target = tmp_path / "forged"
    target.mkdir()
    shutil.copyfile(folder / "config.json", target / "config.json")
    (target / "model.safetensors").write_bytes(with_header(header, tensors))
    with pytest.raises(CheckpointMismatchError, match="refused dtypes") as caught:
        FAMILY.model_class.from_pretrained(target)
    assert str(target) in str(caught.value) and f"  {name}: torch." in str(caught.value)


class WeightsRead(AssertionError):
    """Raised by the spies below when tensor data is read."""


def forbid_reading_weights(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make every way the loader reads tensor data raise WeightsRead (headers stay readable):
    safetensors' `load_file`/`load` and `get_tensor` of any `safe_open` handle."""
    import safetensors
    import safetensors.torch

    import diffae_core.loading

    def refuse(*args, **kwargs):
        raise WeightsRead("tensor data was read")

    real_safe_open = safetensors.safe_open

    class SpyingHandle:
        def __init__(self, *args, **kwargs) -> None:
            self.handle = real_safe_open(*args, **kwargs)

        def __enter__(self):
            self.handle.__enter__()
            return self

        def __exit__(self, *exc):
            return self.handle.__exit__(*exc)

        def get_tensor(self, name):
            refuse()

        def __getattr__(self, name):
            return getattr(self.handle, name)

    for module in (safetensors.torch, diffae_core.loading):
        monkeypatch.setattr(module, "load_file", refuse, raising=False)
        monkeypatch.setattr(module, "safe_open", SpyingHandle, raising=False)
    monkeypatch.setattr(safetensors.torch, "load", refuse)
    monkeypatch.setattr(safetensors, "safe_open", SpyingHandle)


def test_a_mismatched_header_is_refused_before_any_weight_is_read(saved, tmp_path, monkeypatch):
    folder, _ = saved
    header, tensors = header_and_data(folder / "model.safetensors")
    name = sorted(key for key in header if key != "__metadata__")[0]
    header[name + "_renamed"] = header.pop(name)
    target = tmp_path / "renamed"
    target.mkdir()
    shutil.copyfile(folder / "config.json", target / "config.json")
    (target / "model.safetensors").write_bytes(with_header(header, tensors))
    forbid_reading_weights(monkeypatch)
    # The spies see a load that reads weights (else this test would prove nothing) ...
    with pytest.raises(WeightsRead):
        FAMILY.model_class.from_pretrained(folder)
    # ... and none when the header does not match the model.
    with pytest.raises(CheckpointMismatchError, match="1 missing keys") as caught:
        FAMILY.model_class.from_pretrained(target)
    assert str(target) in str(caught.value) and name in str(caught.value)


def test_unsupported_and_newer_dtypes_are_read_through_safetensors(tmp_path: Path) -> None:
    path = tmp_path / "fp8.safetensors"
    save_file({"w": torch.zeros(2, 3, dtype=torch.float8_e4m3fn), "s": torch.tensor(1.0)}, path)
    header = read_header(path)
    assert (header["w"].dtype, header["w"].shape) == (torch.float8_e4m3fn, (2, 3))
    assert (header["s"].dtype, header["s"].shape) == (torch.float32, ())


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda c: c | {"no_such_field": 1}, "unknown keys"),
        (lambda c: {k: v for k, v in c.items() if k != "model_dim"}, "missing keys"),
        (lambda c: c | {"model_dim": "wide"}, "model_dim: expected a positive int"),
        (lambda c: c | {"model_dim": c["model_dim"] * 2}, "does not match the model"),
    ],
    ids=["unknown", "missing", "wrong type", "shapes disagree"],
)
def test_config_problems_name_the_file(saved, tmp_path: Path, edit, message: str) -> None:
    folder, _ = saved
    target = tmp_path / "edited"
    shutil.copytree(folder, target)
    config = json.loads((target / "config.json").read_text())
    (target / "config.json").write_text(json.dumps(edit(config)))
    with pytest.raises(OUR_ERRORS, match=message) as caught:
        FAMILY.model_class.from_pretrained(target)
    assert str(target) in str(caught.value)


def test_missing_files_and_offline_hub_ids_are_clear(saved, tmp_path: Path, monkeypatch) -> None:
    folder, _ = saved
    target = tmp_path / "no_weights"
    target.mkdir()
    shutil.copyfile(folder / "config.json", target / "config.json")
    with pytest.raises(FileNotFoundError, match=r"has no model\.safetensors"):
        FAMILY.model_class.from_pretrained(target)
    (target / "config.json").write_bytes(b"\xff\xfe not json")
    (target / "model.safetensors").write_bytes(b"")
    with pytest.raises(ConfigError, match="not valid JSON"):
        FAMILY.model_class.from_pretrained(target)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelNotAvailableError, match="not in the Hugging Face cache"):
        FAMILY.model_class.from_pretrained("nobody/not-cached", cache_dir=tmp_path / "cache")


def test_no_pickle_is_ever_read() -> None:
    """Only safetensors are loaded: no torch.load, pickle or numpy.load in any package."""
    roots = [Path(__file__).parents[1] / "shared", Path(__file__).parents[1] / "packages"]
    found = []
    for path in (p for root in roots for p in root.glob("*/src/**/*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and node.attr == "load":
                owner = getattr(node.value, "id", "")
                if owner in {"torch", "pickle", "np", "numpy"}:
                    found.append(f"{path.name}: {owner}.load")
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                names = [a.name for a in node.names] + [getattr(node, "module", "") or ""]
                if any(n.split(".")[0] in {"pickle", "dill", "joblib"} for n in names):
                    found.append(f"{path.name}: imports {names}")
    assert not found, found


def test_a_float16_model_saves_and_loads_but_mixed_halves_are_refused(saved, tmp_path) -> None:
    """float16 storage is what an fp16 model saves; a file mixing bf16 and f16 is a forgery."""
    folder, _ = saved
    model = FAMILY.model_class.from_pretrained(folder, dtype=torch.float16)
    model.save_pretrained(tmp_path / "fp16")
    again = FAMILY.model_class.from_pretrained(tmp_path / "fp16", dtype=torch.float16)
    for (name, a), (_, b) in zip(
        model.state_dict().items(), again.state_dict().items(), strict=True
    ):
        assert torch.equal(a, b), name
    header, tensors = header_and_data(tmp_path / "fp16" / "model.safetensors")
    halves = [k for k in header if header[k].get("dtype") == "F16"]
    header[halves[0]] = header[halves[0]] | {"dtype": "BF16"}
    (tmp_path / "fp16" / "model.safetensors").write_bytes(with_header(header, tensors))
    with pytest.raises(CheckpointMismatchError, match="refused dtypes") as caught:
        FAMILY.model_class.from_pretrained(tmp_path / "fp16")
    assert f"  {halves[0]}: torch.bfloat16" in str(caught.value)
