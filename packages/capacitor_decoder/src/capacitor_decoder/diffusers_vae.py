"""capacitor_decoder as the `vae` of diffusers' FLUX.2 pipelines (optional: needs diffusers).

    pipe = Flux2Pipeline.from_pretrained(...)
    pipe.vae = CapacitorDecoder.from_pretrained(...).as_flux2_vae(pipe.vae)

What the pipelines (`Flux2Pipeline`, `Flux2KleinPipeline`, ...) do with `pipe.vae`, and so what
this module keeps: `config.block_out_channels` gives `vae_scale_factor` once, at construction;
the 128-channel latents are un-whitened with `bn.running_mean` / `running_var` and
`config.batch_norm_eps`, unpatchified to [N, 32, H/8, W/8] and passed to
`decode(latents, return_dict=False)[0]`, which must give images in [-1, 1]; reference images go
through `encode(images).latent_dist.mode()`. `dtype` / `device` are read from the module, and
model CPU offload moves it only around methods that carry diffusers' forward hook.

Imported only by `CapacitorDecoder.as_flux2_vae`: the package itself never needs diffusers.
"""

from __future__ import annotations

from typing import Any

from diffusers.configuration_utils import ConfigMixin
from diffusers.models.autoencoders.vae import DecoderOutput, DiagonalGaussianDistribution
from diffusers.models.modeling_outputs import AutoencoderKLOutput
from diffusers.models.modeling_utils import ModelMixin
from diffusers.utils.accelerate_utils import apply_forward_hook
from torch import Tensor

from .config import FLUX2_LATENT_CHANNELS, CapacitorDecoderInferenceConfig
from .flux2 import Flux2Statistics, flux2_patchify
from .model import CapacitorDecoder


class CapacitorFlux2VAE(ModelMixin, ConfigMixin):
    """FLUX.2's encoder and latent statistics + capacitor_decoder, a drop-in `pipe.vae`.

    `encode` is the FLUX.2 VAE's (its `encoder`, `quant_conv` and `DiagonalGaussianDistribution`
    are shared with it, not copied; tiling and slicing are not carried over). `decode` takes the
    raw FLUX.2 latents [N, 32, H/8, W/8] the pipelines pass, 2x2-patchifies them and decodes
    with capacitor_decoder without a whitening round trip (`latents_are_flux2_whitened=False`).
    The config is the FLUX.2 VAE's, field for field. `inference_config` (steps, sampler,
    PDG, seed) is a plain attribute: set it between pipeline calls.

    The FLUX.2 decoder is not kept, so the VAE's decoder weights are freed with the original
    VAE. `save_pretrained` / `from_pretrained` of this wrapper are not supported: save the
    decoder and the FLUX.2 VAE each on their own.
    """

    def __init__(
        self,
        flux2_vae: Any,
        decoder: CapacitorDecoder,
        *,
        inference_config: CapacitorDecoderInferenceConfig | None = None,
        check_statistics: bool = True,
    ) -> None:
        super().__init__()
        if check_statistics:
            check_statistics_match(decoder, flux2_vae)
        self.register_to_config(
            **{name: value for name, value in flux2_vae.config.items() if not name.startswith("_")}
        )
        self.encoder = flux2_vae.encoder
        self.quant_conv = flux2_vae.quant_conv
        self.bn = flux2_vae.bn
        self.capacitor_decoder = decoder
        self.inference_config = (
            decoder.inference_config_class() if inference_config is None else inference_config
        )

    @classmethod
    def from_pretrained(cls, *args: Any, **kwargs: Any) -> CapacitorFlux2VAE:
        raise NotImplementedError(
            "CapacitorFlux2VAE is built, not loaded: "
            "CapacitorDecoder.from_pretrained(...).as_flux2_vae(AutoencoderKLFlux2.from_pretrained(...))"
        )

    @apply_forward_hook
    def encode(
        self, x: Tensor, return_dict: bool = True
    ) -> AutoencoderKLOutput | tuple[DiagonalGaussianDistribution]:
        """images [N, 3, H, W] in [-1, 1] (the encoder's dtype) -> FLUX.2's posterior over the
        raw latents [N, 32, H/8, W/8], as `AutoencoderKLFlux2.encode` without tiling."""
        moments = self.encoder(x)
        if self.quant_conv is not None:
            moments = self.quant_conv(moments)
        posterior = DiagonalGaussianDistribution(moments)
        return AutoencoderKLOutput(latent_dist=posterior) if return_dict else (posterior,)

    @apply_forward_hook
    def decode(self, z: Tensor, return_dict: bool = True) -> DecoderOutput | tuple[Tensor]:
        """Raw FLUX.2 latents [N, 32, H/8, W/8] (h, w even) -> images [N, 3, H, W], float32,
        ~[-1, 1], not clamped; one capacitor_decoder decode with `self.inference_config`."""
        if z.ndim != 4 or z.shape[1] != FLUX2_LATENT_CHANNELS:
            raise ValueError(
                f"z: expected raw FLUX.2 latents [N, {FLUX2_LATENT_CHANNELS}, H/8, W/8], "
                f"got {tuple(z.shape)}"
            )
        height, width = 8 * z.shape[-2], 8 * z.shape[-1]
        images = self.capacitor_decoder.decode(
            flux2_patchify(z),  # [N, 32, h, w] -> [N, 128, h/2, w/2]
            height,
            width,
            inference_config=self.inference_config,
            latents_are_flux2_whitened=False,
        )
        return DecoderOutput(sample=images) if return_dict else (images,)

    def forward(
        self,
        sample: Tensor,
        sample_posterior: bool = False,
        return_dict: bool = True,
        generator: Any = None,
    ) -> DecoderOutput | tuple[Tensor]:
        """images [N, 3, H, W] -> FLUX.2 encode (mode, or a sample) -> capacitor decode."""
        posterior = self.encode(sample).latent_dist
        latents = posterior.sample(generator=generator) if sample_posterior else posterior.mode()
        return self.decode(latents, return_dict=return_dict)


def check_statistics_match(decoder: CapacitorDecoder, flux2_vae: Any) -> None:
    """Raise ValueError unless the VAE's `bn` statistics are the decoder's stored FLUX.2 ones,
    rounded to the dtype of the VAE's buffers (a bf16 VAE holds bf16-rounded statistics).

    The raw path never un-whitens with the decoder's copy (the pipeline un-whitens with the
    VAE's), so this is not needed for consistency: it guards that the VAE is the FLUX.2 VAE
    whose latents the decoder was trained on.
    """
    dtype = flux2_vae.bn.running_mean.dtype
    stored = decoder.flux2_statistics()
    expected = Flux2Statistics(
        running_mean=stored.running_mean.to(dtype).float(),
        running_var=stored.running_var.to(dtype).float(),
        eps=stored.eps,
    )
    problems = expected.differences(Flux2Statistics.from_vae(flux2_vae))
    if problems:
        raise ValueError(
            "flux2_vae: its latent statistics differ from the FLUX.2 statistics stored with the "
            "decoder (decoder vs vae), so it is not the VAE the decoder was trained on; pass "
            "check_statistics=False to use it anyway: " + "; ".join(problems)
        )
