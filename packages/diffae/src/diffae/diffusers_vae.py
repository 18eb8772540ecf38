"""Any diffae autoencoder as a diffusers VAE: `encode(x).latent_dist`, `decode(z).sample`.

    vae = AutoencoderDiffae(FCDMDiffAE.from_pretrained("data-archetype/semdisdiffae_p32_v2"))
    latents = vae.encode(images).latent_dist.sample(generator)  # already whitened
    images = vae.decode(latents).sample                         # float32, ~[-1, 1]

One wrapper for every installed family with an encoder (fcdm_diffae, dinac_ae, m_diffae,
full_capacitor), found through the `diffae.families` entry points: it lives in the tools package
because the runtime packages and `diffae_core` never depend on diffusers. capacitor_decoder has
no encoder; its FLUX.2 adapter is `CapacitorDecoder.as_flux2_vae`. Needs diffusers
(`pip install "diffae[diffusers]"`).

The latents are the family's own: what its `encode` returns and its `decode` takes (whitened
with its stored running statistics, except mDiffAE's, which has no whitening), so the config
says `scaling_factor = 1.0` and `shift_factor = 0.0` and code doing
`(latents - shift_factor) * scaling_factor` leaves them as they are.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from diffusers.configuration_utils import ConfigMixin
from diffusers.models.autoencoders.vae import DecoderOutput
from diffusers.models.modeling_outputs import AutoencoderKLOutput
from diffusers.models.modeling_utils import ModelMixin
from diffusers.utils.accelerate_utils import apply_forward_hook
from torch import Tensor

from diffae_core.diffusion import EncoderPosterior
from diffae_core.families import Family, installed_families

SCALING_FACTOR = 1.0
SHIFT_FACTOR = 0.0


class LatentDistribution:
    """The family's encoder posterior in its latent space: diffusers' `latent_dist`.

    A VP posterior N(alpha * mean, sigma^2) over the raw latents, whitened per channel (an
    affine map, so the whitened posterior is Gaussian too). Moments are float32 [N, C, h, w].
    """

    def __init__(self, posterior: EncoderPosterior, whiten: Callable[[Tensor], Tensor]) -> None:
        self.posterior = posterior
        self.whiten = whiten

    def mode(self) -> Tensor:
        """whiten(alpha * mean), float32: the family's `encode(images)` (bitwise in float32;
        fcdm_diffae's `encode` then rounds it to the weights' dtype)."""
        return self.whiten(self.posterior.mode().to(self.posterior.mean.dtype))

    @property
    def mean(self) -> Tensor:
        """The mean of a Gaussian is its mode."""
        return self.mode()

    def sample(self, generator: torch.Generator | None = None) -> Tensor:
        """whiten(alpha * mean + sigma * eps), float32; eps ~ N(0, 1) drawn in float32 with
        `generator` on the latents' device (positional, as diffusers' `retrieve_latents` calls)."""
        return self.whiten(self.posterior.sample(generator=generator))


class AutoencoderDiffae(ModelMixin, ConfigMixin):
    """A diffae autoencoder behind diffusers' VAE interface.

    `encode(images)` -> `AutoencoderKLOutput(latent_dist=LatentDistribution)`; `decode(latents)`
    -> `DecoderOutput(sample=images)`, float32, ~[-1, 1], not clamped, decoded with
    `self.inference_config` (steps, sampler, PDG, seed: a plain attribute, set it freely).
    `encode`, `decode` carry diffusers' forward hook, so model CPU offload moves the model.

    Config (documented because diffusers code reads it):
    - `family`: the diffae family's name; `in_channels`, `out_channels`: 3.
    - `latent_channels`: C; `spatial_compression_ratio`: p (images H x W <-> latents H/p x W/p).
    - `block_out_channels`: a placeholder of length log2(p) + 1, so that pipelines computing
      `vae_scale_factor = 2 ** (len(block_out_channels) - 1)` get p; its values (the model's
      width) mean nothing else.
    - `scaling_factor = 1.0`, `shift_factor = 0.0`: the latents are already whitened.
    - `force_upcast = False`: the families keep their own float32 islands.
    """

    def __init__(self, model: torch.nn.Module, *, inference_config: Any = None) -> None:
        super().__init__()
        family = family_of(model)
        config = model.config
        patch = int(config.effective_patch_size)
        self.register_to_config(
            family=family.name,
            in_channels=config.in_channels,
            out_channels=config.in_channels,
            latent_channels=config.latent_channels,
            spatial_compression_ratio=patch,
            block_out_channels=(config.model_dim,) * (int(math.log2(patch)) + 1),
            scaling_factor=SCALING_FACTOR,
            shift_factor=SHIFT_FACTOR,
            force_upcast=False,
        )
        self.model = model
        self.inference_config = (
            family.inference_config_class() if inference_config is None else inference_config
        )

    @classmethod
    def from_pretrained(cls, *args: Any, **kwargs: Any) -> AutoencoderDiffae:
        raise NotImplementedError(
            "AutoencoderDiffae wraps a loaded model: "
            "AutoencoderDiffae(<Family model class>.from_pretrained(...))"
        )

    @apply_forward_hook
    def encode(
        self, x: Tensor, return_dict: bool = True
    ) -> AutoencoderKLOutput | tuple[LatentDistribution]:
        """images [N, 3, H, W] in [-1, 1] (H, W multiples of p) -> the posterior over the
        family's latents [N, C, H/p, W/p]."""
        # mDiffAE's deterministic encoder has alpha = 1, sigma = 0 and no whitening.
        whiten = getattr(self.model, "whiten", as_float32)
        distribution = LatentDistribution(self.model.encode_posterior(x), whiten)
        return AutoencoderKLOutput(latent_dist=distribution) if return_dict else (distribution,)

    @apply_forward_hook
    def decode(self, z: Tensor, return_dict: bool = True) -> DecoderOutput | tuple[Tensor]:
        """Latents [N, C, h, w] -> images [N, 3, h*p, w*p], float32, ~[-1, 1], not clamped."""
        patch = self.config.spatial_compression_ratio
        height, width = patch * int(z.shape[-2]), patch * int(z.shape[-1])
        images = self.model.decode(z, height, width, inference_config=self.inference_config)
        return DecoderOutput(sample=images) if return_dict else (images,)

    def forward(
        self,
        sample: Tensor,
        sample_posterior: bool = False,
        return_dict: bool = True,
        generator: torch.Generator | None = None,
    ) -> DecoderOutput | tuple[Tensor]:
        """images -> encode (mode, or a sample) -> decode, as diffusers' `AutoencoderKL`."""
        posterior = self.encode(sample).latent_dist
        latents = posterior.sample(generator) if sample_posterior else posterior.mode()
        return self.decode(latents, return_dict=return_dict)


def as_float32(latents: Tensor) -> Tensor:
    """mDiffAE latents as they are, in float32 (its latent space has no whitening)."""
    return latents.float()


def family_of(model: torch.nn.Module) -> Family:
    """The installed family whose model class `model` is (or subclasses); it needs an encoder."""
    for family in installed_families().values():
        if isinstance(model, family.model_class):
            if not hasattr(model, "encode"):
                raise TypeError(
                    f"model: {family.name} has no encoder, so it is no VAE"
                    + (
                        "; for FLUX.2 pipelines use CapacitorDecoder.as_flux2_vae(flux2_vae)"
                        if family.name == "capacitor_decoder"
                        else ""
                    )
                )
            return family
    raise TypeError(
        f"model: expected a model of an installed diffae family "
        f"({', '.join(installed_families())}), got {type(model).__name__}"
    )
