"""The FCDM (ConvNeXt-style, GRN) networks: block, encoder, decoder and the FCDM diffusion
autoencoder that fcdm_diffae and full_capacitor configure (their config, `FCDMConfig`, is in
`config.py`, free of torch).
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .autoencoder import DiffusionAutoencoder
from .config import POSTERIOR_KINDS
from .diffusion import EncoderPosterior, deterministic_posterior, split_posterior
from .layers import (
    GRN,
    AdaLNScaleGateZeroLowRankDelta,
    AdaLNScaleGateZeroProjector,
    ChannelWiseRMSNorm,
    Patchify,
    RowTiled,
    SinusoidalTimeEmbeddingMLP,
    block_modulations,
    channel_rms_norm,
    channels_to_space,
    combined_l2_norm,
    conv_rows,
    grn_scale,
    mlp_hidden_channels,
    row_spans,
    space_to_channels,
    stitch_rows,
)

# ---- fcdm block ------------------------------------------------------------------------
# The FCDM block: a ConvNeXt-style residual block with GRN.


def _gated_residual(x: Tensor, gate: Tensor, h: Tensor, inplace: bool) -> Tensor:
    """x + gate * h; `inplace` writes it over h with the same roundings."""
    return h.mul_(gate).add_(x) if inplace else x + gate * h


class FCDMBlock(nn.Module):
    """Depthwise conv -> RMSNorm -> (AdaLN scale) -> 1x1 MLP with GRN, gated residual.

    Two modes: unconditioned (encoder; the residual gate is a learned `layer_scale` [C]) and
    external AdaLN (decoder; `forward` receives `adaln_m` [N, 2C] = (scale, gate) per sample).
    """

    def __init__(
        self,
        channels: int,
        mlp_ratio: float = 4.0,
        *,
        depthwise_kernel_size: int = 7,
        use_external_adaln: bool = False,
        norm_eps: float = 1e-6,
        layer_scale_init: float = 1e-3,
    ) -> None:
        super().__init__()
        hidden = mlp_hidden_channels(channels, mlp_ratio)
        self.channels = channels
        self.dwconv = nn.Conv2d(
            channels,
            channels,
            depthwise_kernel_size,
            padding=depthwise_kernel_size // 2,
            groups=channels,
        )
        self.norm = ChannelWiseRMSNorm(channels, eps=norm_eps, affine=False)
        self.pwconv1 = nn.Conv2d(channels, hidden, 1)
        self.grn = GRN(hidden, eps=norm_eps)
        self.pwconv2 = nn.Conv2d(hidden, channels, 1)
        if use_external_adaln:
            self.register_parameter("layer_scale", None)
        else:
            self.layer_scale = nn.Parameter(torch.full((channels,), layer_scale_init))

    def forward(
        self,
        x: Tensor,
        *,
        adaln_m: Tensor | None = None,
        tile_tokens: int | None = None,
        recompute: bool = True,
        overwrite: bool = False,
    ) -> Tensor:
        """[N, C, h, w] -> [N, C, h, w]; `adaln_m` [N, 2C] is required in AdaLN mode.

        Runs over row spans of <= tile_tokens positions (None: one span, the whole grid) in two
        passes, since GRN needs the whole image's statistic: pass 1 computes each span's hidden
        activations [N, 4C, rows, w] and their spatial L2 norm; pass 2 applies GRN with the norm
        over all spans, then `pwconv2` and the gated residual. The depthwise conv reads a halo
        of k // 2 rows. Several spans equal one up to float rounding.

        Without autograd each step writes over the fresh tensor it reads (x itself is written
        only with `overwrite`): one 4C-wide tensor alive instead of two, and fewer new
        allocations, which on a CPU are fresh pages for large images. Pass 2 runs bottom-up and
        reuses the last span's activations (one span: nothing is recomputed). With several
        spans, `recompute=True` recomputes the other spans' activations (one more `pwconv1` per
        block, no full-size [N, 4C, h, w] tensor); `recompute=False` keeps them from pass 1
        (about the untiled time, one full-size 4C-wide tensor). `overwrite=True` writes the
        output into x itself (one full-size tensor fewer; the caller must not need x after),
        keeping the original halo rows each recomputed span reads from below; never under
        autograd, and one span returns its fresh output as is.
        """
        spans = row_spans(x.shape[2], x.shape[3], tile_tokens)
        tiled = len(spans) > 1
        scale, gate = self._modulation(x, adaln_m)
        halo = self.dwconv.padding[0]
        inplace = not torch.is_grad_enabled()

        def hidden(start: int, stop: int, below: Tensor | None = None) -> Tensor:
            return self._hidden(conv_rows(self.dwconv, x, start, stop, below), scale, inplace)

        kept: dict[int, Tensor] = {}
        span_norms = []
        hidden_dtype = x.dtype
        for index, (start, stop) in enumerate(spans):
            chunk = hidden(start, stop)
            hidden_dtype = chunk.dtype
            # One span: the norm in the activations' dtype, as GRN's; several: float32 parts.
            norm_dtype = torch.float32 if tiled else None
            span_norms.append(
                torch.linalg.vector_norm(chunk, dim=(2, 3), keepdim=True, dtype=norm_dtype)
            )
            if not recompute or index == len(spans) - 1:
                kept[index] = chunk
            del chunk
        grn = self.grn
        factor = grn_scale(combined_l2_norm(span_norms), grn.gamma, grn.eps, hidden_dtype)
        beta = grn.beta.to(hidden_dtype)
        overwrite = overwrite and inplace and tiled
        out = x if overwrite or not tiled else torch.empty_like(x)  # one span: never written
        below = None  # x's original rows just below the current span, once overwritten
        for index in reversed(range(len(spans))):
            start, stop = spans[index]
            chunk = kept.pop(index) if index in kept else hidden(start, stop, below)
            h = self.pwconv2(torch.addcmul(beta, chunk, factor, out=chunk if inplace else None))
            del chunk
            rows = x[:, :, start:stop]
            if overwrite and recompute and index > 0:
                pristine = rows if below is None else torch.cat([rows, below], dim=2)
                below = pristine[:, :, :halo].clone()
            h = _gated_residual(rows, gate, h, inplace)
            if not tiled:
                return h  # the one span's fresh output, no copy
            out[:, :, start:stop] = h
        return out

    def _hidden(self, dwconv_out: Tensor, scale: Tensor | None, inplace: bool) -> Tensor:
        """GELU(pwconv1(RMSNorm(depthwise conv output) * (1 + scale))): [N, 4C, h, w]."""
        h = channel_rms_norm(dwconv_out, self.norm.eps, inplace=inplace)
        if scale is not None:
            h = h.mul_(1 + scale) if inplace else h * (1 + scale)
        h = self.pwconv1(h)
        return torch.ops.aten.gelu_(h) if inplace else F.gelu(h)

    def _modulation(self, x: Tensor, adaln_m: Tensor | None) -> tuple[Tensor | None, Tensor]:
        """(scale [N, C, 1, 1] or None, gate [N or 1, C, 1, 1]) in x's dtype."""
        if adaln_m is not None:
            scale, gate = adaln_m.to(x.dtype).chunk(2, dim=1)  # [N, 2C] -> 2 x [N, C]
            return scale[:, :, None, None], gate[:, :, None, None]
        return None, self.layer_scale.view(1, -1, 1, 1).to(x.dtype)


# ---- fcdm encoder ----------------------------------------------------------------------
# The FCDM encoder of SemDisDiffAE and full_capacitor.


class FCDMEncoder(RowTiled, nn.Module):
    """images [N, 3, H, W] in [-1, 1] -> raw posterior, mean/logsnr [N, B, H/P, W/P].

    patchify -> unconditioned FCDM blocks (layer-scale residuals) -> 1x1 `to_bottleneck`.
    `normalize_mean` chooses whether `norm_out` (an affine-free channel RMSNorm, no state-dict
    keys either way) is applied to the posterior mean or is an identity: the published files
    cannot tell, so each family decides it in one documented place. With `tile_tokens` set
    (`model.enable_tiling`), `features` runs over row chunks of the patch grid, exactly.
    """

    def __init__(
        self,
        *,
        in_channels: int = 3,
        patch_size: int = 16,
        model_dim: int = 896,
        depth: int = 4,
        bottleneck_dim: int = 128,
        mlp_ratio: float = 4.0,
        depthwise_kernel_size: int = 7,
        posterior_kind: str = "diagonal_gaussian",
        normalize_mean: bool = True,
        patchify_bottleneck: bool = False,
    ) -> None:
        super().__init__()
        if posterior_kind not in POSTERIOR_KINDS:
            raise ValueError(
                f"posterior_kind: expected one of {POSTERIOR_KINDS}, got {posterior_kind!r}"
            )
        self.posterior_kind = posterior_kind
        self.patchify_bottleneck = patchify_bottleneck
        self.patchify = Patchify(in_channels, model_dim, patch_size)
        self.blocks = nn.ModuleList(
            FCDMBlock(model_dim, mlp_ratio, depthwise_kernel_size=depthwise_kernel_size)
            for _ in range(depth)
        )
        projection_channels = 2 * bottleneck_dim
        if posterior_kind == "deterministic":
            projection_channels = bottleneck_dim
        self.to_bottleneck = nn.Conv2d(model_dim, projection_channels, 1)
        self.norm_out: nn.Module = (
            ChannelWiseRMSNorm(bottleneck_dim, eps=1e-6, affine=False)
            if normalize_mean
            else nn.Identity()
        )

    def features(self, images: Tensor) -> Tensor:
        """images [N, 3, H, W] -> bottleneck projection [N, 2B (or B), H/P, W/P].

        Over row spans of the patch grid (`tile_tokens`; None: one span, the whole grid). Each
        block after the patchify writes over its input: nothing else reads it.
        """
        patch = self.patchify.proj.stride[0]
        height, width = images.shape[2] // patch, images.shape[3] // patch
        spans = row_spans(height, width, self.tile_tokens)
        x = stitch_rows(
            lambda start, stop: self.patchify(images[:, :, start * patch : stop * patch]), spans
        )
        for block in self.blocks:
            x = block(
                x, tile_tokens=self.tile_tokens, recompute=self.tile_recompute, overwrite=True
            )
        return stitch_rows(lambda start, stop: self.to_bottleneck(x[:, :, start:stop]), spans)

    def posterior(self, images: Tensor) -> EncoderPosterior:
        """The raw posterior in the latent layout, mean/logsnr [N, B, H/P, W/P], or with
        `patchify_bottleneck` [N, 4B, H/2P, W/2P] (whitening happens in that layout). A
        deterministic encoder has logsnr = +inf (alpha = 1, sigma = 0)."""
        projection = self.features(images)
        if self.posterior_kind == "deterministic":
            posterior = deterministic_posterior(self.norm_out(projection))
        else:
            posterior = split_posterior(projection)
            posterior = EncoderPosterior(
                mean=self.norm_out(posterior.mean), logsnr=posterior.logsnr
            )
        if not self.patchify_bottleneck:
            return posterior
        return EncoderPosterior(
            mean=space_to_channels(posterior.mean), logsnr=space_to_channels(posterior.logsnr)
        )

    def forward(self, images: Tensor) -> Tensor:
        """images -> posterior mode alpha * mean, in the model dtype."""
        return self.posterior(images).mode()


# ---- fcdm decoder ----------------------------------------------------------------------
# The FCDM diffusion decoder: x0-prediction with skip fusion and path-drop PDG.


class FCDMDecoder(RowTiled, nn.Module):
    """Predicts x0 [N, 3, H, W] from a noisy image x_t, its time t and raw latents [N, B, h, w].

    Layout (depth D = start + middle + end blocks, each with AdaLN from a shared base plus a
    low-rank delta): fuse_in(patchify(x_t) ++ latent_up(z)) -> start -> middle -> fuse_skip(start
    ++ middle) -> end -> out_proj -> PixelShuffle(P). No input, latent or output norms.
    With `tile_tokens` set (`model.enable_tiling`), the same maths run over row chunks of the
    latent grid (`layers.RowTiled`).
    """

    def __init__(
        self,
        *,
        in_channels: int = 3,
        patch_size: int = 16,
        model_dim: int = 896,
        depth: int = 8,
        start_block_count: int = 2,
        end_block_count: int = 2,
        bottleneck_dim: int = 128,
        mlp_ratio: float = 4.0,
        depthwise_kernel_size: int = 7,
        adaln_low_rank_rank: int = 128,
        unpatchify_latents: bool = False,
    ) -> None:
        super().__init__()
        middle_block_count = depth - start_block_count - end_block_count
        if middle_block_count < 0:
            raise ValueError(
                f"depth: expected >= start_block_count + end_block_count "
                f"= {start_block_count + end_block_count}, got {depth}"
            )
        self.patch_size = patch_size
        self.unpatchify_latents = unpatchify_latents

        def block() -> FCDMBlock:
            return FCDMBlock(
                model_dim,
                mlp_ratio,
                depthwise_kernel_size=depthwise_kernel_size,
                use_external_adaln=True,
            )

        self.patchify = Patchify(in_channels, model_dim, patch_size)
        self.latent_up = nn.Conv2d(bottleneck_dim, model_dim, 1)
        self.fuse_in = nn.Conv2d(2 * model_dim, model_dim, 1)
        self.time_embed = SinusoidalTimeEmbeddingMLP(model_dim)
        self.adaln_base = AdaLNScaleGateZeroProjector(model_dim, model_dim)
        self.adaln_deltas = nn.ModuleList(
            AdaLNScaleGateZeroLowRankDelta(model_dim, model_dim, adaln_low_rank_rank)
            for _ in range(depth)
        )
        self.start_blocks = nn.ModuleList(block() for _ in range(start_block_count))
        self.middle_blocks = nn.ModuleList(block() for _ in range(middle_block_count))
        self.fuse_skip = nn.Conv2d(2 * model_dim, model_dim, 1)
        self.end_blocks = nn.ModuleList(block() for _ in range(end_block_count))
        self.path_drop_mask_feature = nn.Parameter(torch.zeros(1, model_dim, 1, 1))
        self.out_proj = nn.Conv2d(model_dim, in_channels * patch_size**2, 1)
        self.unpatchify = nn.PixelShuffle(patch_size)

    def forward(
        self, x_t: Tensor, t: Tensor, latents: Tensor, *, drop_middle_blocks: bool = False
    ) -> Tensor:
        """x_t [N, 3, H, W], t [N] in [0, 1], raw latents [N, B, H/P, W/P] -> x0_hat [N, 3, H, W].

        With `unpatchify_latents` the latents come 2x2-patchified, [N, 4B, H/2P, W/2P]. With
        `drop_middle_blocks` the middle blocks are replaced by the learned mask feature: the
        weak prediction of path-drop guidance (PDG).

        Runs over row spans of the latent grid (`tile_tokens`; None: one span, the whole grid).
        Tiled, the full-size tensors are x_t, the output, and at most three [N, C, h, w]
        feature maps (the start-block skip, the first middle block's input and its output);
        every other block writes its output over its input. The pixel-level patchify, out_proj
        and PixelShuffle, the fuse convs and each block's MLP run span by span.
        """
        if self.unpatchify_latents:
            latents = channels_to_space(latents)  # [N, 4B, h, w] -> [N, B, 2h, 2w]
        cond = self.time_embed(t.to(device=x_t.device, dtype=torch.float32))
        modulations = block_modulations(self.adaln_base, self.adaln_deltas, cond)  # [D, N, 2C]
        patch = self.patch_size
        spans = row_spans(latents.shape[2], latents.shape[3], self.tile_tokens)

        def fused_input(start: int, stop: int) -> Tensor:
            pixels = x_t[:, :, start * patch : stop * patch]
            features = [self.patchify(pixels), self.latent_up(latents[:, :, start:stop])]
            return self.fuse_in(torch.cat(features, dim=1))  # [N, C, rows, w]

        def run(blocks: nn.ModuleList, x: Tensor, first_index: int, own_input: bool) -> Tensor:
            # Global block index b selects the AdaLN delta: start 0.., middle, then end. Tiled
            # blocks overwrite their input in place, except an input the caller still needs.
            for offset, block in enumerate(blocks):
                x = block(
                    x,
                    adaln_m=modulations[first_index + offset],
                    tile_tokens=self.tile_tokens,
                    recompute=self.tile_recompute,
                    overwrite=own_input or offset > 0,
                )
            return x

        skip = run(self.start_blocks, stitch_rows(fused_input, spans), 0, own_input=True)
        middle = None
        if not drop_middle_blocks:  # the skip is read again by fuse_skip
            middle = run(self.middle_blocks, skip, len(self.start_blocks), own_input=False)
        fused = self._fused_skip(skip, middle, spans)
        del skip, middle
        end_index = len(self.start_blocks) + len(self.middle_blocks)
        end = run(self.end_blocks, fused, end_index, own_input=True)
        del fused
        return stitch_rows(
            lambda start, stop: self.unpatchify(self.out_proj(end[:, :, start:stop])), spans, patch
        )

    def _fused_skip(
        self, skip: Tensor, middle: Tensor | None, spans: list[tuple[int, int]]
    ) -> Tensor:
        """fuse_skip(skip ++ middle) [N, C, h, w] span by span; middle None: PDG's mask feature."""
        mask_feature = self.path_drop_mask_feature.to(skip.dtype)

        def fused_rows(start: int, stop: int) -> Tensor:
            skip_rows = skip[:, :, start:stop]
            if middle is None:
                middle_rows = mask_feature.expand_as(skip_rows)
            else:
                middle_rows = middle[:, :, start:stop]
            return self.fuse_skip(torch.cat([skip_rows, middle_rows], dim=1))

        return stitch_rows(fused_rows, spans)


# ---- fcdm autoencoder ------------------------------------------------------------------
# The FCDM diffusion autoencoder: FCDM encoder + FCDM decoder + whitening (SemDisDiffAE layout).
#
# fcdm_diffae and full_capacitor are configurations of this one model. Its config is an
# `FCDMConfig` (the shared fields, their checks, the latent layout, `whitening_eps`).


def build_fcdm_decoder(config: Any) -> FCDMDecoder:
    """The FCDM decoder described by a family config's published fields."""
    return FCDMDecoder(
        in_channels=config.in_channels,
        patch_size=config.patch_size,
        model_dim=config.model_dim,
        depth=config.decoder_depth,
        start_block_count=config.decoder_start_blocks,
        end_block_count=config.decoder_end_blocks,
        bottleneck_dim=config.bottleneck_dim,
        mlp_ratio=config.mlp_ratio,
        depthwise_kernel_size=config.depthwise_kernel_size,
        adaln_low_rank_rank=config.adaln_low_rank_rank,
        unpatchify_latents=config.patchifies_bottleneck,
    )


class FCDMAutoencoder(DiffusionAutoencoder):
    """images [N, 3, H, W] in [-1, 1] <-> whitened latents [N, C, H/p, W/p].

    With `bottleneck_patchify_mode="patch_2x2"` the encoder's [N, B, H/P, W/P] posterior is
    2x2-patchified to [N, 4B, H/2P, W/2P] before whitening, and the decoder un-patchifies it.
    """

    encoder_normalizes_mean: ClassVar[bool] = True
    """Whether the encoder applies its affine-free RMSNorm to the posterior mean: an open point
    per family (no state-dict key tells), so each family sets it in one documented place."""

    def __init__(self, config: Any) -> None:
        super().__init__(config)
        if config.bottleneck_norm_mode != "disabled":
            # No release uses another mode and its meaning is undocumented: refuse, not guess.
            raise ValueError(
                f"bottleneck_norm_mode: only 'disabled' is supported (every release uses it), "
                f"got {config.bottleneck_norm_mode!r}"
            )
        self.encoder = FCDMEncoder(
            in_channels=config.in_channels,
            patch_size=config.patch_size,
            model_dim=config.model_dim,
            depth=config.encoder_depth,
            bottleneck_dim=config.bottleneck_dim,
            mlp_ratio=config.mlp_ratio,
            depthwise_kernel_size=config.depthwise_kernel_size,
            posterior_kind=config.bottleneck_posterior_kind,
            normalize_mean=self.encoder_normalizes_mean,
            patchify_bottleneck=config.patchifies_bottleneck,
        )
        self.decoder = build_fcdm_decoder(config)
