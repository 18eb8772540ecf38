"""`diffae.metrics.patch_grid_db`: the error's energy at the patch period vs its neighbours."""

from __future__ import annotations

import pytest
import torch

from diffae.metrics import patch_grid_db

PERIOD = 8


def noise(height: int = 256, width: int = 256, seed: int = 0) -> torch.Tensor:
    return torch.randn(3, height, width, generator=torch.Generator().manual_seed(seed))


def grid(height: int, width: int, axis: int) -> torch.Tensor:
    """A per-patch pattern repeated every PERIOD pixels along `axis` (-1: columns, -2: rows)."""
    pattern = torch.randn(PERIOD, generator=torch.Generator().manual_seed(1))
    if axis == -1:
        return pattern.repeat(width // PERIOD).expand(3, height, width)
    return pattern.repeat(height // PERIOD)[:, None].expand(3, height, width)


def test_white_noise_has_no_grid():
    for seed in range(3):
        assert abs(patch_grid_db(noise(seed=seed), PERIOD)) < 1.5


@pytest.mark.parametrize("axis", [-1, -2])
def test_a_patch_periodic_error_shows_on_either_axis(axis):
    error = noise(256, 320) + grid(256, 320, axis)
    assert patch_grid_db(error, PERIOD) > 10.0


def test_grid_contrast_grows_with_the_grid_amplitude():
    values = [patch_grid_db(noise() + a * grid(256, 256, -1), PERIOD) for a in (0.05, 0.2, 0.8)]
    assert values == sorted(values) and values[-1] - values[0] > 10.0


def test_a_smooth_error_without_the_period_has_no_grid():
    # a colour shift and a slow ramp: large error, nothing at the patch period
    ramp = torch.linspace(-1, 1, 256).expand(3, 256, 256) + 0.5
    assert patch_grid_db(ramp + 0.01 * noise(), PERIOD) < 3.0


def test_bad_shapes_name_the_argument():
    with pytest.raises(ValueError, match="error"):
        patch_grid_db(torch.zeros(256, 256), PERIOD)
    with pytest.raises(ValueError, match="error"):
        patch_grid_db(torch.zeros(3, 16, 256), PERIOD)
