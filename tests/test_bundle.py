"""`diffae bundle` over every installed family: the folder runs where no diffae package is.

One tiny variant per family (a subprocess costs seconds of torch import). The bundle is run in
`python -I -S`, its sys.path the bundle, the site-packages holding torch, and the standard
library: the workspace's editable-install .pth files are not read, so the bundle must carry
every line of our code it needs.
"""

from __future__ import annotations

import ast
import importlib.util
import json
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from huggingface_hub import metadata_load
from safetensors.torch import load_file, save_file

import diffae.bundle
from diffae import __version__
from diffae.bundle import BundleError, export_bundle, rewrite_core_imports
from diffae.cli import main
from diffae.models import patch_multiple
from diffae_core.families import Family, installed_families
from diffae_testing import add_to_hub_cache, randomize_weights, randomize_whitening

FAMILIES = installed_families()
REPO_ID = "someone/repo"
RUNTIME_IMPORTS = {"torch", "safetensors", "huggingface_hub", "numpy"}
NUM_STEPS = 2
SEED = 7
SUBPROCESS_TIMEOUT = 180


def package_of(family: Family) -> str:
    return family.model_class.__module__.partition(".")[0]


def has_encoder(family: Family) -> bool:
    return callable(getattr(family.model_class, "encode", None))


def one_variant(family: Family) -> str:
    """The variant equal to the family's `tiny_config`, else its first."""
    variants = family.tiny_configs()
    return next((n for n, c in variants.items() if c == family.tiny_config), next(iter(variants)))


CASES = [(name, one_variant(family)) for name, family in FAMILIES.items()]


@dataclass(frozen=True)
class Case:
    family: Family
    variant: str
    model_dir: Path
    bundle_dir: Path

    @property
    def package(self) -> str:
        return package_of(self.family)


def save_tiny_model(family: Family, variant: str, folder: Path) -> Path:
    """The variant with random weights (and whitening statistics, where it has them), saved."""
    model = randomize_weights(family.model_class(family.tiny_configs()[variant]))
    if hasattr(model, "latent_norm_running_var"):
        randomize_whitening(model)
    model.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module", params=CASES, ids=[variant for _, variant in CASES])
def case(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Case:
    name, variant = request.param
    family = FAMILIES[name]
    root = tmp_path_factory.mktemp(variant)
    model_dir = save_tiny_model(family, variant, root / "model")
    bundle_dir = export_bundle(model_dir, root / "bundle", family=name, repo_id=REPO_ID)
    return Case(family, variant, model_dir, bundle_dir)


def test_layout_and_files_byte_for_byte(case: Case):
    names = sorted(path.name for path in case.bundle_dir.iterdir())
    assert names == sorted(
        ["README.md", "config.json", "diffae.json", "model.safetensors", case.package]
    )
    assert json.loads((case.bundle_dir / "diffae.json").read_text()) == {"family": case.family.name}
    for name in ("config.json", "model.safetensors"):
        assert (case.bundle_dir / name).read_bytes() == (case.model_dir / name).read_bytes()
    package_dir = case.bundle_dir / case.package
    assert (package_dir / "_core" / "__init__.py").is_file()
    assert not (package_dir / "_core" / "testing.py").exists()  # no runtime module imports it
    assert not list(package_dir.rglob("test_*.py"))
    assert not list(case.bundle_dir.parent.glob(f".{case.bundle_dir.name}.*"))  # no leftovers


def imports_of(path: Path, module: str) -> list[tuple[int, str]]:
    """(line, absolute module name) of every import in a file, relative ones resolved."""
    tree = ast.parse(path.read_bytes())
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            relative = "." * node.level + (node.module or "")
            found.append((node.lineno, importlib.util.resolve_name(relative, package)))
    return found


def test_imports_stay_inside_the_bundle(case: Case):
    """Only the bundled package, the standard library and the four runtime distributions."""
    allowed = {case.package, *RUNTIME_IMPORTS, *sys.stdlib_module_names}
    outside = []
    for path in sorted((case.bundle_dir / case.package).rglob("*.py")):
        relative = path.relative_to(case.bundle_dir).with_suffix("")
        parts = relative.parts[:-1] if relative.name == "__init__" else relative.parts
        for line, name in imports_of(path, ".".join(parts)):
            if name.partition(".")[0] not in allowed:
                outside.append(f"{path.relative_to(case.bundle_dir)}:{line}: {name}")
    assert not outside, outside


def test_card_front_matter_and_provenance(case: Case):
    card = case.bundle_dir / "README.md"
    metadata = metadata_load(card)
    assert metadata["license"] == "apache-2.0"
    assert metadata["library_name"] == case.package
    assert case.family.name in metadata["tags"]
    text = card.read_text(encoding="utf-8")
    config = case.family.tiny_configs()[case.variant]
    parameters = case.family.model_class.from_config_on_meta(config).num_parameters()
    assert f"{parameters:,} parameters" in text
    assert f"diffae {__version__}" in text
    assert re.search(r"git commit\s+([0-9a-f]{40}|unknown)", text)
    assert f'snapshot_download("{REPO_ID}")' in text


RUN_BUNDLE = r"""
import importlib, importlib.util, json, sys

bundle, site_packages, spec = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
stdlib = list(sys.path)
assert all(path.startswith(sys.base_prefix) for path in stdlib), stdlib
sys.path[:] = [bundle, site_packages, *stdlib]
for name in spec["absent"]:
    assert importlib.util.find_spec(name) is None, f"{name} is importable"

import torch
from safetensors.torch import load_file, save_file

torch.set_num_threads(spec["threads"])
package = importlib.import_module(spec["package"])
assert package.__file__.startswith(bundle), package.__file__
model_class = getattr(package, spec["model_class"])
settings_class = getattr(
    importlib.import_module(spec["settings_module"]), spec["settings_class"]
)
inputs = load_file(spec["inputs"])


def run(model):
    settings = settings_class(num_steps=spec["num_steps"], seed=spec["seed"])
    outputs = {}
    if "images" in inputs:
        outputs["latents"] = model.encode(inputs["images"])
    latents = outputs.get("latents", inputs.get("latents"))
    height, width = spec["size"]
    outputs["decoded"] = model.decode(latents, height, width, inference_config=settings)
    return outputs


outputs = run(model_class.from_pretrained(bundle))
hub = run(model_class.from_pretrained(spec["repo_id"]))  # HF_HUB_OFFLINE=1, HF_HUB_CACHE
outputs |= {"hub_" + name: tensor for name, tensor in hub.items()}
save_file({name: tensor.contiguous() for name, tensor in outputs.items()}, spec["outputs"])

# The card's usage as a user runs it: its own import of the package, from the hub snapshot.
for name in [n for n in sys.modules if n.partition(".")[0] == spec["package"]]:
    del sys.modules[name]
namespace = {"__name__": "__card__"}
exec(spec["card"], namespace)
card_package = sys.modules[spec["package"]].__file__
assert card_package.startswith(spec["cache"]), card_package
print(json.dumps({"card_recon": [list(namespace["recon"].shape), str(namespace["recon"].dtype)]}))
"""


def card_code(bundle_dir: Path) -> str:
    """The first Python block of the bundle's README."""
    match = re.search(r"```python\n(.*?)```", (bundle_dir / "README.md").read_text(), re.DOTALL)
    assert match, "the card has no ```python block"
    return match.group(1)


def reference_outputs(case: Case, inputs: dict[str, torch.Tensor], size: tuple[int, int]):
    """What the workspace package computes for the same files, inputs and settings."""
    model = case.family.model_class.from_pretrained(case.model_dir)
    settings = case.family.inference_config_class(num_steps=NUM_STEPS, seed=SEED)
    outputs = {}
    if "images" in inputs:
        outputs["latents"] = model.encode(inputs["images"])
    latents = outputs.get("latents", inputs.get("latents"))
    outputs["decoded"] = model.decode(latents, *size, inference_config=settings)
    return outputs


def test_bundle_runs_without_the_workspace(case: Case, tmp_path: Path):
    """Bit for bit the workspace's encode/decode, from the folder and through the hub cache;
    then the card's usage runs as written."""
    config = case.family.tiny_configs()[case.variant]
    patch = patch_multiple(config)
    size = (2 * patch, 3 * patch)
    generator = torch.Generator().manual_seed(0)
    if has_encoder(case.family):
        inputs = {"images": torch.rand(2, 3, *size, generator=generator) * 2 - 1}
    else:
        shape = (2, config.latent_channels, size[0] // patch, size[1] // patch)
        inputs = {"latents": torch.randn(*shape, generator=generator)}
    save_file(inputs, str(tmp_path / "inputs.safetensors"))

    cache = tmp_path / "hub"
    files = {
        path.relative_to(case.bundle_dir).as_posix(): path
        for path in case.bundle_dir.rglob("*")
        if path.is_file()
    }
    add_to_hub_cache(cache, REPO_ID, files)
    settings_class = case.family.inference_config_class
    spec = {
        "absent": ["diffae", "diffae_core", *(package_of(f) for f in FAMILIES.values())],
        "package": case.package,
        "model_class": case.family.model_class.__name__,
        "settings_module": settings_class.__module__,
        "settings_class": settings_class.__qualname__,
        "num_steps": NUM_STEPS,
        "seed": SEED,
        "size": size,
        "threads": torch.get_num_threads(),
        "inputs": str(tmp_path / "inputs.safetensors"),
        "outputs": str(tmp_path / "outputs.safetensors"),
        "repo_id": REPO_ID,
        "cache": str(cache),
        "card": card_code(case.bundle_dir),
    }
    spec["absent"].remove(case.package)
    site_packages = str(Path(torch.__file__).parent.parent)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(cache)}
    env |= {"HF_HOME": str(tmp_path / "hf_home")}
    result = subprocess.run(
        [sys.executable, "-I", "-S", "-c", RUN_BUNDLE, str(case.bundle_dir), site_packages,
         json.dumps(spec)],
        capture_output=True, text=True, timeout=SUBPROCESS_TIMEOUT, cwd=tmp_path, env=env,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr

    outputs = load_file(str(tmp_path / "outputs.safetensors"))
    expected = reference_outputs(case, inputs, size)
    for name, tensor in expected.items():
        assert torch.equal(outputs[name], tensor), f"{name} differs from the workspace package"
        assert torch.equal(outputs["hub_" + name], tensor), f"hub {name} differs"
    card_size = json.loads(result.stdout.splitlines()[-1])["card_recon"]
    assert card_size[0][:2] == [1, 3] and card_size[1] == "torch.float32"


# -- the command and the writer ---------------------------------------------------------------
FIRST = next(iter(FAMILIES))


@pytest.fixture(scope="module")
def first_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    family = FAMILIES[FIRST]
    return save_tiny_model(family, one_variant(family), tmp_path_factory.mktemp("first") / "m")


def test_cli_refuses_a_non_empty_out_and_fills_an_empty_one(
    first_model: Path, tmp_path: Path, capsys
):
    occupied = tmp_path / "occupied"
    occupied.mkdir()
    (occupied / "keep.txt").write_text("mine")
    common = ["--family", FIRST, "--quiet"]
    assert main(["bundle", str(first_model), "--out", str(occupied), *common]) == 1
    err = capsys.readouterr().err
    assert f"--out: {occupied} already exists and is not an empty folder" in err
    assert sorted(p.name for p in occupied.iterdir()) == ["keep.txt"]
    assert "Traceback" not in err

    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["bundle", str(first_model), "--out", str(empty), *common]) == 0
    assert (empty / "README.md").is_file() and (empty / package_of(FAMILIES[FIRST])).is_dir()
    assert "<user>/<repo>" in (empty / "README.md").read_text()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty", "occupied"]


def test_failed_export_leaves_nothing(first_model: Path, tmp_path: Path, monkeypatch):
    def fail(package: str, destination: Path) -> None:
        (destination / "partial.py").parent.mkdir(parents=True)
        (destination / "partial.py").write_text("")
        raise BundleError("simulated")

    monkeypatch.setattr(diffae.bundle, "write_package", fail)
    with pytest.raises(BundleError, match="simulated"):
        export_bundle(first_model, tmp_path / "out", family=FIRST)
    assert list(tmp_path.iterdir()) == []


def test_export_refuses_weights_that_do_not_fit(first_model: Path, tmp_path: Path):
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_bytes((first_model / "config.json").read_bytes())
    save_file({"unexpected": torch.zeros(1)}, str(broken / "model.safetensors"))
    with pytest.raises(ValueError, match="unexpected"):
        export_bundle(broken, tmp_path / "out", family=FIRST)
    assert not (tmp_path / "out").exists()


def test_rewrite_keeps_everything_but_the_core_prefix():
    source = (
        "from __future__ import annotations\n"
        "# from diffae_core.x import y stays a comment\n"
        "from diffae_core.config import (\n    A,\n    B,\n)\n"
        "from diffae_core import posterior as core\n"
        "def f():\n    from  diffae_core.loading import g  # é\n    return g\n"
    ).encode()
    rewritten = rewrite_core_imports(source, depth=1, filename="m.py").decode()
    assert rewritten == (
        "from __future__ import annotations\n"
        "# from diffae_core.x import y stays a comment\n"
        "from .._core.config import (\n    A,\n    B,\n)\n"
        "from .._core import posterior as core\n"
        "def f():\n    from .._core.loading import g  # é\n    return g\n"
    )
    with pytest.raises(BundleError, match="cannot be bundled"):
        rewrite_core_imports(b"import diffae_core.config as c\n", depth=0, filename="m.py")
