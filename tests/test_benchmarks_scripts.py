"""Smoke runs of the benchmark scripts (speed, quality, pipeline_vae) on tiny models (untimed)."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest
import torch

from diffae.images import write_png
from diffae.viewer import build_viewer
from diffae_core.families import installed_families
from diffae_testing import randomize_weights

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # the benchmarks are scripts beside the packages, not installed
    sys.path.insert(0, str(ROOT))

from benchmarks import (  # noqa: E402
    encode_dataset,
    latent_reader,
    pipeline_vae,
    quality,
    reconstruct,
    speed,
    tiling,
    training_memory,
)
from benchmarks.flux2 import FLUX2_NAME, build_flux2_vae  # noqa: E402

pytest.importorskip("diffusers")
FAMILIES = installed_families()
TINY_SIDE = 32


def test_speed_runs_every_family_and_flux2_on_tiny_configs(tmp_path: Path) -> None:
    options = f"--tiny --resolutions {TINY_SIDE} --dtypes fp32 --modes eager --repeats 1"
    options += f" --warmup 1 --machine smoke --encode-batch 1 2 --tiled-resolutions {TINY_SIDE}"
    data = speed.main([*options.split(), "--out-dir", str(tmp_path)])
    assert (tmp_path / "speed-smoke.md").is_file()
    assert json.loads((tmp_path / "speed-smoke.json").read_text()) == json.loads(json.dumps(data))
    rows = data["results"]
    assert {row["batch"] for row in rows if row["task"] == "encode"} == {1, 2}
    tiled = [row for row in rows if row["mode"] == speed.TILED]
    assert {row["model"] for row in tiled} == {f"{name}/tiny" for name in FAMILIES}
    assert all(row["time_vs_eager"] is not None for row in tiled)
    rows = [row for row in rows if row["mode"] != speed.TILED]
    models = {row["model"] for row in rows}
    assert models == {f"{name}/tiny" for name in FAMILIES} | {FLUX2_NAME}
    for row in rows:
        assert row["ms_batch"] > 0 and len(row["seconds"]) == 1
        assert row["flops"] > 0, row["model"]
        assert row["speedup_vs_flux2"] is not None
        if row["model"] == FLUX2_NAME:
            assert row["speedup_vs_flux2"] == 1.0
    decoders = {row["model"] for row in rows if row["task"] == "decode"}
    assert decoders == models
    page = (tmp_path / "speed-smoke.md").read_text()
    assert "## Speedup vs FLUX.2" in page and "## Compiled and tiled against eager" in page
    assert "native_bf16" in data["info"]
    # Traceable: the commit, and the load at the start and end with a verdict.
    assert data["info"]["commit"] and len(data["info"]["load_average_start"]) == 3
    assert len(data["load_average_end"]) == 3 and data["idle"] in (True, False)
    assert "- idle: `" in page and "- commit: `" in page


def test_speed_measures_memory_after_a_plain_warm_up_call(tmp_path: Path, monkeypatch) -> None:
    """With one warm-up call (which counts FLOPs), a plain call comes before the measuring one."""
    calls: list[str] = []
    count_flops, peak_growth_bytes = speed.count_flops, speed.peak_growth_bytes
    time_call = speed.time_call

    class Counting:
        def __enter__(self):
            calls.append("counting")
            self.inner = count_flops()
            return self.inner.__enter__()

        def __exit__(self, *exc):
            return self.inner.__exit__(*exc)

    def measuring(call, device):
        calls.append("memory")
        return peak_growth_bytes(call, device)

    def timed(call, device):
        calls.append("call")
        return time_call(call, device)

    monkeypatch.setattr(speed, "count_flops", Counting)
    monkeypatch.setattr(speed, "peak_growth_bytes", measuring)
    monkeypatch.setattr(speed, "time_call", timed)
    options = f"--tiny --families fcdm_diffae --no-flux2 --resolutions {TINY_SIDE} --dtypes fp32"
    options += " --modes eager --tasks decode --repeats 1 --warmup 1 --machine smoke"
    speed.main([*options.split(), "--out-dir", str(tmp_path)])
    # counting call, plain call, memory call, timed repeat (per preset)
    assert calls[:5] == ["counting", "call", "call", "memory", "call"]


def test_tiling_script_on_a_tiny_decoder(tmp_path: Path) -> None:
    options = "--tiny --sides 64 --tile-tokens 1 --machine smoke"
    data = tiling.main([*options.split(), "--out-dir", str(tmp_path)])
    assert (tmp_path / "tiling-smoke.md").is_file()
    rows = data["results"]
    assert [row["mode"] for row in rows] == list(tiling.MODES)
    for row in rows:
        assert row["seconds"] > 0 and row["max_abs_diff_vs_untiled"] < 1e-3
    assert rows[0]["time_vs_untiled"] == 1.0


def test_speed_rejects_an_unknown_family(tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match="--families"):
        speed.main(["--tiny", "--families", "no_such_family", "--out-dir", str(tmp_path)])


def _images(folder: Path, count: int = 2) -> Path:
    generator = torch.Generator().manual_seed(0)
    for index in range(count):
        image = torch.rand(3, TINY_SIDE, TINY_SIDE + 16, generator=generator) * 2 - 1
        write_png(folder / f"image{index}.png", image)
    return folder


def test_quality_on_a_tiny_saved_model(tmp_path: Path) -> None:
    family = FAMILIES["fcdm_diffae"]
    randomize_weights(family.model_class(family.tiny_config)).eval().save_pretrained(
        tmp_path / "model"
    )
    images = _images(tmp_path / "images")
    arguments = [str(tmp_path / "model"), "--family", "fcdm_diffae", "--images", str(images)]
    data = quality.main([*arguments, "--machine", "smoke", "--out-dir", str(tmp_path / "out")])
    assert (tmp_path / "out" / "quality-model-smoke.md").is_file()
    assert (tmp_path / "out" / "quality-model-smoke.json").is_file()
    assert len(data["images"]) == 2
    summary = data["summary"]["model"]
    assert set(summary) == {"psnr_db", "ssim"}
    assert set(summary["psnr_db"]) == {"mean", "std", "median", "p5", "p95", "min", "max"}
    assert -1.0 <= summary["ssim"]["mean"] <= 1.0


def test_quality_of_a_decode_only_model_uses_the_flux2_encoder(tmp_path: Path) -> None:
    decode_only = [f for f in FAMILIES.values() if not hasattr(f.model_class, "encode")]
    if not decode_only:
        pytest.skip("no decode-only family installed")
    family = decode_only[0]
    randomize_weights(family.model_class(family.tiny_config)).eval().save_pretrained(
        tmp_path / "model"
    )
    build_flux2_vae(tiny=True).save_pretrained(tmp_path / "flux2")
    arguments = [str(tmp_path / "model"), "--family", family.name]
    arguments += ["--images", str(_images(tmp_path / "images", count=1))]
    with pytest.raises(SystemExit, match="--flux2"):
        quality.main(arguments)
    runs = tmp_path / "runs"
    out = ["--out-dir", str(tmp_path / "out"), "--runs", str(runs)]
    data = quality.main([*arguments, "--flux2", str(tmp_path / "flux2"), *out])
    assert set(data["summary"]) == {"model", FLUX2_NAME}
    # The reconstructions kept as results-viewer runs: FLUX.2 VAE against the model on one page.
    page = build_viewer([runs / "flux-2-vae", runs / "model"], tmp_path / "page")
    shown = json.loads(re.search(r'json">(.*?)</script>', page.read_text(), re.S).group(1))
    assert shown["runs"][0]["compression_ratio"] == 6.0  # 128 channels per 16x16 pixels
    assert shown["photos"][0]["psnr"] == [
        data["images"][0][k]["psnr_db"] for k in (FLUX2_NAME, "model")
    ]


def test_speed_stops_at_a_failing_model_and_names_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    build = speed.family_candidate

    def broken(*args: object, **kwargs: object) -> speed.Candidate:
        candidate = build(*args, **kwargs)

        def decode(latents: torch.Tensor, height: int, width: int) -> torch.Tensor:
            raise ValueError("latents: broken on purpose")

        return speed.Candidate(**{**candidate.__dict__, "decode": decode})

    monkeypatch.setattr(speed, "family_candidate", broken)
    options = f"--tiny --families fcdm_diffae --no-flux2 --tasks decode --resolutions {TINY_SIDE}"
    options += " --dtypes fp32 --modes eager --repeats 1 --warmup 1"
    with pytest.raises(RuntimeError, match=r"fcdm_diffae/tiny.*broken on purpose"):
        speed.main([*options.split(), "--out-dir", str(tmp_path)])
    assert not list(tmp_path.iterdir())


def test_encode_dataset_benchmark_on_a_tiny_model(tmp_path: Path) -> None:
    options = f"--preset tiny --images 4 --batch 2 --resolution {TINY_SIDE} --repeats 1"
    data = encode_dataset.main([*options.split(), "--machine", "smoke", "--out-dir", str(tmp_path)])
    assert (tmp_path / "encode-dataset-smoke.md").is_file()
    assert data["results"][0]["candidate"] == "bare model.encode loop"
    assert all(row["images_per_s"] > 0 for row in data["results"])


def test_encode_dataset_benchmark_times_an_earlier_commit_beside_today(tmp_path: Path) -> None:
    """--against loads dataset_encoding.py from git (here HEAD's) as a third candidate, its
    DataLoader worker included."""
    options = f"--preset tiny --images 4 --batch 2 --resolution {TINY_SIDE} --repeats 1"
    options += " --num-workers 1 --against HEAD --machine smoke"
    data = encode_dataset.main([*options.split(), "--out-dir", str(tmp_path)])
    candidates = [row["candidate"] for row in data["results"]]
    assert candidates[-2:] == [
        "encode-dataset at HEAD, encode phase",
        "encode-dataset at HEAD, whole command",
    ]
    assert all(row["images_per_s"] > 0 for row in data["results"])


def test_pipeline_vae_times_both_decoders(tmp_path: Path) -> None:
    options = f"--tiny --resolutions {TINY_SIDE} --repeats 1 --warmup 1 --machine smoke"
    data = pipeline_vae.main([*options.split(), "--out-dir", str(tmp_path)])
    assert (tmp_path / "pipeline-vae-smoke.md").is_file()
    rows = {row["model"]: row for row in data["results"]}
    assert set(rows) == {FLUX2_NAME, pipeline_vae.CAPACITOR_NAME}
    assert rows[FLUX2_NAME]["speedup_vs_flux2"] == 1.0
    assert all(row["ms"] > 0 and row["decoder_parameters"] > 0 for row in rows.values())


def test_baseline_script_compares_the_embedded_model_with_bicubic(tmp_path: Path) -> None:
    from benchmarks import baseline

    chelsea = next(path for path in baseline.sample_photos() if path.name == "chelsea.png")
    arguments = [str(chelsea), "--crop", "256", "--machine", "smoke"]
    data = baseline.main([*arguments, "--out-dir", str(tmp_path)])
    assert data["ratio"] == 8 and data["images"][0]["size"] == "256x256"
    assert (tmp_path / "baseline-embedded-smoke.md").is_file()


def test_reconstruct_benchmark_times_the_command_against_the_bare_model(tmp_path: Path) -> None:
    photo = tmp_path / "photo.png"
    write_png(photo, torch.rand(3, 40, 48) * 2 - 1)
    options = f"--images {photo} --repeats 1 --machine smoke --out-dir {tmp_path / 'out'}"
    data = reconstruct.main(options.split())
    assert (tmp_path / "out" / "reconstruct-embedded-smoke.md").is_file()
    assert len(data["seconds"]["model"]) == len(data["seconds"]["command"]) == 1
    assert data["command_over_model"] == data["medians"]["command"] / data["medians"]["model"]


def test_latent_reader_benchmark_reads_less_per_random_item(tmp_path: Path) -> None:
    options = "--rows 40 --shards 2 --channels 16 --side 4 --items 10 --no-footer-memory"
    options += " --machine smoke"
    data = latent_reader.main([*options.split(), "--out-dir", str(tmp_path)])
    assert (tmp_path / "latent-reader-smoke.md").is_file()
    rows = {row["candidate"]: row for row in data["rows"]}
    assert rows["after"]["random_bytes_per_item"] < rows["before"]["random_bytes_per_item"]


def test_training_memory_benchmark_run_reports_its_figures(tmp_path: Path, capsys) -> None:
    training_memory.write_images(tmp_path / "images", 0, 3, side=32)
    run = ["--run", "after", str(tmp_path / "images"), str(tmp_path / "out")]
    training_memory.main([*run, "--steps", "2", "--batch", "2", "--crop", "16", "--workers", "0"])
    figures = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert figures["steps_per_s"] > 0 and figures["peak_rss_main_mib"] > 0
