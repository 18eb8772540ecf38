"""`diffae encode-dataset` on a tiny fcdm_diffae model: rows against `model.encode`, size
buckets, skipped files, statistics, an interrupted run resumed, refusal of changed options, the
reader, and a 2-process torchrun (gloo) run against one process.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from diffae import dataset_encoding
from diffae.cli import main
from diffae.console import ArgumentError, Console
from diffae.images import fit_image, read_image, to_unit_range
from diffae.latent_dataset import LatentDataset, latents_from_bytes, read_manifest
from diffae.models import choose_model, load_model
from diffae_core.families import installed_families

FAMILY = installed_families()["fcdm_diffae"]
PATCH = 4
SHARD_SIZE = 3
SUBPROCESS_TIMEOUT = 180
STATISTICS_RTOL = 1e-12
"""Merged float64 statistics against a one-pass float64 computation: rounding only."""
GOOD = {
    "a/one.png": (8, 8),
    "a/two.jpg": (12, 8),
    "b/c/three.webp": (8, 12),
    "five.png": (8, 8),
    "four.png": (8, 8),
    "seven.png": (8, 8),
    "six.png": (12, 8),
}
"""Relative path -> (width, height) after the centre crop to multiples of PATCH."""
SIZES = {"four.png": (10, 9), "b/c/three.webp": (9, 14)}
"""Files whose size is not a multiple of PATCH (cropped)."""
BAD = "broken.png"


def random_image(width: int, height: int, seed: int) -> Image.Image:
    generator = torch.Generator().manual_seed(seed)
    pixels = torch.randint(0, 256, (height, width, 3), generator=generator, dtype=torch.uint8)
    return Image.frombytes("RGB", (width, height), bytes(pixels.untyped_storage()))


@pytest.fixture(scope="module")
def model_dir(tiny_fcdm_diffae_folder: Path) -> Path:
    return tiny_fcdm_diffae_folder


@pytest.fixture(scope="module")
def image_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Seven images of three fitted sizes in a folder tree (RGBA, greyscale) and a bad file."""
    folder = tmp_path_factory.mktemp("images")
    for seed, (key, size) in enumerate(GOOD.items()):
        path = folder / key
        path.parent.mkdir(parents=True, exist_ok=True)
        image = random_image(*SIZES.get(key, size), seed)
        if key == "four.png":
            image = image.convert("RGBA")
        if key.endswith(".webp"):
            image = image.convert("L")
        image.save(path)
    (folder / BAD).write_text("not an image")
    return folder


def encode_dataset(model_dir: Path, images: Path, out: Path, *options: str) -> int:
    return main([
        "encode-dataset", str(images), "--model", str(model_dir), "--out", str(out),
        "--family", "fcdm_diffae", "--shard-size", str(SHARD_SIZE), "--dtype", "float32",
        "--device", "cpu", "--quiet",
        *options,
    ])  # fmt: skip


def rows_of(out: Path) -> list[dict]:
    """Every row of every shard, in shard order."""
    files = sorted((out / "data").glob("shard-*.parquet"))
    return [row for path in files for row in pq.read_table(path).to_pylist()]


def latents_of(row: dict) -> torch.Tensor:
    return latents_from_bytes(row["latents"], row["shape"], row["dtype"])


@pytest.fixture(scope="module")
def reference(model_dir: Path, image_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    """One process, batch size 1: (exit status, dataset folder)."""
    out = tmp_path_factory.mktemp("reference")
    return encode_dataset(model_dir, image_dir, out, "--batch-size", "1"), out


def test_rows_are_model_encode_of_each_image(model_dir, image_dir, reference):
    status, out = reference
    assert status == 1, "the bad file is skipped"
    model = FAMILY.model_class.from_pretrained(model_dir, dtype=torch.float32)
    rows = rows_of(out)
    assert [row["key"] for row in rows] == sorted(GOOD, key=lambda key: key.split("/"))
    for row in rows:
        fitted = fit_image(read_image(image_dir / row["key"])[0], PATCH, "crop")
        with torch.inference_mode():
            expected = model.encode(fitted.image)[0]
        assert row["dtype"] == "float32" and row["shape"] == list(expected.shape)
        assert latents_of(row).equal(expected), row["key"]
        width, height = GOOD[row["key"]]
        assert (row["width"], row["height"]) == (width, height)
        source_width, source_height = SIZES.get(row["key"], GOOD[row["key"]])
        assert (row["source_width"], row["source_height"]) == (source_width, source_height)
        assert row["fit"] == ("crop" if row["key"] in SIZES else "none")
    manifest = read_manifest(out)
    assert manifest["complete"] and manifest["whitened"] and manifest["dtype"] == "float32"
    assert manifest["model"]["family"] == "fcdm_diffae"
    assert manifest["counts"] == {"inputs": 8, "rows": 7, "skipped": 1, "shards": 3}
    assert [entry["key"] for entry in manifest["skipped"]] == [BAD]
    assert "unreadable" in manifest["skipped"][0]["reason"]


def test_manifest_statistics_equal_a_direct_computation(reference):
    _, out = reference
    channels = [latents_of(row).double().flatten(1) for row in rows_of(out)]  # [C, h*w] each
    values = torch.cat(channels, dim=1)
    manifest = read_manifest(out)
    mean = torch.tensor(manifest["latent_mean"], dtype=torch.float64)
    var = torch.tensor(manifest["latent_var"], dtype=torch.float64)
    assert manifest["latent_count"] == values.shape[1]
    torch.testing.assert_close(mean, values.mean(dim=1), rtol=STATISTICS_RTOL, atol=0)
    expected_var = values.var(dim=1, correction=0)
    torch.testing.assert_close(var, expected_var, rtol=STATISTICS_RTOL, atol=0)


def test_batches_bucket_mixed_sizes(model_dir, image_dir, reference, tmp_path, monkeypatch):
    """Batch size 4 over shards of mixed sizes: each batch is of one size; rows as batch 1.

    The shard size (3) keeps batches small here; what matters is that no batch mixes sizes
    (torch.stack would fail) and that some batch holds more than one image."""
    batches: list[tuple[int, ...]] = []
    encode = FAMILY.model_class.encode

    def spy(model, images):
        batches.append(tuple(images.shape))
        return encode(model, images)

    monkeypatch.setattr(FAMILY.model_class, "encode", spy)
    options = ("--batch-size", "4", "--num-workers", "1")  # images read in a worker process
    assert encode_dataset(model_dir, image_dir, tmp_path, *options) == 1
    assert max(shape[0] for shape in batches) > 1 and sum(s[0] for s in batches) == len(GOOD)
    rows, expected = rows_of(tmp_path), rows_of(reference[1])
    assert [row["key"] for row in rows] == [row["key"] for row in expected]
    for row, reference_row in zip(rows, expected, strict=True):
        # another batch composition may take another kernel: float32 tolerances
        torch.testing.assert_close(latents_of(row), latents_of(reference_row))


def test_a_worker_hands_over_a_chunk_of_images_as_one_tensor(monkeypatch):
    """What a worker packs (one tensor for all the chunk's pixels) unpacks to the images as
    they were; an image left waiting in a bucket is copied out, so the chunk can be freed."""
    prepared = dataset_encoding.Prepared
    items = [
        prepared(0, torch.rand(3, 64, 32), "crop", "", 70, 32),
        prepared(1, None, "", "unreadable (truncated)", 0, 0),
        prepared(2, torch.rand(3, 32, 96), "pad", "", 30, 96),
    ]
    monkeypatch.setattr(dataset_encoding, "get_worker_info", lambda: object())  # in a worker
    chunk = dataset_encoding.pack_chunk(items)
    assert chunk.pixels is not None and chunk.pixels.dim() == 1
    assert all(item.image is None for item in chunk.items)
    unpacked = chunk.unpacked()
    for got, expected in zip(unpacked, items, strict=True):
        assert got._replace(image=None) == expected._replace(image=None)
        assert (got.image is None) == (expected.image is None)
        if expected.image is not None:
            assert torch.equal(got.image, expected.image)

    work = dataset_encoding.ShardWork(0, [], run=None)
    work.buckets[(64, 32)] = [unpacked[0]]
    work.copy_out_of(chunk)
    waiting = work.buckets[(64, 32)][0].image
    assert waiting.untyped_storage().data_ptr() != chunk.pixels.untyped_storage().data_ptr()
    assert torch.equal(waiting, items[0].image)

    monkeypatch.setattr(dataset_encoding, "get_worker_info", lambda: None)  # no workers
    assert dataset_encoding.pack_chunk(items).unpacked() == items


def test_a_chunk_of_8_bit_images_stays_8_bit_until_the_batch_is_converted(monkeypatch):
    """uint8 images travel as uint8 (a quarter of the bytes); one float image (16-bit, or
    resized) makes the chunk float; either way the batch is `to_unit_range` of the pixels."""
    prepared = dataset_encoding.Prepared
    eight_bit = [torch.randint(0, 256, (3, 32, 32), dtype=torch.uint8) for _ in range(2)]
    sixteen_bit = torch.rand(3, 32, 32) * 2 - 1
    monkeypatch.setattr(dataset_encoding, "get_worker_info", lambda: object())
    for images in (eight_bit, [*eight_bit, sixteen_bit]):
        items = [prepared(i, image, "none", "", 32, 32) for i, image in enumerate(images)]
        chunk = dataset_encoding.pack_chunk(items)
        assert chunk.pixels.dtype == (torch.uint8 if len(images) == 2 else torch.float32)
        batch = dataset_encoding.model_input([item.image for item in chunk.unpacked()])
        assert torch.equal(batch, torch.stack([to_unit_range(image) for image in images]))


def test_interrupted_run_resumes_without_lost_or_doubled_rows(
    model_dir, image_dir, reference, tmp_path, monkeypatch
):
    written = []
    write_shard = dataset_encoding.write_shard

    def interrupted(path, rows, record):
        if written:
            raise KeyboardInterrupt  # as a kill while the second shard is being written
        written.append(path)
        write_shard(path, rows, record)

    monkeypatch.setattr(dataset_encoding, "write_shard", interrupted)
    assert encode_dataset(model_dir, image_dir, tmp_path, "--batch-size", "1") == 130
    assert sorted((tmp_path / "data").iterdir()) == written
    assert not read_manifest(tmp_path)["complete"]
    stale = tmp_path / "data" / ".shard-00002-of-00003.parquet.killed.tmp"
    stale.write_bytes(b"half a shard")
    monkeypatch.setattr(dataset_encoding, "write_shard", write_shard)

    assert encode_dataset(model_dir, image_dir, tmp_path, "--batch-size", "1") == 1
    assert not stale.exists()
    assert rows_of(tmp_path) == rows_of(reference[1])
    manifest, expected = read_manifest(tmp_path), read_manifest(reference[1])
    for key in ("complete", "counts", "skipped", "shards", "latent_mean", "latent_var"):
        assert manifest[key] == expected[key], key


def test_a_resume_encodes_only_the_missing_shards(
    model_dir, image_dir, reference, tmp_path, monkeypatch
):
    """A finished run with its middle shard deleted: the resume writes that shard alone and
    encodes only its images; the other shards are left as they were."""
    shutil.copytree(reference[1], tmp_path, dirs_exist_ok=True)
    missing = tmp_path / "data" / "shard-00001-of-00003.parquet"
    missing_rows = pq.read_table(missing).num_rows
    missing.unlink()
    kept = {path: path.stat().st_mtime_ns for path in (tmp_path / "data").iterdir()}
    written, encoded = [], []
    write_shard, encode = dataset_encoding.write_shard, FAMILY.model_class.encode

    def spy_write(path, rows, record):
        written.append(path)
        write_shard(path, rows, record)

    def spy_encode(model, images):
        encoded.append(int(images.shape[0]))
        return encode(model, images)

    monkeypatch.setattr(dataset_encoding, "write_shard", spy_write)
    monkeypatch.setattr(FAMILY.model_class, "encode", spy_encode)
    assert encode_dataset(model_dir, image_dir, tmp_path, "--batch-size", "1") == 1
    assert written == [missing]
    assert sum(encoded) == missing_rows > 0
    assert {path: path.stat().st_mtime_ns for path in kept} == kept
    assert rows_of(tmp_path) == rows_of(reference[1])


def test_changed_options_are_refused(model_dir, image_dir, reference, capsys):
    _, out = reference
    before = sorted(out.rglob("*"))
    assert encode_dataset(model_dir, image_dir, out, "--fit", "pad") == 1
    err = capsys.readouterr().err
    assert "other settings" in err and "preprocessing.fit: 'crop' -> 'pad'" in err
    assert sorted(out.rglob("*")) == before


def test_list_file_with_resize_and_missing_entries(model_dir, image_dir, tmp_path):
    listing = tmp_path / "list.txt"
    listing.write_text(
        f"# images\n{image_dir / 'a/two.jpg'}\nmissing.png\n\n{image_dir / 'a/two.jpg'}\n"
    )
    out = tmp_path / "out"
    assert encode_dataset(model_dir, listing, out, "--resize", "4") == 1
    (row,) = rows_of(out)
    assert row["key"] == str(image_dir / "a/two.jpg")
    sizes = (row["width"], row["height"], row["source_width"], row["source_height"])
    assert sizes == (4, 4, 12, 8)  # 12x8 resized to 6x4, cropped to 4x4
    reasons = {entry["key"]: entry["reason"] for entry in read_manifest(out)["skipped"]}
    assert set(reasons) == {"missing.png", str(image_dir / "a/two.jpg")}
    assert "listed twice" in reasons[str(image_dir / "a/two.jpg")]


def test_reader_returns_the_rows_as_tensors(reference):
    _, out = reference
    dataset = LatentDataset(out)
    rows = rows_of(out)
    assert len(dataset) == len(rows)
    for index in (0, len(rows) - 1, -1):
        item, row = dataset[index], rows[index]
        assert item["key"] == row["key"] and item["latents"].equal(latents_of(row))
        for name in ("height", "width", "fit", "source_height", "source_width"):
            assert item[name] == row[name], name
    assert dataset.latent_mean.shape == (FAMILY.tiny_config.latent_channels,)
    with pytest.raises(IndexError):
        dataset[len(rows)]


def test_two_torchrun_processes_write_the_rows_of_one(model_dir, image_dir, reference, tmp_path):
    out = tmp_path / "out"
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
        "-m", "diffae", "encode-dataset", str(image_dir), "--model", str(model_dir),
        "--family", "fcdm_diffae",
        "--out", str(out), "--shard-size", str(SHARD_SIZE), "--batch-size", "1",
        "--dtype", "float32", "--device", "cpu",
    ]  # fmt: skip
    environment = os.environ | {"OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        command, capture_output=True, text=True, timeout=SUBPROCESS_TIMEOUT, env=environment
    )
    # Status 1 for the skipped file, as in one process; torchrun reports a worker's non-zero
    # status with a traceback of its own (ChildFailedError), the workers print none.
    assert result.returncode == 1, result.stderr
    assert result.stderr.count("Traceback") == result.stderr.count("ChildFailedError:") == 1
    assert f"skipped {BAD}" in result.stderr
    assert rows_of(out) == rows_of(reference[1])
    manifest, expected = read_manifest(out), read_manifest(reference[1])
    for key in ("complete", "counts", "skipped", "shards", "latent_mean", "latent_var"):
        assert manifest[key] == expected[key], key
    assert json.loads((out / "manifest.json").read_text())["diffae_version"]
    shutil.rmtree(out)


def test_the_library_call_writes_the_rows_of_the_command(model_dir, image_dir, reference, tmp_path):
    """`encode_dataset` from Python, with a model loaded by hand: the rows and manifest of the
    command; its errors name the Python argument."""
    sources, refused = dataset_encoding.list_sources(image_dir)
    choice = choose_model(str(model_dir), "fcdm_diffae")
    loaded = load_model(choice, torch.device("cpu"), Console(quiet=True), dtype="float32")
    out = tmp_path / "out"
    dataset = dataset_encoding.encode_dataset(
        sources,
        out,
        loaded,
        model_id=str(model_dir.resolve()),
        preprocessing=dataset_encoding.Preprocessing(shard_size=SHARD_SIZE),
        refused=refused,
    )
    assert dataset.encoded == len(GOOD) and dataset.skipped[0][0] == BAD
    assert rows_of(out) == rows_of(reference[1])
    expected = read_manifest(reference[1])
    for key in ("complete", "counts", "skipped", "shards", "latent_mean", "latent_var", "model"):
        assert dataset.manifest[key] == expected[key], key
    with pytest.raises(ArgumentError, match=r"^num_workers: expected an integer >= 0, got -1$"):
        dataset_encoding.encode_dataset(sources, out, loaded, model_id="x", num_workers=-1)
    with pytest.raises(ArgumentError, match="other settings") as changed:
        dataset_encoding.encode_dataset(sources, out, loaded, model_id=str(model_dir.resolve()))
    assert changed.value.argument == "out" and "shard_size: 3 -> 1000" in str(changed.value)
    with pytest.raises(ArgumentError, match=r"^fit: expected one of"):
        dataset_encoding.Preprocessing(fit="stretch")


# -- model failures: never an input's fault ------------------------------------------------------


def out_of_memory() -> torch.OutOfMemoryError:
    return torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (injected)")


def test_out_of_memory_retries_the_batch_in_halves(
    model_dir, image_dir, reference, tmp_path, monkeypatch
):
    """Every batch of more than one image runs out of memory: each is encoded again in halves,
    down to single images; nothing is skipped but the bad file, the rows are the reference's."""
    calls: list[int] = []
    encode = FAMILY.model_class.encode

    def scarce_memory(model, images):
        calls.append(int(images.shape[0]))
        if images.shape[0] > 1:
            raise out_of_memory()
        return encode(model, images)

    monkeypatch.setattr(FAMILY.model_class, "encode", scarce_memory)
    assert encode_dataset(model_dir, image_dir, tmp_path, "--batch-size", "4") == 1
    assert any(size > 1 for size in calls) and sum(s for s in calls if s == 1) == len(GOOD)
    assert [entry["key"] for entry in read_manifest(tmp_path)["skipped"]] == [BAD]
    for row, expected in zip(rows_of(tmp_path), rows_of(reference[1]), strict=True):
        assert row["key"] == expected["key"]
        torch.testing.assert_close(latents_of(row), latents_of(expected))


def test_out_of_memory_on_one_image_tries_it_tiled(
    model_dir, image_dir, reference, tmp_path, monkeypatch
):
    """One image still too large: encoded once more with the model's exact tiling (switched off
    again afterwards); the rows equal the untiled ones up to rounding."""
    tiled_calls: list[bool] = []
    encode = FAMILY.model_class.encode

    def untiled_runs_out(model, images):
        tiled_calls.append(model.tiling_enabled)
        if not model.tiling_enabled:
            raise out_of_memory()
        return encode(model, images)

    monkeypatch.setattr(FAMILY.model_class, "encode", untiled_runs_out)
    assert encode_dataset(model_dir, image_dir, tmp_path, "--batch-size", "1") == 1
    assert tiled_calls == [False, True] * len(GOOD)
    for row, expected in zip(rows_of(tmp_path), rows_of(reference[1]), strict=True):
        torch.testing.assert_close(latents_of(row), latents_of(expected))


def test_another_model_error_stops_the_run_and_a_rerun_resumes(
    model_dir, image_dir, reference, tmp_path, monkeypatch, capsys
):
    """The 4th encode call (five.png, in the second shard) fails: the run stops with one line
    naming the input, no input is blamed (skipped), the second shard is not finalized, the
    manifest is incomplete; the same command again finishes it with the reference's rows."""
    calls: list[int] = []
    encode = FAMILY.model_class.encode

    def fails_once(model, images):
        calls.append(len(calls))
        if len(calls) == 4:
            raise RuntimeError("injected kernel failure")
        return encode(model, images)

    monkeypatch.setattr(FAMILY.model_class, "encode", fails_once)
    assert encode_dataset(model_dir, image_dir, tmp_path, "--batch-size", "1") == 1
    error = capsys.readouterr().err
    assert "Traceback" not in error and error.splitlines()[-1] == (
        "diffae encode-dataset: error: the model failed on five.png: RuntimeError: injected "
        "kernel failure"
    )
    assert "skipped five.png" not in error  # broken.png, in the same shard, is an input's fault
    assert [path.name for path in sorted((tmp_path / "data").iterdir())] == [
        "shard-00000-of-00003.parquet"
    ]
    manifest = read_manifest(tmp_path)
    assert not manifest["complete"] and manifest["skipped"] == []

    monkeypatch.setattr(FAMILY.model_class, "encode", encode)
    assert encode_dataset(model_dir, image_dir, tmp_path, "--batch-size", "1") == 1
    assert rows_of(tmp_path) == rows_of(reference[1])
    manifest, expected = read_manifest(tmp_path), read_manifest(reference[1])
    for key in ("complete", "counts", "skipped", "shards", "latent_mean", "latent_var"):
        assert manifest[key] == expected[key], key
