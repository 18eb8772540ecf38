"""Exact tiling: `enable_tiling` changes memory, never the result (beyond float rounding).

Every installed family on its tiny config, with one-row chunks (every chunk border crosses the
depthwise conv's halo and GRN / channel-attention statistics span all chunks), odd grids, a
batch of two and PDG on, so that both decoder paths (full and weak) are exercised.
"""

from __future__ import annotations

import pytest
import torch

from diffae_core.families import installed_families
from diffae_core.layers import row_spans
from diffae_testing import randomize_weights

FAMILIES = installed_families()
FLOAT32_RELATIVE = 1e-5
"""Float32 rounding allowed, relative to the output's largest magnitude."""


def _tolerance(reference: torch.Tensor) -> float:
    return FLOAT32_RELATIVE * max(1.0, reference.abs().max().item())


def _model(name: str) -> torch.nn.Module:
    family = FAMILIES[name]
    return randomize_weights(family.model_class(family.tiny_config)).eval()


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_tiled_decode_equals_untiled(name: str) -> None:
    family = FAMILIES[name]
    config = family.tiny_config
    model = _model(name)
    p = config.effective_patch_size
    height, width = 5 * p, 3 * p
    generator = torch.Generator().manual_seed(0)
    latents = torch.randn(2, config.latent_channels, height // p, width // p, generator=generator)
    noise = torch.randn(2, 3, height, width, generator=generator) * config.pixel_noise_std
    settings = family.inference_config_class(num_steps=1, pdg=True, seed=3)

    plain = model.decode(latents, height, width, inference_config=settings, noise=noise)
    model.enable_tiling(tile_tokens=1)
    assert model.tiling_enabled
    tiled = model.decode(latents, height, width, inference_config=settings, noise=noise)
    model.disable_tiling()
    assert not model.tiling_enabled
    again = model.decode(latents, height, width, inference_config=settings, noise=noise)

    assert tiled.shape == plain.shape and tiled.dtype == plain.dtype == torch.float32
    torch.testing.assert_close(tiled, plain, atol=_tolerance(plain), rtol=0)
    assert torch.equal(again, plain)  # the same kernels as before: bitwise


@pytest.mark.parametrize(
    "name", sorted(n for n, f in FAMILIES.items() if hasattr(f.model_class, "encode"))
)
def test_tiled_encode_equals_untiled(name: str) -> None:
    config = FAMILIES[name].tiny_config
    model = _model(name)
    p = config.effective_patch_size
    images = torch.rand(2, 3, 5 * p, 3 * p, generator=torch.Generator().manual_seed(1)) * 2 - 1
    plain = model.encode(images)
    model.enable_tiling(tile_tokens=2)
    tiled = model.encode(images)
    assert tiled.shape == plain.shape and tiled.dtype == plain.dtype
    torch.testing.assert_close(tiled, plain, atol=_tolerance(plain), rtol=0)


def test_tiling_that_keeps_hidden_activations_equals_untiled() -> None:
    config = FAMILIES["capacitor_decoder"].tiny_config
    model = _model("capacitor_decoder")
    p = config.effective_patch_size
    latents = torch.randn(
        1, config.latent_channels, 4, 3, generator=torch.Generator().manual_seed(2)
    )
    noise = torch.randn(1, 3, 4 * p, 3 * p, generator=torch.Generator().manual_seed(3))
    plain = model.decode(latents, 4 * p, 3 * p, noise=noise)
    model.enable_tiling(tile_tokens=3, recompute=False)
    tiled = model.decode(latents, 4 * p, 3 * p, noise=noise)
    torch.testing.assert_close(tiled, plain, atol=_tolerance(plain), rtol=0)


def test_enable_tiling_rejects_bad_arguments() -> None:
    model = _model("capacitor_decoder")
    for bad in (0, -1, 1.5, True, None):
        with pytest.raises(ValueError, match="tile_tokens"):
            model.enable_tiling(tile_tokens=bad)
    with pytest.raises(ValueError, match="recompute"):
        model.enable_tiling(recompute="no")


def test_row_spans_cover_the_grid_once() -> None:
    assert row_spans(5, 3, 1) == [(0, 1), (1, 2), (2, 3), (3, 4), (4, 5)]
    assert row_spans(5, 3, 7) == [(0, 2), (2, 4), (4, 5)]
    assert row_spans(4, 3, 100) == [(0, 4)]
