"""What `diffae.training.CropDataset` reads: 8-bit pixels straight from the files, and a cache
bounded in bytes that changes no sample; and the compact reader of `diffae encode-dataset`."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from diffae import training
from diffae.images import read_image, read_image_compact, read_image_uint8, to_unit_range
from diffae.metrics import quantize_8bit
from diffae.training import CropDataset

CROP = 16
SIZES = [(40, 32), (48, 40), (56, 48), (64, 56)]
"""(width, height) of the training files."""


def smooth_rgb(width: int, height: int, seed: int) -> np.ndarray:
    """[H, W, 3] uint8: random colours, bilinearly upsampled (crops differ from one another)."""
    small = torch.rand(3, height // 8, width // 8, generator=torch.Generator().manual_seed(seed))
    pixels = torch.nn.functional.interpolate(small[None], size=(height, width), mode="bilinear")
    return (pixels[0] * 255).round().byte().permute(1, 2, 0).numpy()


def save_rgb(path: Path, mode: str) -> None:
    """A 48 x 40 file in Pillow `mode` (RGB, RGBA, L, P, I;16), or an EXIF-rotated JPEG."""
    rgb = Image.fromarray(smooth_rgb(48, 40, seed=1))
    if mode == "I;16":
        values = np.asarray(rgb.convert("L"), dtype=np.uint16) * 257 + 3  # not multiples of 257
        Image.fromarray(values).save(path)  # uint16: mode I;16
    elif mode == "exif-jpeg":
        exif = Image.Exif()
        exif[0x0112] = 6  # stored turned; read rotated 90 degrees clockwise
        rgb.save(path, quality=90, exif=exif)
    else:
        rgb.convert(mode).save(path)


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "L", "P", "I;16", "exif-jpeg"])
def test_uint8_reader_is_the_float_reader_quantised(tmp_path: Path, mode: str):
    path = tmp_path / ("image.jpg" if mode == "exif-jpeg" else "image.png")
    save_rgb(path, mode)
    pixels = read_image_uint8(path)
    assert pixels.dtype == torch.uint8
    assert torch.equal(pixels, quantize_8bit(read_image(path)[0][0]))


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "L", "P", "I;16", "exif-jpeg"])
def test_compact_reader_is_the_float_reader_in_fewer_bytes(tmp_path: Path, mode: str):
    """What encode-dataset's workers read: uint8 unless the file holds 16 bits, and exactly
    `read_image`'s pixels once `to_unit_range` converts it."""
    path = tmp_path / ("image.jpg" if mode == "exif-jpeg" else "image.png")
    save_rgb(path, mode)
    pixels = read_image_compact(path)
    assert pixels.dtype == (torch.float32 if mode == "I;16" else torch.uint8)
    assert torch.equal(to_unit_range(pixels), read_image(path)[0][0])


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    folder = tmp_path_factory.mktemp("crops")
    paths = [folder / f"image_{index}.png" for index in range(len(SIZES))]
    for index, (path, size) in enumerate(zip(paths, SIZES, strict=True)):
        Image.fromarray(smooth_rgb(*size, seed=index)).save(path)
    return paths


def crops(files: list[Path], cache_bytes: int) -> tuple[CropDataset, list[dict]]:
    dataset = CropDataset(files, CROP, (4, 2, 2), 0.5, seed=3, cache_bytes=cache_bytes)
    return dataset, [dataset[index] for index in range(3 * len(files))]  # three passes


def test_the_cache_changes_no_sample_and_stays_within_its_bytes(files):
    file_bytes = [3 * width * height for width, height in SIZES]
    _, expected = crops(files, cache_bytes=2**40)
    for budget in (0, file_bytes[0], sum(file_bytes) - 1):
        dataset, samples = crops(files, budget)
        assert dataset.cached_bytes <= budget
        assert dataset.cached_bytes == sum(p.nbytes for p in dataset.cache.values())
        for sample, reference in zip(samples, expected, strict=True):
            for key, value in reference.items():
                assert torch.equal(sample[key], value), key
    assert len(crops(files, 0)[0].cache) == 0
    assert len(crops(files, sum(file_bytes))[0].cache) == len(files)


def test_workers_share_the_budget(files, monkeypatch):
    budget = sum(3 * width * height for width, height in SIZES)
    monkeypatch.setattr(training, "get_worker_info", lambda: SimpleNamespace(num_workers=4))
    dataset, _ = crops(files, budget)
    assert 0 < dataset.cached_bytes <= budget // 4
