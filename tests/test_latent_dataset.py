"""`diffae.latent_dataset` readers: one row per row group, what a random read touches, older
64-row shards, the open-shard bound, `datasets.load_dataset`, and the docs' training loop."""

from __future__ import annotations

import json
import pickle
import re
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from diffae import latent_dataset
from diffae.cli import main
from diffae.latent_dataset import (
    FORMAT,
    MANIFEST,
    BadDataset,
    LatentDataset,
    latents_from_bytes,
    latents_to_bytes,
    shard_path,
    write_shard,
)
from diffae_core.families import installed_families

ROOT = Path(__file__).resolve().parents[1]
SHAPE = [3, 2, 2]
SHARD_ROWS = [5, 4, 6]


def row(number: int) -> dict:
    """A row whose latents are its number (so that a wrong row shows)."""
    latents = torch.full(SHAPE, float(number))
    return {
        "key": f"{number:03d}.png", "latents": latents_to_bytes(latents), "shape": SHAPE,
        "dtype": "float32", "height": 8, "width": 8, "fit": "none",
        "source_height": 8, "source_width": 8 + number,
    }  # fmt: skip


def write_folder(root: Path, shard_rows: list[int]) -> None:
    """Shards of `row`s numbered in order, and a manifest as complete as the reader needs."""
    shards, number = [], 0
    for index, count in enumerate(shard_rows):
        path = shard_path(root, index, len(shard_rows))
        path.parent.mkdir(parents=True, exist_ok=True)
        write_shard(path, [row(number + offset) for offset in range(count)], {"shard": index})
        shards.append({"file": path.relative_to(root).as_posix(), "rows": count})
        number += count
    manifest = {"format": FORMAT, "complete": True, "shards": shards}
    (root / MANIFEST).write_text(json.dumps(manifest))


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    write_folder(tmp_path, SHARD_ROWS)
    return tmp_path


def numbers_of(dataset: LatentDataset, indices) -> list[int]:
    numbers = []
    for index in indices:
        item = dataset[index]
        assert item["latents"].shape == tuple(SHAPE)
        number = int(item["latents"][0, 0, 0])
        assert item["key"] == f"{number:03d}.png" and item["source_width"] == 8 + number
        numbers.append(number)
    return numbers


@pytest.fixture
def reads(monkeypatch) -> list[int]:
    """The rows of each `read_row_groups` call, as they happen."""
    counts: list[int] = []
    original = pq.ParquetFile.read_row_groups

    def counting(self, groups, *args, **kwargs):
        table = original(self, groups, *args, **kwargs)
        counts.append(table.num_rows)
        return table

    monkeypatch.setattr(pq.ParquetFile, "read_row_groups", counting)
    return counts


def test_each_row_is_its_own_row_group_and_a_random_read_reads_one(folder, reads):
    for path in sorted((folder / "data").glob("*.parquet")):
        metadata = pq.read_metadata(path)
        groups = [metadata.row_group(g).num_rows for g in range(metadata.num_row_groups)]
        assert groups == [1] * metadata.num_rows
    dataset = LatentDataset(folder)
    order = [7, 0, 14, 3, 9, -1, 5]
    assert numbers_of(dataset, order) == [index % 15 for index in order]
    assert reads == [1] * len(order)


def test_reads_in_order_double_up_to_the_read_ahead(folder, reads, monkeypatch):
    monkeypatch.setattr(latent_dataset, "READ_AHEAD_ROWS", 2)
    dataset = LatentDataset(folder)
    assert numbers_of(dataset, range(15)) == list(range(15))
    # shard rows 5, 4, 6: runs of 1, 2, 2 (end of shard 0), 2, 2, 2, 2, 2 (shard 2: 6 rows)
    assert reads == [1, 2, 2, 2, 2, 2, 2, 2] and sum(reads) == 15


def test_shards_of_64_row_groups_written_before_still_read(tmp_path, monkeypatch):
    monkeypatch.setattr(latent_dataset, "ROW_GROUP_ROWS", 4)  # several rows per group
    write_folder(tmp_path, [10, 7])
    assert pq.read_metadata(tmp_path / "data" / "shard-00000-of-00002.parquet").num_row_groups == 3
    dataset = LatentDataset(tmp_path)
    assert len(dataset) == 17
    order = [16, 0, 5, 4, 9, 10, 3]
    assert numbers_of(dataset, order) == order


def test_open_shards_are_bounded_and_workers_reopen(folder):
    dataset = LatentDataset(folder, max_open_shards=1)
    order = [0, 5, 9, 1, 14, 6]  # shards 0, 1, 2, 0, 2, 1
    assert numbers_of(dataset, order) == order
    assert list(dataset._open) == [1]
    copy = pickle.loads(pickle.dumps(dataset))  # as a spawned DataLoader worker gets it
    assert not copy._open and numbers_of(copy, order) == order
    with pytest.raises(ValueError, match="max_open_shards"):
        LatentDataset(folder, max_open_shards=0)


def test_a_shard_that_disagrees_with_the_manifest_is_named(folder):
    manifest = json.loads((folder / MANIFEST).read_text())
    manifest["shards"][1]["rows"] = 3
    (folder / MANIFEST).write_text(json.dumps(manifest))
    dataset = LatentDataset(folder)
    with pytest.raises(BadDataset, match=r"shard-00001-of-00003\.parquet: 4 rows; the manifest"):
        dataset[6]


@pytest.fixture(scope="module")
def encoded(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`diffae encode-dataset` of six 16 x 16 images with a tiny fcdm_diffae: the folder."""
    root = tmp_path_factory.mktemp("encoded")
    family = installed_families()["fcdm_diffae"]
    torch.manual_seed(0)
    family.model_class(family.tiny_config).save_pretrained(root / "model")
    (root / "images").mkdir()
    generator = torch.Generator().manual_seed(0)
    for index in range(6):
        pixels = torch.randint(0, 256, (16, 16, 3), generator=generator, dtype=torch.uint8)
        Image.fromarray(pixels.numpy()).save(root / "images" / f"{index}.png")
    command = [
        "encode-dataset", str(root / "images"), "--model", str(root / "model"), "--family",
        "fcdm_diffae", "--out", str(root / "latents"), "--shard-size", "4", "--quiet",
    ]  # fmt: skip
    assert main(command) == 0
    return root


def test_datasets_loads_the_shards_as_they_are(encoded, tmp_path):
    datasets = pytest.importorskip("datasets")
    files = str(encoded / "latents" / "data" / "*.parquet")
    loaded = datasets.load_dataset("parquet", data_files=files, split="train", cache_dir=tmp_path)
    ours = LatentDataset(encoded / "latents")
    assert loaded.num_rows == len(ours) == 6
    for index, entry in enumerate(loaded):
        item = ours[index]
        latents = latents_from_bytes(entry["latents"], entry["shape"], entry["dtype"])
        assert entry["key"] == item["key"] and latents.equal(item["latents"])


def docs_block(containing: str) -> str:
    """The one Python block of docs/encode-dataset.md that contains `containing`."""
    text = (ROOT / "docs" / "encode-dataset.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.DOTALL)
    found = [block for block in blocks if containing in block]
    assert len(found) == 1, containing
    return found[0]


def run_docs_block(code: str, folder: Path, monkeypatch) -> dict:
    monkeypatch.chdir(folder)  # the docs' dataset folder is latents/
    namespace: dict = {}
    exec(compile(code, "docs/encode-dataset.md", "exec"), namespace)
    return namespace


def test_the_docs_training_loop_runs_as_printed(encoded, monkeypatch):
    torch.manual_seed(0)
    namespace = run_docs_block(docs_block("DataLoader("), encoded, monkeypatch)
    assert torch.isfinite(namespace["loss"]) and namespace["epoch"] == 1


def test_the_docs_load_dataset_lines_run_as_printed(encoded, monkeypatch, tmp_path):
    datasets = pytest.importorskip("datasets")
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path)
    namespace = run_docs_block(docs_block("load_dataset("), encoded, monkeypatch)
    assert namespace["latents"].equal(LatentDataset(encoded / "latents")[0]["latents"])
