"""Every family refuses non-finite images and latents and [0, 255] pixels with a clear error, and
`value_checks(False)` turns those value checks off (shapes and dtypes are still checked)."""

from __future__ import annotations

import pytest
import torch

from diffae_core.families import Family, installed_families
from diffae_core.runtime import check_images, set_value_checks, value_checks

FAMILIES = installed_families()


@pytest.fixture(params=sorted(FAMILIES), scope="module")
def family(request: pytest.FixtureRequest) -> Family:
    return FAMILIES[request.param]


@pytest.fixture(scope="module")
def model(family: Family) -> torch.nn.Module:
    return family.model_class(family.tiny_config).eval()


def sizes(family: Family) -> tuple[int, int, int]:
    """(latent channels, patch, image side) of the family's tiny config."""
    config = family.tiny_config
    patch = config.effective_patch_size
    return config.latent_channels, patch, 2 * patch


def test_bad_image_values_are_refused(family: Family, model: torch.nn.Module) -> None:
    if not callable(getattr(model, "encode", None)):
        pytest.skip(f"{family.name} is decode-only")
    _, _, side = sizes(family)
    images = torch.rand(1, 3, side, side) * 2 - 1
    pixels = (images + 1) * 127.5
    with pytest.raises(ValueError, match=r"images: expected values in \[-1, 1\].*\[0, 255\]"):
        model.encode(pixels)
    for value in (float("nan"), float("inf"), -float("inf")):
        broken = images.clone()
        broken[0, 1, 0, 0] = value
        with pytest.raises(ValueError, match="images: expected finite values"):
            model.encode(broken)
    # A reconstruction overshooting [-1, 1] a little is still a valid input.
    model.encode(images * 1.2)
    with value_checks(False):
        model.encode(pixels)
    with pytest.raises(TypeError, match="floating-point"):
        model.encode(pixels.to(torch.uint8))


def test_non_finite_latents_are_refused(family: Family, model: torch.nn.Module) -> None:
    channels, patch, side = sizes(family)
    latents = torch.randn(1, channels, side // patch, side // patch)
    latents[0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="latents: expected finite values"):
        model.decode(latents, side, side)
    with value_checks(False):
        assert model.decode(latents, side, side).shape == (1, 3, side, side)


def test_switch_is_restored_and_typed() -> None:
    with value_checks(False), pytest.raises(TypeError, match="enabled"):
        set_value_checks("no")  # type: ignore[arg-type]
    images = torch.full((1, 3, 8, 8), float("nan"))
    with pytest.raises(ValueError, match="finite"):
        check_images(images, 3, 4)
