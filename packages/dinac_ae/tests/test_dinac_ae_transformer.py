"""Axial RoPE, RMSNorm and the aliased attention modules against their formulas in float64."""

from __future__ import annotations

import math

import pytest
import torch

from dinac_ae.model import (
    AxialRoPE2D,
    CrossAttentionBlock,
    DitBlock,
    RMSNorm,
    apply_rope,
    axial_rope_table,
    from_tokens,
    to_tokens,
    with_identity_prefix,
)

FLOAT32_ROUNDING = 1e-5
"""float32 RoPE (angles up to ~10 rad) against a float64 evaluation of the formula."""


def rope_by_formula(x: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Axial RoPE evaluated element by element in float64: x [L, 64] for an h x w grid."""
    out = torch.empty_like(x, dtype=torch.float64)
    for token in range(height * width):
        coords = (token // width, token % width)  # row-major (y, x)
        for pair in range(32):
            d = 2 * pair
            axis, j = d // 32, (d % 32) // 2
            angle = coords[axis] / 10000.0 ** (j / 16)
            a, b = x[token, d].item(), x[token, d + 1].item()
            out[token, d] = a * math.cos(angle) - b * math.sin(angle)
            out[token, d + 1] = b * math.cos(angle) + a * math.sin(angle)
    return out


def test_rope_periods() -> None:
    periods = AxialRoPE2D(64).periods
    assert periods.shape == (16,) and periods.dtype == torch.float32
    expected = torch.tensor([10000.0 ** (j / 16) for j in range(16)])
    assert torch.equal(periods, expected)
    assert periods[0] == 1.0 and math.isclose(periods[-1].item(), 5623.413, rel_tol=1e-6)


@pytest.mark.values
def test_rope_matches_its_formula() -> None:
    height, width = 3, 5
    x = torch.randn(height * width, 64, generator=torch.Generator().manual_seed(0))
    table = AxialRoPE2D(64)(height, width)
    assert table[0].shape == table[1].shape == (15, 64) and table[0].dtype == torch.float32
    rotated = apply_rope(x[None, None], table)[0, 0]
    torch.testing.assert_close(
        rotated.double(), rope_by_formula(x, height, width), rtol=0, atol=FLOAT32_ROUNDING
    )


def test_rope_keeps_dtype_and_rotates_in_float32() -> None:
    x = torch.randn(2, 3, 6, 32).bfloat16()
    table = axial_rope_table(AxialRoPE2D(32).periods, 2, 3)
    rotated = apply_rope(x, table)
    assert rotated.dtype == torch.bfloat16
    assert torch.equal(rotated, apply_rope(x.float(), table).bfloat16())


def test_rope_scores_depend_on_relative_positions_only() -> None:
    """q . k after RoPE is unchanged when both tokens shift by the same grid offset."""
    q, k = torch.randn(2, 64, dtype=torch.float32).unbind(0)
    table = AxialRoPE2D(64)(6, 6)
    rows = torch.stack([q, k, q, k])[None, None]

    def score(token_q: int, token_k: int) -> float:
        picked = (table[0][[token_q, token_k]], table[1][[token_q, token_k]])
        rq, rk = apply_rope(rows[..., :2, :], picked)[0, 0]
        return float(rq @ rk)

    # (1, 2) -> (2, 4) versus (3, 1) -> (4, 3): the same offset (1, 2) at two places.
    assert math.isclose(score(1 * 6 + 2, 2 * 6 + 4), score(3 * 6 + 1, 4 * 6 + 3), rel_tol=1e-4)


def test_identity_prefix_rows_leave_tokens_unrotated() -> None:
    table = with_identity_prefix(AxialRoPE2D(64)(2, 2), 5)
    assert table[0].shape == (9, 64)
    x = torch.randn(1, 2, 9, 64)
    rotated = apply_rope(x, table)
    assert torch.equal(rotated[:, :, :5], x[:, :, :5])  # cos 1, sin 0: exact
    # The spatial tokens get their own positions' rotation, as without the prefix.
    torch.testing.assert_close(rotated[:, :, 5:], apply_rope(x[:, :, 5:], AxialRoPE2D(64)(2, 2)))


def test_tokens_are_row_major() -> None:
    x = torch.arange(2 * 3 * 4 * 5.0).view(2, 3, 4, 5)
    tokens = to_tokens(x)
    assert tokens.shape == (2, 20, 3)
    assert torch.equal(tokens[1, 2 * 5 + 3], x[1, :, 2, 3])
    assert torch.equal(from_tokens(tokens, 4, 5), x)


def test_rms_norm_keys_and_formula() -> None:
    norm = RMSNorm(8)
    assert list(norm.state_dict()) == ["_impl.weight"]
    assert RMSNorm(8, affine=False).state_dict() == {}
    with torch.no_grad():
        norm._impl.weight.copy_(torch.linspace(0.5, 2.0, 8))
    x = torch.randn(3, 8)
    expected = x / torch.sqrt(x.square().mean(-1, keepdim=True) + 1e-6) * norm._impl.weight
    torch.testing.assert_close(norm(x), expected, rtol=0, atol=1e-6)
    assert norm(x.bfloat16()).dtype == torch.bfloat16


def test_aliased_modules_are_one_module_under_two_names() -> None:
    block = DitBlock(128, 2, 4.0, "gelu")
    assert block.qkv is block.attn_core.qkv and block.proj_out is block.attn_core.proj_out
    state = block.state_dict()
    assert state["qkv.weight"].data_ptr() == state["attn_core.qkv.weight"].data_ptr()
    names = dict(block.named_parameters())
    assert "attn_core.qkv.weight" in names and "qkv.weight" not in names
    readout = CrossAttentionBlock(64, 2, 4.0, "gelu")
    assert readout.kv_proj is readout.attn_core.kv_proj
    assert readout.out_proj is readout.attn_core.out_proj


def test_dit_block_uses_sandwich_norms() -> None:
    """With zeroed output norms (attn_norm2, mlp_norm2) the block is the identity."""
    block = DitBlock(64, 1, 4.0, "gelu")
    with torch.no_grad():
        block.attn_norm2._impl.weight.zero_()
        block.mlp_norm2._impl.weight.zero_()
    x = torch.randn(2, 6, 64)
    assert torch.equal(block(x, AxialRoPE2D(64)(2, 3)), x)


def test_dit_block_restores_feature_maps() -> None:
    """Attention: 4-D input is tokenized (row-major) and restored; 3-D input stays tokens."""
    block = DitBlock(64, 2, 4.0, "gelu")
    x = torch.randn(2, 64, 2, 3, generator=torch.Generator().manual_seed(0))
    rope = AxialRoPE2D(32)(2, 3)
    out = block(x, rope)
    assert out.shape == x.shape
    assert torch.equal(out, from_tokens(block(to_tokens(x), rope), 2, 3))
