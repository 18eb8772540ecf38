"""`diffae.training` augmentation: colour matrices, and what `CropDataset` draws with it."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from PIL import Image

from diffae.training import (
    Augmentation,
    CropDataset,
    TrainingSettings,
    apply_color_matrix,
    color_matrix,
    random_color_matrix,
)

IDENTITY = torch.arange(3)
CROP = 16


def test_a_third_turn_of_hue_is_a_cyclic_channel_shift():
    matrix = color_matrix(IDENTITY, 2.0 * math.pi / 3.0, 1.0, 1.0)
    shifted = torch.eye(3, dtype=torch.float64)[[2, 0, 1]]  # R <- B, G <- R, B <- G
    torch.testing.assert_close(matrix, shifted, rtol=0, atol=1e-12)


def test_hue_and_saturation_keep_grey_and_saturation_zero_makes_grey():
    grey = torch.full((3, 4, 4), 0.2)
    for angle in (0.5, 2.0, 4.0):
        matrix = color_matrix(IDENTITY, angle, 1.7, 1.0)
        torch.testing.assert_close(apply_color_matrix(grey, matrix), grey)
    image = torch.rand(3, 4, 4, generator=torch.Generator().manual_seed(0)) * 2 - 1
    flat = apply_color_matrix(image, color_matrix(IDENTITY, 1.0, 0.0, 1.0))
    torch.testing.assert_close(flat, image.mean(0, keepdim=True).expand(3, -1, -1))


def test_permutation_and_brightness_then_clamp():
    image = torch.tensor([-1.0, 0.0, 0.5]).view(3, 1, 1)  # RGB in [0, 1]: 0, 0.5, 0.75
    matrix = color_matrix(torch.tensor([2, 0, 1]), 0.0, 1.0, 2.0)
    expected = torch.tensor([1.0, -1.0, 1.0]).view(3, 1, 1)  # 1.5 -> 1, 0, 1.0
    torch.testing.assert_close(apply_color_matrix(image, matrix), expected)


def test_random_color_matrix_is_seeded_and_varies():
    first = random_color_matrix(torch.Generator().manual_seed(3))
    torch.testing.assert_close(first, random_color_matrix(torch.Generator().manual_seed(3)))
    other = random_color_matrix(torch.Generator().manual_seed(4))
    assert not torch.allclose(first, other)


@pytest.fixture(scope="module")
def image_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One 64 x 48 colourful image."""
    generator = torch.Generator().manual_seed(0)
    small = torch.rand(3, 6, 8, generator=generator)
    pixels = torch.nn.functional.interpolate(small[None], size=(48, 64), mode="bilinear")[0]
    path = tmp_path_factory.mktemp("augment") / "image.png"
    Image.fromarray((pixels * 255).round().byte().permute(1, 2, 0).numpy()).save(path)
    return path


def dataset(path: Path, augmentation: Augmentation | None) -> CropDataset:
    return CropDataset([path], CROP, (4, 2, 2), 0.5, seed=1, augmentation=augmentation)


def test_augmentation_off_draws_the_samples_it_drew_without_it(image_file):
    plain, off = dataset(image_file, None), dataset(image_file, Augmentation(0.0, 0.0, 1.0))
    for index in range(6):
        for key, value in plain[index].items():
            torch.testing.assert_close(off[index][key], value, rtol=0, atol=0)


@pytest.mark.parametrize(
    "augmentation", [Augmentation(color=1.0), Augmentation(rotation=1.0), Augmentation(1, 1, 3)]
)
def test_augmentation_changes_only_the_image_and_is_repeatable(image_file, augmentation):
    plain, augmented = dataset(image_file, None), dataset(image_file, augmentation)
    changed = 0
    for index in range(6):
        sample = augmented[index]
        assert sample["images"].shape == (3, CROP, CROP)
        assert sample["images"].min() >= -1.0 and sample["images"].max() <= 1.0
        torch.testing.assert_close(augmented[index]["images"], sample["images"], rtol=0, atol=0)
        for key in ("t", "pixel_noise", "latent_noise"):
            torch.testing.assert_close(sample[key], plain[index][key], rtol=0, atol=0)
        changed += not torch.equal(sample["images"], plain[index]["images"])
    assert changed >= 4


def test_zoom_out_cuts_a_larger_square_and_downscales_it(image_file):
    # max_zoom_out 3 on a 48-pixel short side: squares of 16..48 px, resampled to 16
    zoomed, plain = dataset(image_file, Augmentation(max_zoom_out=3.0)), dataset(image_file, None)
    smoothness = [
        [float(d[i]["images"].diff(dim=-1).abs().mean()) for i in range(12)]
        for d in (zoomed, plain)
    ]  # a smooth image looks busier when zoomed out
    assert sum(smoothness[0]) > 1.3 * sum(smoothness[1])


def test_zoom_in_upsamples_a_smaller_square(image_file):
    # max_zoom_in 4: squares of 4..16 px, resampled to 16, so neighbouring pixels differ less
    zoomed, plain = dataset(image_file, Augmentation(max_zoom_in=4.0)), dataset(image_file, None)
    busyness = [
        [float(d[i]["images"].diff(dim=-1).abs().mean()) for i in range(12)]
        for d in (zoomed, plain)
    ]
    assert sum(busyness[0]) < 0.7 * sum(busyness[1])


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("color_augmentation", 1.5),
        ("rotation_augmentation", -0.1),
        ("max_zoom_out", 0.5),
        ("max_zoom_in", 0.9),
    ],
)
def test_bad_augmentation_settings_name_the_field(name, value):
    with pytest.raises(ValueError, match=name):
        TrainingSettings(**{name: value})
