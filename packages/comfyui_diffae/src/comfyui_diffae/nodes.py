"""The V3 nodes (`comfy_api.latest`). Imported only by `comfy_entrypoint`, inside ComfyUI.

- Load diffae VAE: any autoencoder family from `models/vae/` -> VAE.
- Capacitor decoder (FLUX.2): capacitor_decoder + the stock FLUX.2 VAE (optional, to encode) -> VAE.
- diffae VAE Decode (advanced): a diffae VAE's decode with steps, sampler, schedule, PDG,
  strength, seed and tiling.
The VAE objects go into stock `VAEDecode` / `VAEEncode` / `...Tiled` like any ComfyUI VAE.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import folder_paths
from comfy_api.latest import ComfyExtension, io

from diffae_core.config import SAMPLER_NAMES, SCHEDULE_KINDS
from diffae_core.families import installed_families

from .flux2 import check_flux2_vae
from .loading import (
    AUTO,
    DTYPE_CHOICES,
    ModelFileError,
    choose_dtype,
    identify,
    load_identified,
)
from .runtime import ComfyRuntime
from .vae import DiffaeVAE

CATEGORY = "diffae"
CAPACITOR_FAMILY = "capacitor_decoder"


def model_files() -> list[str]:
    """The `.safetensors` files under ComfyUI's `vae` model folders (relative names)."""
    return [name for name in folder_paths.get_filename_list("vae") if name.endswith(".safetensors")]


def load_vae(
    file_name: str, dtype_name: str, *, family: str = AUTO, flux2_vae: Any = None
) -> DiffaeVAE:
    """A DiffaeVAE of `models/vae/<file_name>` in the chosen dtype (see `loading`)."""
    try:
        path = Path(folder_paths.get_full_path_or_raise("vae", file_name))
    except FileNotFoundError:
        raise ModelFileError(f"vae_name: {file_name!r} is not in models/vae") from None
    runtime = ComfyRuntime()
    identified = identify(path, family=family)
    model = load_identified(identified, choose_dtype(dtype_name, runtime.load_device()))
    return DiffaeVAE(
        model,
        identified.family,
        runtime,
        name=f"{file_name} ({identified.family.name}, {identified.how})",
        encoder_vae=flux2_vae,
    )


class LoadDiffaeVAE(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="DiffaeVAELoader",
            display_name="Load diffae VAE",
            category=CATEGORY,
            description=(
                "Any diffae autoencoder as a VAE for the stock VAE Encode / Decode nodes: "
                "models/vae/<name>/model.safetensors with its config.json, or a single "
                ".safetensors of a published preset."
            ),
            inputs=[
                io.Combo.Input("vae_name", options=model_files()),
                io.Combo.Input(
                    "dtype",
                    options=list(DTYPE_CHOICES),
                    default="auto",
                    tooltip="auto: bf16 on CUDA, fp32 otherwise",
                ),
                io.Combo.Input(
                    "family",
                    options=[AUTO, *installed_families()],
                    default=AUTO,
                    tooltip="auto: from config.json or the file's tensors",
                ),
            ],
            outputs=[io.Vae.Output()],
        )

    @classmethod
    def execute(cls, vae_name: str, dtype: str, family: str = AUTO) -> io.NodeOutput:
        return io.NodeOutput(load_vae(vae_name, dtype, family=family))


class CapacitorFlux2VAE(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="DiffaeCapacitorFlux2VAE",
            display_name="Capacitor decoder (FLUX.2)",
            category=CATEGORY,
            description=(
                "capacitor_decoder as the FLUX.2 VAE's decoder: decodes FLUX.2 latents; "
                "encodes with the stock FLUX.2 VAE when one is connected."
            ),
            inputs=[
                io.Combo.Input("decoder_name", options=model_files()),
                io.Combo.Input("dtype", options=list(DTYPE_CHOICES), default="auto"),
                io.Vae.Input(
                    "flux2_vae",
                    optional=True,
                    tooltip="the stock FLUX.2 VAE (VAELoader): encodes, and its latent "
                    "statistics are checked against the decoder's",
                ),
            ],
            outputs=[io.Vae.Output()],
        )

    @classmethod
    def execute(cls, decoder_name: str, dtype: str, flux2_vae: Any = None) -> io.NodeOutput:
        vae = load_vae(decoder_name, dtype, family=CAPACITOR_FAMILY, flux2_vae=flux2_vae)
        if vae.family.name != CAPACITOR_FAMILY:
            raise ModelFileError(
                f"decoder_name: {decoder_name} is a {vae.family.name} model, not a "
                f"{CAPACITOR_FAMILY}; load it with Load diffae VAE"
            )
        if flux2_vae is not None:
            check_flux2_vae(vae.first_stage_model, flux2_vae)
        return io.NodeOutput(vae)


class DiffaeVAEDecodeAdvanced(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="DiffaeVAEDecodeAdvanced",
            display_name="diffae VAE Decode (advanced)",
            category=CATEGORY,
            inputs=[
                io.Latent.Input("samples"),
                io.Vae.Input("vae", tooltip="a VAE from Load diffae VAE or Capacitor decoder"),
                io.Int.Input("steps", default=1, min=1, max=200),
                io.Combo.Input("sampler", options=list(SAMPLER_NAMES), default="ddim"),
                io.Combo.Input("schedule", options=list(SCHEDULE_KINDS), default="linear"),
                io.Boolean.Input("pdg", default=False, tooltip="path-drop guidance"),
                io.Float.Input("pdg_strength", default=2.0, min=0.0, max=20.0, step=0.05),
                io.Float.Input(
                    "strength",
                    default=1.0,
                    min=0.01,
                    max=1.0,
                    step=0.01,
                    tooltip="start the schedule at t = strength (families that have it)",
                ),
                io.Int.Input("seed", default=0, min=0, max=2**63 - 1, control_after_generate=True),
                io.Int.Input(
                    "tile_size",
                    default=0,
                    min=0,
                    max=16384,
                    step=32,
                    tooltip="0: untiled; else exact row tiling of about tile_size² pixels",
                ),
            ],
            outputs=[io.Image.Output()],
        )

    @classmethod
    def execute(
        cls,
        samples: dict,
        vae: Any,
        steps: int,
        sampler: str,
        schedule: str,
        pdg: bool,
        pdg_strength: float,
        strength: float,
        seed: int,
        tile_size: int,
    ) -> io.NodeOutput:
        if not isinstance(vae, DiffaeVAE):
            raise ValueError(
                "vae: expected a VAE from Load diffae VAE or Capacitor decoder (FLUX.2), got "
                f"{type(vae).__name__}"
            )
        settings = {
            "num_steps": steps,
            "sampler": sampler,
            "schedule": schedule,
            "pdg": pdg,
            "pdg_strength": pdg_strength,
            "seed": seed,
        }
        config_class = vae.family.inference_config_class
        if "strength" in {field.name for field in dataclasses.fields(config_class)}:
            settings["strength"] = strength
        elif strength != 1.0:
            raise ValueError(
                f"strength: {vae.family.name} has no strength setting; expected 1.0, got {strength}"
            )
        inference_config = config_class(**settings)
        tile_tokens = None
        if tile_size:
            cells = max(1, tile_size // vae.spacial_compression_decode())
            tile_tokens = cells * cells
        latents = samples["samples"]
        if latents.is_nested:
            latents = latents.unbind()[0]
        return io.NodeOutput(vae.decode_with(latents, inference_config, tile_tokens=tile_tokens))


class DiffaeExtension(ComfyExtension):
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return [LoadDiffaeVAE, CapacitorFlux2VAE, DiffaeVAEDecodeAdvanced]
