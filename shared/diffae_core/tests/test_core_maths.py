"""Norms, time embedding, schedule, samplers and PDG against the spec's formulas and constants."""

from __future__ import annotations

import math

import pytest
import torch

from diffae_core.diffusion import (
    alpha_sigma,
    cosine_interpolated_logsnr,
    get_schedule,
    run_sampler,
    sample_images,
    with_guidance,
)
from diffae_core.fcdm import FCDMBlock
from diffae_core.layers import ChannelWiseRMSNorm, global_response_norm, sinusoidal_frequencies
from diffae_testing import randomize_weights

FLOAT32_ROUNDING = 1e-6
"""Tolerance for results that differ from a reference only by float32 rounding."""


def test_channel_rms_norm_normalises_over_channels_in_float32() -> None:
    x = torch.randn(2, 8, 3, 5)
    y = ChannelWiseRMSNorm(8, affine=False)(x)
    rms = y.square().mean(dim=1).sqrt()
    torch.testing.assert_close(rms, torch.ones_like(rms), rtol=0, atol=1e-5)


def test_channel_rms_norm_multiplies_in_input_dtype() -> None:
    """bf16 input: statistics in float32, the multiply by inv-RMS in bf16."""
    x = torch.randn(2, 8, 3, 5).bfloat16()
    inv = torch.rsqrt(x.square().mean(dim=1, keepdim=True, dtype=torch.float32) + 1e-6)
    expected = x * inv.to(torch.bfloat16)
    y = ChannelWiseRMSNorm(8, affine=False)(x)
    assert y.dtype == torch.bfloat16
    assert torch.equal(y, expected)


def test_channel_rms_norm_affine_keys() -> None:
    assert set(ChannelWiseRMSNorm(4).state_dict()) == {"weight", "bias"}
    assert ChannelWiseRMSNorm(4, affine=False).state_dict() == {}


def test_grn_is_identity_at_init_and_matches_formula() -> None:
    x = torch.randn(2, 6, 4, 4)
    zeros = torch.zeros(1, 6, 1, 1)
    assert torch.equal(global_response_norm(x, zeros, zeros), x)
    gamma, beta = torch.randn(1, 6, 1, 1), torch.randn(1, 6, 1, 1)
    g = x.pow(2).sum(dim=(2, 3), keepdim=True).sqrt()
    n = g / (g.mean(dim=1, keepdim=True) + 1e-6)
    torch.testing.assert_close(
        global_response_norm(x, gamma, beta), gamma * (x * n) + beta + x, rtol=0, atol=1e-5
    )


def test_fcdm_block_with_zero_modulation_and_zero_grn_is_identity() -> None:
    """Zero-initialised AdaLN weights zero (gate 0) -> the block returns its input."""
    block = FCDMBlock(8, use_external_adaln=True)
    x = torch.randn(2, 8, 5, 5)
    assert torch.equal(block(x, adaln_m=torch.zeros(2, 16)), x)
    assert "layer_scale" not in block.state_dict()
    assert FCDMBlock(8).layer_scale.detach().eq(1e-3).all()


def test_time_embedding_frequencies() -> None:
    freqs = sinusoidal_frequencies()
    assert freqs.shape == (128,) and freqs.dtype == torch.float32
    assert freqs[0] == 1.0
    assert math.isclose(freqs[1].item(), 0.930045, rel_tol=1e-6)
    assert math.isclose(freqs[127].item(), 1e-4, rel_tol=1e-5)
    # The float64 formula rounded once: the same bits on every CPU, whatever its vector exp.
    exact = [math.exp(-math.log(10000.0) * i / 127) for i in range(128)]
    assert torch.equal(freqs, torch.tensor(exact, dtype=torch.float64).float())
    # A float32 evaluation (the published code's, stored in the checkpoints) agrees closely.
    in_float32 = torch.exp(-math.log(10000.0) * torch.arange(128.0) / 127)
    torch.testing.assert_close(freqs, in_float32, rtol=1e-6, atol=0)


def test_schedules_and_logsnr_endpoints() -> None:
    assert get_schedule("linear", 1).tolist() == [1.0, 0.0]
    assert get_schedule("cosine", 2).tolist() == [1.0, 0.5, 0.0]
    assert get_schedule("linear", 4).tolist() == [1.0, 0.75, 0.5, 0.25, 0.0]
    logsnr = cosine_interpolated_logsnr(torch.tensor([0.0, 0.5, 1.0]), -10.0, 10.0)
    torch.testing.assert_close(logsnr, torch.tensor([10.0, 0.0, -10.0]), rtol=0, atol=1e-4)
    alpha, sigma = alpha_sigma(torch.tensor([10.0, -10.0]))
    torch.testing.assert_close(alpha, torch.tensor([0.9999773, 0.0067378]), rtol=0, atol=1e-7)
    torch.testing.assert_close(sigma, torch.tensor([0.0067378, 0.9999773]), rtol=0, atol=1e-7)


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, "2"])
def test_schedule_rejects_bad_step_counts(bad: object) -> None:
    with pytest.raises(ValueError, match="num_steps"):
        get_schedule("linear", bad)  # type: ignore[arg-type]


def test_schedule_rejects_unknown_kind() -> None:
    with pytest.raises(ValueError, match="schedule: expected one of"):
        get_schedule("karras", 4)


def constant_predictor(value: torch.Tensor):
    calls = []

    def predict(x_t, t, *, weak):
        calls.append(weak)
        return value.expand_as(x_t)

    return predict, calls


def test_one_step_ddim_coefficients() -> None:
    """One DDIM step from t=1 to the last step: x_out = 0.9999319 * c + 0.0067378 * noise."""
    c = torch.randn(1, 3, 4, 4)
    noise = torch.randn(1, 3, 4, 4) * 0.558
    predict, _ = constant_predictor(c)
    out = run_sampler(
        "ddim",
        with_guidance(predict, None),
        noise,
        get_schedule("linear", 1),
        logsnr_min=-10.0,
        logsnr_max=10.0,
    )
    torch.testing.assert_close(
        out, 0.9999319 * c + 0.0067378 * noise, rtol=0, atol=FLOAT32_ROUNDING
    )


def test_dpmpp_2m_one_step_equals_ddim() -> None:
    c = torch.randn(2, 3, 4, 4)
    noise = torch.randn(2, 3, 4, 4)
    predict, _ = constant_predictor(c)
    outs = [
        run_sampler(
            name,
            with_guidance(predict, None),
            noise,
            get_schedule("linear", 1),
            logsnr_min=-10.0,
            logsnr_max=10.0,
        )
        for name in ("ddim", "dpmpp_2m")
    ]
    torch.testing.assert_close(outs[0], outs[1], rtol=0, atol=FLOAT32_ROUNDING)


def test_pdg_calls_weak_path_first_and_doubles_evaluations() -> None:
    predict, calls = constant_predictor(torch.zeros(1))
    sample_images(
        predict,
        (1, 3, 4, 4),
        device=torch.device("cpu"),
        sampler="ddim",
        times=get_schedule("linear", 3),
        guidance_strength=2.0,
        logsnr_min=-10.0,
        logsnr_max=10.0,
        noise_std=0.558,
        seed=0,
    )
    assert calls == [True, False] * 3


@pytest.mark.parametrize("sampler", ["ddim", "dpmpp_2m"])
def test_sampler_on_a_real_block_is_finite(sampler: str) -> None:
    block = randomize_weights(FCDMBlock(3, use_external_adaln=True))

    def predict(x_t, t, *, weak):
        return block(x_t, adaln_m=torch.zeros(x_t.shape[0], 6)) * (0.5 if weak else 1.0)

    out = sample_images(
        predict,
        (2, 3, 8, 8),
        device=torch.device("cpu"),
        sampler=sampler,
        times=get_schedule("cosine", 4),
        guidance_strength=1.5,
        logsnr_min=-10.0,
        logsnr_max=10.0,
        noise_std=0.558,
        seed=3,
    )
    assert out.shape == (2, 3, 8, 8) and out.dtype == torch.float32 and out.isfinite().all()


def test_seeded_noise_is_the_cpu_generator_stream_scaled() -> None:
    """The reference check values of this path."""
    from diffae_core.diffusion import sample_noise

    expected = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(42)) * 0.558
    assert torch.equal(sample_noise((2, 3, 4, 4), 0.558, seed=42), expected)


def test_sampler_rejects_unknown_name() -> None:
    predict, _ = constant_predictor(torch.zeros(1))
    with pytest.raises(ValueError, match="sampler: expected one of"):
        run_sampler(
            "euler",
            with_guidance(predict, None),
            torch.zeros(1, 3, 2, 2),
            get_schedule("linear", 1),
            logsnr_min=-10.0,
            logsnr_max=10.0,
        )
