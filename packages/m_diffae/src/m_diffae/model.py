"""MDiffAE v1: deterministic DiCo encoder and a flat 4-block DiCo diffusion decoder.

encode: images [N, 3, H, W] in [-1, 1] -> latents [N, 64, H/16, W/16], unit RMS over the 64
channels before the encoder's closing RMSNorm applies its affine (reading A of the key layout,
`open_points`).
decode: latents -> VP x0-prediction decoder sampled from seeded noise (diffae_core samplers),
with optional token-mask PDG. No stochastic posterior (alpha 1, sigma 0) and no latent whitening.
"""

from __future__ import annotations

from collections.abc import Mapping
from math import isqrt
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from diffae_core.autoencoder import DiffusionAutoencoder
from diffae_core.config import InferenceConfigBase
from diffae_core.diffusion import (
    EncoderPosterior,
    GuidedPredictor,
    deterministic_posterior,
    host_to_device,
)
from diffae_core.layers import (
    AdaLNScaleGateZeroLowRankDelta,
    AdaLNScaleGateZeroProjector,
    Patchify,
    RowTiled,
    SinusoidalTimeEmbeddingMLP,
    block_modulations,
    row_spans,
    stitch_rows,
)
from diffae_core.loading import TensorInfo
from diffae_core.runtime import compute_dtype

from .config import MDiffAEConfig, MDiffAEInferenceConfig
from .dico import NORM_EPS, DiCoBlock, Float32RMSNorm
from .open_points import (
    DEFAULT_OPEN_POINTS,
    MASK_SEED_OFFSET,
    REPO_ID_ALIASES,
    OpenPoints,
)

MODULATION_CHUNKS = 4
"""(s1, g1, s2, g2) per decoder block: the AdaLN projections are 4 * model_dim wide."""


class Encoder(RowTiled, nn.Module):
    """images [N, 3, H, W] in [-1, 1] -> latents [N, Z, H/P, W/P].

    patchify -> RMSNorm (affine) -> DiCo blocks with learned gates -> 1x1 to Z -> RMSNorm. The
    latents have unit RMS over the Z channels before that last norm's affine (present under
    reading A, `open_points.encoder_norm_out_affine`), so not exactly unit RMS in general.
    """

    def __init__(
        self,
        in_channels: int,
        patch_size: int,
        model_dim: int,
        depth: int,
        bottleneck_dim: int,
        mlp_ratio: float,
        depthwise_kernel_size: int,
        *,
        open_points: OpenPoints = DEFAULT_OPEN_POINTS,
    ) -> None:
        super().__init__()
        self.patchify = Patchify(in_channels, model_dim, patch_size)
        self.norm_in = Float32RMSNorm(model_dim, eps=NORM_EPS)
        self.blocks = nn.ModuleList(
            DiCoBlock(
                model_dim,
                mlp_ratio,
                depthwise_kernel_size=depthwise_kernel_size,
                mlp_renorm=open_points.mlp_renorm,
            )
            for _ in range(depth)
        )
        self.to_bottleneck = nn.Conv2d(model_dim, bottleneck_dim, 1)
        self.norm_out = Float32RMSNorm(
            bottleneck_dim, eps=NORM_EPS, affine=open_points.encoder_norm_out_affine
        )

    def posterior(self, images: Tensor) -> EncoderPosterior:
        """The latents as a deterministic posterior (alpha 1, sigma 0): its mode is `forward`'s."""
        return deterministic_posterior(self(images))

    def forward(self, images: Tensor) -> Tensor:
        """images [N, 3, H, W] -> latents [N, Z, H/P, W/P], over row spans of the patch grid
        (`tile_tokens`; None: one span, the whole grid)."""
        patch = self.patchify.proj.stride[0]
        height, width = images.shape[2] // patch, images.shape[3] // patch
        spans = row_spans(height, width, self.tile_tokens)

        def features(start: int, stop: int) -> Tensor:
            return self.norm_in(self.patchify(images[:, :, start * patch : stop * patch]))

        x = stitch_rows(features, spans)
        for block in self.blocks:
            x = block(x, tile_tokens=self.tile_tokens)
        return stitch_rows(
            lambda start, stop: self.norm_out(self.to_bottleneck(x[:, :, start:stop])), spans
        )


def draw_token_mask(
    batch: int,
    grid_height: int,
    grid_width: int,
    ratio: float,
    *,
    draw: str = "uniform",
    generator: torch.Generator | None = None,
) -> Tensor:
    """Bool [N, 1, h, w] on the CPU, True where PDG replaces a latent token by the mask feature.

    h x w = grid_height x grid_width is the latent grid. "uniform": round(ratio * h * w)
    positions per sample, without replacement. "grid_2x2": one token kept per 2x2 group (75%
    masked whatever `ratio`, as in training); odd sizes are padded to even before the draw and
    cropped after. `generator=None` uses the global CPU RNG.
    """
    tokens = grid_height * grid_width
    if draw == "uniform":
        count = round(ratio * tokens)
        order = torch.rand(batch, tokens, generator=generator).argsort(dim=1)
        mask = torch.zeros(batch, tokens, dtype=torch.bool)
        mask.scatter_(1, order[:, :count], True)
        return mask.view(batch, 1, grid_height, grid_width)
    groups_h, groups_w = -(-grid_height // 2), -(-grid_width // 2)
    kept = torch.randint(0, 4, (batch, groups_h, groups_w), generator=generator)
    keep = F.one_hot(kept, 4).bool().view(batch, groups_h, groups_w, 2, 2)  # last: (dy, dx)
    # [N, gh, gw, dy, dx] -> [N, gh, dy, gw, dx] -> [N, 2gh, 2gw]
    keep = keep.permute(0, 1, 3, 2, 4).reshape(batch, 2 * groups_h, 2 * groups_w)
    return ~keep[:, None, :grid_height, :grid_width]


def replace_tokens(features: Tensor, token_mask: Tensor, mask_feature: Tensor) -> Tensor:
    """features [N, C, h, w] with the positions where token_mask [N, 1, h, w] is True replaced."""
    return torch.where(token_mask.to(features.device), mask_feature.to(features.dtype), features)


class Decoder(RowTiled, nn.Module):
    """Predicts x0 [N, 3, H, W] from x_t [N, 3, H, W], t [N] in [0, 1] and latents [N, Z, h, w].

    fuse_in(norm_in(patchify(x_t)) ++ latent_norm(latent_up(latents))) -> D flat DiCo blocks
    modulated by a shared AdaLN base plus a low-rank delta each -> norm_out -> out_proj ->
    PixelShuffle(P). No skip connections. `pdg_mask_ratio`: the fraction of latent tokens
    `mask_tokens=True` replaces by the learned `mask_feature`.
    """

    def __init__(
        self,
        in_channels: int,
        patch_size: int,
        model_dim: int,
        depth: int,
        bottleneck_dim: int,
        mlp_ratio: float,
        depthwise_kernel_size: int,
        adaln_low_rank_rank: int,
        pdg_mask_ratio: float = 0.75,
        *,
        open_points: OpenPoints = DEFAULT_OPEN_POINTS,
    ) -> None:
        super().__init__()
        width = model_dim
        self.pdg_mask_ratio = pdg_mask_ratio
        self.mask_at = open_points.mask_at
        self.mask_draw = open_points.mask_draw
        self.patchify = Patchify(in_channels, width, patch_size)
        self.norm_in = Float32RMSNorm(width, eps=NORM_EPS)
        self.latent_up = nn.Conv2d(bottleneck_dim, width, 1)
        self.latent_norm = Float32RMSNorm(width, eps=NORM_EPS)
        self.fuse_in = nn.Conv2d(2 * width, width, 1)
        self.time_embed = SinusoidalTimeEmbeddingMLP(
            width, persistent_freqs=open_points.time_embed_freqs_persistent
        )
        self.adaln_base = AdaLNScaleGateZeroProjector(width, width, num_chunks=MODULATION_CHUNKS)
        self.adaln_deltas = nn.ModuleList(
            AdaLNScaleGateZeroLowRankDelta(
                width, width, adaln_low_rank_rank, num_chunks=MODULATION_CHUNKS
            )
            for _ in range(depth)
        )
        self.blocks = nn.ModuleList(
            DiCoBlock(
                width,
                mlp_ratio,
                depthwise_kernel_size=depthwise_kernel_size,
                use_external_adaln=True,
                modulation_order=open_points.modulation_order,
                mlp_renorm=open_points.mlp_renorm,
            )
            for _ in range(depth)
        )
        self.norm_out = Float32RMSNorm(width, eps=NORM_EPS)
        self.out_proj = nn.Conv2d(width, in_channels * patch_size**2, 1)
        self.unpatchify = nn.PixelShuffle(patch_size)
        self.mask_feature = nn.Parameter(torch.zeros(1, width, 1, 1))

    def draw_token_mask(self, latents: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Bool [N, 1, h, w] (CPU) for latents [N, Z, h, w]: this decoder's ratio and draw."""
        batch, _, grid_height, grid_width = latents.shape
        return draw_token_mask(
            batch,
            grid_height,
            grid_width,
            self.pdg_mask_ratio,
            draw=self.mask_draw,
            generator=generator,
        )

    def forward(
        self,
        x_t: Tensor,
        t: Tensor,
        latents: Tensor,
        *,
        mask_tokens: bool = False,
        generator: torch.Generator | None = None,
        token_mask: Tensor | None = None,
    ) -> Tensor:
        """x0_hat [N, 3, H, W] in the weights' dtype.

        mask_tokens: replace `pdg_mask_ratio` of the latent tokens by `mask_feature` (the weak
        prediction of token-mask PDG), drawn on the CPU from `generator` (None: global RNG).
        token_mask: bool [N, 1, h, w], the positions to replace instead of a fresh draw; only
        with mask_tokens=True. Runs over row spans of the latent grid (`tile_tokens`; None: one
        span, the whole grid).
        """
        if token_mask is not None and not mask_tokens:
            raise ValueError("token_mask: given with mask_tokens=False; pass mask_tokens=True")
        if mask_tokens and token_mask is None:
            # Drawn on the CPU (seeded, device-independent), queued to the device once.
            token_mask = host_to_device(self.draw_token_mask(latents, generator), latents.device)
        cond = self.time_embed(t.to(device=x_t.device, dtype=torch.float32))
        modulations = block_modulations(self.adaln_base, self.adaln_deltas, cond)  # [D, N, 4C]
        patch = self.unpatchify.upscale_factor
        spans = row_spans(latents.shape[2], latents.shape[3], self.tile_tokens)

        def fused_rows(start: int, stop: int) -> Tensor:
            mask_rows = None if token_mask is None else token_mask[:, :, start:stop]
            pixels = x_t[:, :, start * patch : stop * patch]
            return self._fused_input(pixels, latents[:, :, start:stop], mask_rows)

        h = stitch_rows(fused_rows, spans)
        for block, modulation in zip(self.blocks, modulations, strict=True):
            h = block(h, adaln_m=modulation, tile_tokens=self.tile_tokens)

        def output_rows(start: int, stop: int) -> Tensor:
            return self.unpatchify(self.out_proj(self.norm_out(h[:, :, start:stop])))

        return stitch_rows(output_rows, spans, patch)

    def _fused_input(self, x_t: Tensor, latents: Tensor, token_mask: Tensor | None) -> Tensor:
        """fuse_in(norm_in(patchify(x_t)) ++ latent_norm(latent_up(latents))), tokens masked."""
        x_features = self.norm_in(self.patchify(x_t))
        latent_features = self.latent_norm(self.latent_up(latents))
        if token_mask is not None and self.mask_at == "latent":
            latent_features = replace_tokens(latent_features, token_mask, self.mask_feature)
        h = self.fuse_in(torch.cat([x_features, latent_features], dim=1))
        if token_mask is not None and self.mask_at == "fused":
            h = replace_tokens(h, token_mask, self.mask_feature)
        return h


def _with_shape(value: Any, shape: tuple[int, ...]) -> Any:
    """A tensor reshaped, or a header entry (`TensorInfo`) with the new shape."""
    if isinstance(value, TensorInfo):
        return TensorInfo(value.dtype, shape)
    return value.reshape(shape)


def _canonical_layout(key: str, value: Any) -> Any:
    """Accept the other plausible layouts of two tensors; others unchanged.

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


class MDiffAE(DiffusionAutoencoder):
    """mDiffAE v1. Images [N, 3, H, W] in [-1, 1], H and W multiples of `config.patch_size`;
    latents [N, config.bottleneck_dim, H/P, W/P]. Float32 weights as published; a bf16 model
    computes in bf16 with float32 norms, time sinusoids and sampler state.

    `encode` and `decode` are the core's (`DiffusionAutoencoder`, without whitening: `encode`
    returns the deterministic encoder's latents in the weights' dtype); this class supplies the
    decoder call, whose weak (PDG) path masks latent tokens.
    """

    config_class = MDiffAEConfig
    family_name = "m_diffae"
    inference_config_class = MDiffAEInferenceConfig
    whitened_latents = False
    open_points: ClassVar[OpenPoints] = DEFAULT_OPEN_POINTS
    # A Hub id is tried as given (cache, then Hub), then its other spelling: the card writes
    # `mdiffae_v1`, the files were read under `mdiffae-v1` (open_points.REPO_ID_ALIASES).
    repo_id_aliases = REPO_ID_ALIASES
    config: MDiffAEConfig

    def __init__(self, config: MDiffAEConfig) -> None:
        super().__init__(config)
        self.encoder = Encoder(
            config.in_channels,
            config.patch_size,
            config.model_dim,
            config.encoder_depth,
            config.bottleneck_dim,
            config.mlp_ratio,
            config.depthwise_kernel_size,
            open_points=self.open_points,
        )
        self.decoder = Decoder(
            config.in_channels,
            config.patch_size,
            config.model_dim,
            config.decoder_depth,
            config.bottleneck_dim,
            config.mlp_ratio,
            config.depthwise_kernel_size,
            config.adaln_low_rank_rank,
            config.pdg_mask_ratio,
            open_points=self.open_points,
        )

    # -- loading -------------------------------------------------------------------------------
    @classmethod
    def canonical_checkpoint_keys(cls, state: Mapping[str, Any]) -> dict[str, Any]:
        """The other plausible layouts of two published tensors -> ours (tensors or header
        entries); the key names are ours until a real header shows otherwise (`UNVERIFIED_KEYS`)."""
        return {
            key: _canonical_layout(key, value)
            for key, value in super().canonical_checkpoint_keys(state).items()
        }

    # -- decoding ------------------------------------------------------------------------------
    def predictor(self, raw_latents: Tensor, settings: InferenceConfigBase) -> GuidedPredictor:
        """predict(x_t, t, *, weak) -> x0_hat; weak = PDG with a fresh token mask per call.

        The masks come from a CPU generator seeded with `settings.seed + MASK_SEED_OFFSET`
        (reproducible, yet apart from the noise stream); with `seed=None`, the global RNG.
        """
        dtype = compute_dtype(self)
        latents_in = raw_latents.to(dtype)
        generator = None
        if settings.seed is not None:
            generator = torch.Generator().manual_seed((settings.seed + MASK_SEED_OFFSET) % 2**63)

        def predict(x_t: Tensor, t: Tensor, *, weak: bool) -> Tensor:
            return self.decoder(x_t.to(dtype), t, latents_in, mask_tokens=weak, generator=generator)

        return predict
