"""Multi-step DDIM against closed forms and a float64 re-derivation (diffae_core.diffusion).

One-step decodes cannot tell a sampler that keeps sigma[i+1] / sigma[0] of the state, or that
predicts x0 at t[0] on every step, from the right one: these tests run 2 to 10 steps.
"""

from __future__ import annotations

import pytest
import torch
from torch import Tensor

from diffae_core.diffusion import cosine_interpolated_logsnr, get_schedule, sample_ddim

pytestmark = pytest.mark.values  # rerun by CI with the baseline CPU kernels

LOGSNR_RANGE = (-10.0, 10.0)
FLOAT32 = {"rtol": 1e-5, "atol": 1e-5}
"""float32 sampler vs the same recursion in float64 over <= 10 steps, values of order 1."""


def schedule(kind: str, num_steps: int) -> tuple[Tensor, Tensor]:
    times = get_schedule(kind, num_steps)
    return times, cosine_interpolated_logsnr(times, *LOGSNR_RANGE)


def vp_coefficients(logsnrs: Tensor) -> tuple[Tensor, Tensor]:
    """alpha = sqrt(sigmoid(logsnr)), sigma = sqrt(sigmoid(-logsnr)), float64."""
    logsnrs = logsnrs.double()
    return torch.sigmoid(logsnrs).sqrt(), torch.sigmoid(-logsnrs).sqrt()


@pytest.mark.parametrize("kind", ["linear", "cosine"])
@pytest.mark.parametrize("num_steps", [2, 3, 10])
def test_constant_predictor_follows_the_closed_form(kind: str, num_steps: int) -> None:
    """x0_hat = c at every step: x_n = alpha_n c + (sigma_n / sigma_0)(x_0 - alpha_0 c)."""
    generator = torch.Generator().manual_seed(0)
    c = torch.randn(2, 3, 4, 4, generator=generator)
    x_start = torch.randn(2, 3, 4, 4, generator=generator)
    times, logsnrs = schedule(kind, num_steps)
    result = sample_ddim(lambda x_t, t: c.expand_as(x_t), x_start, times, logsnrs)
    alphas, sigmas = vp_coefficients(logsnrs)
    c64 = c.double()
    expected = alphas[-1] * c64 + sigmas[-1] / sigmas[0] * (x_start.double() - alphas[0] * c64)
    torch.testing.assert_close(result.double(), expected, **FLOAT32)


def test_each_step_predicts_at_its_own_time_from_the_current_state() -> None:
    """A predictor depending on t and x_t: the float32 sampler = DDIM's eps form in float64."""
    generator = torch.Generator().manual_seed(1)
    x_start = torch.randn(2, 3, 4, 4, generator=generator)
    target = torch.randn(2, 3, 4, 4, generator=generator)
    times, logsnrs = schedule("cosine", 3)
    seen: list[Tensor] = []

    def predict(x_t: Tensor, t: Tensor) -> Tensor:
        seen.append(t.clone())
        return torch.tanh(x_t) * (1 - t.view(-1, 1, 1, 1)) + target * t.view(-1, 1, 1, 1) ** 2

    result = sample_ddim(predict, x_start, times, logsnrs)
    assert [float(t[0]) for t in seen] == times[:-1].tolist()
    alphas, sigmas = vp_coefficients(logsnrs)
    x = x_start.double()
    for i in range(len(times) - 1):
        t = times[i].double()
        x0_hat = torch.tanh(x) * (1 - t) + target.double() * t**2
        eps_hat = (x - alphas[i] * x0_hat) / sigmas[i]
        x = alphas[i + 1] * x0_hat + sigmas[i + 1] * eps_hat
    torch.testing.assert_close(result.double(), x, **FLOAT32)
