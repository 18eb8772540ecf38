"""VP diffusion: the logSNR schedules, the encoder posterior, noise, the DDIM and DPM++ 2M
samplers with path-drop guidance, and latent whitening (the inference settings that choose a
sampler are in `config.py`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor

from .config import SAMPLER_NAMES, SCHEDULE_KINDS

# ---- vp --------------------------------------------------------------------------------
# Variance-preserving diffusion maths, all float32.


def alpha_sigma(logsnr: Tensor) -> tuple[Tensor, Tensor]:
    """VP coefficients alpha = sqrt(sigmoid(l)), sigma = sqrt(sigmoid(-l)), float32.

    Uses exp(logsigmoid / 2), the form the published code adopted for extreme log-SNR values.
    """
    logsnr = logsnr.float()
    return torch.exp(0.5 * F.logsigmoid(logsnr)), torch.exp(0.5 * F.logsigmoid(-logsnr))


def cosine_interpolated_logsnr(t: Tensor, logsnr_min: float, logsnr_max: float) -> Tensor:
    """SiD2 schedule lambda(t) = -2 ln tan(a t + b): lambda(0) = max, lambda(1) = min; float32."""
    b = math.atan(math.exp(-0.5 * logsnr_max))
    a = math.atan(math.exp(-0.5 * logsnr_min)) - b
    a_t = torch.tensor(a, dtype=torch.float32, device=t.device)
    b_t = torch.tensor(b, dtype=torch.float32, device=t.device)
    return -2.0 * torch.log(torch.tan(a_t * t.float() + b_t))


def get_schedule(kind: str, num_steps: int) -> Tensor:
    """Descending times [num_steps + 1] from t = 1 (noise) to t = 0, float32 on the CPU.

    `num_steps` is the number of decoder evaluations without PDG. Computed in the published
    order of operations (linspace; cosine divides before multiplying by pi) so the float32
    values match the reference bit for bit.
    """
    if isinstance(num_steps, bool) or not isinstance(num_steps, int) or num_steps < 1:
        raise ValueError(f"num_steps: expected an integer >= 1, got {num_steps!r}")
    points = num_steps + 1
    if kind == "linear":
        ascending = torch.linspace(0.0, 1.0, points, dtype=torch.float32)
    elif kind == "cosine":
        fraction = torch.arange(points, dtype=torch.float32) / (points - 1)
        ascending = 0.5 * (1.0 - torch.cos(math.pi * fraction))
    else:
        raise ValueError(f"schedule: expected one of {SCHEDULE_KINDS}, got {kind!r}")
    return ascending.flip(0)


def diffuse(x0: Tensor, noise: Tensor, logsnr: Tensor) -> Tensor:
    """The forward process x_t = alpha * x0 + sigma * noise, float32.

    x0 and noise [N, ...]; logsnr [N] per sample. `noise` carries its std (`pixel_noise_std`).
    """
    alpha, sigma = alpha_sigma(logsnr)
    return broadcast_like(alpha, x0) * x0.float() + broadcast_like(sigma, x0) * noise.float()


def broadcast_like(coefficient: Tensor, x: Tensor) -> Tensor:
    """Per-sample coefficients [N] -> [N, 1, 1, ...] matching x's rank."""
    return coefficient.view(-1, *([1] * (x.ndim - 1)))


# ---- posterior -------------------------------------------------------------------------
# The VP-parameterised diagonal Gaussian posterior of the encoders.


@dataclass(frozen=True)
class EncoderPosterior:
    """Raw (unwhitened) encoder output: `mean` and `logsnr`, each [N, C, h, w].

    The posterior is N(alpha * mean, sigma^2) with alpha = sqrt(sigmoid(logsnr)) and
    sigma = sqrt(sigmoid(-logsnr)); its moments are computed in float32.
    """

    mean: Tensor
    logsnr: Tensor

    float32_moments: ClassVar[bool] = False
    """Whether `mode`/`sample` return float32 (dinac_ae) or the mean's dtype (fcdm_diffae)."""

    def _out(self, value: Tensor) -> Tensor:
        return value if self.float32_moments else value.to(self.mean.dtype)

    @property
    def alpha(self) -> Tensor:
        """sqrt(sigmoid(logsnr)), float32 [N, C, h, w]."""
        return alpha_sigma(self.logsnr)[0]

    @property
    def sigma(self) -> Tensor:
        """sqrt(sigmoid(-logsnr)), float32 [N, C, h, w]."""
        return alpha_sigma(self.logsnr)[1]

    def mode(self) -> Tensor:
        """alpha * mean, computed in float32 (output dtype: see `float32_moments`)."""
        return self._out(self.alpha * self.mean.float())

    def sample(
        self, *, generator: torch.Generator | None = None, noise: Tensor | None = None
    ) -> Tensor:
        """alpha * mean + sigma * eps, eps ~ N(0, 1) drawn in float32 on the mean's device.

        `noise` (standard normal, the mean's shape) replaces the draw, e.g. so that training
        draws it per sample, independently of how a batch is split across processes.
        """
        if noise is None:
            eps = torch.randn(
                self.mean.shape, generator=generator, dtype=torch.float32, device=self.mean.device
            )
        elif tuple(noise.shape) != tuple(self.mean.shape):
            raise ValueError(
                f"noise: expected shape {tuple(self.mean.shape)}, got {tuple(noise.shape)}"
            )
        else:
            eps = noise.to(device=self.mean.device, dtype=torch.float32)
        alpha, sigma = alpha_sigma(self.logsnr)
        return self._out(alpha * self.mean.float() + sigma * eps)


DETERMINISTIC_LOGSNR = 1e4
"""The logsnr a deterministic encoder's posterior reports: alpha = 1 and sigma = 0 exactly."""


def split_posterior(
    projection: Tensor, posterior_class: type[EncoderPosterior] = EncoderPosterior
) -> EncoderPosterior:
    """Encoder output [N, 2B, h, w] -> posterior with mean = channels [0, B), logsnr = [B, 2B)."""
    mean, logsnr = projection.chunk(2, dim=1)
    return posterior_class(mean=mean, logsnr=logsnr)


def deterministic_posterior(
    latents: Tensor, posterior_class: type[EncoderPosterior] = EncoderPosterior
) -> EncoderPosterior:
    """A deterministic encoder's latents [N, B, h, w] as a posterior whose mode is the latents."""
    return posterior_class(
        mean=latents, logsnr=latents.new_full(latents.shape, DETERMINISTIC_LOGSNR)
    )


# ---- noise -----------------------------------------------------------------------------
# Seeded Gaussian noise that does not depend on the device the model runs on, and
# host-drawn tensors moved to the device without a host sync.
#
# On CUDA a copy from ordinary (pageable) host memory makes the host wait for the stream; a copy
# from pinned memory with `non_blocking=True` is queued like a kernel. So whatever the decode
# loop draws on the CPU (seeded noise, the schedule, m_diffae's PDG token masks) is pinned first,
# on CUDA only: pinning costs a page-locked allocation and buys nothing on a CPU.


def sample_noise(
    shape: tuple[int, ...],
    noise_std: float,
    seed: int | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """N(0, noise_std^2) noise of `shape` on `device`, drawn in float32.

    With an integer `seed` the draw comes from a fresh CPU generator, so the same seed gives the
    same image on every device; on CUDA it is drawn into pinned memory and copied without
    blocking. With `seed=None` it is drawn on `device` itself from its global RNG (no copy, and
    no promise that two devices agree).
    """
    device = torch.device("cpu" if device is None else device)
    if seed is None:
        noise = torch.randn(shape, dtype=torch.float32, device=device).mul_(noise_std)
        return noise.to(dtype)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"seed: expected an int or None, got {type(seed).__name__}")
    generator = torch.Generator(device="cpu").manual_seed(seed)
    pinned = device.type == "cuda" and torch.cuda.is_available()
    noise = torch.randn(shape, dtype=torch.float32, generator=generator, pin_memory=pinned)
    return noise.mul_(noise_std).to(device=device, dtype=dtype, non_blocking=pinned)


def host_to_device(tensor: Tensor, device: torch.device | str) -> Tensor:
    """A CPU `tensor` on `device`, queued without a host sync on CUDA (pinned, non-blocking).

    Elsewhere (CPU, meta, a tensor already off the CPU, or inside a torch.compile graph, where
    the copy is part of the graph) it is a plain `.to(device)`.
    """
    device = torch.device(device)
    if device.type != "cuda" or tensor.device.type != "cpu" or torch.compiler.is_compiling():
        return tensor.to(device)
    return tensor.pin_memory().to(device, non_blocking=True)


# ---- samplers --------------------------------------------------------------------------
# DDIM and DPM++(2M) for x0-predicting VP decoders, with path-drop guidance.
#
# Every sampler has one signature, as in k-diffusion: `sampler(denoise, x, times, logsnrs)`,
# where `denoise(x_t, t) -> x0_hat` (float32) and `times`/`logsnrs` hold the n + 1 schedule
# points from noise to data. Sampler state stays float32 whatever the decoder's dtype.

Denoiser = Callable[[Tensor, Tensor], Tensor]
"""denoise(x_t [N, ...] float32, t [N] float32) -> x0_hat float32."""

GuidedPredictor = Callable[..., Tensor]
"""predict(x_t, t, *, weak: bool) -> x0_hat: `weak=True` selects the degraded PDG path."""


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


# ---- whitening -------------------------------------------------------------------------
# Per-channel latent whitening with stored running statistics, float32.


def _channel_stats(latents: Tensor, mean: Tensor, var: Tensor, eps: float) -> tuple[Tensor, Tensor]:
    view = (1, -1) + (1,) * (latents.ndim - 2)
    mean = mean.to(device=latents.device, dtype=torch.float32).view(view)
    std = torch.sqrt(var.to(device=latents.device, dtype=torch.float32) + eps).view(view)
    return mean, std


def whiten(latents: Tensor, running_mean: Tensor, running_var: Tensor, eps: float) -> Tensor:
    """(z - mean) / sqrt(var + eps) per channel of [N, C, ...]; float32 result."""
    mean, std = _channel_stats(latents, running_mean, running_var, eps)
    return (latents.float() - mean) / std


def dewhiten(latents: Tensor, running_mean: Tensor, running_var: Tensor, eps: float) -> Tensor:
    """z * sqrt(var + eps) + mean per channel of [N, C, ...]; float32 result."""
    mean, std = _channel_stats(latents, running_mean, running_var, eps)
    return latents.float() * std + mean
