"""MDiffAE v1: deterministic DiCo encoder and a flat 4-block DiCo diffusion decoder.

encode: images [N, 3, H, W] in [-1, 1] -> latents [N, 64, H/16, W/16] (unit RMS over channels).
decode: latents -> VP x0-prediction decoder sampled from seeded noise (diffae_core samplers),
with optional token-mask PDG. No posterior and no latent whitening in v1 (m_diffae spec §1).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from math import isqrt
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from diffae_core.adaln import (
    AdaLNScaleGateZeroLowRankDelta,
    AdaLNScaleGateZeroProjector,
    shared_modulation,
)
from diffae_core.checkpoint import TensorInfo
from diffae_core.patchify import Patchify
from diffae_core.precision import compute_dtype
from diffae_core.pretrained import PretrainedModel
from diffae_core.samplers import sample_images
from diffae_core.time_embed import SinusoidalTimeEmbeddingMLP
from diffae_core.validation import check_images, check_latents
from diffae_core.vp import get_schedule

from .config import MDiffAEConfig, MDiffAEInferenceConfig
from .dico import NORM_EPS, DiCoBlock, Float32RMSNorm
from .open_points import (
    DEFAULT_OPEN_POINTS,
    MASK_SEED_OFFSET,
    PUBLISHED_KEY_RENAMES,
    REPO_ID_ALIASES,
    OpenPoints,
)

MODULATION_CHUNKS = 4
"""(s1, g1, s2, g2) per decoder block: the AdaLN projections are 4 * model_dim wide."""


class Encoder(nn.Module):
    """images [N, 3, H, W] in [-1, 1] -> latents [N, Z, H/P, W/P], unit RMS over the Z channels.

    patchify -> RMSNorm (affine) -> DiCo blocks with learned gates -> 1x1 to Z -> RMSNorm.
    """

    def __init__(self, config: MDiffAEConfig, open_points: OpenPoints) -> None:
        super().__init__()
        width = config.model_dim
        self.patchify = Patchify(config.in_channels, width, config.patch_size)
        self.norm_in = Float32RMSNorm(width, eps=NORM_EPS)
        self.blocks = nn.ModuleList(
            DiCoBlock(
                width,
                config.mlp_ratio,
                depthwise_kernel_size=config.depthwise_kernel_size,
                mlp_renorm=open_points.mlp_renorm,
            )
            for _ in range(config.encoder_depth)
        )
        self.to_bottleneck = nn.Conv2d(width, config.bottleneck_dim, 1)
        self.norm_out = Float32RMSNorm(
            config.bottleneck_dim, eps=NORM_EPS, affine=open_points.encoder_norm_out_affine
        )

    def forward(self, images: Tensor) -> Tensor:
        x = self.norm_in(self.patchify(images))
        for block in self.blocks:
            x = block(x)
        return self.norm_out(self.to_bottleneck(x))


def draw_token_mask(
    batch: int,
    height: int,
    width: int,
    ratio: float,
    *,
    draw: str = "uniform",
    generator: torch.Generator | None = None,
) -> Tensor:
    """Bool [N, 1, h, w] on the CPU, True where PDG replaces a latent token by the mask feature.

    "uniform": round(ratio * h * w) positions per sample, without replacement. "grid_2x2": one
    token kept per 2x2 group (75% masked whatever `ratio`, as in training); odd sizes are padded
    to even before the draw and cropped after. `generator=None` uses the global CPU RNG.
    """
    if draw == "uniform":
        count = round(ratio * height * width)
        order = torch.rand(batch, height * width, generator=generator).argsort(dim=1)
        mask = torch.zeros(batch, height * width, dtype=torch.bool)
        mask.scatter_(1, order[:, :count], True)
        return mask.view(batch, 1, height, width)
    groups_h, groups_w = -(-height // 2), -(-width // 2)
    kept = torch.randint(0, 4, (batch, groups_h, groups_w), generator=generator)
    keep = F.one_hot(kept, 4).bool().view(batch, groups_h, groups_w, 2, 2)  # last: (dy, dx)
    # [N, gh, gw, dy, dx] -> [N, gh, dy, gw, dx] -> [N, 2gh, 2gw]
    keep = keep.permute(0, 1, 3, 2, 4).reshape(batch, 2 * groups_h, 2 * groups_w)
    return ~keep[:, None, :height, :width]


def replace_tokens(features: Tensor, token_mask: Tensor, mask_feature: Tensor) -> Tensor:
    """features [N, C, h, w] with the positions where token_mask [N, 1, h, w] is True replaced."""
    return torch.where(token_mask.to(features.device), mask_feature.to(features.dtype), features)


class Decoder(nn.Module):
    """Predicts x0 [N, 3, H, W] from x_t [N, 3, H, W], t [N] in [0, 1] and latents [N, Z, h, w].

    fuse_in(norm_in(patchify(x_t)) ++ latent_norm(latent_up(latents))) -> D flat DiCo blocks
    modulated by a shared AdaLN base plus a low-rank delta each -> norm_out -> out_proj ->
    PixelShuffle(P). No skip connections.
    """

    def __init__(self, config: MDiffAEConfig, open_points: OpenPoints) -> None:
        super().__init__()
        width = config.model_dim
        self.mask_at = open_points.mask_at
        self.patchify = Patchify(config.in_channels, width, config.patch_size)
        self.norm_in = Float32RMSNorm(width, eps=NORM_EPS)
        self.latent_up = nn.Conv2d(config.bottleneck_dim, width, 1)
        self.latent_norm = Float32RMSNorm(width, eps=NORM_EPS)
        self.fuse_in = nn.Conv2d(2 * width, width, 1)
        self.time_embed = SinusoidalTimeEmbeddingMLP(width)
        self.adaln_base = AdaLNScaleGateZeroProjector(width, width, num_chunks=MODULATION_CHUNKS)
        self.adaln_deltas = nn.ModuleList(
            AdaLNScaleGateZeroLowRankDelta(
                width, width, config.adaln_low_rank_rank, num_chunks=MODULATION_CHUNKS
            )
            for _ in range(config.decoder_depth)
        )
        self.blocks = nn.ModuleList(
            DiCoBlock(
                width,
                config.mlp_ratio,
                depthwise_kernel_size=config.depthwise_kernel_size,
                use_external_adaln=True,
                modulation_order=open_points.modulation_order,
                mlp_renorm=open_points.mlp_renorm,
            )
            for _ in range(config.decoder_depth)
        )
        self.norm_out = Float32RMSNorm(width, eps=NORM_EPS)
        self.out_proj = nn.Conv2d(width, config.in_channels * config.patch_size**2, 1)
        self.unpatchify = nn.PixelShuffle(config.patch_size)
        self.mask_feature = nn.Parameter(torch.zeros(1, width, 1, 1))

    def forward(
        self, x_t: Tensor, t: Tensor, latents: Tensor, *, token_mask: Tensor | None = None
    ) -> Tensor:
        """x0_hat [N, 3, H, W] in the weights' dtype; `token_mask` [N, 1, h, w] bool selects
        the tokens replaced by `mask_feature` (the weak prediction of token-mask PDG)."""
        x_features = self.norm_in(self.patchify(x_t))
        latent_features = self.latent_norm(self.latent_up(latents))
        if token_mask is not None and self.mask_at == "latent":
            latent_features = replace_tokens(latent_features, token_mask, self.mask_feature)
        h = self.fuse_in(torch.cat([x_features, latent_features], dim=1))
        if token_mask is not None and self.mask_at == "fused":
            h = replace_tokens(h, token_mask, self.mask_feature)
        cond = self.time_embed(t.to(device=x_t.device, dtype=torch.float32))
        activated, shared = shared_modulation(self.adaln_base, cond)
        for block, delta in zip(self.blocks, self.adaln_deltas, strict=True):
            h = block(h, adaln_m=shared + delta(activated))
        return self.unpatchify(self.out_proj(self.norm_out(h)))


def _with_shape(value: Any, shape: tuple[int, ...]) -> Any:
    """A tensor reshaped, or a header entry (`TensorInfo`) with the new shape."""
    if isinstance(value, TensorInfo):
        return TensorInfo(value.dtype, shape)
    return value.reshape(shape)


def _canonical_layout(key: str, value: Any) -> Any:
    """Accept the other plausible layouts of two tensors (spec §5.2, §5.4); others unchanged.

    Patchify of RGB stored as PixelUnshuffle + 1x1 conv [C, 3 P^2, 1, 1] -> [C, 3, P, P]
    (channel c * P^2 + P * i + j is (c, i, j): a pure reshape); a Linear CCA [C, C] -> [C, C, 1, 1].
    """
    shape = tuple(value.shape)
    if key.endswith("patchify.proj.weight") and len(shape) == 4 and shape[2:] == (1, 1):
        side = isqrt(shape[1] // 3)
        if shape[1] > 3 and 3 * side * side == shape[1]:
            return _with_shape(value, (shape[0], 3, side, side))
    if key.endswith("cca.proj.weight") and len(shape) == 2:
        return _with_shape(value, (*shape, 1, 1))
    return value


def _renamed(key: str, renames: Mapping[str, str]) -> str:
    """`key` with every fragment in `renames` replaced by its value."""
    for old, new in renames.items():
        key = key.replace(old, new)
    return key


class MDiffAE(PretrainedModel):
    """mDiffAE v1. Images [N, 3, H, W] in [-1, 1], H and W multiples of `config.patch_size`;
    latents [N, config.bottleneck_dim, H/P, W/P]. Float32 weights as published; a bf16 model
    computes in bf16 with float32 norms, time sinusoids and sampler state."""

    config_class = MDiffAEConfig
    inference_config_class = MDiffAEInferenceConfig
    open_points: ClassVar[OpenPoints] = DEFAULT_OPEN_POINTS
    config: MDiffAEConfig

    def __init__(self, config: MDiffAEConfig) -> None:
        super().__init__(config)
        self.encoder = Encoder(config, self.open_points)
        self.decoder = Decoder(config, self.open_points)

    # -- loading -------------------------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, path_or_repo_id: str | os.PathLike[str], **options: Any) -> MDiffAE:
        """`PretrainedModel.from_pretrained` (same keywords: device, dtype, revision, ...),
        accepting both Hub spellings the card uses (`open_points.REPO_ID_ALIASES`)."""
        if isinstance(path_or_repo_id, str) and not os.path.isdir(path_or_repo_id):
            path_or_repo_id = REPO_ID_ALIASES.get(path_or_repo_id, path_or_repo_id)
        return super().from_pretrained(path_or_repo_id, **options)

    @classmethod
    def canonical_checkpoint_keys(cls, state: Mapping[str, Any]) -> dict[str, Any]:
        """Published key spellings and layouts -> ours (tensors or header entries)."""
        canonical = {}
        for key, value in state.items():
            key = _renamed(key, PUBLISHED_KEY_RENAMES)
            canonical[key] = _canonical_layout(key, value)
        return canonical

    def checkpoint_state(self) -> dict[str, Tensor]:
        """The state dict under the published key names (identity while the table is empty)."""
        reverse = {ours: published for published, ours in PUBLISHED_KEY_RENAMES.items()}
        return {_renamed(key, reverse): t for key, t in self.state_dict().items()}

    # -- public API ----------------------------------------------------------------------------
    @torch.no_grad()
    def encode(self, images: Tensor) -> Tensor:
        """images [N, 3, H, W] in [-1, 1] -> latents [N, 64, H/16, W/16] in the weights' dtype.

        The images are moved to the model's device and dtype first. Deterministic.
        """
        images = check_images(images, self.config.in_channels, self.config.patch_size)
        weight = self.encoder.to_bottleneck.weight
        return self.encoder(images.to(device=weight.device, dtype=compute_dtype(self)))

    @torch.no_grad()
    def decode(
        self,
        latents: Tensor,
        height: int,
        width: int,
        *,
        inference_config: MDiffAEInferenceConfig | None = None,
        noise: Tensor | None = None,
    ) -> Tensor:
        """latents [N, 64, h, w] -> images [N, 3, height, width], float32, ~[-1, 1], unclamped.

        Runs on `latents.device`. `inference_config` defaults to one DDIM step without PDG; its
        `seed` fixes the initial noise (CPU draw) and the PDG mask positions. `noise`
        ([N, 3, height, width], std `config.pixel_noise_std`) replaces the seeded noise draw.
        """
        config = self.config
        cfg = MDiffAEInferenceConfig() if inference_config is None else inference_config
        cfg.validate()
        check_latents(latents, config.bottleneck_dim, height, width, config.patch_size)
        dtype = compute_dtype(self)
        latents_in = latents.to(dtype)
        batch, _, grid_h, grid_w = latents.shape
        mask_generator = None
        if cfg.seed is not None:
            mask_generator = torch.Generator().manual_seed((cfg.seed + MASK_SEED_OFFSET) % 2**63)

        def predict(x_t: Tensor, t: Tensor, *, weak: bool) -> Tensor:
            token_mask = None
            if weak:  # a fresh mask for every weak prediction, from the seeded generator
                token_mask = draw_token_mask(
                    batch,
                    grid_h,
                    grid_w,
                    config.pdg_mask_ratio,
                    draw=self.open_points.mask_draw,
                    generator=mask_generator,
                )
            return self.decoder(x_t.to(dtype), t, latents_in, token_mask=token_mask)

        return sample_images(
            predict,
            (batch, config.in_channels, height, width),
            device=latents.device,
            sampler=cfg.sampler,
            times=get_schedule(cfg.schedule, cfg.num_steps),
            guidance_strength=cfg.guidance_strength,
            logsnr_min=config.logsnr_min,
            logsnr_max=config.logsnr_max,
            noise_std=config.pixel_noise_std,
            seed=cfg.seed,
            noise=noise,
        )

    @torch.no_grad()
    def reconstruct(
        self, images: Tensor, *, inference_config: MDiffAEInferenceConfig | None = None
    ) -> Tensor:
        """encode then decode: images [N, 3, H, W] in [-1, 1] -> float32 images, same size."""
        height, width = int(images.shape[-2]), int(images.shape[-1])
        return self.decode(self.encode(images), height, width, inference_config=inference_config)
