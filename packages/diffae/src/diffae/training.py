"""Train or fine-tune an FCDM-family autoencoder (fcdm_diffae, full_capacitor) on image files.

Objective (the VP x0-prediction the decoder's sampler assumes): x0 a random crop in [-1, 1],
t ~ U(0, 1), logsnr = the cosine-interpolated schedule at t, x_t = alpha x0 + sigma eps with
eps ~ N(0, pixel_noise_std^2), alpha^2 = sigmoid(logsnr), sigma^2 = sigmoid(-logsnr); the decoder
predicts x0 from x_t, t and the encoder's latents; loss = MSE(x0_hat, x0). The latents are a
sample alpha mean + sigma eps of the encoder's posterior (its 2C output channels: mean, then a
per-element logsnr) while training, and its mode alpha mean when evaluating. Latent
regulariser: `latent_kl_weight` x the mean per-element KL of the posterior N(alpha mean,
sigma^2) to N(0, 1); with the RMS-normalised mean it mostly pulls logsnr down, i.e. keeps a
little posterior noise so the decoder learns latents robust to small perturbations.

Every random draw of a training sample (image, crop, flip, t, pixel noise, posterior noise) is a
function of (seed, global sample index) only, so a run split over processes (torchrun, DDP)
sees the same samples as one process with the same global batch, and `resume` continues exactly.
The learning rate follows a `LambdaLR` (linear warmup, cosine decay); the EMA weights are a
`torch.optim.swa_utils.AveragedModel` with a warming-up decay. Rank 0 writes the checkpoints:
`model/` (the EMA weights, `from_pretrained` layout) and `training_state.safetensors` (weights,
EMA, optimizer, step, RNG states; no pickle), both atomically, and `log.jsonl`.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor, nn
from torch.optim.lr_scheduler import LambdaLR
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from torch.utils.data import DataLoader, Dataset, Sampler, get_worker_info

from diffae_core.diffusion import cosine_interpolated_logsnr, diffuse
from diffae_core.io import atomic_write
from diffae_core.loading import load_tensors

from .console import ArgumentError, Console
from .distributed import Processes, process_group
from .faults import (
    FolderLock,
    Interrupted,
    StopRequest,
    disk_full,
    disk_full_error,
    ignore_interrupts,
    stop_requests,
)
from .images import (
    IMAGE_SUFFIXES,
    BadImage,
    find_image_tree,
    probe_image,
    read_image,
    read_image_uint8,
)
from .metrics import psnr_8bit

TRAIN_PARTS = ("all", "decoder")
"""What is trained: the whole autoencoder, or the decoder with the encoder frozen."""
STATE_NAME = "training_state.safetensors"
MODEL_FOLDER = "model"
LOG_NAME = "log.jsonl"


@dataclass(frozen=True)
class TrainingSettings:
    """The hyper-parameters of one run (written into the training state and the log)."""

    steps: int = 1000
    batch_size: int = 16
    """Global batch: split evenly over the processes of a torchrun."""
    crop_size: int = 128
    learning_rate: float = 1e-3
    warmup_steps: int = 100
    min_learning_rate_fraction: float = 0.1
    """Cosine decay from `learning_rate` after warmup down to this fraction at `steps`."""
    weight_decay: float = 0.01
    ema_decay: float = 0.999
    grad_clip: float = 1.0
    latent_kl_weight: float = 1e-5
    one_step_fraction: float = 0.0
    """Fraction of samples trained at t = 1 instead of t ~ U(0, 1): the time of the default
    one-step decode, where the prediction rests on the latents alone (0: t ~ U(0, 1) for all)."""
    path_drop_probability: float = 0.0
    """Fraction of steps that train the PDG weak path (middle blocks replaced by the mask)."""
    stats_momentum: float = 0.01
    """Momentum of the whitening running statistics (mean, var of the posterior mode)."""
    color_augmentation: float = 0.0
    """Fraction of samples whose colours are changed (`random_color_matrix`): channels
    permuted, hue rotated by any angle, saturation and brightness scaled."""
    rotation_augmentation: float = 0.0
    """Fraction of samples rotated by a random multiple of 90 degrees."""
    max_zoom_out: float = 1.0
    """Each crop is cut from a square of side crop_size x z, z log-uniform in [1, max_zoom_out]
    (at most the image's short side), and downscaled (antialiased) to crop_size: the scene at
    coarser scales than the files hold (1: crops at the files' own scale)."""
    max_zoom_in: float = 1.0
    """With it, z is log-uniform in [1 / max_zoom_in, max_zoom_out]: a square smaller than the
    crop is upsampled (bicubic) to crop_size, the smooth, defocused content of close-ups, which
    the files hold little of (1: no upsampling)."""
    train: str = "all"
    seed: int = 0
    workers: int = 2
    log_every: int = 10
    save_every: int = 500

    def __post_init__(self) -> None:
        if self.train not in TRAIN_PARTS:
            raise ValueError(f"train: expected one of {TRAIN_PARTS}, got {self.train!r}")
        for name in ("steps", "batch_size", "crop_size", "log_every", "save_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}: expected >= 1, got {getattr(self, name)}")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f"ema_decay: expected in [0, 1), got {self.ema_decay}")
        for name in ("color_augmentation", "rotation_augmentation", "one_step_fraction"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name}: expected in [0, 1], got {getattr(self, name)}")
        for name in ("max_zoom_out", "max_zoom_in"):
            if getattr(self, name) < 1.0:
                raise ValueError(f"{name}: expected >= 1, got {getattr(self, name)}")


# -- data ------------------------------------------------------------------------------------


def find_training_images(folder: Path) -> list[Path]:
    """Every PNG/JPEG/WebP file under `folder` (recursive), sorted by relative path; an
    ArgumentError naming `data` when there is none."""
    if not folder.is_dir():
        raise ArgumentError("data", f" {folder}: not a folder")
    files = find_image_tree(folder)
    if not files:
        raise ArgumentError(
            "data", f" {folder}: no {'/'.join(IMAGE_SUFFIXES)} files (searched recursively)"
        )
    return files


def sample_generator(seed: int, index: int) -> torch.Generator:
    """The generator of one sample: a function of (seed, index) only."""
    return torch.Generator().manual_seed((seed * 0x9E3779B97F4A7C15 + index) % (2**63))


AUGMENTATION_STREAM = 0x5EED_A6
"""Added to the seed for the augmentation draws, so that a run without augmentation draws
exactly the samples it drew before augmentation existed."""
SATURATION_RANGE = (0.4, 2.0)
BRIGHTNESS_RANGE = (0.6, 1.4)
"""Log-uniform factors of `random_color_matrix`: from muted to strongly saturated, dim to bright."""


def color_matrix(permutation: Tensor, hue_angle: float, saturation: float, brightness: float):
    """[3, 3] float64 matrix M acting on RGB in [0, 1] (rgb_new = M @ rgb): pick the channels in
    `permutation` order, rotate the hue by `hue_angle` radians (a rotation about the grey axis
    (1, 1, 1), which keeps grey grey; 2 pi / 3 is a cyclic channel shift), scale the distance
    from grey by `saturation` and everything by `brightness`."""
    grey = torch.full((3, 3), 1.0 / 3.0, dtype=torch.float64)  # projection onto the grey axis
    axis = torch.ones(3, dtype=torch.float64) / math.sqrt(3.0)
    cross = torch.tensor(
        [[0.0, -axis[2], axis[1]], [axis[2], 0.0, -axis[0]], [-axis[1], axis[0], 0.0]],
        dtype=torch.float64,
    )
    rotation = (
        math.cos(hue_angle) * torch.eye(3, dtype=torch.float64)
        + math.sin(hue_angle) * cross
        + (1.0 - math.cos(hue_angle)) * grey
    )  # Rodrigues' formula about `axis`
    identity = torch.eye(3, dtype=torch.float64)
    return brightness * (grey + saturation * rotation @ (identity - grey)) @ identity[permutation]


def random_color_matrix(generator: torch.Generator) -> Tensor:
    """`color_matrix` with a uniform permutation and hue angle, and log-uniform saturation and
    brightness in SATURATION_RANGE and BRIGHTNESS_RANGE."""

    def log_uniform(low: float, high: float) -> float:
        return low * (high / low) ** float(torch.rand((), generator=generator))

    permutation = torch.randperm(3, generator=generator)
    angle = 2.0 * math.pi * float(torch.rand((), generator=generator))
    return color_matrix(
        permutation, angle, log_uniform(*SATURATION_RANGE), log_uniform(*BRIGHTNESS_RANGE)
    )


def apply_color_matrix(image: Tensor, matrix: Tensor) -> Tensor:
    """[3, H, W] in [-1, 1] -> the same with RGB (in [0, 1]) mapped by `matrix`, clamped."""
    unit = (image + 1.0) * 0.5
    mapped = torch.einsum("ij,jhw->ihw", matrix.to(image.dtype), unit)
    return mapped.clamp(0.0, 1.0) * 2.0 - 1.0


IMAGE_CACHE_BYTES = 512 * 2**20
"""Decoded training images (uint8) one training process keeps in memory, all its DataLoader
workers together: 512 MiB, about 170 images of 1024 x 1024; the others are decoded per sample."""


class CropDataset(Dataset):
    """Sample index -> dict of one training sample, all draws from `sample_generator(seed, i)`.

    image [3, S, S] float32 in [-1, 1] (a random crop of a random file, flipped left-right half
    the time; zoomed out, rotated and recoloured as `augmentation` says), t [] in [0, 1],
    pixel_noise [3, S, S] of std `noise_std`, latent_noise [C, h, w] standard normal. Files are
    visited in a fresh permutation per pass.

    Memory is bounded, whatever the number of files: decoded files (uint8) are kept up to
    `cache_bytes` per process, split evenly between its DataLoader workers; the first ones
    decoded stay and the others are decoded again for every sample. (Under a fresh permutation
    per pass every file is as likely to come next, so which ones stay does not change the share
    of samples served from memory, and nothing needs evicting.) The samples do not depend on it.
    """

    def __init__(
        self,
        files: list[Path],
        crop_size: int,
        latent_shape: tuple[int, int, int],
        noise_std: float,
        seed: int,
        one_step_fraction: float = 0.0,
        augmentation: Augmentation | None = None,
        cache_bytes: int = IMAGE_CACHE_BYTES,
    ) -> None:
        self.files, self.crop_size, self.seed = files, crop_size, seed
        self.one_step_fraction = one_step_fraction
        self.augmentation = augmentation or Augmentation()
        self.latent_shape, self.noise_std = latent_shape, noise_std
        self.cache_bytes = cache_bytes
        self.cache: dict[int, Tensor] = {}
        self.cached_bytes = 0
        self.order, self.order_pass = torch.empty(0, dtype=torch.long), -1

    def __len__(self) -> int:
        return 2**62  # indexed by global sample number, never exhausted

    def pixels(self, file_index: int) -> Tensor:
        """The file as uint8 [3, H, W]: from the cache, or decoded (and kept if it fits)."""
        pixels = self.cache.get(file_index)
        if pixels is None:
            pixels = read_image_uint8(self.files[file_index])
            if self.cached_bytes + pixels.nbytes <= self.cache_budget():
                self.cache[file_index] = pixels
                self.cached_bytes += pixels.nbytes
        return pixels

    def cache_budget(self) -> int:
        """This process's share of `cache_bytes` (each DataLoader worker holds its own cache)."""
        worker = get_worker_info()
        return self.cache_bytes // (worker.num_workers if worker is not None else 1)

    def file_at(self, index: int) -> int:
        """The file of global sample `index`: pass index // count visits the files in a seeded
        order, drawn once per pass (not once per sample)."""
        count = len(self.files)
        data_pass = index // count
        if self.order_pass != data_pass:
            generator = sample_generator(self.seed, -1 - data_pass)
            self.order, self.order_pass = torch.randperm(count, generator=generator), data_pass
        return int(self.order[index % count])

    def __getitem__(self, index: int) -> dict[str, Tensor]:
        pixels = self.pixels(self.file_at(index))
        generator = sample_generator(self.seed, index)
        augmentation = self.augmentation
        extra = sample_generator(self.seed + AUGMENTATION_STREAM, index)  # augmentation draws
        size = self.crop_size
        height, width = pixels.shape[-2:]
        # log-uniform in [1 / max_zoom_in, max_zoom_out]; without zoom-in the draw is the
        # one runs made before zoom-in existed
        zoom_range = augmentation.max_zoom_out * augmentation.max_zoom_in
        zoom = zoom_range ** float(torch.rand((), generator=extra)) / augmentation.max_zoom_in
        side = max(1, min(height, width, round(size * zoom)))
        top = int(torch.randint(0, height - side + 1, (), generator=generator))
        left = int(torch.randint(0, width - side + 1, (), generator=generator))
        crop = pixels[:, top : top + side, left : left + side].float() / 127.5 - 1.0
        if side != size:
            crop = F.interpolate(
                crop[None], size=(size, size), mode="bicubic", antialias=True, align_corners=False
            )[0].clamp(-1.0, 1.0)
        if bool(torch.rand((), generator=generator) < 0.5):
            crop = crop.flip(-1)
        if bool(torch.rand((), generator=extra) < augmentation.rotation):
            crop = crop.rot90(1 + int(torch.randint(0, 3, (), generator=extra)), (-2, -1))
        if bool(torch.rand((), generator=extra) < augmentation.color):
            crop = apply_color_matrix(crop, random_color_matrix(extra))
        t = torch.rand((), generator=generator)
        if bool(torch.rand((), generator=generator) < self.one_step_fraction):
            t = torch.ones(())
        return {
            "images": crop,
            "t": t,
            "pixel_noise": torch.randn(crop.shape, generator=generator) * self.noise_std,
            "latent_noise": torch.randn(self.latent_shape, generator=generator),
        }


@dataclass(frozen=True)
class Augmentation:
    """What `CropDataset` varies beyond crop position and flip (TrainingSettings fields)."""

    color: float = 0.0
    rotation: float = 0.0
    max_zoom_out: float = 1.0
    max_zoom_in: float = 1.0

    @classmethod
    def of(cls, settings: TrainingSettings) -> Augmentation:
        return cls(
            settings.color_augmentation,
            settings.rotation_augmentation,
            settings.max_zoom_out,
            settings.max_zoom_in,
        )


class StepSampler(Sampler[int]):
    """Global sample indices of one process: step s, rank r -> s*B + r*b ... s*B + r*b + b - 1."""

    def __init__(self, start_step: int, steps: int, batch_size: int, rank: int, world: int):
        self.start_step, self.steps = start_step, steps
        self.batch_size, self.local = batch_size, batch_size // world
        self.offset = rank * self.local

    def __iter__(self) -> Iterator[int]:
        for step in range(self.start_step, self.steps):
            first = step * self.batch_size + self.offset
            yield from range(first, first + self.local)

    def __len__(self) -> int:
        return (self.steps - self.start_step) * self.local


# -- model -----------------------------------------------------------------------------------


def latent_kl(posterior: Any) -> Tensor:
    """Mean per-element KL(N(alpha mean, sigma^2) || N(0, 1)), float32 scalar.

    KL = (alpha^2 mean^2 + sigma^2 - 1 - log sigma^2) / 2 with log sigma^2 = logsigmoid(-logsnr).
    """
    alpha, sigma = posterior.alpha, posterior.sigma
    mean = posterior.mean.float()
    log_variance = F.logsigmoid(-posterior.logsnr.float())
    return 0.5 * (alpha.square() * mean.square() + sigma.square() - 1.0 - log_variance).mean()


def learning_rate_factor(step: int, settings: TrainingSettings) -> float:
    """The learning rate of step `step` as a fraction of `settings.learning_rate` (the
    `LambdaLR` factor): linear warmup, then cosine decay to `min_learning_rate_fraction` at
    `settings.steps`."""
    if step < settings.warmup_steps:
        return (step + 1) / settings.warmup_steps
    span = max(1, settings.steps - settings.warmup_steps)
    progress = min(1.0, (step - settings.warmup_steps) / span)
    floor = settings.min_learning_rate_fraction
    return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))


def learning_rate_at(step: int, settings: TrainingSettings) -> float:
    """The learning rate of step `step`, as `LambdaLR` computes it."""
    return settings.learning_rate * learning_rate_factor(step, settings)


def learning_rate_schedule(
    optimizer: torch.optim.Optimizer, settings: TrainingSettings, start_step: int = 0
) -> LambdaLR:
    """`learning_rate_at` as a `LambdaLR` whose next step is `start_step` (a resume)."""
    for group in optimizer.param_groups:
        group["initial_lr"] = settings.learning_rate  # the peak, also for a resumed optimizer
    return LambdaLR(
        optimizer, partial(learning_rate_factor, settings=settings), last_epoch=start_step - 1
    )


def ema_decay_at(updates: int, decay: float) -> float:
    """The EMA decay of the update after `updates` averages: min(decay, (1 + n) / (10 + n)),
    so the first updates follow the fast-moving weights of the start of training."""
    return min(decay, (1.0 + updates) / (10.0 + updates))


def ema_model(model: nn.Module, decay: float) -> AveragedModel:
    """An EMA copy of `model`: each `update_parameters(model)` moves its parameters a step
    (1 - ema_decay_at(n, decay)) towards the model's (`get_ema_multi_avg_fn`) and copies the
    buffers (the whitening statistics, which are running averages already)."""

    def average(ema_parameters: list[Tensor], parameters: list[Tensor], updates: Tensor):
        update = get_ema_multi_avg_fn(ema_decay_at(int(updates), decay))
        update(ema_parameters, parameters, updates)

    ema = AveragedModel(model, multi_avg_fn=average, use_buffers=False)
    ema.update_parameters(model)  # the copy is the first average: the next update is n = 1
    return ema.requires_grad_(False).eval()


@torch.no_grad()
def update_running_stats(model: Any, latents: Tensor, momentum: float, processes: Processes):
    """Move the whitening statistics towards this batch's per-channel mean and variance."""
    flat = latents.detach().float().transpose(0, 1).flatten(1)  # [N, C, h, w] -> [C, N*h*w]
    moments = processes.all_mean(torch.stack([flat.mean(1), flat.square().mean(1)]))
    variance = (moments[1] - moments[0].square()).clamp_min(0.0)
    model.latent_norm_running_mean.lerp_(moments[0], momentum)
    model.latent_norm_running_var.lerp_(variance, momentum)


class TrainingObjective(nn.Module):
    """forward(batch) -> (loss, parts): the objective of one batch (module docstring).

    A module so that DistributedDataParallel wraps the whole loss computation (its gradient
    hooks are armed in forward). Updates the model's whitening statistics when the encoder
    trains.
    """

    def __init__(self, model: Any, settings: TrainingSettings, processes: Processes) -> None:
        super().__init__()
        self.model, self.settings, self.processes = model, settings, processes

    def forward(
        self, batch: dict[str, Tensor], *, drop_middle_blocks: bool = False
    ) -> tuple[Tensor, dict[str, Tensor]]:
        model, settings = self.model, self.settings
        config = model.config
        images = batch["images"]
        with torch.no_grad() if settings.train == "decoder" else contextlib.nullcontext():
            posterior = model.encode_posterior(images)
        if settings.train == "all" and model.training:
            update_running_stats(model, posterior.mode(), settings.stats_momentum, self.processes)
        latents = posterior.sample(noise=batch["latent_noise"])
        logsnr = cosine_interpolated_logsnr(batch["t"], config.logsnr_min, config.logsnr_max)
        x_t = diffuse(images, batch["pixel_noise"], logsnr)
        x0_hat = model.predict_x0(x_t, batch["t"], latents, drop_middle_blocks=drop_middle_blocks)
        mse = F.mse_loss(x0_hat.float(), images.float())
        loss, parts = mse, {"mse": mse.detach()}
        if settings.train == "all" and settings.latent_kl_weight > 0:
            kl = latent_kl(posterior)
            loss = loss + settings.latent_kl_weight * kl
            parts["latent_kl"] = kl.detach()
        return loss, parts


def drops_middle_blocks(seed: int, step: int, probability: float) -> bool:
    """Whether step `step` trains the PDG weak path (same answer in every process)."""
    if probability <= 0.0:
        return False
    return bool(torch.rand((), generator=sample_generator(seed, -(2**40) - step)) < probability)


@torch.no_grad()
def evaluate_psnr(model: Any, files: list[Path], patch: int) -> float:
    """Mean 8-bit PSNR of the reconstructions (posterior mode, the default decoding)."""
    values = []
    for path in files:
        image, _ = read_image(path)
        height, width = image.shape[-2] // patch * patch, image.shape[-1] // patch * patch
        image = image[..., :height, :width]
        device = model.latent_norm_running_mean.device
        reconstruction = model.reconstruct(image.to(device))
        values.append(psnr_8bit(image[0], reconstruction[0].cpu()))
    return sum(values) / len(values)


# -- checkpoints -----------------------------------------------------------------------------


def save_checkpoint(out: Path, step: int, model, ema, optimizer, settings, family) -> None:
    """`model/` (EMA weights, published layout) and the resumable state, each atomically.

    The state is one safetensors file (no pickle): tensors `model/<key>`, `ema/<key>`,
    `optimizer/<parameter index>/<name>`, `rng/torch`, `rng/cuda/<device>`; the rest (step,
    family, settings, config, the optimizer's parameter groups) as JSON in its metadata.
    """
    ema.save_pretrained(out / MODEL_FOLDER)
    tensors: dict[str, Tensor] = {"rng/torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        for index, state in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng/cuda/{index}"] = state
    for prefix, module in (("model", model), ("ema", ema)):
        for key, tensor in module.state_dict().items():
            tensors[f"{prefix}/{key}"] = tensor
    optimizer_state = optimizer.state_dict()
    for index, values in optimizer_state["state"].items():
        for name, tensor in values.items():
            tensors[f"optimizer/{index}/{name}"] = torch.as_tensor(tensor)
    metadata = {
        "step": str(step),
        "family": json.dumps(family),
        "settings": json.dumps(asdict(settings)),
        "config": json.dumps(model.config.to_dict()),
        "param_groups": json.dumps(optimizer_state["param_groups"]),
    }
    tensors = {key: tensor.detach().cpu().contiguous().clone() for key, tensor in tensors.items()}
    atomic_write(
        out / STATE_NAME, lambda tmp: save_file(tensors, os.fspath(tmp), metadata=metadata)
    )


def state_path(out: Path) -> Path:
    """`out`'s training state file; an ArgumentError when there is none to resume."""
    path = out / STATE_NAME
    if not path.is_file():
        raise ArgumentError("resume", f": {path} does not exist")
    return path


def read_state_metadata(out: Path) -> dict[str, Any]:
    """step, family, settings and config of `out`'s training state, reading no tensor."""
    path = state_path(out)
    with safe_open(os.fspath(path), framework="pt") as handle:
        metadata = handle.metadata() or {}
    return {
        "step": int(metadata["step"]),
        **{key: json.loads(metadata[key]) for key in ("family", "settings", "config")},
        "param_groups": json.loads(metadata["param_groups"]),
    }


def load_state(out: Path) -> dict[str, Any]:
    """The training state `save_checkpoint` wrote: step, family, settings, config, model, ema,
    optimizer (a `state_dict`), rng."""
    metadata = read_state_metadata(out)
    param_groups = metadata.pop("param_groups")
    sections: dict[str, dict[str, Tensor]] = {"model": {}, "ema": {}, "optimizer": {}, "rng": {}}
    for key, tensor in load_tensors(state_path(out)).items():
        section, _, rest = key.partition("/")
        sections[section][rest] = tensor
    optimizer_state: dict[int, dict[str, Tensor]] = {}
    for key, tensor in sections["optimizer"].items():
        index, _, name = key.partition("/")
        optimizer_state.setdefault(int(index), {})[name] = tensor
    return {
        **metadata,
        "model": sections["model"],
        "ema": sections["ema"],
        "optimizer": {"state": optimizer_state, "param_groups": param_groups},
        "rng": sections["rng"],
    }


# -- the loop --------------------------------------------------------------------------------


@dataclass(frozen=True)
class TrainingConfig:
    """One training run: its images, its folder, its hyper-parameters and how it starts."""

    data: Path
    """A folder of images (searched recursively); files smaller than the crop are skipped."""
    out: Path
    """The run folder: `model/` (the EMA weights), the training state and `log.jsonl`."""
    settings: TrainingSettings = field(default_factory=TrainingSettings)
    resume: bool = False
    """Continue `out`'s run from its training state (weights, EMA, optimizer, step, RNG)."""
    device: str | None = None
    """A torch device (None: cuda when available, else cpu); under torchrun an unindexed cuda
    is each process's own GPU."""
    eval_images: Sequence[Path] = ()
    """Images whose reconstruction PSNR (EMA weights) is logged at each checkpoint."""
    family: str | None = None
    """The model's family name, recorded in the state: what a resume rebuilds the model from."""


def train(model: Any, config: TrainingConfig, *, console: Console | None = None) -> Any:
    """Train `model` (an FCDM-family autoencoder, float32) as `config` says; its EMA copy.

    Under torchrun each process calls this with the same arguments (`settings.batch_size` is
    the global batch) inside one process group, left at the end. Rank 0 writes `out/model/`,
    `out/training_state.safetensors` and `out/log.jsonl`. Problems with the arguments raise
    an ArgumentError naming the field (`batch_size`, `crop_size`, `data`, `resume`), or `out`
    when another run holds it (`diffae.faults.FolderLock`) or its disk is full (the last
    checkpoint kept). Ctrl-C in one process: a checkpoint at the step, then `Interrupted`.
    """
    processes = Processes.from_environment()
    name = config.device or ("cuda" if torch.cuda.is_available() else "cpu")
    device = processes.device_for(torch.device(name))
    console = console or Console(quiet=True)
    # Ctrl-C in one process: the step finishes, a checkpoint is saved, the run stops. Under
    # torchrun, torchrun stops the processes; the last checkpoint is where to resume.
    # One run at a time in `out` (rank 0 holds its lock for all).
    with (
        process_group(processes, device),
        FolderLock(config.out) if processes.main else contextlib.nullcontext(),
        stop_requests(console, enabled=processes.world_size == 1) as stop,
    ):
        try:
            return run_training(model, config, processes, device, console, stop)
        except Exception as error:
            if not disk_full(error):
                raise
            if not (config.out / STATE_NAME).is_file():
                raise disk_full_error(config.out, "no checkpoint saved yet") from None
            step = read_state_metadata(config.out)["step"]
            raise disk_full_error(
                config.out,
                f"the checkpoint of step {step} is kept",
                "run again with resume=True to continue from it",
            ) from None


def run_training(
    model: Any,
    config: TrainingConfig,
    processes: Processes,
    device: torch.device,
    console: Console,
    stop: StopRequest | None = None,
) -> Any:
    """`train` in a process group that is up; `stop.requested` (Ctrl-C) ends it after the step
    with a checkpoint and raises `Interrupted`."""
    settings, out = config.settings, config.out
    if settings.batch_size % processes.world_size:
        raise ArgumentError(
            "batch_size",
            f" {settings.batch_size}: not divisible by {processes.world_size} processes",
        )
    patch = model.config.effective_patch_size
    if settings.crop_size % patch:
        raise ArgumentError(
            "crop_size", f" {settings.crop_size}: not a multiple of the patch {patch}"
        )
    files = usable_images(find_training_images(config.data), settings.crop_size, console, processes)
    model = model.to(device).float().train()
    if settings.train == "decoder":
        model.encoder.requires_grad_(False)
        model.encoder.eval()
    if settings.path_drop_probability == 0:
        # Untrained without path drop; frozen so that every trained parameter gets a gradient.
        model.decoder.path_drop_mask_feature.requires_grad_(False)
    ema = ema_model(model, settings.ema_decay)
    parameters = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(
        parameters, lr=settings.learning_rate, weight_decay=settings.weight_decay
    )
    start_step = 0
    if config.resume:
        state = load_state(out)
        model.load_state_dict(state["model"])
        ema.module.load_state_dict(state["ema"])
        optimizer.load_state_dict(state["optimizer"])
        torch.set_rng_state(state["rng"]["torch"])
        cuda_states = [state["rng"][key] for key in sorted(state["rng"]) if key != "torch"]
        if cuda_states and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(cuda_states)
        start_step = int(state["step"])
        ema.n_averaged.fill_(start_step + 1)  # the initial copy and one update per step
    schedule = learning_rate_schedule(optimizer, settings, start_step)
    objective: nn.Module = TrainingObjective(model, settings, processes)
    if processes.world_size > 1:
        objective = nn.parallel.DistributedDataParallel(
            objective,
            device_ids=[device.index] if device.type == "cuda" else None,
            broadcast_buffers=False,  # the whitening statistics are all-reduced in forward
            find_unused_parameters=settings.path_drop_probability > 0,
        )
    loader = training_loader(files, model.config, settings, processes, start_step, device)
    autocast = (
        torch.autocast("cuda", dtype=torch.bfloat16)
        if device.type == "cuda"
        else contextlib.nullcontext()
    )
    if processes.main:
        out.mkdir(parents=True, exist_ok=True)
        if config.resume:
            truncate_log(out / LOG_NAME, start_step)
        console.note(
            f"training {settings.train} of a {type(model).__name__} "
            f"({model.num_parameters():,} parameters) on {len(files)} images from {config.data}, "
            f"steps {start_step}..{settings.steps}, {processes.world_size} process(es) on "
            f"{device}"
        )
    bar = console.progress(settings.steps - start_step, "train")
    bar.unit = "step"
    bar.disable = bar.disable or not processes.main  # one bar under torchrun
    started, window_start, window_images = time.perf_counter(), time.perf_counter(), 0
    step = start_step
    for batch in loader:
        batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
        learning_rate = optimizer.param_groups[0]["lr"]
        drop = drops_middle_blocks(settings.seed, step, settings.path_drop_probability)
        with autocast:
            loss, parts = objective(batch, drop_middle_blocks=drop)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()  # under DDP: gradients averaged over the processes
        grad_norm = torch.nn.utils.clip_grad_norm_(parameters, settings.grad_clip)
        optimizer.step()
        schedule.step()
        step += 1
        ema.update_parameters(model)
        window_images += settings.batch_size
        bar.update(1)
        saving = step % settings.save_every == 0 or step == settings.steps
        record: dict[str, Any] = {}
        if step % settings.log_every == 0 or step == settings.steps:
            now = time.perf_counter()
            images_per_second = window_images / max(now - window_start, 1e-9)
            window_start, window_images = now, 0
            record = {
                "step": step,
                "loss": float(processes.all_mean(loss.detach().float())),
                **{name: float(processes.all_mean(value)) for name, value in parts.items()},
                "grad_norm": float(grad_norm),
                "lr": learning_rate,
                "images_per_s": round(images_per_second, 2),
                "elapsed_s": round(now - started, 1),
            }
            bar.set_postfix(loss=f"{record['loss']:.4f}", img_s=f"{images_per_second:.1f}")
        if saving:
            if processes.main:
                save_checkpoint(out, step, model, ema.module, optimizer, settings, config.family)
                if config.eval_images:
                    psnr_db = round(evaluate_psnr(ema.module, list(config.eval_images), patch), 3)
                    record = record or {"step": step}
                    record["eval_psnr_db"] = psnr_db
            processes.barrier()
        if record and processes.main:
            append_log(out / LOG_NAME, record)
            console.note(progress_line(record, settings.steps))
        if stop is not None and stop.requested and step < settings.steps:
            if not saving:
                save_checkpoint(out, step, model, ema.module, optimizer, settings, config.family)
            bar.close()
            raise Interrupted(
                f"interrupted after step {step} of {settings.steps}, saved in {out}: run again "
                "with resume=True to continue exactly from there"
            )
    bar.close()
    return ema.module


def training_loader(
    files: list[Path],
    config: Any,
    settings: TrainingSettings,
    processes: Processes,
    start_step: int,
    device: torch.device,
) -> DataLoader:
    """This process's share of the samples of steps `start_step`.. as batches (`CropDataset`)."""
    size, patch = settings.crop_size, config.effective_patch_size
    dataset = CropDataset(
        files,
        size,
        (config.latent_channels, size // patch, size // patch),
        config.pixel_noise_std,
        settings.seed,
        settings.one_step_fraction,
        Augmentation.of(settings),
    )
    return DataLoader(
        dataset,
        batch_size=settings.batch_size // processes.world_size,
        sampler=StepSampler(
            start_step, settings.steps, settings.batch_size, processes.rank, processes.world_size
        ),
        num_workers=settings.workers,
        persistent_workers=False,
        pin_memory=device.type == "cuda",
        worker_init_fn=ignore_interrupts,
    )


def progress_line(record: dict[str, Any], steps: int) -> str:
    """One log record for people (the log file keeps every digit): step, losses, rate, PSNR."""
    parts = [f"step {record['step']}/{steps}"]
    parts += [
        f"{name} {value:.4g}"
        for name, value in record.items()
        if name not in ("step", "lr", "images_per_s", "elapsed_s", "eval_psnr_db")
    ]
    if "lr" in record:
        parts.append(f"lr {record['lr']:.2e}")
    if "images_per_s" in record:
        parts.append(f"{record['images_per_s']:.1f} img/s")
    if "eval_psnr_db" in record:
        parts.append(f"eval PSNR {record['eval_psnr_db']:.2f} dB")
    return "  ".join(parts)


def usable_images(
    files: list[Path], crop_size: int, console: Console, processes: Processes
) -> list[Path]:
    """The files at least `crop_size` on each side; the others are reported and skipped."""
    kept = []
    for path in files:
        try:
            width, height = probe_image(path)  # what the DataLoader workers will read
        except BadImage as error:
            if processes.main:
                console.problem(f"skipped {path}: {error}")
            continue
        if min(width, height) < crop_size:
            if processes.main:
                console.problem(f"skipped {path}: {width}x{height} is smaller than the crop")
            continue
        kept.append(path)
    if not kept:
        raise ArgumentError("data", f": no training image is at least {crop_size}x{crop_size}")
    return kept


def truncate_log(path: Path, step: int) -> None:
    """Drop the records after `step` (logged by a run stopped after its last checkpoint)."""
    if not path.is_file():
        return
    lines = path.read_text(encoding="utf-8").splitlines()
    kept = [line for line in lines if line.strip() and json.loads(line)["step"] <= step]
    atomic_write(path, lambda tmp: tmp.write_text("".join(f"{line}\n" for line in kept)))


def append_log(path: Path, record: dict[str, Any]) -> None:
    with path.open("a", encoding="utf-8") as log:
        log.write(json.dumps(record) + "\n")
