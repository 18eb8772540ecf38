"""The results viewer's page building (`diffae.viewer`, `diffae viewer`), without a browser.

Runs are written here as `reconstruct --viewer` writes them (random photos, noisy
"reconstructions"), so nothing loads a model except the one `reconstruct --viewer` test. The
page in a real browser: tests/test_viewer_browser.py (marker `browser`).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

from diffae import __version__
from diffae.cli import main
from diffae.images import read_image, sample_photos, write_png
from diffae.metrics import psnr_8bit, summarize
from diffae.models import EMBEDDED_MODEL
from diffae.viewer import (
    STATISTICS,
    build_viewer,
    read_rgb,
    rgb_error,
    save_viewer_inputs,
    write_metrics_rows,
)

SIZES = {"cat": (48, 32), "dog": (32, 64), "owl": (40, 40)}
"""Photo name -> (width, height) of the fake runs."""


def write_run(
    folder: Path,
    noise: float,
    sizes: dict[str, tuple[int, int]] = SIZES,
    *,
    model: str = "tiny",
    steps: int | None = 1,
    pca: bool = True,
) -> Path:
    """A run folder as `reconstruct --viewer` leaves it: the same originals for every call
    (seeded per photo), reconstructions = original + Gaussian noise of std `noise`."""
    rows = []
    for index, (name, (width, height)) in enumerate(sorted(sizes.items())):
        generator = torch.Generator().manual_seed(index)
        original = torch.rand(3, height, width, generator=generator) * 2 - 1
        reconstruction = original + noise * torch.randn(3, height, width, generator=generator)
        write_png(folder / f"{name}.png", reconstruction)
        layout = torch.arange(height * width * 3) % 256
        save_viewer_inputs(
            folder,
            name,
            original,
            layout.to(torch.uint8).reshape(3, height, width) if pca else None,
        )
        saved = read_image(folder / f"{name}.png")[0][0]
        rows.append(
            {
                "image": f"/photos/{name}.png",
                "output": f"{name}.png",
                "width": width,
                "height": height,
                "fit": "none",
                "psnr_db": psnr_8bit(original, saved),
            }
        )
    settings = {
        "model": model,
        "family": "fcdm_diffae",
        "dtype": "float32",
        "inference_config": {"num_steps": steps},
        "compression_ratio": 8.0,
        "diffae_version": __version__,
    }
    write_metrics_rows(folder, rows, settings)
    return folder


def embedded_data(page: Path) -> dict:
    """The JSON the page embeds (what its script reads)."""
    text = page.read_text(encoding="utf-8")
    match = re.search(
        r'<script id="viewer-data" type="application/json">(.*?)</script>', text, re.S
    )
    assert match is not None
    return json.loads(match.group(1))


@pytest.fixture
def two_runs(tmp_path: Path) -> list[Path]:
    return [
        write_run(tmp_path / "a", 0.05, model="tiny"),
        write_run(tmp_path / "b", 0.02, model="tiny", steps=4),
    ]


def test_page_shows_each_runs_metrics_and_the_gain_over_the_first(two_runs, tmp_path: Path):
    page = build_viewer(two_runs, tmp_path / "page")
    data = embedded_data(page)
    metrics = [json.loads((run / "metrics.json").read_text()) for run in two_runs]
    assert [run["label"] for run in data["runs"]] == ["tiny, 1 steps", "tiny, 4 steps"]
    assert [run["steps"] for run in data["runs"]] == [1, 4]
    assert data["runs"][0]["compression_ratio"] == 8.0
    assert data["runs"][0]["diffae_version"] == __version__
    assert [photo["name"] for photo in data["photos"]] == sorted(SIZES)
    for photo in data["photos"]:
        rows = [
            next(r for r in m["images"] if r["output"] == f"{photo['name']}.png") for m in metrics
        ]
        assert photo["psnr"] == [row["psnr_db"] for row in rows]
        assert photo["gain"] == [rows[1]["psnr_db"] - rows[0]["psnr_db"]]
        assert (photo["width"], photo["height"]) == SIZES[photo["name"]]
        for path in [
            photo["original"],
            photo["thumb"],
            *photo["reconstructions"],
            *photo["errors"],
        ]:
            assert (page.parent / path).is_file(), path
    for k, report in enumerate(metrics):
        shown = data["statistics"]["psnr"][k]
        assert shown == pytest.approx({name: report["summary"][name] for name in STATISTICS})
    gains = [photo["gain"][0] for photo in data["photos"]]
    assert data["statistics"]["gain"][0] == pytest.approx(
        {name: summarize(gains)[name] for name in STATISTICS}
    )


def test_panels_are_the_runs_pixels_and_the_error_has_a_fixed_scale(two_runs, tmp_path: Path):
    page = build_viewer(two_runs, tmp_path / "page")
    folder = page.parent / "images" / "cat"
    assert torch.equal(
        read_rgb(folder / "original.png"), read_rgb(two_runs[0] / "originals/cat.png")
    )
    assert torch.equal(read_rgb(folder / "run1.png"), read_rgb(two_runs[1] / "cat.png"))
    assert torch.equal(read_rgb(folder / "run1-pca.png"), read_rgb(two_runs[1] / "pca/cat.png"))
    error = rgb_error(read_rgb(folder / "original.png"), read_rgb(folder / "run1.png"))
    assert torch.equal(read_rgb(folder / "run1-error.png"), error)
    assert max(read_rgb(folder / "thumb.png").shape[1:]) <= 96


def test_rgb_error_is_the_channel_difference_times_eight():
    original = torch.tensor([0, 10, 200], dtype=torch.uint8).reshape(3, 1, 1)
    reconstruction = torch.tensor([1, 0, 100], dtype=torch.uint8).reshape(3, 1, 1)
    assert rgb_error(original, reconstruction).flatten().tolist() == [8, 80, 255]


def test_page_is_static_and_embeds_its_data_safely(tmp_path: Path):
    run = write_run(tmp_path / "run", 0.05, model="</script><b>x")
    page = build_viewer([run], tmp_path / "page", title="a <title> & more")
    text = page.read_text(encoding="utf-8")
    assert "<title>a &lt;title&gt; &amp; more</title>" in text
    assert embedded_data(page)["runs"][0]["model"] == "</script><b>x"
    # Nothing from the network, nothing fetched (file:// refuses fetch), no build step.
    for forbidden in ("http://", "https://", "fetch(", "XMLHttpRequest", "import ", "//cdn"):
        assert forbidden not in text, forbidden
    card = (page.parent / "README.md").read_text(encoding="utf-8")
    assert card.startswith("---\n") and "sdk: static\n" in card and "app_file: index.html\n" in card


def test_a_baseline_without_latents_has_no_pca_panel(tmp_path: Path):
    runs = [
        write_run(tmp_path / "base", 0.1, model="bicubic", pca=False),
        write_run(tmp_path / "m", 0.02),
    ]
    data = embedded_data(build_viewer(runs, tmp_path / "page"))
    assert all(photo["pca"][0] is None and photo["pca"][1] for photo in data["photos"])
    assert [run["label"] for run in data["runs"]] == ["bicubic", "tiny"]


def test_viewer_command_writes_the_page_and_labels(two_runs, tmp_path: Path, capsys):
    out = tmp_path / "page"
    args = ["viewer", *map(str, two_runs), "--out", str(out), "--labels", "one", "four"]
    assert main(args) == 0
    assert str(out / "index.html") in capsys.readouterr().out
    assert [run["label"] for run in embedded_data(out / "index.html")["runs"]] == ["one", "four"]
    assert main(args) == 1  # not empty now
    assert main([*args, "--overwrite"]) == 0
    assert not list(tmp_path.glob(".page.*"))  # nothing left of the build


def bad_inputs(tmp_path: Path) -> dict[str, tuple[list[str], str]]:
    """Argument lists of `diffae viewer` that must fail, with what the one line says."""
    good = write_run(tmp_path / "good", 0.05)
    other = write_run(tmp_path / "other", 0.05, {"cat": (48, 32), "emu": (32, 32)})
    resized = write_run(tmp_path / "resized", 0.05, {**SIZES, "cat": (32, 32)})
    empty = tmp_path / "empty"
    empty.mkdir()
    no_original = write_run(tmp_path / "no_original", 0.05)
    (no_original / "originals" / "dog.png").unlink()
    foreign = tmp_path / "foreign"  # benchmarks.quality's results file is no run folder
    foreign.mkdir()
    (foreign / "metrics.json").write_text('{"images": [{"image": "a.png", "model": {}}]}')
    full = tmp_path / "full"
    full.mkdir()
    (full / "x.txt").write_text("x")
    out = str(tmp_path / "page")
    return {
        "no metrics.json": ([str(empty), "--out", out], "no metrics.json"),
        "no folder": ([str(tmp_path / "nope"), "--out", out], "no such folder"),
        "other metrics": ([str(foreign), "--out", out], "expected output, width, height"),
        "other photos": ([str(good), str(other), "--out", out], "different photos"),
        "other size": ([str(good), str(resized), "--out", out], "32x32"),
        "no original": ([str(no_original), "--out", out], "missing originals/dog.png"),
        "out not empty": ([str(good), "--out", str(full)], "not empty"),
        "out holds a run": ([str(good), "--out", str(tmp_path)], "holds the run folder"),
        "labels": ([str(good), "--out", out, "--labels", "a", "b"], "expected 1 labels"),
    }


@pytest.mark.parametrize(
    "case",
    [
        "no metrics.json",
        "no folder",
        "other metrics",
        "other photos",
        "other size",
        "no original",
        "out not empty",
        "out holds a run",
        "labels",
    ],
)
def test_bad_input_is_one_line_and_writes_nothing(case: str, tmp_path: Path, capsys):
    args, expected = bad_inputs(tmp_path)[case]
    assert main(["viewer", *args]) == 1
    error = capsys.readouterr().err.strip()
    assert error.startswith("diffae viewer: error: ") and "\n" not in error
    assert expected in error
    assert not (tmp_path / "page").exists()
    assert not list(tmp_path.glob(".page.*"))


def test_runs_over_different_pixels_are_refused(tmp_path: Path, capsys):
    first = write_run(tmp_path / "a", 0.05)
    second = write_run(tmp_path / "b", 0.05)
    write_png(second / "originals" / "owl.png", torch.zeros(3, 40, 40))
    assert main(["viewer", str(first), str(second), "--out", str(tmp_path / "page")]) == 1
    assert "the original of owl differs" in capsys.readouterr().err


def test_reconstruct_viewer_keeps_what_the_page_needs(tmp_path: Path, capsys):
    photo = next(path for path in sample_photos() if path.name == "chelsea.png")
    out = tmp_path / "run"
    assert main(["reconstruct", str(photo), "--out", str(out), "--viewer"]) == 0
    assert f"viewer (open in a browser): {out / 'viewer' / 'index.html'}" in capsys.readouterr().out
    assert (out / "originals" / "chelsea.png").is_file() and (out / "pca" / "chelsea.png").is_file()
    settings = json.loads((out / "metrics.json").read_text())["settings"]
    assert settings["compression_ratio"] == 8.0 and settings["diffae_version"] == __version__
    data = embedded_data(out / "viewer" / "index.html")
    assert data["runs"][0]["model"] == "embedded" and data["runs"][0]["steps"] == 1
    # The page rebuilds from the run folder alone.
    assert main(["viewer", str(out), "--out", str(tmp_path / "again"), "--quiet"]) == 0
    assert embedded_data(tmp_path / "again" / "index.html")["photos"] == data["photos"]


def test_demo_page_shows_the_model_next_to_bicubic(tmp_path: Path, capsys, monkeypatch):
    photo = next(path for path in sample_photos() if path.name == "chelsea.png")
    monkeypatch.setattr("diffae.reconstruction.sample_photos", lambda: [photo])
    assert main(["demo", "--out", str(tmp_path)]) == 0
    page = tmp_path / "viewer" / "index.html"
    assert str(page) in capsys.readouterr().out
    data = embedded_data(page)
    assert [run["label"] for run in data["runs"]] == ["bicubic", "embedded model"]
    assert data["runs"][0]["compression_ratio"] == data["runs"][1]["compression_ratio"] == 8.0
    report = json.loads((tmp_path / "metrics.json").read_text())
    bicubic = json.loads((tmp_path / "bicubic" / "metrics.json").read_text())
    assert data["photos"][0]["psnr"] == [
        bicubic["images"][0]["psnr_db"],
        report["images"][0]["psnr_db"],
    ]
    assert data["photos"][0]["pca"][0] is None and data["photos"][0]["pca"][1] is not None


def test_bundle_carries_the_viewer_and_links_it_from_the_card(tmp_path: Path, capsys):
    run = write_run(tmp_path / "run", 0.05)
    out = tmp_path / "bundle"
    assert (
        main(
            [
                "bundle",
                str(EMBEDDED_MODEL),
                "--family",
                "fcdm_diffae",
                "--out",
                str(out),
                "--viewer",
                str(run),
            ]
        )
        == 0
    )
    assert "viewer/index.html" in capsys.readouterr().out
    assert embedded_data(out / "viewer" / "index.html")["photos"][0]["name"] == "cat"
    assert "[`viewer/index.html`](viewer/index.html)" in (out / "README.md").read_text()
    # A bad run stops the bundle before it is in place.
    empty = tmp_path / "empty"
    empty.mkdir()
    argv = ["bundle", str(EMBEDDED_MODEL), "--family", "fcdm_diffae", "--out", str(tmp_path / "b2")]
    argv += ["--viewer", str(empty)]
    assert main(argv) == 1
    assert "no metrics.json" in capsys.readouterr().err
    assert not (tmp_path / "b2").exists() and not list(tmp_path.glob(".b2.*"))
