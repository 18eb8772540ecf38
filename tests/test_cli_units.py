"""The `diffae` command's pieces (fitting, PSNR, PCA, names, options) and its error paths."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from diffae.cli import main
from diffae.cli.app import as_cli_error, in_cli_words
from diffae.cli.arguments import build_parser, inference_fields
from diffae.console import ArgumentError, MissingDependency
from diffae.images import BadImage, fit_image, read_image, unique_names, write_png
from diffae.metrics import psnr_8bit, quantize_8bit, summarize
from diffae.models import choose_family, inference_config
from diffae.visuals import comparison_grid, latent_pca
from diffae_core.config import ConfigError
from diffae_core.families import installed_families
from diffae_testing import add_to_hub_cache, randomize_weights

FAMILIES = installed_families()
SUBPROCESS_TIMEOUT = 120


def test_fit_crop_is_centred_and_never_resizes():
    image = torch.arange(7 * 10, dtype=torch.float32).reshape(1, 1, 7, 10).expand(1, 3, 7, 10)
    fitted = fit_image(image, 4, "crop")
    assert fitted.fit == "crop" and fitted.box == (1, 1, 4, 8)
    assert torch.equal(fitted.image, image[..., 1:5, 1:9])
    assert fitted.describe() == "cropped 10x7 -> 8x4 (centre)"
    assert fitted.content(fitted.image) is fitted.image


def test_fit_pad_replicates_edges_and_crops_back():
    image = torch.rand(1, 3, 5, 6, generator=torch.Generator().manual_seed(0))
    fitted = fit_image(image, 4, "pad")
    assert fitted.image.shape == (1, 3, 8, 8) and fitted.box == (1, 1, 5, 6)
    assert torch.equal(fitted.content(fitted.image), image)
    assert torch.equal(fitted.image[..., 0, 1:7], image[..., 0, :])  # top row repeated
    assert fit_image(fitted.image, 4, "crop").fit == "none"


def test_fit_crop_too_small_is_a_bad_image():
    with pytest.raises(BadImage, match="too small: 3x2 px"):
        fit_image(torch.zeros(1, 3, 2, 3), 4, "crop")


def test_unique_names():
    assert unique_names(["x", "x", "x_2", "x", "photo.v2"]) == [
        "x",
        "x_2",
        "x_2_2",
        "x_3",
        "photo.v2",
    ]


def test_psnr_8bit_protocol():
    original = torch.full((3, 4, 4), -1.0)
    shifted = original.clone()
    shifted[0, 0, 0] = -1.0 + 2.0 * 10 / 255  # one value 10 levels off
    expected = 10 * math.log10(255**2 / (10**2 / 48))
    assert psnr_8bit(original, shifted) == pytest.approx(expected, abs=1e-9)
    assert psnr_8bit(original, original + 1e-4) == math.inf  # same after quantisation
    levels = quantize_8bit(torch.tensor([-2.0, -1.0, 0.0, 1.0, 3.0]))
    assert levels.tolist() == [0, 0, 128, 255, 255]


def test_summary_statistics():
    summary = summarize([float(v) for v in range(1, 101)])
    assert summary["mean"] == pytest.approx(50.5)
    assert summary["median"] == pytest.approx(50.5)
    assert summary["p5"] == pytest.approx(5.95)  # linear interpolation, as numpy
    assert summary["p95"] == pytest.approx(95.05)
    assert summary["std"] == pytest.approx(math.sqrt((100**2 - 1) / 12))


def test_latent_pca_and_grid_shapes():
    latents = torch.randn(8, 3, 5, generator=torch.Generator().manual_seed(0))
    pca = latent_pca(latents, 12, 20)
    assert pca.shape == (3, 12, 20) and pca.dtype == torch.uint8
    assert torch.equal(pca[:, :4, :4], pca[:, :1, :1].expand(3, 4, 4))  # nearest upsampling
    assert latent_pca(torch.randn(2, 1, 1), 4, 4).shape == (3, 4, 4)  # fewer than 3 components
    image = torch.zeros(3, 12, 20)
    assert comparison_grid(image, image, pca).shape == (3, 12, 4 * 20 + 3 * 4)


def test_png_round_trip(tmp_path: Path):
    pixels = torch.randint(0, 256, (3, 6, 5), generator=torch.Generator().manual_seed(0))
    image = pixels.float() / 127.5 - 1.0
    write_png(tmp_path / "x.png", image)
    read, note = read_image(tmp_path / "x.png")
    assert note == "" and read.shape == (1, 3, 6, 5)
    assert torch.equal(quantize_8bit(read[0]), pixels.to(torch.uint8))


def test_bad_command_line_exits_2(capsys):
    with pytest.raises(SystemExit) as stop:
        main(["reconstruct", "x.png"])  # no --model, no --out
    assert stop.value.code == 2
    with pytest.raises(SystemExit) as stop:
        main(["decode", "x", "--model", "m", "--out", "o", "--steps", "0"])
    assert stop.value.code == 2
    assert "--steps" in capsys.readouterr().err


def test_library_words_become_the_command_lines():
    message = "pass family=a or family=b; sub_family=c stays; fit=pad; overwrite=True"
    assert in_cli_words(message) == (
        "pass --family a or --family b; sub_family=c stays; --fit pad; --overwrite"
    )
    error = ArgumentError("model", ": 'nope' is neither a folder nor a repo id")
    assert str(as_cli_error(error, "reconstruct")).startswith("--model: 'nope'")
    assert str(as_cli_error(error, "verify")).startswith("MODEL: 'nope'")
    assert str(as_cli_error(error, "inspect")).startswith("MODEL_OR_FILE: 'nope'")


@pytest.mark.parametrize("command", ["verify", "bundle"])
def test_a_positional_model_is_named_as_such(command: str, tmp_path: Path, capsys):
    extra = ["--out", str(tmp_path / "bundle")] if command == "bundle" else []
    assert main([command, str(tmp_path / "nowhere"), *extra]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"diffae {command}: error: MODEL: "), err
    assert "--model" not in err


def test_missing_inputs_and_model_are_one_line_errors(tmp_path: Path, capsys):
    status = main(["inspect", str(tmp_path / "nowhere")])
    err = capsys.readouterr().err
    assert status == 1 and "diffae inspect: error:" in err and "Traceback" not in err
    (tmp_path / "config.json").write_text("{}")
    assert main(["inspect", str(tmp_path)]) == 1
    assert "matches none of the installed families" in capsys.readouterr().err


@pytest.mark.skipif(not FAMILIES, reason="no family installed")
def test_family_choice_errors_and_inference_options():
    family = next(iter(FAMILIES.values()))
    with pytest.raises(ArgumentError, match=r"^family: expected one of") as raised:
        choose_family("x", None, "no_such_family")
    assert str(as_cli_error(raised.value)).startswith("--family: expected one of")
    assert choose_family(family.repo_ids[0], None, None)[0] is family
    args = build_parser().parse_args(
        ["decode", "l", "--model", "m", "--out", "o", "--steps", "3", "--pdg-strength", "1.5"]
    )
    config = inference_config(family, inference_fields(args))
    assert (config.num_steps, config.pdg, config.pdg_strength, config.seed) == (3, True, 1.5, 0)
    args.sampler = "no_such_sampler"
    with pytest.raises(ConfigError, match="sampler"):
        inference_config(family, inference_fields(args))


def test_missing_pillow_says_how_to_install(monkeypatch, tmp_path: Path, capsys):
    monkeypatch.setitem(sys.modules, "PIL", None)  # `from PIL import Image` now fails
    with pytest.raises(MissingDependency, match="pip install pillow"):
        read_image(tmp_path / "x.png")


@pytest.mark.skipif(not FAMILIES, reason="no family installed")
def test_installed_script_finds_family_by_repo_id(tmp_path: Path):
    """`diffae inspect <published repo id>` from the Hub cache, offline, via the console script."""
    family = next(iter(FAMILIES.values()))
    model_dir = tmp_path / "model"
    randomize_weights(family.model_class(family.tiny_config)).save_pretrained(model_dir)
    cache = tmp_path / "hub"
    files = {name: model_dir / name for name in ("config.json", "model.safetensors")}
    add_to_hub_cache(cache, family.repo_ids[0], files)
    script = Path(sys.executable).with_name("diffae")
    assert script.is_file(), "the diffae console script is not installed"
    environment = os.environ | {"HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(
        [str(script), "inspect", family.repo_ids[0]],
        capture_output=True,
        text=True,
        env=environment,
        timeout=SUBPROCESS_TIMEOUT,
    )
    assert result.returncode == 0, result.stderr
    assert f"family: {family.name} (from published repo id {family.repo_ids[0]})" in result.stdout


def test_bad_decoding_choices_exit_2_before_loading(capsys):
    for option in (["--sampler", "euler"], ["--schedule", "foo"]):
        with pytest.raises(SystemExit) as stop:
            main(["decode", "x", "--model", "no/such_model", "--out", "o", *option])
        assert stop.value.code == 2
        assert option[0] in capsys.readouterr().err


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_device_without_cuda_is_a_clear_error(tmp_path: Path, capsys):
    status = main(["decode", "x", "--model", "m", "--out", str(tmp_path), "--device", "cuda"])
    err = capsys.readouterr().err
    assert status == 1 and "--device cuda: no cuda device available" in err


def test_out_of_the_wrong_kind_is_a_clear_error(tmp_path: Path, capsys):
    existing = tmp_path / "file.png"
    existing.write_bytes(b"")
    for command in ("reconstruct", "encode", "decode"):
        assert main([command, "x", "--model", "m", "--out", str(existing)]) == 1
        assert f"--out: expected a folder (created if missing), got the file {existing}" in (
            capsys.readouterr().err
        )
    folder = tmp_path / "latents.safetensors"
    folder.mkdir()
    assert main(["encode", "x", "--model", "m", "--out", str(folder)]) == 1
    assert "--out: expected a .safetensors file, got the folder" in capsys.readouterr().err


def test_inspect_lists_tensors_of_a_foreign_safetensors_file(tmp_path: Path, capsys):
    path = tmp_path / "flux2.safetensors"
    save_file({"latents": torch.zeros(2, 128, 3, 4, dtype=torch.bfloat16)}, str(path))
    assert main(["inspect", str(path)]) == 0
    report = capsys.readouterr().out
    assert "neither a model file (no config.json beside it) nor written by" in report
    assert "latents: 2x128x3x4 bfloat16" in report


@pytest.mark.skipif(not FAMILIES, reason="no family installed")
def test_published_repo_id_goes_to_the_family_loader(monkeypatch, tmp_path: Path, capsys):
    """A known repo id is handed to `from_pretrained` as is (the family's id aliases apply)."""
    family = next(iter(FAMILIES.values()))
    asked = []

    def fake_from_pretrained(cls, path_or_repo_id, **options):
        asked.append(path_or_repo_id)
        raise FileNotFoundError("stop here")

    monkeypatch.setattr(family.model_class, "from_pretrained", classmethod(fake_from_pretrained))
    repo_id = family.repo_ids[-1]
    latents = tmp_path / "latents.safetensors"
    save_file({"latents": torch.zeros(1, 4, 2, 2)}, str(latents))
    out = str(tmp_path / "out")
    status = main(["decode", str(latents), "--model", repo_id, "--out", out, "--device", "cpu"])
    assert (status, asked) == (1, [repo_id])
    assert "stop here" in capsys.readouterr().err


@pytest.mark.skipif(not FAMILIES, reason="no family installed")
def test_broken_pipe_exits_quietly(tmp_path: Path):
    """`diffae inspect MODEL | head` when the reader has gone: no traceback, exit status 1."""
    family = next(iter(FAMILIES.values()))
    model_dir = tmp_path / "model"
    randomize_weights(family.model_class(family.tiny_config)).save_pretrained(model_dir)
    reader, writer = os.pipe()
    os.close(reader)  # the reader is gone before the first line is written
    try:
        result = subprocess.run(
            [sys.executable, "-m", "diffae", "inspect", str(model_dir)],
            stdout=writer,
            stderr=subprocess.PIPE,
            text=True,
            timeout=SUBPROCESS_TIMEOUT,
        )
    finally:
        os.close(writer)
    assert (result.returncode, result.stderr) == (1, "")
