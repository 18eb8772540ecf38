"""The node pack in a real ComfyUI server, driven through its HTTP API as a user's workflows are.

The ComfyUI source comes from DIFFAE_COMFYUI (a folder holding `main.py`, or the `.tar.gz` of
one; these tests skip when it is unset). One server runs for the module: a venv made from
ComfyUI's `requirements.txt` plus our wheels (the pip-install form of the pack, loaded through a
one-line file in `custom_nodes/`), `main.py --cpu` on a free loopback port with a temporary
`--base-directory`; it is stopped at the end, also when a test fails.

Keeping CI cheap: every package also in our `uv.lock` (torch above all, ~3 GB with its CUDA
wheels) is constrained to the locked version, so uv links it from the cache `uv sync --locked`
filled. Left out of ComfyUI's requirements: the web frontend, workflow templates and embedded
docs packages (a browser's, not the API's; `--front-end-root` points at an empty folder).
Startup is ~35-50 s on 2 shared cores; the module ~3 min. Needs PyPI's index (the `comfyui`
marker; `.ci/run` runs it as its own step).

Models are tiny random ones saved here in the published layout, the embedded model of `diffae`,
and a random full-size FLUX.2 VAE (diffusers) in ComfyUI's format (ComfyUI's own loader converts
it once, in its venv). Results are compared with our Python API on the same inputs: within 1/255
(ComfyUI's SaveImage truncates where we round).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tarfile
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from diffae.cli import main as diffae_main
from diffae.models import EMBEDDED_MODEL
from diffae_core.families import installed_families
from diffae_testing import randomize_weights, randomize_whitening

pytestmark = pytest.mark.comfyui

WORKSPACE = Path(__file__).resolve().parents[1]
PHOTO = WORKSPACE / "packages/diffae/src/diffae/data/photos/astronaut.png"
FAMILIES = installed_families()
LEFT_OUT = ("comfyui-frontend-package", "comfyui-workflow-templates", "comfyui-embedded-docs")
"""ComfyUI requirements the API does not need (see the module docstring)."""
STARTUP_SECONDS = 240
PROMPT_SECONDS = 300
INSTALL_SECONDS = 600
SHIM = "from comfyui_diffae import comfy_entrypoint  # noqa: F401\n"
"""custom_nodes/diffae_nodes.py: how a pip-installed pack is loaded (see comfyui_diffae)."""
TO_COMFY_FORMAT = """
import sys
sys.path.insert(0, sys.argv[1])
import comfy.options
comfy.options.enable_args_parsing()
comfyui, diffusers_file, comfy_file = sys.argv[1:]
sys.argv[1:] = ["--cpu"]
import comfy.sd
from safetensors.torch import load_file, save_file
vae = comfy.sd.VAE(sd=load_file(diffusers_file))
save_file({k: v.contiguous() for k, v in vae.get_sd().items()}, comfy_file)
"""
"""Run in ComfyUI's venv: a diffusers FLUX.2 VAE file -> ComfyUI's own key layout."""


def comfyui_source(directory: Path) -> Path:
    """The ComfyUI folder DIFFAE_COMFYUI names (a .tar.gz is extracted into `directory`)."""
    setting = os.environ.get("DIFFAE_COMFYUI")
    if not setting:
        pytest.skip("DIFFAE_COMFYUI is unset: no ComfyUI source to test the node pack against")
    source = Path(setting).resolve()
    if source.is_file() and source.name.endswith((".tar.gz", ".tgz")):
        with tarfile.open(source) as archive:
            # The "data" filter (no links out, no devices) where this Python has it (3.10.12+).
            safe = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
            archive.extractall(directory, **safe)
        found = sorted(directory.glob("*/main.py"))
        if len(found) != 1:
            pytest.fail(f"DIFFAE_COMFYUI={setting}: expected one folder with main.py inside")
        return found[0].parent
    if not (source / "main.py").is_file():
        pytest.fail(f"DIFFAE_COMFYUI={setting}: neither a ComfyUI folder nor its .tar.gz")
    return source


def uv_executable() -> str:
    uv = os.environ.get("UV") or shutil.which("uv")
    if uv is None:
        pytest.fail("the comfyui tests need uv (https://docs.astral.sh/uv/)")
    return uv


def run(command: list[str], cwd: Path, timeout: float = INSTALL_SECONDS) -> str:
    """Run `command` outside the workspace's venv; stdout, or a failure with both streams."""
    leaks = {"VIRTUAL_ENV", "UV_PROJECT_ENVIRONMENT", "PYTHONPATH", "PYTHONHOME"}
    env = {key: value for key, value in os.environ.items() if key not in leaks}
    result = subprocess.run(
        command, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )
    if result.returncode != 0:
        pytest.fail(
            f"{' '.join(command)} exited with {result.returncode}\n"
            f"stdout:\n{result.stdout[-4000:]}\nstderr:\n{result.stderr[-4000:]}"
        )
    return result.stdout


def make_venv(comfyui: Path, directory: Path) -> Path:
    """ComfyUI's requirements (minus `LEFT_OUT`) and comfyui-diffae from our wheels; its python."""
    uv = uv_executable()
    wheels = directory / "wheels"
    run([uv, "build", "--all-packages", "--wheel", "-q", "-o", str(wheels)], WORKSPACE)
    constraints = directory / "constraints.txt"
    export = ["export", "--frozen", "--all-groups", "--no-hashes", "--no-emit-workspace"]
    run([uv, *export, "--no-header", "--no-annotate", "-q", "-o", str(constraints)], WORKSPACE)
    lines = (comfyui / "requirements.txt").read_text().splitlines()
    kept = [line for line in lines if not line.strip().lower().startswith(LEFT_OUT)]
    requirements = directory / "requirements.txt"
    requirements.write_text("\n".join(kept) + "\n")
    venv = directory / "venv"
    base_python = getattr(sys, "_base_executable", sys.executable)
    run([uv, "venv", "-q", "--python", base_python, str(venv)], directory)
    python = venv / "bin" / "python"
    sources = ["-r", str(requirements), "-c", str(constraints), "--find-links", str(wheels)]
    run(
        [uv, "pip", "install", "-q", "--python", str(python), *sources, "comfyui-diffae"], directory
    )
    return python


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass
class Server:
    url: str
    base: Path
    process: subprocess.Popen
    log: Path

    def request(self, path: str, payload: Any = None) -> tuple[int, Any]:
        """(status, parsed JSON) of a GET, or of a POST when `payload` is given."""
        data = None if payload is None else json.dumps(payload).encode()
        request = urllib.request.Request(
            self.url + path, data=data, headers={"Content-Type": "application/json"}
        )
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as error:
            return error.code, json.loads(error.read() or b"null")

    def submit(self, graph: dict[str, Any]) -> tuple[int, Any]:
        return self.request("/prompt", {"prompt": graph, "client_id": "diffae-tests"})

    def run(self, graph: dict[str, Any]) -> dict[str, Any]:
        """POST an API-format graph and wait for its history entry."""
        status, answer = self.submit(graph)
        assert status == 200, answer
        prompt_id = answer["prompt_id"]
        deadline = time.monotonic() + PROMPT_SECONDS
        while time.monotonic() < deadline:
            _, history = self.request(f"/history/{prompt_id}")
            entry = history.get(prompt_id) if history else None
            if entry and entry.get("status", {}).get("status_str"):
                return entry
            if self.process.poll() is not None:
                pytest.fail(f"ComfyUI exited:\n{self.log_tail()}")
            time.sleep(0.5)
        pytest.fail(f"prompt {prompt_id} did not finish in {PROMPT_SECONDS} s\n{self.log_tail()}")

    def images(self, entry: dict[str, Any], node: str) -> list[np.ndarray]:
        """The PNGs a SaveImage node wrote, fetched through /view, as uint8 [H, W, 3]."""
        assert entry["status"]["status_str"] == "success", self.error_of(entry)
        arrays = []
        for image in entry["outputs"][node]["images"]:
            query = urllib.parse.urlencode(
                {"filename": image["filename"], "subfolder": image["subfolder"], "type": "output"}
            )
            with urllib.request.urlopen(f"{self.url}/view?{query}", timeout=30) as response:
                arrays.append(np.array(Image.open(response).convert("RGB")))
        return arrays

    @staticmethod
    def error_of(entry: dict[str, Any]) -> str:
        """The exception message of a failed prompt ('' when it succeeded)."""
        for kind, message in entry["status"].get("messages", []):
            if kind == "execution_error":
                return message["exception_message"]
        return ""

    def log_tail(self) -> str:
        return self.log.read_text(errors="replace")[-6000:]


def save_tiny_models(vae_folder: Path, flux2_statistics: tuple[torch.Tensor, torch.Tensor]):
    """Each family's tiny variants as `tiny_<variant>/`; the capacitor holds the FLUX.2 VAE's
    statistics. Returns {folder name: (family name, model)}."""
    models = {}
    for name, family in FAMILIES.items():
        for variant, config in family.tiny_configs().items():
            model = randomize_weights(family.model_class(config)).eval()
            if hasattr(model, "latent_norm_running_mean"):
                randomize_whitening(model)
            if name == "capacitor_decoder":
                model.latent_norm_running_mean.copy_(flux2_statistics[0])
                model.latent_norm_running_var.copy_(flux2_statistics[1])
            folder = f"tiny_{variant}"
            model.save_pretrained(vae_folder / folder)
            models[folder] = (name, model)
    return models


@dataclass
class Setup:
    server: Server
    models: dict[str, tuple[str, torch.nn.Module]]
    small_photo: Path


@pytest.fixture(scope="module")
def setup() -> Iterator[Setup]:
    """Not pytest's tmp_path: a later pytest run would pay for deleting the 6 GB venv."""
    directory = Path(tempfile.mkdtemp(prefix="diffae-comfyui-"))
    try:
        yield from serve(directory)
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def serve(directory: Path) -> Iterator[Setup]:
    """Prepare the venv and models in `directory`, run the server, stop it when done."""
    comfyui = comfyui_source(directory)
    python = make_venv(comfyui, directory)
    base = directory / "base"
    for sub in ("custom_nodes", "models/vae", "input", "frontend"):
        (base / sub).mkdir(parents=True, exist_ok=True)
    (base / "custom_nodes" / "diffae_nodes.py").write_text(SHIM)
    vae_folder = base / "models" / "vae"
    shutil.copytree(EMBEDDED_MODEL, vae_folder / "embedded", ignore=shutil.ignore_patterns("*.md"))

    # A random full-size FLUX.2 VAE with non-trivial latent statistics, in ComfyUI's format.
    if str(WORKSPACE) not in sys.path:  # the benchmarks are scripts beside the packages
        sys.path.insert(0, str(WORKSPACE))
    from benchmarks.flux2 import build_flux2_vae

    flux2 = build_flux2_vae()
    generator = torch.Generator().manual_seed(2)
    statistics = (torch.randn(128, generator=generator), 0.5 + torch.rand(128, generator=generator))
    flux2.bn.running_mean.copy_(statistics[0])
    flux2.bn.running_var.copy_(statistics[1])
    diffusers_file = directory / "flux2_diffusers.safetensors"
    save_file({k: v.contiguous() for k, v in flux2.state_dict().items()}, str(diffusers_file))
    del flux2
    script = directory / "to_comfy_format.py"
    script.write_text(TO_COMFY_FORMAT)
    comfy_file = vae_folder / "flux2_random.safetensors"
    run([str(python), str(script), str(comfyui), str(diffusers_file), str(comfy_file)], directory)
    diffusers_file.unlink()

    models = save_tiny_models(vae_folder, statistics)
    (vae_folder / "forged.safetensors").write_bytes(
        b"\x10\x00\x00\x00\x00\x00\x00\x00{" + b"x" * 40
    )
    shutil.copy(PHOTO, base / "input" / PHOTO.name)
    small_photo = base / "input" / "small.png"
    Image.open(PHOTO).convert("RGB").resize((96, 64), Image.BICUBIC).save(small_photo)

    port, log = free_port(), directory / "comfyui.log"
    command = [str(python), str(comfyui / "main.py"), "--cpu", "--listen", "127.0.0.1"]
    command += ["--port", str(port), "--disable-api-nodes", "--base-directory", str(base)]
    command += ["--database-url", "sqlite:///:memory:", "--front-end-root", str(base / "frontend")]
    with log.open("w") as log_file:
        process = subprocess.Popen(
            command,
            cwd=directory,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    server = Server(f"http://127.0.0.1:{port}", base, process, log)
    try:
        deadline = time.monotonic() + STARTUP_SECONDS
        while True:
            if process.poll() is not None:
                pytest.fail(f"ComfyUI exited during startup:\n{server.log_tail()}")
            try:
                if server.request("/system_stats")[0] == 200:
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"ComfyUI not ready in {STARTUP_SECONDS} s:\n{server.log_tail()}")
            time.sleep(1)
        yield Setup(server, models, small_photo)
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def load_image(name: str) -> dict[str, Any]:
    return {"class_type": "LoadImage", "inputs": {"image": name}}


def diffae_vae(file: str, family: str = "auto") -> dict[str, Any]:
    return {
        "class_type": "DiffaeVAELoader",
        "inputs": {"vae_name": file, "dtype": "fp32", "family": family},
    }


def empty_flux2_latent(width: int, height: int, batch_size: int) -> dict[str, Any]:
    size = {"width": width, "height": height, "batch_size": batch_size}
    return {"class_type": "EmptyFlux2LatentImage", "inputs": size}


def capacitor(flux2_vae: list | None = None) -> dict[str, Any]:
    """The Capacitor decoder (FLUX.2) node with the tiny capacitor saved here."""
    inputs: dict[str, Any] = {"decoder_name": "tiny_capacitor_decoder/model.safetensors"}
    inputs["dtype"] = "fp32"
    if flux2_vae is not None:
        inputs["flux2_vae"] = flux2_vae
    return {"class_type": "DiffaeCapacitorFlux2VAE", "inputs": inputs}


def save(images: list, prefix: str) -> dict[str, Any]:
    return {"class_type": "SaveImage", "inputs": {"images": images, "filename_prefix": prefix}}


def as_uint8(images: torch.Tensor) -> list[np.ndarray]:
    """Our images [N, 3, H, W] in [-1, 1] -> uint8 [H, W, 3] each, rounded."""
    scaled = ((images.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return list(scaled.permute(0, 2, 3, 1).numpy())


def assert_within_one_level(actual: list[np.ndarray], expected: list[np.ndarray]) -> None:
    assert len(actual) == len(expected)
    for got, want in zip(actual, expected, strict=True):
        assert got.shape == want.shape
        difference = np.abs(got.astype(np.int16) - want.astype(np.int16)).max()
        assert difference <= 1, f"max difference {difference}/255"


def photo_pixels(path: Path) -> torch.Tensor:
    """As LoadImage gives it, mapped to [-1, 1]: [1, 3, H, W]."""
    array = np.array(Image.open(path).convert("RGB")).astype(np.float32) / 255.0
    return torch.from_numpy(array).permute(2, 0, 1).unsqueeze(0) * 2 - 1


def test_embedded_model_in_stock_encode_decode_equals_diffae_reconstruct(
    setup: Setup, tmp_path: Path
) -> None:
    graph = {
        "1": load_image(PHOTO.name),
        # Its config fits full_capacitor's fields too (and is no preset): the family is chosen.
        "2": diffae_vae("embedded/model.safetensors", "fcdm_diffae"),
        "3": {"class_type": "VAEEncode", "inputs": {"pixels": ["1", 0], "vae": ["2", 0]}},
        "4": {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["2", 0]}},
        "5": save(["4", 0], "embedded"),
    }
    (comfy_image,) = setup.server.images(setup.server.run(graph), "5")
    assert diffae_main(["reconstruct", "--quiet", str(PHOTO), "--out", str(tmp_path)]) == 0
    reconstruction = np.array(Image.open(tmp_path / "astronaut.png").convert("RGB"))
    assert_within_one_level([comfy_image], [reconstruction])


def test_capacitor_decodes_flux2_latents_in_stock_decode_and_tiled_decode(setup: Setup) -> None:
    graph = {
        "1": empty_flux2_latent(128, 96, 2),
        "2": capacitor(),
        "3": {"class_type": "VAEDecode", "inputs": {"samples": ["1", 0], "vae": ["2", 0]}},
        "4": {
            "class_type": "VAEDecodeTiled",
            "inputs": {
                "samples": ["1", 0],
                "vae": ["2", 0],
                "tile_size": 64,
                "overlap": 32,
                "temporal_size": 64,
                "temporal_overlap": 8,
            },
        },
        "5": save(["3", 0], "capacitor"),
        "6": save(["4", 0], "capacitor_tiled"),
    }
    entry = setup.server.run(graph)
    untiled, tiled = setup.server.images(entry, "5"), setup.server.images(entry, "6")
    _, decoder = setup.models["tiny_capacitor_decoder"]
    settings = decoder.inference_config_class(seed=0)
    expected = decoder.decode(torch.zeros(2, 128, 6, 8), 96, 128, inference_config=settings)
    assert_within_one_level(untiled, as_uint8(expected))
    assert_within_one_level(tiled, untiled)


def flux2_graph(with_vae: bool) -> dict[str, Any]:
    return {
        "1": load_image("small.png"),
        "2": {"class_type": "VAELoader", "inputs": {"vae_name": "flux2_random.safetensors"}},
        "3": capacitor(["2", 0] if with_vae else None),
        "4": {"class_type": "VAEEncode", "inputs": {"pixels": ["1", 0], "vae": ["3", 0]}},
        "5": {"class_type": "VAEDecode", "inputs": {"samples": ["4", 0], "vae": ["3", 0]}},
        "6": save(["5", 0], "flux2" if with_vae else "flux2_alone"),
    }


def test_capacitor_encodes_with_the_stock_flux2_vae_and_refuses_without(setup: Setup) -> None:
    (image,) = setup.server.images(setup.server.run(flux2_graph(with_vae=True)), "6")
    assert image.shape == (64, 96, 3)
    failed = setup.server.run(flux2_graph(with_vae=False))
    assert failed["status"]["status_str"] == "error"
    assert "decode-only" in setup.server.error_of(failed)
    assert "connect the FLUX.2 VAE" in setup.server.error_of(failed)


def test_advanced_decode_with_three_steps_and_pdg(setup: Setup) -> None:
    options = {"steps": 3, "sampler": "dpmpp_2m", "schedule": "cosine", "pdg": True}
    options |= {"pdg_strength": 1.5, "strength": 1.0, "seed": 7, "tile_size": 0}
    graph = {
        "1": empty_flux2_latent(64, 48, 1),
        "2": capacitor(),
        "3": {
            "class_type": "DiffaeVAEDecodeAdvanced",
            "inputs": {"samples": ["1", 0], "vae": ["2", 0], **options},
        },
        "4": save(["3", 0], "advanced"),
    }
    images = setup.server.images(setup.server.run(graph), "4")
    _, decoder = setup.models["tiny_capacitor_decoder"]
    settings = decoder.inference_config_class(
        num_steps=3, sampler="dpmpp_2m", schedule="cosine", pdg=True, pdg_strength=1.5, seed=7
    )
    expected = decoder.decode(torch.zeros(1, 128, 3, 4), 48, 64, inference_config=settings)
    assert_within_one_level(images, as_uint8(expected))


def test_every_familys_tiny_model_in_stock_encode_decode(setup: Setup) -> None:
    graph: dict[str, Any] = {"photo": load_image("small.png")}
    encoders = {
        folder: (family, model)
        for folder, (family, model) in setup.models.items()
        if hasattr(model, "encode")
    }
    for folder, (family, _) in encoders.items():
        graph[f"{folder}_vae"] = diffae_vae(f"{folder}/model.safetensors", family)
        graph[f"{folder}_enc"] = {
            "class_type": "VAEEncode",
            "inputs": {"pixels": ["photo", 0], "vae": [f"{folder}_vae", 0]},
        }
        graph[f"{folder}_dec"] = {
            "class_type": "VAEDecode",
            "inputs": {"samples": [f"{folder}_enc", 0], "vae": [f"{folder}_vae", 0]},
        }
        graph[f"{folder}_save"] = save([f"{folder}_dec", 0], folder)
    entry = setup.server.run(graph)
    pixels = photo_pixels(setup.small_photo)
    for folder, (family, model) in encoders.items():
        patch = model.config.effective_patch_size
        height, width = 64 // patch * patch, 96 // patch * patch
        top, left = (64 - height) // 2, (96 - width) // 2
        cropped = pixels[..., top : top + height, left : left + width]
        settings = FAMILIES[family].inference_config_class(seed=0)
        expected = model.decode(model.encode(cropped), height, width, inference_config=settings)
        assert_within_one_level(setup.server.images(entry, f"{folder}_save"), as_uint8(expected))


def test_missing_and_forged_files_are_clear_errors_and_the_server_keeps_serving(
    setup: Setup,
) -> None:
    missing = {"1": diffae_vae("absent.safetensors"), "2": save(["3", 0], "x")}
    missing["3"] = {
        "class_type": "VAEDecode",
        "inputs": {"samples": ["4", 0], "vae": ["1", 0]},
    }
    missing["4"] = empty_flux2_latent(64, 64, 1)
    status, answer = setup.server.submit(missing)
    assert status == 400 and "absent.safetensors" in json.dumps(answer)

    forged = dict(missing, **{"1": diffae_vae("forged.safetensors")})
    entry = setup.server.run(forged)
    message = setup.server.error_of(entry)
    assert entry["status"]["status_str"] == "error" and "forged.safetensors" in message
    assert "\n" not in message.strip()
    assert setup.server.request("/system_stats")[0] == 200
