"""The optimised paths against the plain ones they replace (float tolerances, never bitwise).

GRN and the channel RMS norm in fewer passes, the AdaLN deltas of all blocks in one product,
row-tiled blocks, query-chunked DiT blocks, the cached RoPE tables and the compile helper.
"""

from __future__ import annotations

import copy

import pytest
import torch

from diffae_core.families import installed_families
from diffae_core.fcdm import FCDMBlock
from diffae_core.layers import (
    AdaLNScaleGateZeroLowRankDelta,
    AdaLNScaleGateZeroProjector,
    block_modulations,
    channel_rms_norm,
    global_response_norm,
    shared_modulation,
)
from diffae_testing import randomize_weights

FLOAT32_RELATIVE = 1e-5
FAMILIES = installed_families()


def _randn(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def test_grn_in_one_pass_equals_the_spec_form() -> None:
    x, gamma, beta = _randn(2, 12, 5, 7), _randn(1, 12, 1, 1, seed=1), _randn(1, 12, 1, 1, seed=2)
    spatial_l2 = torch.linalg.vector_norm(x, dim=(2, 3), keepdim=True)
    relative = spatial_l2 / (spatial_l2.mean(dim=1, keepdim=True) + 1e-6)
    spec = gamma * (x * relative) + beta + x  # GRN's definition: gamma (x n) + beta + x
    torch.testing.assert_close(
        global_response_norm(x, gamma, beta), spec, atol=FLOAT32_RELATIVE * 10, rtol=0
    )


def test_channel_rms_norm_equals_the_spec_form() -> None:
    x = _randn(2, 24, 3, 5) * 3
    mean_square = x.square().mean(dim=1, keepdim=True, dtype=torch.float32)
    torch.testing.assert_close(
        channel_rms_norm(x), x * torch.rsqrt(mean_square + 1e-6), atol=FLOAT32_RELATIVE, rtol=0
    )


def test_batched_adaln_equals_one_delta_per_block() -> None:
    base = AdaLNScaleGateZeroProjector(8, 8)
    deltas = torch.nn.ModuleList(AdaLNScaleGateZeroLowRankDelta(8, 8, 4) for _ in range(3))
    randomize_weights(base), randomize_weights(deltas)
    cond = _randn(2, 8)
    activated, shared = shared_modulation(base, cond)
    expected = torch.stack([shared + delta(activated) for delta in deltas])
    torch.testing.assert_close(
        block_modulations(base, deltas, cond), expected, atol=FLOAT32_RELATIVE, rtol=0
    )


@pytest.mark.parametrize("adaln", [False, True], ids=["encoder_mode", "adaln_mode"])
def test_tiled_fcdm_block_equals_plain(adaln: bool) -> None:
    block = randomize_weights(FCDMBlock(8, depthwise_kernel_size=7, use_external_adaln=adaln))
    x = _randn(2, 8, 9, 4)
    modulation = _randn(2, 16, seed=1) if adaln else None
    with torch.no_grad():
        plain = block(x, adaln_m=modulation)
        # 1 row, 1 row, 2 rows, 3 rows, the whole grid, tiling off
        for tile_tokens in (1, 4, 9, 12, 36, None):
            for recompute in (True, False):
                for overwrite in (False, True):
                    given = x.clone()
                    tiled = block(
                        given,
                        adaln_m=modulation,
                        tile_tokens=tile_tokens,
                        recompute=recompute,
                        overwrite=overwrite,
                    )
                    torch.testing.assert_close(
                        tiled, plain, atol=FLOAT32_RELATIVE * plain.abs().max().item(), rtol=0
                    )
                    split = tile_tokens is not None and tile_tokens < 36
                    # Overwritten in place only when asked (and when there are chunks at all).
                    assert (tiled.data_ptr() == given.data_ptr()) == (overwrite and split)
                    if not overwrite:
                        assert torch.equal(given, x)


@pytest.mark.parametrize("adaln", [False, True], ids=["encoder_mode", "adaln_mode"])
def test_fcdm_block_without_autograd_updates_in_place_and_keeps_its_input(adaln: bool) -> None:
    block = randomize_weights(FCDMBlock(8, use_external_adaln=adaln))
    x = _randn(2, 8, 5, 6)
    modulation = _randn(2, 16, seed=1) if adaln else None
    with_graph = block(x, adaln_m=modulation)  # autograd on: the out-of-place path
    assert with_graph.requires_grad
    given = x.clone()
    with torch.no_grad():
        in_place = block(given, adaln_m=modulation)
    assert torch.equal(given, x)
    torch.testing.assert_close(
        in_place, with_graph.detach(), atol=FLOAT32_RELATIVE * x.abs().max().item(), rtol=0
    )


def test_tiled_fcdm_block_never_overwrites_under_autograd() -> None:
    block = randomize_weights(FCDMBlock(8, depthwise_kernel_size=7))
    x = _randn(1, 8, 6, 4).requires_grad_()
    tiled = block(x, tile_tokens=4, overwrite=True)
    assert tiled.data_ptr() != x.data_ptr()
    tiled.sum().backward()
    assert x.grad is not None


def test_query_chunked_dit_block_equals_plain() -> None:
    pytest.importorskip("dinac_ae")
    from dinac_ae.model import AxialRoPE2D, DitBlock

    block = randomize_weights(DitBlock(16, 2, 2.0, "gelu"))
    rope = AxialRoPE2D(8)(3, 5)
    tokens = _randn(2, 15, 16)
    with torch.no_grad():
        plain = block(tokens, rope)
        for tile_tokens in (1, 4, 15, None):
            tiled = block(tokens, rope, tile_tokens)
            torch.testing.assert_close(
                tiled, plain, atol=FLOAT32_RELATIVE * plain.abs().max().item(), rtol=0
            )


def test_rope_tables_are_cached_and_usable_outside_inference_mode() -> None:
    pytest.importorskip("dinac_ae")
    from dinac_ae.model import AxialRoPE2D, axial_rope_table

    rope = AxialRoPE2D(8)
    with torch.inference_mode():
        first = rope(3, 4)
    second = rope(3, 4)
    assert first[0] is second[0]
    assert not first[0].is_inference()
    expected = axial_rope_table(rope.periods, 3, 4)
    assert torch.equal(first[0], expected[0]) and torch.equal(first[1], expected[1])
    assert rope(4, 3)[0].shape == (12, 8)


def test_compile_helper_matches_eager_and_changes_no_global_setting() -> None:
    import torch._inductor.config as inductor_config

    family = FAMILIES["capacitor_decoder"]
    config = family.tiny_config
    torch._dynamo.reset()
    model = randomize_weights(family.model_class(config)).eval()
    p = config.effective_patch_size
    height, width = 2 * p, 3 * p
    latents = _randn(1, config.latent_channels, height // p, width // p)
    noise = _randn(1, 3, height, width, seed=1) * config.pixel_noise_std
    eager = model.decode(latents, height, width, noise=noise)
    freezing_before = inductor_config.freezing

    compiled = model.compile_for_inference(backend="aot_eager", fullgraph=True)  # inductor: slow
    assert compiled.model is model and compiled.config is model.config
    result = compiled.decode(latents, height, width, noise=noise)
    assert inductor_config.freezing == freezing_before
    assert result.is_contiguous() and result.dtype == torch.float32
    torch.testing.assert_close(
        result, eager, atol=FLOAT32_RELATIVE * max(1.0, eager.abs().max().item()), rtol=0
    )
    assert model.decoder.patchify.proj.weight.is_contiguous(memory_format=torch.channels_last)

    # The model's own methods stay eager, and so do its copies.
    assert "decode" not in vars(model) and type(model).compile is torch.nn.Module.compile
    copied = copy.deepcopy(model).to(memory_format=torch.contiguous_format)
    assert copied.decoder.patchify.proj.weight.is_contiguous()
    assert torch.equal(copied.decode(latents, height, width, noise=noise), eager)
