"""The node pack's VAE object, loading and FLUX.2 check, without ComfyUI.

A small fake runtime, written from the contract `comfyui_diffae.runtime.Runtime` documents (what
the VAE object asks of ComfyUI's model management), stands in for ComfyUI; the real server runs
in tests/test_comfyui_server.py (marker `comfyui`).
"""

from __future__ import annotations

import ast
import dataclasses
import importlib.util
import json
from pathlib import Path
from typing import Any, ClassVar

import pytest
import torch
from safetensors.torch import save_file

from comfyui_diffae.flux2 import check_flux2_vae
from comfyui_diffae.loading import ModelFileError, choose_dtype, identify, load_identified
from comfyui_diffae.vae import DiffaeVAE, crop_pixels
from diffae_core.families import Family, installed_families
from diffae_testing import randomize_weights, randomize_whitening

FAMILIES = installed_families()
ENCODER_FAMILIES = [
    name for name, family in FAMILIES.items() if hasattr(family.model_class, "encode")
]
PACK_FOLDER = Path(__file__).resolve().parents[1] / "packages" / "comfyui_diffae"


class FakeOutOfMemory(RuntimeError):
    """What the fake device raises when a pass does not fit."""


class FakeRuntime:
    """CPU everywhere; `free_bytes` decides how the batch is split."""

    def __init__(self, free_bytes: int = 1 << 40) -> None:
        self.free_bytes = free_bytes
        self.loads: list[int] = []

    def load_device(self) -> torch.device:
        return torch.device("cpu")

    def offload_device(self) -> torch.device:
        return torch.device("cpu")

    def intermediate_device(self) -> torch.device:
        return torch.device("cpu")

    def intermediate_dtype(self) -> torch.dtype:
        return torch.float32

    def make_patcher(self, model: torch.nn.Module, load_device: torch.device) -> object:
        return object()

    def load(self, patcher: object, memory_required: int) -> None:
        self.loads.append(memory_required)

    def free_memory(self, patcher: object, device: torch.device) -> int:
        return self.free_bytes

    def is_out_of_memory(self, error: BaseException) -> bool:
        return isinstance(error, FakeOutOfMemory)

    def empty_cache(self) -> None:
        pass


def tiny_model(name: str) -> torch.nn.Module:
    family = FAMILIES[name]
    model = randomize_weights(family.model_class(family.tiny_config)).eval()
    if hasattr(model, "latent_norm_running_mean"):
        randomize_whitening(model)
    return model


def comfy_image(count: int, height: int, width: int, channels: int = 3) -> torch.Tensor:
    """IMAGE [N, H, W, C] in [0, 1]."""
    return torch.rand(count, height, width, channels, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("family_name", ENCODER_FAMILIES)
def test_encode_then_decode_is_the_models_with_the_seed(family_name: str) -> None:
    model = tiny_model(family_name)
    # Free memory for one image at a time: the batch is split, the noise is not.
    runtime = FakeRuntime()
    vae = DiffaeVAE(model, FAMILIES[family_name], runtime, name=family_name)
    patch = vae.downscale_ratio
    runtime.free_bytes = vae.memory_used_decode((1, vae.latent_channels, 2, 3), torch.float32)
    pixels = comfy_image(3, 2 * patch, 3 * patch)
    latents = vae.encode(pixels)
    images = vae.decode(latents)

    model_images = pixels.movedim(-1, 1) * 2 - 1
    expected_latents = model.encode(model_images)
    settings = FAMILIES[family_name].inference_config_class(seed=0)
    expected = model.decode(expected_latents, 2 * patch, 3 * patch, inference_config=settings)
    torch.testing.assert_close(latents, expected_latents.float())
    torch.testing.assert_close(images, ((expected + 1) / 2).clamp(0, 1).movedim(1, -1))
    assert images.shape == (3, 2 * patch, 3 * patch, 3) and len(runtime.loads) == 2


def test_rgba_and_odd_sizes_are_cropped_centred_like_comfyui() -> None:
    pixels = comfy_image(1, 37, 70, channels=4)
    cropped = crop_pixels(pixels, 16)
    torch.testing.assert_close(cropped, pixels[:, 2:34, 3:67, :3])
    with pytest.raises(ValueError, match="smaller than one latent cell"):
        crop_pixels(comfy_image(1, 8, 70), 16)


def test_tiled_decode_equals_untiled_and_is_the_out_of_memory_fallback() -> None:
    model = tiny_model("capacitor_decoder")
    vae = DiffaeVAE(model, FAMILIES["capacitor_decoder"], FakeRuntime(), name="capacitor")
    latents = torch.randn(2, 128, 6, 4, generator=torch.Generator().manual_seed(1))
    untiled = vae.decode(latents)
    tiled = vae.decode_tiled(latents, tile_x=2, tile_y=4, overlap=1)
    torch.testing.assert_close(tiled, untiled)
    assert not model.tiling_enabled, "the model's own tiling setting is restored"

    plain_decode = model.decode

    def decode_fitting_only_tiled(*args, **kwargs):
        if not model.tiling_enabled:
            raise FakeOutOfMemory("out of memory")
        return plain_decode(*args, **kwargs)

    model.decode = decode_fitting_only_tiled
    torch.testing.assert_close(vae.decode(latents), untiled)
    assert not model.tiling_enabled


def test_decode_only_and_foreign_latents_are_clear_errors() -> None:
    vae = DiffaeVAE(
        tiny_model("capacitor_decoder"), FAMILIES["capacitor_decoder"], FakeRuntime(), name="cap"
    )
    with pytest.raises(ValueError, match=r"decode-only: .*connect the FLUX\.2 VAE"):
        vae.encode(comfy_image(1, 32, 32))
    with pytest.raises(ValueError, match=r"samples: expected cap latents \[N, 128, h, w\]"):
        vae.decode(torch.zeros(1, 4, 8, 8))  # SD-style latents


class FakeComfyFlux2VAE:
    """The attributes of ComfyUI's FLUX.2 VAE the check reads."""

    latent_channels = 128

    def __init__(self, mean: torch.Tensor, var: torch.Tensor, dtype: torch.dtype) -> None:
        stage = torch.nn.Module()
        stage.bn = torch.nn.BatchNorm2d(128, eps=1e-4).to(dtype)
        stage.bn.running_mean.copy_(mean)
        stage.bn.running_var.copy_(var)
        stage.bn_eps = 1e-4
        self.first_stage_model = stage


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_the_flux2_vae_must_hold_the_decoders_statistics(dtype: torch.dtype) -> None:
    decoder = tiny_model("capacitor_decoder")
    mean, var = decoder.latent_norm_running_mean, decoder.latent_norm_running_var
    check_flux2_vae(decoder, FakeComfyFlux2VAE(mean, var, dtype))  # rounded to bf16: accepted
    with pytest.raises(ValueError, match="flux2_vae: its latent statistics differ"):
        check_flux2_vae(decoder, FakeComfyFlux2VAE(mean + 0.5, var, dtype))
    sd_vae = FakeComfyFlux2VAE(mean, var, dtype)
    sd_vae.latent_channels = 4
    with pytest.raises(ValueError, match=r"expected the FLUX\.2 VAE"):
        check_flux2_vae(decoder, sd_vae)


@pytest.mark.parametrize("family_name", sorted(FAMILIES))
def test_a_saved_model_folder_is_identified_by_its_config(family_name: str, tmp_path) -> None:
    model = tiny_model(family_name)
    model.save_pretrained(tmp_path / "tiny")
    path = tmp_path / "tiny" / "model.safetensors"
    identified = identify(path)  # save_pretrained's diffae.json names the family
    assert identified.family.name == family_name and identified.how == "config.json"
    if family_name in ("fcdm_diffae", "full_capacitor"):
        other = {"fcdm_diffae": "full_capacitor", "full_capacitor": "fcdm_diffae"}[family_name]
        with pytest.raises(ModelFileError, match=f"is a {family_name} model"):
            identify(path, family=other)
        # Without it, their small configs have the same fields and tensors: one must choose.
        (tmp_path / "tiny" / "diffae.json").unlink()
        with pytest.raises(ModelFileError, match="fits several families"):
            identify(path)
        assert identify(path, family=family_name).family.name == family_name
    loaded = load_identified(identified, torch.bfloat16)
    assert next(loaded.parameters()).dtype == torch.bfloat16


def test_a_renamed_single_file_is_identified_by_its_preset(tmp_path) -> None:
    families = {"capacitor_decoder": with_tiny_preset("capacitor_decoder", "tiny_capacitor")}
    tiny_model("capacitor_decoder").save_pretrained(tmp_path)
    renamed = tmp_path / "my decoder.safetensors"
    (tmp_path / "model.safetensors").rename(renamed)
    (tmp_path / "config.json").unlink()
    identified = identify(renamed, families)
    assert identified.how == "preset tiny_capacitor"


def test_missing_forged_and_foreign_files_are_one_line_errors(tmp_path) -> None:
    with pytest.raises(ModelFileError, match="no such file"):
        identify(tmp_path / "absent.safetensors")
    forged = tmp_path / "forged.safetensors"
    forged.write_bytes(b"\xff" * 64)
    with pytest.raises(ModelFileError, match=r"forged\.safetensors") as error:
        identify(forged)
    assert "\n" not in str(error.value)
    foreign = tmp_path / "sd_vae.safetensors"
    save_file({"decoder.conv_in.weight": torch.zeros(4, 4, 3, 3)}, str(foreign))
    with pytest.raises(ModelFileError, match="match no published preset"):
        identify(foreign)


def test_dtype_auto_is_bf16_on_cuda_only() -> None:
    assert choose_dtype("auto", torch.device("cpu")) == torch.float32
    assert choose_dtype("auto", torch.device("cuda")) == torch.bfloat16
    assert choose_dtype("bf16", torch.device("cpu")) == torch.bfloat16


def test_the_folder_form_loads_the_v3_entry_point_without_comfyui() -> None:
    """ComfyUI imports `custom_nodes/<folder>/__init__.py`; with V1 mappings beside it, it
    would ignore the V3 entry point."""
    spec = importlib.util.spec_from_file_location("diffae_pack_folder", PACK_FOLDER / "__init__.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert callable(module.comfy_entrypoint)
    assert not hasattr(module, "NODE_CLASS_MAPPINGS")
    assert importlib.util.find_spec("comfy") is None, "the workspace never installs ComfyUI"


def with_tiny_preset(family_name: str, preset: str) -> Family:
    """The family with its tiny config as a published preset (a preset stands for a
    published size; a tiny one keeps the tests small)."""
    family = FAMILIES[family_name]
    tiny_fields = dataclasses.asdict(family.tiny_config)

    class PresetConfig(family.config_class):
        PRESETS: ClassVar[dict[str, dict[str, Any]]] = {preset: tiny_fields}

    return dataclasses.replace(family, config_class=PresetConfig)


def test_a_published_config_names_its_family_through_its_preset(tmp_path) -> None:
    """fcdm_diffae and full_capacitor configs share their fields; a preset's values decide."""
    families = dict(FAMILIES, full_capacitor=with_tiny_preset("full_capacitor", "full_capacitor"))
    tiny_model("full_capacitor").save_pretrained(tmp_path)
    identified = identify(tmp_path / "model.safetensors", families)
    assert identified.family.name == "full_capacitor"


COMFYUI_MODULES = {"comfy", "comfy_api", "folder_paths", "nodes"}
"""ComfyUI's own top-level modules (GPL-3.0), importable only inside ComfyUI."""


def test_only_the_node_module_imports_comfyui_at_import_time() -> None:
    """`nodes.py` (imported by `comfy_entrypoint`, inside ComfyUI) may; everything else imports
    ComfyUI inside functions, so the package imports and is tested without it."""
    source = PACK_FOLDER / "src" / "comfyui_diffae"
    for path in sorted(source.glob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        top_level = set()
        for node in tree.body:
            if isinstance(node, ast.Import):
                top_level |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                top_level.add(node.module.split(".")[0])
        expected = COMFYUI_MODULES & top_level if path.name == "nodes.py" else set()
        assert COMFYUI_MODULES & top_level == expected, path.name


@pytest.mark.parametrize("family_name", ENCODER_FAMILIES)
def test_loaded_and_run_under_inference_mode_as_comfyui_runs_nodes(family_name, tmp_path) -> None:
    tiny_model(family_name).save_pretrained(tmp_path)
    family = FAMILIES[family_name]
    with torch.inference_mode():
        identified = identify(tmp_path / "model.safetensors", {family_name: family})
        model = load_identified(identified, torch.float32)
        vae = DiffaeVAE(model, family, FakeRuntime(), name=family_name)
        patch = vae.downscale_ratio
        images = vae.decode(vae.encode(comfy_image(1, 2 * patch, 2 * patch)))
    assert images.shape == (1, 2 * patch, 2 * patch, 3)


OUR_NODES = {"DiffaeVAELoader", "DiffaeCapacitorFlux2VAE", "DiffaeVAEDecodeAdvanced"}
STOCK_NODES = {"LoadImage", "VAELoader", "VAEEncode", "VAEDecode", "SaveImage"}
STOCK_NODES |= {"EmptyFlux2LatentImage"}


@pytest.mark.parametrize("path", sorted((PACK_FOLDER / "example_workflows").glob("*.json")))
def test_example_workflows_are_editor_workflows_of_our_and_stock_nodes(path: Path) -> None:
    workflow = json.loads(path.read_text(encoding="utf-8"))
    types = {node["type"] for node in workflow["nodes"]}
    assert types & OUR_NODES and types <= OUR_NODES | STOCK_NODES, types
    ids = {node["id"] for node in workflow["nodes"]}
    for _, source, _, target, _, _ in workflow["links"]:
        assert {source, target} <= ids
