"""The library under the command line, called from Python: `reconstruct`, `train`'s argument
errors, the learning-rate schedule across a resume, the torchrun helper, and how the command
line words the library's errors (`ArgumentError` -> the flag)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from diffae.cli import main
from diffae.cli.app import as_cli_error
from diffae.console import ArgumentError, ModelError
from diffae.distributed import Processes
from diffae.images import read_image, write_png
from diffae.metrics import psnr_8bit
from diffae.models import EMBEDDED_MODEL, LoadedModel
from diffae.reconstruction import reconstruct
from diffae.training import (
    TrainingConfig,
    TrainingSettings,
    learning_rate_at,
    learning_rate_schedule,
    train,
)
from diffae_core.families import installed_families
from diffae_testing import randomize_weights, randomize_whitening

FAMILY = installed_families()["fcdm_diffae"]
PATCH = FAMILY.tiny_config.effective_patch_size


@pytest.fixture(scope="module")
def loaded() -> LoadedModel:
    """The tiny fcdm_diffae model with random weights, as `load_model` would hand it over."""
    torch.manual_seed(0)
    model = randomize_whitening(randomize_weights(FAMILY.model_class(FAMILY.tiny_config))).eval()
    return LoadedModel(FAMILY, model, torch.device("cpu"), PATCH, "tiny", torch.float32)


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Two random non-square images (sides multiples of the patch) and a file that is not one."""
    folder = tmp_path_factory.mktemp("images")
    generator = torch.Generator().manual_seed(3)
    paths = []
    for name, (height, width) in (("wide", (8, 12)), ("tall", (12, 8))):
        paths.append(folder / f"{name}.png")
        write_png(paths[-1], torch.rand(3, height, width, generator=generator) * 2 - 1)
    (folder / "broken.png").write_text("not an image")
    return [*paths, folder / "broken.png"]


def test_reconstruct_writes_model_decode_of_model_encode(loaded, images, tmp_path):
    """Each PNG is the model's encode -> decode of the image, 8-bit; each row its PSNR; the
    unreadable file is skipped with its reason, and the refused input is reported too."""
    config = FAMILY.inference_config_class(seed=0)
    refused = [("elsewhere.txt", "not an image file")]
    result = reconstruct(images, tmp_path, loaded, inference_config=config, refused=refused)
    assert [Path(row.image).name for row in result.rows] == ["wide.png", "tall.png"]
    assert result.inputs == 4 and [key for key, _ in result.skipped] == [
        "elsewhere.txt",
        str(images[2]),
    ]
    for row, path in zip(result.rows, images, strict=False):
        image, _ = read_image(path)
        with torch.inference_mode():
            latents = loaded.model.encode(image)
            decoded = loaded.model.decode(latents, *image.shape[-2:], inference_config=config)
        write_png(tmp_path / "expected.png", decoded[0].float())
        written, expected = (
            read_image(tmp_path / row.output)[0],
            read_image(tmp_path / "expected.png")[0],
        )
        assert torch.equal(written, expected), row.output
        assert (row.width, row.height) == (image.shape[-1], image.shape[-2])
        assert row.psnr_db == psnr_8bit(image[0], written[0])
    assert result.metrics_files == (tmp_path / "metrics.csv", tmp_path / "metrics.json")


def test_reconstruct_errors_name_the_python_argument(loaded, images, tmp_path):
    (tmp_path / "notes.txt").write_text("keep me")
    with pytest.raises(ArgumentError, match="pass overwrite=True") as not_empty:
        reconstruct(images[:1], tmp_path, loaded)
    assert not_empty.value.argument == "out"
    # ... and the command line says it with its flags.
    cli = str(as_cli_error(not_empty.value))
    assert cli.startswith(f"--out: {tmp_path} is not empty") and "pass --overwrite" in cli
    with pytest.raises(ArgumentError, match=r"^batch_size: expected an integer >= 1, got 0$"):
        reconstruct(images[:1], tmp_path / "new", loaded, batch_size=0)
    result = reconstruct(images[:1], tmp_path, loaded, overwrite=True)
    assert len(result.rows) == 1 and (tmp_path / "notes.txt").read_text() == "keep me"


def test_train_errors_name_the_field_and_the_command_its_flag(images, tmp_path, capsys):
    model = FAMILY.model_class(FAMILY.tiny_config)
    settings = TrainingSettings(crop_size=PATCH * 2 + 1, workers=0)
    with pytest.raises(ArgumentError, match=rf"^crop_size {PATCH * 2 + 1}: not a multiple"):
        train(model, TrainingConfig(images[0].parent, tmp_path / "run", settings))
    with pytest.raises(ArgumentError, match=r"^data .*: not a folder$"):
        train(model, TrainingConfig(tmp_path / "missing", tmp_path / "run"))
    with pytest.raises(ArgumentError, match=r"^resume: .* does not exist$"):
        fits = TrainingSettings(crop_size=PATCH * 2, workers=0)
        train(model, TrainingConfig(images[0].parent, tmp_path / "run", fits, resume=True))
    with pytest.raises(ArgumentError, match=r"^data: no training image is at least 128x128$"):
        train(model, TrainingConfig(images[0].parent, tmp_path / "run"))
    config = tmp_path / "config.json"
    FAMILY.tiny_config.save(config)
    argv = ["train", str(images[0].parent), "--config", str(config), "--family", "fcdm_diffae"]
    argv += ["--out", str(tmp_path / "cli-run")]
    assert main([*argv, "--crop-size", str(PATCH * 2 + 1), "--quiet"]) == 1
    error = capsys.readouterr().err
    assert f"diffae train: error: --crop-size {PATCH * 2 + 1}: not a multiple" in error


def test_learning_rate_schedule_resumes_where_it_stopped():
    """LambdaLR from step 0 and one started at step k give the same rates from k on, each
    `learning_rate_at` exactly."""
    settings = TrainingSettings(steps=20, warmup_steps=5, learning_rate=3e-4)

    def optimizer() -> torch.optim.Optimizer:
        return torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=settings.learning_rate)

    straight = optimizer()
    schedule = learning_rate_schedule(straight, settings)
    rates = []
    for _ in range(settings.steps):
        rates.append(straight.param_groups[0]["lr"])
        straight.step()
        schedule.step()
    assert rates == [learning_rate_at(step, settings) for step in range(settings.steps)]
    resumed = optimizer()
    schedule = learning_rate_schedule(resumed, settings, start_step=7)
    for step in range(7, settings.steps):
        assert resumed.param_groups[0]["lr"] == rates[step], step
        resumed.step()
        schedule.step()


def test_processes_without_and_with_a_broken_torchrun_environment(monkeypatch):
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    single = Processes.from_environment()
    assert single == Processes(0, 1, 0) and single.main
    value = torch.tensor([1.0, 2.0])
    assert single.all_mean(value) is value and single.all_gather("record") == ["record"]
    assert single.device_for(torch.device("cpu")) == torch.device("cpu")
    monkeypatch.setenv("RANK", "one")
    with pytest.raises(ArgumentError, match=r"^environment variable RANK: expected an integer"):
        Processes.from_environment()
    monkeypatch.setenv("RANK", "2")
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ArgumentError, match="not below WORLD_SIZE=2"):
        Processes.from_environment()


def test_argument_errors_in_the_command_lines_words():
    assert str(as_cli_error(ArgumentError("batch_size", " 6: not divisible by 4 processes"))) == (
        "--batch-size 6: not divisible by 4 processes"
    )
    assert str(as_cli_error(ArgumentError("images", ": nothing to read (a: missing)"))) == (
        "IMAGES: nothing to read (a: missing)"
    )
    unknown = ArgumentError("environment variable RANK", ": expected an integer, got 'x'")
    assert str(as_cli_error(unknown)) == str(unknown)


def test_reconstruct_out_of_memory_halves_and_another_error_stops(
    loaded, images, tmp_path, monkeypatch
):
    """A batch of two runs out of memory: both images are reconstructed one at a time. Another
    error stops the call with a ModelError naming the input; nothing is reported skipped."""
    encode = loaded.model.encode
    sizes: list[int] = []

    def scarce_memory(images: torch.Tensor) -> torch.Tensor:
        sizes.append(int(images.shape[0]))
        if images.shape[0] > 1:
            raise torch.OutOfMemoryError("out of memory (injected)")
        return encode(images)

    square = tmp_path / "square"
    square.mkdir()
    generator = torch.Generator().manual_seed(5)
    pair = [square / "a.png", square / "b.png"]
    for path in pair:
        write_png(path, torch.rand(3, 8, 8, generator=generator) * 2 - 1)
    monkeypatch.setattr(loaded.model, "encode", scarce_memory)
    result = reconstruct(pair, tmp_path / "halves", loaded, batch_size=2)
    assert sizes == [2, 1, 1] and len(result.rows) == 2 and result.skipped == []

    def broken(images: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("injected")

    monkeypatch.setattr(loaded.model, "encode", broken)
    with pytest.raises(ModelError, match=r"^the model failed on .*a\.png: RuntimeError: injected$"):
        reconstruct(pair[:1], tmp_path / "stops", loaded)


def test_decode_skips_latents_holding_nan_and_decodes_the_rest(tmp_path, capsys):
    """Latents that cannot be decoded are the input's fault: named, skipped, exit status 1."""
    channels = json.loads((EMBEDDED_MODEL / "config.json").read_text())["bottleneck_dim"]
    good, bad = torch.zeros(1, channels, 2, 2), torch.zeros(1, channels, 2, 2)
    bad[0, 0, 0, 0] = float("nan")
    save_file({"good": good, "bad": bad}, str(tmp_path / "latents.safetensors"))
    status = main(["decode", str(tmp_path / "latents.safetensors"), "--out", str(tmp_path / "out")])
    error = capsys.readouterr().err
    assert status == 1 and "skipped latents_bad: the latents hold NaN or inf" in error
    assert sorted(path.name for path in (tmp_path / "out").iterdir()) == ["latents_good.png"]
