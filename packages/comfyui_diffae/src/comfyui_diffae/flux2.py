"""capacitor_decoder beside ComfyUI's stock FLUX.2 VAE.

ComfyUI's FLUX.2 LATENT is [N, 128, H/16, W/16]: the VAE's latents 2x2-patchified in FLUX.2's
channel order and whitened with the VAE's BatchNorm statistics (eps 1e-4), which is what
`CapacitorDecoder.decode` takes by default. So the stock VAE encodes and capacitor_decodes, as
long as both hold the same statistics; this module checks that.
"""

from __future__ import annotations

from typing import Any

from capacitor_decoder.config import FLUX2_PATCHIFIED_CHANNELS
from capacitor_decoder.flux2 import Flux2Statistics


def comfy_flux2_statistics(flux2_vae: Any) -> Flux2Statistics:
    """The latent BatchNorm statistics of a ComfyUI FLUX.2 VAE (`first_stage_model.bn`)."""
    stage = getattr(flux2_vae, "first_stage_model", None)
    batch_norm = getattr(stage, "bn", None)
    channels = getattr(flux2_vae, "latent_channels", None)
    if batch_norm is None or channels != FLUX2_PATCHIFIED_CHANNELS:
        raise ValueError(
            f"flux2_vae: expected the FLUX.2 VAE ({FLUX2_PATCHIFIED_CHANNELS} latent channels "
            f"with a latent BatchNorm), got a VAE with {channels} latent channels"
            + ("" if batch_norm is not None else " and no latent BatchNorm")
        )
    return Flux2Statistics(
        running_mean=batch_norm.running_mean.detach().float().cpu(),
        running_var=batch_norm.running_var.detach().float().cpu(),
        eps=float(getattr(stage, "bn_eps", batch_norm.eps)),
    )


def check_flux2_vae(decoder: Any, flux2_vae: Any) -> None:
    """ValueError unless the stock VAE's statistics equal the decoder's stored ones, rounded to
    the dtype of the VAE's buffers (a bf16 VAE holds bf16-rounded statistics)."""
    theirs = comfy_flux2_statistics(flux2_vae)
    dtype = flux2_vae.first_stage_model.bn.running_mean.dtype
    stored = decoder.flux2_statistics()
    expected = Flux2Statistics(
        running_mean=stored.running_mean.to(dtype).float(),
        running_var=stored.running_var.to(dtype).float(),
        eps=stored.eps,
    )
    problems = expected.differences(theirs)
    if problems:
        raise ValueError(
            "flux2_vae: its latent statistics differ from the FLUX.2 statistics stored with the "
            "capacitor decoder (decoder vs vae), so it is not the VAE whose latents the decoder "
            "was trained on: " + "; ".join(problems)
        )
