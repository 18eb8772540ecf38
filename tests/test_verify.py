"""`diffae verify`: the verdict rule, and the command on tiny models of the families with open
readings (the real weights are not available here, so the figures themselves mean nothing)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from diffae.cli import main
from diffae.images import write_png
from diffae.verify import ReadingResult, judge
from diffae_core.families import installed_families
from diffae_testing import randomize_weights

FAMILIES = installed_families()
WITH_READINGS = sorted(name for name, family in FAMILIES.items() if family.open_variants)


def reading(label: str, psnr: float | None, loadable: bool = True) -> ReadingResult:
    return ReadingResult(label, "", loadable, [] if psnr is None else [psnr, psnr])


def test_judge_keeps_the_default_unless_beaten_by_the_margin() -> None:
    assert judge([reading("default", 30.0), reading("other", 30.4)]).default_stands
    verdict = judge([reading("default", 30.0), reading("other", 30.6)])
    assert not verdict.default_stands and verdict.best == "other"
    assert judge([reading("default", 31.0), reading("other", 30.0)]).best == "default"
    unloadable = judge([reading("default", None, loadable=False), reading("other", 20.0)])
    assert not unloadable.default_stands and unloadable.best == "other"
    assert not judge([reading("default", None, loadable=False)]).default_stands


@pytest.fixture
def photo(tmp_path: Path) -> Path:
    """One small photo-like image (smooth gradients), 32 x 32."""
    ramp = torch.linspace(-1, 1, 32)
    image = torch.stack(
        [ramp[None, :].expand(32, 32), ramp[:, None].expand(32, 32), torch.zeros(32, 32)]
    )
    write_png(tmp_path / "photo.png", image)
    return tmp_path / "photo.png"


@pytest.mark.parametrize("name", WITH_READINGS)
def test_verify_reports_every_reading(name: str, tmp_path: Path, photo: Path, capsys) -> None:
    family = FAMILIES[name]
    model_dir = tmp_path / "model"
    randomize_weights(family.model_class(family.tiny_config), scale=0.05).save_pretrained(model_dir)
    status = main(["verify", str(model_dir), str(photo), "--family", name, "--quiet"])
    report = capsys.readouterr().out
    for label in family.open_variants:
        assert f"{label}: loads" in report
        assert f"dB  {label}" in report
    assert "verdict:" in report
    assert status in (0, 1) and (status == 0) == ("beats the default" not in report)


def test_verify_names_a_checkpoint_no_reading_loads(tmp_path: Path, photo: Path, capsys) -> None:
    name = WITH_READINGS[0]
    family = FAMILIES[name]
    model_dir = tmp_path / "model"
    family.model_class(family.tiny_config).save_pretrained(model_dir)
    state = load_file(model_dir / "model.safetensors")
    dropped = sorted(state)[0]
    del state[dropped]
    save_file(state, model_dir / "model.safetensors")
    status = main(["verify", str(model_dir), str(photo), "--family", name, "--quiet"])
    report = capsys.readouterr().out
    assert status == 1
    assert "does NOT load" in report and dropped in report
    assert "no reading loads this checkpoint" in report
