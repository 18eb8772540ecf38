"""The `diffae` command on a tiny saved model of every installed family.

Parametrised over `installed_families()`, so a family installed later is covered without a change.
Most runs call `main` in-process (a new interpreter costs ~3 s of torch import); each family
also runs once through `python -m diffae` in a subprocess, and the installed `diffae`
script runs in test_cli_units.py.
"""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import save_file

from diffae.cli import main
from diffae.console import ArgumentError
from diffae.images import read_image
from diffae.models import choose_family, decode_accepts, patch_multiple, read_config
from diffae.visuals import GAP
from diffae_core.families import Family, installed_families
from diffae_testing import randomize_weights

FAMILIES = installed_families()
SUBPROCESS_TIMEOUT = 120


def has_encoder(family: Family) -> bool:
    """Decode-only families (capacitor_decoder) have no `encode`."""
    return callable(getattr(family.model_class, "encode", None))


def patch_of(family: Family) -> int:
    return patch_multiple(family.tiny_config)


@pytest.fixture(scope="module", params=sorted(FAMILIES), ids=str)
def family(request: pytest.FixtureRequest) -> Family:
    return FAMILIES[request.param]


@pytest.fixture(scope="module")
def model_dir(family: Family, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The family's tiny config with random weights, saved as a published model directory."""
    return save_tiny_model(family, tmp_path_factory.mktemp(f"model_{family.name}"))


def save_tiny_model(family: Family, folder: Path) -> Path:
    randomize_weights(family.model_class(family.tiny_config)).save_pretrained(folder)
    return folder


def random_image(width: int, height: int, seed: int) -> Image.Image:
    generator = torch.Generator().manual_seed(seed)
    pixels = torch.randint(0, 256, (height, width, 3), generator=generator, dtype=torch.uint8)
    return Image.frombytes("RGB", (width, height), bytes(pixels.untyped_storage()))


@pytest.fixture(scope="module")
def image_dir(family: Family, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_images(family, tmp_path_factory.mktemp(f"images_{family.name}"))


def write_images(family: Family, folder: Path) -> Path:
    """Four good images (RGB, RGBA to crop, greyscale JPEG, WebP) and three bad files."""
    folder.mkdir(parents=True, exist_ok=True)
    p = patch_of(family)
    random_image(2 * p, 2 * p, 0).save(folder / "rgb.png")
    random_image(2 * p + 3, p + 1, 1).convert("RGBA").save(folder / "rgba.png")
    random_image(p, 2 * p, 2).convert("L").save(folder / "grey.jpg")
    random_image(2 * p, p, 3).save(folder / "photo.webp")
    (folder / "broken.png").write_text("not an image")
    Image.new("CMYK", (2 * p, 2 * p)).save(folder / "cmyk.jpg")  # a mode we refuse
    random_image(1, 1, 4).save(folder / "speck.png")
    return folder


GOOD = {"rgb": (2, 2), "rgba": (2, 1), "grey": (1, 2), "photo": (2, 1)}
"""Good image stems -> (width, height) in patches after a centre crop."""
BAD = ("broken.png", "cmyk.jpg", "speck.png")


DECODE_ONLY = [name for name, family in sorted(FAMILIES.items()) if not has_encoder(family)]


@pytest.mark.parametrize("name", DECODE_ONLY)
def test_reconstruct_refuses_decode_only_models(name: str, tmp_path: Path, capsys):
    """Said before loading; reconstruct itself runs per family in test_family_in_a_subprocess."""
    family = FAMILIES[name]
    model = save_tiny_model(family, tmp_path / "model")
    status = main([
        "reconstruct", "x.png", "--model", str(model), "--family", name, "--out", str(tmp_path),
    ])  # fmt: skip
    err = capsys.readouterr().err
    assert status == 1 and "has no encode" in err and name in err


def check_reconstruction(family: Family, image_dir: Path, out: Path, stdout: str, stderr: str):
    """Files written, table printed, bad files named: what `reconstruct` of image_dir leaves."""
    assert "Traceback" not in stderr, stderr
    for name in BAD:
        assert f"skipped {image_dir / name}" in stderr
    assert f"{len(BAD)} of {len(GOOD) + len(BAD)} inputs skipped" in stderr
    p = patch_of(family)
    for stem, (width, height) in GOOD.items():
        with Image.open(out / f"{stem}.png") as image:
            assert (image.size, image.mode) == ((width * p, height * p), "RGB")
        with Image.open(out / "grids" / f"{stem}.png") as grid:
            assert grid.size == (4 * width * p + 3 * GAP, height * p)
        assert str(image_dir / f"{stem}.") in stdout
    assert "RGBA -> RGB" in stdout and "greyscale -> RGB" in stdout
    assert "cropped" in stdout and "mean" in stdout and "p95" in stdout
    assert "image/s" not in stderr  # no progress bar when stderr is not a terminal
    with (out / "metrics.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    done = [row for row in rows if not row["skipped"]]
    assert sorted(Path(row["output"]).stem for row in done) == sorted(GOOD)
    assert sorted(Path(row["image"]).name for row in rows if row["skipped"]) == sorted(BAD)
    report = json.loads((out / "metrics.json").read_text())
    assert report["settings"]["family"] == family.name
    assert sorted(Path(item["input"]).name for item in report["skipped"]) == sorted(BAD)
    assert set(report["summary"]) >= {"mean", "std", "median", "p5", "p95"}


ENCODER_FAMILIES = [name for name, family in sorted(FAMILIES.items()) if has_encoder(family)]


def run_cli(*arguments: str) -> subprocess.CompletedProcess:
    """`python -m diffae ARGUMENTS` in a new interpreter, output captured."""
    return subprocess.run(
        [sys.executable, "-m", "diffae", *arguments],
        capture_output=True,
        text=True,
        timeout=SUBPROCESS_TIMEOUT,
    )


def test_family_in_a_subprocess(family: Family, model_dir: Path, image_dir: Path, tmp_path: Path):
    """`python -m diffae` once per family: reconstruct (decode for decode-only families);
    exit status 1 for the bad files, never a traceback."""
    out = tmp_path / "out"
    common = ["--model", str(model_dir), "--family", family.name, "--out", str(out)]
    if has_encoder(family):
        result = run_cli("reconstruct", str(image_dir), *common, "--grid")
        assert result.returncode == 1, result.stderr
        check_reconstruction(family, image_dir, out, result.stdout, result.stderr)
        return
    latents = torch.randn(1, family.tiny_config.latent_channels, 2, 1)
    save_file({"latents": latents}, str(tmp_path / "external.safetensors"))
    result = run_cli("decode", str(tmp_path / "external.safetensors"), *common)
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr
    p = patch_of(family)
    with Image.open(out / "external.png") as image:
        assert image.size == (p, 2 * p)


def test_encode_decode_round_trip(
    family: Family, model_dir: Path, image_dir: Path, tmp_path: Path, capsys
):
    common = ["--model", str(model_dir), "--family", family.name, "--device", "cpu"]
    p = patch_of(family)
    if not has_encoder(family):
        status = main(["encode", str(image_dir / "rgb.png"), "--out", str(tmp_path), *common])
        assert status == 1 and "has no encode" in capsys.readouterr().err
        return
    images = [str(image_dir / f"{stem}.{ext}") for stem, ext in (("rgba", "png"), ("rgb", "png"))]
    latents_file = tmp_path / "latents.safetensors"
    assert main(["encode", *images, "--out", str(latents_file), "--fit", "pad", *common]) == 0
    with safe_open(str(latents_file), framework="pt") as handle:
        description = json.loads(handle.metadata()["diffae"])
        assert sorted(handle.keys()) == ["rgb", "rgba"]
        rgb_latents = handle.get_tensor("rgb")
    assert description["family"] == family.name
    assert [item["source"] for item in description["items"]] == images
    rgba = description["items"][0]
    assert (rgba["source_width"], rgba["source_height"], rgba["fit"]) == (2 * p + 3, p + 1, "pad")
    assert rgb_latents.dtype == torch.float32 and rgb_latents.shape[0] == 1
    assert tuple(rgb_latents.shape[-2:]) == (2, 2)
    # The written values are `model.encode`'s (rgb.png is 2p x 2p: nothing to pad).
    model = family.model_class.from_pretrained(model_dir)
    with torch.no_grad():
        expected = model.encode(read_image(image_dir / "rgb.png")[0])
    torch.testing.assert_close(rgb_latents, expected.float())

    decoded = tmp_path / "decoded"
    assert main(["decode", str(latents_file), "--out", str(decoded), "--steps", "2", *common]) == 0
    with Image.open(decoded / "rgba.png") as image:
        assert image.size == (2 * p + 3, p + 1)  # the padding is cropped away again
    with Image.open(decoded / "rgb.png") as image:
        assert image.size == (2 * p, 2 * p)

    per_image = tmp_path / "per_image"
    assert main(["encode", str(image_dir / "rgb.png"), "--out", str(per_image), *common]) == 0
    assert (per_image / "rgb.safetensors").is_file()
    capsys.readouterr()


def test_decode_latents_without_metadata(family: Family, model_dir: Path, tmp_path: Path, capsys):
    """A [N, C, h, w] tensor written elsewhere (e.g. FLUX.2 latents for capacitor_decoder)."""
    channels = family.tiny_config.latent_channels
    latents = torch.randn(2, channels, 1, 2, generator=torch.Generator().manual_seed(0))
    save_file({"latents": latents}, str(tmp_path / "external.safetensors"))
    common = ["--model", str(model_dir), "--family", family.name, "--quiet"]
    status = main([
        "decode", str(tmp_path / "external.safetensors"), "--out", str(tmp_path / "out"),
        "--pdg-strength", "1.5", "--seed", "3", *common,
    ])  # fmt: skip
    assert status == 0
    p = patch_of(family)
    for index in range(2):
        with Image.open(tmp_path / "out" / f"external_{index}.png") as image:
            assert image.size == (2 * p, p)
    raw = ["decode", str(tmp_path / "external.safetensors"), "--raw-latents", *common]
    status = main([*raw, "--out", str(tmp_path / "raw")])
    if any(switch.flag == "raw-latents" for switch in family.decode_switches):
        assert decode_accepts(family, "latents_are_flux2_whitened")
        assert status == 0 and (tmp_path / "raw" / "external_0.png").is_file()
    else:
        assert status == 1
        assert f"--raw-latents: the {family.name} model" in capsys.readouterr().err


def test_decode_skips_integer_and_wrong_channel_latents(
    family: Family, model_dir: Path, tmp_path: Path, capsys
):
    """Named, skipped, exit status 1, no traceback, and the message says what is wrong."""
    channels = family.tiny_config.latent_channels
    integers = tmp_path / "integers.safetensors"
    save_file({"latents": torch.zeros(1, channels, 1, 1, dtype=torch.int64)}, str(integers))
    narrow = tmp_path / "narrow.safetensors"
    save_file({"latents": torch.zeros(1, channels + 1, 1, 1)}, str(narrow))
    status = main([
        "decode", str(integers), str(narrow), "--model", str(model_dir), "--family", family.name,
        "--out", str(tmp_path / "out"),
    ])  # fmt: skip
    err = capsys.readouterr().err
    assert status == 1 and "Traceback" not in err
    assert f"skipped {integers}: " in err and "expected floating-point latents" in err
    expected = f"latents have {channels + 1} channels, {family.name} takes {channels}"
    assert f"skipped narrow: {expected}" in err


def test_inspect(family: Family, model_dir: Path, capsys):
    weights = model_dir / "model.safetensors"
    assert main(["inspect", str(weights), "--family", family.name]) == 0
    report = capsys.readouterr().out
    model = family.model_class.from_config_on_meta(family.tiny_config)
    stored = sum(tensor.numel() for tensor in model.checkpoint_state().values())
    assert f"family: {family.name} (from {model_dir / 'diffae.json'})" in report
    assert f"values stored: {stored:,} (parameters and buffers)" in report
    assert "float32:" in report and "256x256:" in report
    assert "checkpoint vs model: not checked; add --check" in report
    assert main(["inspect", str(weights), "--family", family.name, "--check"]) == 0
    checked = capsys.readouterr().out
    assert f"parameters: {model.num_parameters():,}" in checked
    assert "checkpoint matches the model" in checked and "add --check" not in checked


def test_family_recorded_detected_or_ambiguity_named(
    family: Family, model_dir: Path, tmp_path: Path
):
    """A saved folder's family is read from its diffae.json; without one, the config and the
    weights pick the family, or the error names it among the candidates with the flag."""
    chosen, reason = choose_family(str(model_dir), read_config(model_dir), None, folder=model_dir)
    assert (chosen.name, reason) == (family.name, str(model_dir / "diffae.json"))
    bare = tmp_path / "bare"
    bare.mkdir()
    for name in ("config.json", "model.safetensors"):
        (bare / name).write_bytes((model_dir / name).read_bytes())
    try:
        chosen, reason = choose_family(str(bare), read_config(bare), None, folder=bare)
    except ArgumentError as error:
        assert f"family={family.name}" in str(error)
    else:
        assert (chosen.name, reason) == (family.name, "config.json fields and weights")


@pytest.mark.skipif(not ENCODER_FAMILIES, reason="no installed family has an encoder")
def test_quiet_success_bad_latents_and_overwrite_guard(tmp_path: Path, capsys):
    family = FAMILIES[ENCODER_FAMILIES[0]]
    model = save_tiny_model(family, tmp_path / "model")
    images = write_images(family, tmp_path / "images")
    common = ["--model", str(model), "--family", family.name, "--device", "cpu"]
    good = [str(images / "rgb.png"), str(images / "photo.webp")]

    status = main(["reconstruct", *good, "--out", str(tmp_path / "quiet"), "--quiet", *common])
    captured = capsys.readouterr()
    assert (status, captured.out) == (0, "")
    assert (tmp_path / "quiet" / "metrics.csv").is_file()

    (tmp_path / "junk.safetensors").write_text("junk")
    missing = tmp_path / "missing.safetensors"
    out = tmp_path / "out"
    assert (
        main(
            ["decode", str(tmp_path / "junk.safetensors"), str(missing), "--out", str(out), *common]
        )
        == 1
    )
    err = capsys.readouterr().err
    assert err.startswith("diffae decode: error: LATENTS: nothing to read (")
    assert f"{tmp_path / 'junk.safetensors'}: not a readable safetensors file" in err
    assert f"{missing}: no such file or folder" in err and "Traceback" not in err
    assert not out.exists()  # refused before the model loads or anything is written
    assert main(["inspect", str(tmp_path / "junk.safetensors")]) == 1
    assert "not a readable safetensors file" in capsys.readouterr().err

    before = (images / "rgb.png").read_bytes()
    assert main(["reconstruct", good[0], "--out", str(images), *common]) == 1
    assert "--out: would overwrite the input file" in capsys.readouterr().err
    assert (images / "rgb.png").read_bytes() == before
