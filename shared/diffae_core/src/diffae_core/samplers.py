"""DDIM and DPM++(2M) for x0-predicting VP decoders, with path-drop guidance (spec §9).

Every sampler has one signature, as in k-diffusion: `sampler(denoise, x, times, logsnrs)`,
where `denoise(x_t, t) -> x0_hat` (float32) and `times`/`logsnrs` hold the n + 1 schedule
points from noise to data. Sampler state stays float32 whatever the decoder's dtype.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from .noise import host_to_device, sample_noise
from .vp import alpha_sigma, broadcast_like, cosine_interpolated_logsnr

Denoiser = Callable[[Tensor, Tensor], Tensor]
"""denoise(x_t [N, ...] float32, t [N] float32) -> x0_hat float32."""

GuidedPredictor = Callable[..., Tensor]
"""predict(x_t, t, *, weak: bool) -> x0_hat: `weak=True` selects the degraded PDG path."""

SAMPLER_NAMES = ("ddim", "dpmpp_2m")


def with_guidance(predict: GuidedPredictor, strength: float | None) -> Denoiser:
    """Wrap a predictor with PDG: x0 = u + s (c - u), u the weak and c the full prediction.

    `strength=None` disables guidance (one evaluation per step). With s = 1 the result equals
    the unguided one up to float32 rounding, not bitwise.
    """
    if strength is None:
        return lambda x_t, t: predict(x_t, t, weak=False).float()

    def guided(x_t: Tensor, t: Tensor) -> Tensor:
        weak = predict(x_t, t, weak=True).float()
        full = predict(x_t, t, weak=False).float()
        return weak + strength * (full - weak)

    return guided


def sample_ddim(denoise: Denoiser, x: Tensor, times: Tensor, logsnrs: Tensor) -> Tensor:
    """Deterministic DDIM (eta = 0) in the VP parameterisation; returns the final state.

    x' = alpha' x0_hat + sigma' eps_hat with eps_hat = (x - alpha x0_hat) / sigma, evaluated as
    (sigma' / sigma) x + (alpha' - alpha sigma' / sigma) x0_hat: equal up to rounding, with one
    new full-size tensor per step instead of five temporaries (which set the peak memory of a
    tiled decode). Neither x nor x0_hat is modified.
    """
    alphas, sigmas = alpha_sigma(logsnrs)
    for i in range(times.shape[0] - 1):
        x0_hat = denoise(x, times[i].expand(x.shape[0]))
        keep = sigmas[i + 1] / sigmas[i]
        x = (x0_hat * (alphas[i + 1] - alphas[i] * keep)).addcmul_(x, keep)
    return x


def sample_dpmpp_2m(denoise: Denoiser, x: Tensor, times: Tensor, logsnrs: Tensor) -> Tensor:
    """DPM-Solver++(2M) (Lu et al. 2022, Algorithm 2) in half-log-SNR; returns the final state."""
    alphas, sigmas = alpha_sigma(logsnrs)
    half_logsnrs = 0.5 * logsnrs.float()
    x0_previous = None
    for i in range(times.shape[0] - 1):
        x0_hat = denoise(x, times[i].expand(x.shape[0]))
        step = half_logsnrs[i + 1] - half_logsnrs[i]
        phi = torch.expm1(-step)
        x = (sigmas[i + 1] / sigmas[i]) * x - alphas[i + 1] * phi * x0_hat
        if x0_previous is not None:
            ratio = (half_logsnrs[i] - half_logsnrs[i - 1]) / step
            correction = (x0_hat - x0_previous) / ratio
            x = x - 0.5 * alphas[i + 1] * phi * correction
        x0_previous = x0_hat
    return x


SAMPLERS: dict[str, Callable[[Denoiser, Tensor, Tensor, Tensor], Tensor]] = {
    "ddim": sample_ddim,
    "dpmpp_2m": sample_dpmpp_2m,
}


def run_sampler(
    name: str,
    denoise: Denoiser,
    noise: Tensor,
    times: Tensor,
    *,
    logsnr_min: float,
    logsnr_max: float,
) -> Tensor:
    """Start from sigma(t0) * noise (x0 taken as 0) and integrate the schedule to t = 0."""
    if name not in SAMPLERS:
        raise ValueError(f"sampler: expected one of {SAMPLER_NAMES}, got {name!r}")
    # The schedule is computed where `times` are (the CPU for every inference config: the same
    # values on every device), then queued to the device without a host sync.
    times = times.to(torch.float32)
    logsnrs = cosine_interpolated_logsnr(times, logsnr_min, logsnr_max)
    times, logsnrs = host_to_device(times, noise.device), host_to_device(logsnrs, noise.device)
    _, sigma_start = alpha_sigma(logsnrs[:1])
    x = broadcast_like(sigma_start.expand(noise.shape[0]), noise) * noise.float()
    return SAMPLERS[name](denoise, x, times, logsnrs)


def sample_images(
    predict: GuidedPredictor,
    shape: tuple[int, int, int, int],
    *,
    device: torch.device,
    sampler: str,
    times: Tensor,
    guidance_strength: float | None,
    logsnr_min: float,
    logsnr_max: float,
    noise_std: float,
    seed: int | None = None,
    noise: Tensor | None = None,
) -> Tensor:
    """Run a VP decoder from noise to images [N, 3, H, W], float32, unclamped.

    Seeded noise is drawn on the CPU (device-independent) and copied to `device`; unseeded noise
    is drawn on `device`. A given `noise` (N(0, noise_std^2), [N, 3, H, W]) replaces the draw and
    keeps the call free of RNG objects, so `torch.compile(fullgraph=True)` can trace it.
    """
    if noise is None:
        noise = sample_noise(shape, noise_std, seed=seed, device=device)
    elif tuple(noise.shape) != tuple(shape):
        raise ValueError(f"noise: expected shape {tuple(shape)}, got {tuple(noise.shape)}")
    denoise = with_guidance(predict, guidance_strength)
    return run_sampler(sampler, denoise, noise, times, logsnr_min=logsnr_min, logsnr_max=logsnr_max)
