"""The wheels work outside the workspace: each model package alone, and the `diffae` tools.

`uv build --all-packages` builds every sdist, and every wheel from its sdist, into a temporary
folder; each wheel's metadata must be complete (summary, license, Python requirement, README,
URLs, lower bounds on every dependency). Each install test makes a fresh venv in another
temporary folder (outside the workspace, from the base interpreter) and lets uv resolve and
install the declared dependencies of one wheel, as `pip install fcdm-diffae` would: nothing of the
workspace's editable packages is visible. A script then runs in that venv (`python -I`, cwd the
temporary folder): a model package must register exactly its own family, bring numpy (which
safetensors needs to save) but neither the other families nor the tools, and save -> load ->
encode/decode each tiny variant; `diffae` must give the command with every family.

torch and the other third-party dependencies are constrained to the versions installed in the
workspace, so uv links them from its cache (hardlinks, nothing downloaded); resolving still reads
PyPI's index, so these tests need the network. That is why they carry the `packaging` marker:
the default run (`uv run pytest`, no network) leaves them out and `.ci/run` runs them as their
own step, `uv run --locked pytest -m packaging`.

Measured on the 2-core CI machine while other jobs shared it (load 4-5), uv's cache warm:
building the seven sdists and wheels 0.2 s; per model package 17-24 s (creating the venv 0.2 s,
resolving and linking torch & co. ~1.5 s, the rest its script, mostly the first `import torch`
compiling bytecode), then 5-7 s to delete the venv's ~23,000 files; the tools package 24-32 s;
the whole module 3-4 minutes (80-90 s of CPU). Too slow for the plain suite even without the
network question.
"""

from __future__ import annotations

import email.parser
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Iterator
from importlib.metadata import distributions, entry_points
from pathlib import Path

import pytest

from diffae_core.families import ENTRY_POINT_GROUP, installed_families

pytestmark = pytest.mark.packaging

WORKSPACE = Path(__file__).resolve().parents[1]
FAMILY_DISTRIBUTIONS = {
    entry.name: entry.dist.metadata["Name"] for entry in entry_points(group=ENTRY_POINT_GROUP)
}
"""Family name -> its distribution, from the workspace's entry points."""
MEMBERS = [
    "diffae",
    "diffae-core",
    "diffae-testing",
    "comfyui-diffae",
    *FAMILY_DISTRIBUTIONS.values(),
]
"""Every distribution the workspace builds (the tools, the core, the dev-only test helpers, the
ComfyUI node pack and one per family); tests/test_comfyui_server.py installs the node pack's
wheel into ComfyUI."""
WORKSPACE_DISTRIBUTIONS = {*MEMBERS, "diffae-workspace"}
TIMEOUT_SECONDS = 300

RANDOM_WEIGHTS = """
import torch


def randomize_weights(model):
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.copy_(0.2 * torch.randn(parameter.shape, generator=generator))
    return model
"""
"""Random weights in a wheel-only environment (diffae-testing is a dev package: not there)."""

MODEL_SCRIPT = (
    RANDOM_WEIGHTS
    + """
import importlib.util
import sys
import tempfile
from importlib.metadata import entry_points

import torch


family_name, *absent = sys.argv[1:]
entries = entry_points(group="diffae.families")
assert [e.name for e in entries] == [family_name], f"entry points: {[e.name for e in entries]}"
for module in absent:
    assert importlib.util.find_spec(module) is None, f"{module} is importable"
assert importlib.util.find_spec("numpy") is not None, "numpy (safetensors[torch]) is missing"

family = entries[family_name].load()
for variant, config in family.tiny_configs().items():
    model = randomize_weights(family.model_class(config)).eval()
    with tempfile.TemporaryDirectory(dir=".") as directory:
        model.save_pretrained(directory)
        loaded = family.model_class.from_pretrained(directory).eval()
    assert loaded.config == config, variant
    patch = config.effective_patch_size
    height, width = 2 * patch, 3 * patch
    generator = torch.Generator().manual_seed(0)
    images = torch.rand(2, 3, height, width, generator=generator) * 2 - 1
    settings = family.inference_config_class(seed=0)
    with torch.inference_mode():
        if hasattr(loaded, "encode"):
            latents = loaded.encode(images)
            torch.testing.assert_close(latents, model.encode(images))
        else:  # capacitor_decoder decodes FLUX.2 latents only
            shape = (2, config.latent_channels, height // patch, width // patch)
            latents = torch.randn(shape, generator=generator)
        recon = loaded.decode(latents, height, width, inference_config=settings)
        expected = model.decode(latents, height, width, inference_config=settings)
    assert recon.shape == images.shape and recon.dtype == torch.float32, variant
    torch.testing.assert_close(recon, expected)
    print(variant)
"""
)

TOOLS_SCRIPT = (
    RANDOM_WEIGHTS
    + """
import contextlib
import io
import sys
import tempfile

from diffae.cli import main
import torch
from diffae_core.families import installed_families


families = installed_families()
assert sorted(families) == sorted(sys.argv[1:]), f"families: {sorted(families)}"
for name, family in families.items():
    with tempfile.TemporaryDirectory(dir=".") as directory:
        randomize_weights(family.model_class(family.tiny_config)).save_pretrained(directory)
        report = io.StringIO()
        with contextlib.redirect_stdout(report):
            # --family: tiny fcdm_diffae and full_capacitor configs have the same fields.
            status = main(["inspect", "--family", name, directory])
    assert status == 0 and f"family: {name} " in report.getvalue(), report.getvalue()

usage = io.StringIO()
with contextlib.redirect_stdout(usage), contextlib.suppress(SystemExit):
    main(["decode", "--help"])
for family in families.values():
    for switch in family.decode_switches:
        assert f"--{switch.flag}" in usage.getvalue(), (switch.flag, usage.getvalue())

# The results viewer's page template ships in the wheel (package data, not a .py file).
from diffae.viewer import DATA_MARKER, TEMPLATE
from importlib.resources import files
assert DATA_MARKER in files("diffae").joinpath(TEMPLATE).read_text(encoding="utf-8")
"""
)


def uv_executable() -> str:
    """The uv running these tests (`uv run` sets $UV), else the one on PATH."""
    uv = os.environ.get("UV") or shutil.which("uv")
    if uv is None:
        pytest.fail("the packaging tests need uv (https://docs.astral.sh/uv/)")
    return uv


def clean_environment() -> dict[str, str]:
    """os.environ without what would point a subprocess at the workspace's venv."""
    leaks = {"VIRTUAL_ENV", "UV_PROJECT_ENVIRONMENT", "PYTHONPATH", "PYTHONHOME", "CONDA_PREFIX"}
    return {key: value for key, value in os.environ.items() if key not in leaks}


def run(command: list[str], cwd: Path) -> str:
    """Run `command`; its stdout, or a failure showing both streams."""
    result = subprocess.run(
        command,
        cwd=cwd,
        env=clean_environment(),
        capture_output=True,
        text=True,
        timeout=TIMEOUT_SECONDS,
    )
    if result.returncode != 0:
        pytest.fail(
            f"{' '.join(command)} exited with {result.returncode}\n"
            f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}"
        )
    return result.stdout


@pytest.fixture(scope="module")
def wheels(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An sdist and a wheel per workspace member; uv builds each wheel from its sdist."""
    directory = tmp_path_factory.mktemp("wheels")
    run([uv_executable(), "build", "--all-packages", "-o", str(directory)], WORKSPACE)
    expected = sorted(name.replace("-", "_") for name in MEMBERS)
    for pattern in ("*.whl", "*.tar.gz"):
        assert sorted(path.name.split("-")[0] for path in directory.glob(pattern)) == expected
    return directory


@pytest.fixture(scope="module")
def constraints(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`name==version` of every third-party distribution in the workspace's venv.

    torch, safetensors, numpy, huggingface_hub and their own dependencies then resolve to the
    files already in uv's cache: linked, not downloaded (torch is ~3 GB with its CUDA wheels).
    """
    pins = {}
    for distribution in distributions():
        name = distribution.metadata["Name"].lower().replace("_", "-")
        if name not in WORKSPACE_DISTRIBUTIONS:
            pins.setdefault(name, distribution.version.split("+")[0])  # no local suffix
    path = tmp_path_factory.mktemp("constraints") / "constraints.txt"
    path.write_text("".join(f"{name}=={version}\n" for name, version in sorted(pins.items())))
    return path


def install(requirement: str, wheels: Path, constraints: Path, directory: Path) -> Path:
    """A new venv in `directory` with `requirement` installed from the wheels; its python."""
    uv, venv = uv_executable(), directory / "venv"
    base_python = getattr(sys, "_base_executable", sys.executable)
    run([uv, "venv", "--quiet", "--python", base_python, str(venv)], directory)
    python = venv / ("Scripts" if os.name == "nt" else "bin") / "python"
    sources = ["--find-links", str(wheels), "--constraint", str(constraints)]
    run([uv, "pip", "install", "-q", "--python", str(python), *sources, requirement], directory)
    return python


@pytest.mark.parametrize("distribution", MEMBERS)
def test_wheel_metadata_is_complete(distribution: str, wheels: Path) -> None:
    (wheel,) = wheels.glob(f"{distribution.replace('-', '_')}-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        (name,) = [n for n in archive.namelist() if n.endswith(".dist-info/METADATA")]
        metadata = email.parser.Parser().parsestr(archive.read(name).decode())
    assert metadata["Name"] == distribution
    assert metadata["Summary"] and metadata["License-Expression"] == "Apache-2.0"
    assert metadata["Requires-Python"] == ">=3.10"
    assert metadata["Description-Content-Type"] == "text/markdown"
    assert len(metadata.get_payload()) > 200, "the README is the long description"
    assert metadata.get_all("Project-URL")
    requirements = metadata.get_all("Requires-Dist")
    assert requirements and all(">=" in r for r in requirements), requirements


def test_the_core_wheel_carries_no_test_helpers(wheels: Path) -> None:
    (wheel,) = wheels.glob("diffae_core-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        assert not [name for name in archive.namelist() if "testing" in name]


def test_the_tools_wheel_ships_the_embedded_model_not_its_training_logs(wheels: Path) -> None:
    """The logs stay in the repository (and the sdist) for the model's README; the wheel has
    only what running the model reads."""
    (wheel,) = wheels.glob("diffae-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        shipped = [n for n in archive.namelist() if n.startswith("diffae/data/model/")]
    assert {"diffae/data/model/config.json", "diffae/data/model/model.safetensors"} <= {*shipped}
    assert not [name for name in shipped if name.endswith(".jsonl")], shipped


@pytest.fixture
def scratch() -> Iterator[Path]:
    """A temporary folder outside the workspace, removed right after the test.

    Not pytest's `tmp_path`: pytest keeps the last three runs' folders and a later run (maybe
    the plain suite) would pay for deleting their venvs' ~23,000 files each.
    """
    directory = Path(tempfile.mkdtemp(prefix="diffae-wheels-"))
    yield directory
    shutil.rmtree(directory, ignore_errors=True)


@pytest.mark.parametrize("family_name", sorted(FAMILY_DISTRIBUTIONS))
def test_a_model_package_installs_and_runs_alone(
    family_name: str, wheels: Path, constraints: Path, scratch: Path
) -> None:
    python = install(FAMILY_DISTRIBUTIONS[family_name], wheels, constraints, scratch)
    absent = [name for name in FAMILY_DISTRIBUTIONS if name != family_name] + ["diffae"]
    (scratch / "smoke.py").write_text(MODEL_SCRIPT)
    variants = run([str(python), "-I", "smoke.py", family_name, *absent], scratch).split()
    assert variants == list(installed_families()[family_name].tiny_configs())


def test_the_tools_package_brings_the_command_and_every_family(
    wheels: Path, constraints: Path, scratch: Path
) -> None:
    python = install("diffae", wheels, constraints, scratch)
    commands = ("reconstruct", "encode", "decode", "inspect")
    console_script = [str(python.parent / "diffae"), "--help"]
    for command in (console_script, [str(python), "-I", "-m", "diffae", "--help"]):
        usage = run(command, scratch)
        assert all(name in usage for name in commands), usage
    (scratch / "tools.py").write_text(TOOLS_SCRIPT)
    run([str(python), "-I", "tools.py", *FAMILY_DISTRIBUTIONS], scratch)
