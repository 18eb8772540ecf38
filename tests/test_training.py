"""`diffae train` / `diffae.training`: a few steps of tiny models, resume, decoder-only, torchrun.

Every run trains a tiny config for a handful of steps on small random images: seconds on a CPU.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from itertools import pairwise
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from diffae.cli import main
from diffae.console import Console
from diffae.training import (
    TrainingConfig,
    TrainingSettings,
    latent_kl,
    learning_rate_at,
    load_state,
    train,
)
from diffae_core.diffusion import EncoderPosterior
from diffae_core.families import installed_families

FAMILIES = installed_families()
TRAINABLE = ("fcdm_diffae", "full_capacitor")
CROP = 32
DDP_TOLERANCE = {"rtol": 1e-4, "atol": 1e-6}
"""2 processes vs 1: the same global batch, gradients averaged in another order (float32)."""
SUBPROCESS_TIMEOUT = 240


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Six smooth random RGB images (48 x 40 .. 64 x 56), one in a sub-folder."""
    folder = tmp_path_factory.mktemp("train_data")
    (folder / "nested").mkdir()
    generator = torch.Generator().manual_seed(0)
    for index in range(6):
        height, width = 40 + 4 * index, 48 + 4 * index
        small = torch.rand(3, height // 8, width // 8, generator=generator)
        pixels = torch.nn.functional.interpolate(small[None], size=(height, width), mode="bilinear")
        array = (pixels[0] * 255).round().byte().permute(1, 2, 0).numpy()
        target = folder / "nested" if index == 5 else folder
        Image.fromarray(array).save(target / f"image_{index}.png")
    return folder


def tiny_model(family_name: str, seed: int = 0):
    family = FAMILIES[family_name]
    torch.manual_seed(seed)
    return family.model_class(family.tiny_config)


def settings(**changes) -> TrainingSettings:
    base = {
        "steps": 4,
        "batch_size": 4,
        "crop_size": CROP,
        "warmup_steps": 2,
        "workers": 0,
        "log_every": 2,
        "save_every": 2,
        "one_step_fraction": 0.25,
    }
    return TrainingSettings(**(base | changes))


def weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(folder / "model" / "model.safetensors")


@pytest.mark.parametrize("family_name", TRAINABLE)
def test_train_writes_a_loadable_model_and_a_log(family_name, data_dir, tmp_path):
    out = tmp_path / "run"
    model = tiny_model(family_name)
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    train(model, TrainingConfig(data_dir, out, settings()), console=Console(quiet=True))
    family = FAMILIES[family_name]
    loaded = family.model_class.from_pretrained(out / "model")
    records = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [record["step"] for record in records] == [2, 4]
    assert all(torch.isfinite(torch.tensor(record["loss"])) for record in records)
    assert {"mse", "latent_kl", "lr", "images_per_s", "grad_norm"} <= set(records[-1])
    changed = [name for name, p in model.named_parameters() if not torch.equal(p, before[name])]
    assert any(name.startswith("encoder.") for name in changed)
    assert any(name.startswith("decoder.") for name in changed)
    # The whitening statistics follow the latents; the EMA model carries them.
    assert not torch.equal(
        loaded.latent_norm_running_var, torch.ones_like(loaded.latent_norm_running_var)
    )
    images = torch.rand(1, 3, CROP, CROP) * 2 - 1
    assert torch.isfinite(loaded.reconstruct(images)).all()


def test_resume_continues_exactly(data_dir, tmp_path):
    straight, split = tmp_path / "straight", tmp_path / "split"
    quiet = Console(quiet=True)
    train(tiny_model("fcdm_diffae"), TrainingConfig(data_dir, straight, settings()), console=quiet)
    first_half = TrainingConfig(data_dir, split, settings(steps=2), family="fcdm_diffae")
    train(tiny_model("fcdm_diffae"), first_half, console=quiet)
    # The CLI resumes from the saved state alone (a fresh model, the state's settings + --steps).
    assert (
        main(["train", str(data_dir), "--out", str(split), "--resume", "--steps", "4", "--quiet"])
        == 0
    )
    expected, resumed = weights(straight), weights(split)
    assert expected.keys() == resumed.keys()
    for name in expected:
        assert torch.equal(expected[name], resumed[name]), name
    state = load_state(split)
    assert state["step"] == 4 and state["family"] == "fcdm_diffae"
    assert state["optimizer"]["state"] and state["optimizer"]["param_groups"][0]["lr"] > 0
    steps = [json.loads(line)["step"] for line in (split / "log.jsonl").read_text().splitlines()]
    assert steps == [2, 4]


def test_resume_drops_log_records_after_the_checkpoint(data_dir, tmp_path):
    out = tmp_path / "run"
    quiet = Console(quiet=True)
    train(
        tiny_model("fcdm_diffae"), TrainingConfig(data_dir, out, settings(steps=2)), console=quiet
    )
    with (out / "log.jsonl").open("a") as log:  # a run killed after logging step 3
        log.write(json.dumps({"step": 3, "loss": 1.0}) + "\n")
    resumed = TrainingConfig(data_dir, out, settings(steps=4), resume=True)
    train(tiny_model("fcdm_diffae"), resumed, console=quiet)
    steps = [json.loads(line)["step"] for line in (out / "log.jsonl").read_text().splitlines()]
    assert steps == [2, 4]


def test_decoder_only_keeps_the_encoder(data_dir, tmp_path):
    initial = tmp_path / "initial"
    tiny_model("full_capacitor", seed=1).save_pretrained(initial)
    out = tmp_path / "run"
    status = main(
        [
            *("train", str(data_dir), "--init", str(initial), "--out", str(out)),
            *("--train", "decoder", "--steps", "2", "--batch-size", "2"),
            *("--crop-size", str(CROP), "--workers", "0", "--quiet", "--family", "full_capacitor"),
        ]
    )
    assert status == 0
    start, end = load_file(initial / "model.safetensors"), weights(out)
    for name in start:
        if not name.startswith("decoder."):  # encoder weights, whitening statistics
            assert torch.equal(start[name], end[name]), name
    assert not torch.equal(start["decoder.out_proj.weight"], end["decoder.out_proj.weight"])


def test_learning_rate_warms_up_then_decays():
    run = TrainingSettings(steps=100, warmup_steps=10, learning_rate=1.0)
    rates = [learning_rate_at(step, run) for step in range(100)]
    assert rates[0] == pytest.approx(0.1) and rates[9] == pytest.approx(1.0)
    assert rates[10] == pytest.approx(1.0) and rates[-1] == pytest.approx(0.1, abs=1e-3)
    assert all(a >= b for a, b in pairwise(rates[10:]))


def test_bad_settings_name_the_field():
    with pytest.raises(ValueError, match="train"):
        TrainingSettings(train="encoder")


def test_torchrun_two_processes_match_one(data_dir, tmp_path):
    """gloo DDP over 2 CPU processes = 1 process with the same global batch, within float32."""
    config = tmp_path / "config.json"
    FAMILIES["fcdm_diffae"].tiny_config.save(config)
    common = ["train", str(data_dir), "--config", str(config), "--family", "fcdm_diffae"]
    common += ["--steps", "3", "--batch-size", "4", "--crop-size", str(CROP), "--workers", "0"]
    common += ["--threads", "1", "--save-every", "3"]
    assert main([*common, "--quiet", "--out", str(tmp_path / "one")]) == 0
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    command += ["--nproc-per-node", "2", "-m", "diffae", *common, "--out", str(tmp_path / "two")]
    environment = os.environ | {"OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        command, capture_output=True, text=True, timeout=SUBPROCESS_TIMEOUT, env=environment
    )
    assert result.returncode == 0, result.stderr[-3000:]
    one, two = weights(tmp_path / "one"), weights(tmp_path / "two")
    for name in one:
        torch.testing.assert_close(two[name], one[name], **DDP_TOLERANCE, msg=name)
    assert not torch.equal(
        one["decoder.out_proj.weight"], load_initial(config)["decoder.out_proj.weight"]
    )
    lines = (tmp_path / "two" / "log.jsonl").read_text().splitlines()
    assert len(lines) == 1  # one rank writes the log
    # ... and speaks: progress for people (no JSON), the closing note once.
    assert result.stdout.count("the EMA weights are in") == 1, result.stdout
    assert "step 3/3  loss " in result.stdout and '{"step"' not in result.stdout


def load_initial(config: Path) -> dict[str, torch.Tensor]:
    """The initial weights the CLI builds from `config` (seeded by --seed 0)."""
    torch.manual_seed(0)
    model = FAMILIES["fcdm_diffae"].model_class(FAMILIES["fcdm_diffae"].config_class.load(config))
    return {name: t.detach() for name, t in model.checkpoint_state().items()}


def test_posterior_sample_with_given_noise_and_its_kl():
    mean, logsnr = torch.randn(2, 3, 4, 4), torch.zeros(2, 3, 4, 4)
    posterior = EncoderPosterior(mean=mean, logsnr=logsnr)
    noise = torch.randn(2, 3, 4, 4)
    half = torch.sqrt(torch.tensor(0.5))
    torch.testing.assert_close(posterior.sample(noise=noise), half * mean + half * noise)
    with pytest.raises(ValueError, match="noise"):
        posterior.sample(noise=noise[:1])
    # KL(N(0, 1/2) || N(0, 1)) = (1/2 - 1 - ln 1/2) / 2 per element.
    centred = EncoderPosterior(mean=torch.zeros(2, 3, 4, 4), logsnr=logsnr)
    expected = 0.5 * (0.5 - 1.0 - torch.log(torch.tensor(0.5)))
    torch.testing.assert_close(latent_kl(centred), expected)


def test_images_the_workers_cannot_read_are_skipped_up_front(data_dir, tmp_path):
    """A CMYK JPEG opens in Pillow but `read_image` refuses it: skipped before training."""
    from diffae.distributed import Processes
    from diffae.training import usable_images

    deep = tmp_path / "deep.jpg"
    Image.new("CMYK", (64, 64)).save(deep)
    files = sorted(data_dir.rglob("*.png"))
    kept = usable_images([*files, deep], 32, Console(quiet=True), Processes())
    assert kept == files
