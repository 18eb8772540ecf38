"""diffusers interop: capacitor_decoder inside a FLUX.2 pipeline, every autoencoder as a VAE.

Tiny random components built as diffusers' own Flux2Pipeline tests build them (one-layer
transformer), except a FLUX.2 VAE with the real 8x downsampling and 32 latent channels; no text
encoder (nothing can be downloaded): the prompt embeddings are passed in. Runs Flux2Pipeline
and Flux2KleinPipeline, each with a reference image and under model CPU offload. Everything
float32, so the adapters and the models' own calls run the same kernels on the same data:
compared bitwise.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from capacitor_decoder import CapacitorDecoder, CapacitorDecoderInferenceConfig, flux2_patchify
from capacitor_decoder.family import TINY_CONFIG as CAPACITOR_TINY_CONFIG
from diffae_core.families import installed_families
from diffae_testing import randomize_weights

pytest.importorskip("diffusers")
from diffusers import (
    AutoencoderKLFlux2,
    FlowMatchEulerDiscreteScheduler,
    Flux2KleinPipeline,
    Flux2Pipeline,
    Flux2Transformer2DModel,
)
from diffusers.models.autoencoders.vae import DecoderOutput

from diffae.diffusers_vae import AutoencoderDiffae

SIZE = 32
"""Image side: a 4x4 FLUX.2 latent grid, 2x2 patchified tokens."""
SEED = 0


@pytest.fixture(scope="module")
def flux2_vae() -> AutoencoderKLFlux2:
    """A tiny FLUX.2 VAE (8x down, 32 latent channels), random weights and BN statistics."""
    torch.manual_seed(0)
    vae = AutoencoderKLFlux2(
        block_out_channels=(8, 8, 8, 8), layers_per_block=1, norm_num_groups=4, sample_size=SIZE
    ).eval()
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        vae.bn.running_mean.copy_(torch.randn(128, generator=generator))
        vae.bn.running_var.copy_(0.2 + torch.rand(128, generator=generator))
    return vae


@pytest.fixture(scope="module")
def decoder(flux2_vae) -> CapacitorDecoder:
    """A tiny capacitor_decoder holding the VAE's statistics, as the published one does."""
    decoder = randomize_weights(CapacitorDecoder(CAPACITOR_TINY_CONFIG)).eval()
    with torch.no_grad():
        decoder.latent_norm_running_mean.copy_(flux2_vae.bn.running_mean)
        decoder.latent_norm_running_var.copy_(flux2_vae.bn.running_var)
    return decoder


PIPELINES = {
    # pipeline class, its keyword arguments, guidance-embedding transformer, guidance scale
    "flux2": (Flux2Pipeline, {}, True, 4.0),
    "flux2_klein": (Flux2KleinPipeline, {"is_distilled": True}, False, 1.0),
}


def tiny_flux2_pipeline(name: str, vae: torch.nn.Module) -> Flux2Pipeline:
    pipeline_class, options, guidance_embeds, _ = PIPELINES[name]
    torch.manual_seed(0)
    transformer = Flux2Transformer2DModel(
        patch_size=1,
        in_channels=128,
        num_layers=1,
        num_single_layers=1,
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=16,
        timestep_guidance_channels=256,
        axes_dims_rope=[4, 4, 4, 4],
        guidance_embeds=guidance_embeds,
    )
    pipe = pipeline_class(
        scheduler=FlowMatchEulerDiscreteScheduler(),
        vae=vae,
        text_encoder=None,
        tokenizer=None,
        transformer=transformer,
        **options,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def generate(pipe: Flux2Pipeline, name: str, output_type: str) -> torch.Tensor:
    """Two steps from fixed prompt embeddings, with a reference image (64x64, the pipelines'
    minimum), which goes through `vae.encode(...).latent_dist.mode()`."""
    pixels = np.random.default_rng(2).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    return pipe(
        prompt_embeds=torch.randn(1, 8, 16, generator=torch.Generator().manual_seed(2)),
        image=[Image.fromarray(pixels)],
        height=SIZE,
        width=SIZE,
        num_inference_steps=2,
        guidance_scale=PIPELINES[name][3],
        generator=torch.Generator().manual_seed(SEED),
        output_type=output_type,
    ).images


def decode_pipeline_latents(
    decoder: CapacitorDecoder, latents: torch.Tensor, settings: CapacitorDecoderInferenceConfig
) -> torch.Tensor:
    """capacitor_decoder's own decode of what `output_type="latent"` gives: Flux2Pipeline's
    whitened, patchified tokens [N, h*w, 128]; Flux2KleinPipeline's raw [N, 32, H/8, W/8]."""
    if latents.ndim == 3:
        grid = SIZE // 16
        whitened = latents.transpose(1, 2).reshape(-1, 128, grid, grid)  # [N, L, C] -> [N, C, h, w]
        return decoder.decode(whitened, SIZE, SIZE, inference_config=settings)
    return decoder.decode(
        flux2_patchify(latents),  # [N, 32, H/8, W/8] -> [N, 128, H/16, W/16]
        SIZE,
        SIZE,
        inference_config=settings,
        latents_are_flux2_whitened=False,
    )


@pytest.mark.parametrize("name", list(PIPELINES))
def test_flux2_pipeline_decodes_with_capacitor_decoder(name: str, flux2_vae, decoder) -> None:
    pipe = tiny_flux2_pipeline(name, flux2_vae)
    latents = generate(pipe, name, "latent")
    settings = CapacitorDecoderInferenceConfig(seed=SEED)
    pipe.vae = decoder.as_flux2_vae(pipe.vae, inference_config=settings)
    assert pipe.vae_scale_factor == 8 and pipe.device.type == "cpu"
    assert pipe.dtype == torch.float32
    images = generate(pipe, name, "pt")

    ours = decode_pipeline_latents(decoder, latents, settings)
    assert images.shape == (1, 3, SIZE, SIZE)
    assert torch.equal(images, pipe.image_processor.postprocess(ours, output_type="pt"))

    pytest.importorskip("accelerate")
    pipe.enable_model_cpu_offload(device="cpu")
    assert torch.equal(generate(pipe, name, "pt"), images)
    assert pipe.vae._hf_hook is not None


def test_flux2_vae_adapter_keeps_encoder_config_and_statistics(flux2_vae, decoder) -> None:
    vae = decoder.as_flux2_vae(flux2_vae)
    assert vae.config.block_out_channels == flux2_vae.config.block_out_channels
    assert vae.config.batch_norm_eps == flux2_vae.config.batch_norm_eps
    assert vae.config.latent_channels == 32
    assert vae.bn is flux2_vae.bn and vae.encoder is flux2_vae.encoder
    assert not hasattr(vae, "decoder"), "the FLUX.2 decoder is not carried along"
    assert vae.dtype == torch.float32 and vae.device.type == "cpu"

    # Non-square (H != W), so that a swapped height and width cannot pass.
    height, width = SIZE, SIZE + 16
    images = torch.rand(1, 3, height, width, generator=torch.Generator().manual_seed(3)) * 2 - 1
    with torch.no_grad():
        theirs = flux2_vae.encode(images).latent_dist
        ours = vae.encode(images).latent_dist
    assert torch.equal(ours.mode(), theirs.mode()) and torch.equal(ours.std, theirs.std)

    z = theirs.mode()
    settings = CapacitorDecoderInferenceConfig(num_steps=2, sampler="dpmpp_2m", seed=SEED)
    vae.inference_config = settings
    output = vae.decode(z)
    assert isinstance(output, DecoderOutput) and output.sample.dtype == torch.float32
    assert output.sample.shape == (1, 3, height, width)
    expected = decoder.decode(
        flux2_patchify(z),
        height,
        width,
        inference_config=settings,
        latents_are_flux2_whitened=False,
    )
    assert torch.equal(output.sample, expected)
    assert torch.equal(vae.decode(z, return_dict=False)[0], expected)
    with pytest.raises(ValueError, match=r"z: expected raw FLUX.2 latents \[N, 32"):
        vae.decode(flux2_patchify(z))


def test_flux2_vae_adapter_checks_the_statistics(flux2_vae) -> None:
    stranger = CapacitorDecoder(CAPACITOR_TINY_CONFIG)  # default statistics: zeros and ones
    with pytest.raises(ValueError, match="running_mean: 128 of 128 values differ"):
        stranger.as_flux2_vae(flux2_vae)
    stranger.as_flux2_vae(flux2_vae, check_statistics=False)


def test_flux2_vae_adapter_accepts_a_bf16_vae(flux2_vae, decoder) -> None:
    """A bf16 VAE holds bf16-rounded statistics; the check compares at that precision."""
    bf16_vae = AutoencoderKLFlux2.from_config(flux2_vae.config)
    bf16_vae.load_state_dict(flux2_vae.state_dict())
    decoder.as_flux2_vae(bf16_vae.to(torch.bfloat16))


def test_flux2_vae_adapter_runs_under_model_cpu_offload(flux2_vae, decoder) -> None:
    """accelerate's offload hook is entered by `decode`, not only by `forward`."""
    pytest.importorskip("accelerate")
    from accelerate.hooks import ModelHook, add_hook_to_module

    class Recorder(ModelHook):
        calls = 0

        def pre_forward(self, module, *args, **kwargs):
            Recorder.calls += 1
            return args, kwargs

    vae = decoder.as_flux2_vae(flux2_vae, inference_config=CapacitorDecoderInferenceConfig(seed=0))
    add_hook_to_module(vae, Recorder())
    z = torch.randn(1, 32, SIZE // 8, SIZE // 8, generator=torch.Generator().manual_seed(4))
    vae.decode(z)
    vae.encode(torch.zeros(1, 3, SIZE, SIZE))
    assert Recorder.calls == 2


FAMILIES = {
    name: family
    for name, family in installed_families().items()
    if hasattr(family.model_class, "encode")
}


@pytest.mark.parametrize(
    ("family_name", "config"),
    [
        pytest.param(name, config, id=preset)
        for name, family in FAMILIES.items()
        for preset, config in family.tiny_configs().items()
    ],
)
def test_autoencoder_wrapper_equals_the_family(family_name: str, config) -> None:
    family = FAMILIES[family_name]
    model = randomize_weights(family.model_class(config)).eval()
    settings = family.inference_config_class(seed=SEED)
    vae = AutoencoderDiffae(model, inference_config=settings)
    patch = config.effective_patch_size
    assert vae.config.family == family_name
    assert (vae.config.scaling_factor, vae.config.shift_factor) == (1.0, 0.0)
    assert vae.config.spatial_compression_ratio == patch
    assert 2 ** (len(vae.config.block_out_channels) - 1) == patch

    height, width = 2 * patch, 3 * patch  # non-square: a swapped height and width cannot pass
    images = torch.rand(2, 3, height, width, generator=torch.Generator().manual_seed(5))
    images = images * 2 - 1
    with torch.no_grad():
        distribution = vae.encode(images).latent_dist
        latents = model.encode(images)
        assert torch.equal(distribution.mode(), latents)
        assert torch.equal(vae.encode(images, return_dict=False)[0].mean, latents)
        draw = distribution.sample(torch.Generator().manual_seed(6))
        again = distribution.sample(torch.Generator().manual_seed(6))
    assert torch.equal(draw, again) and draw.shape == latents.shape
    if hasattr(model, "whiten"):
        expected = model.whiten(
            model.encode_posterior(images).sample(generator=torch.Generator().manual_seed(6))
        )
        assert torch.equal(draw, expected)
    else:  # deterministic encoder, no whitening (mDiffAE)
        assert torch.equal(draw, latents)

    decoded = vae.decode(latents).sample
    expected = model.decode(latents, height, width, inference_config=settings)
    assert decoded.dtype == torch.float32 and decoded.shape == (2, 3, height, width)
    assert torch.equal(decoded, expected)


def test_autoencoder_wrapper_refuses_the_decoder_only_family() -> None:
    with pytest.raises(TypeError, match="as_flux2_vae"):
        AutoencoderDiffae(CapacitorDecoder(CAPACITOR_TINY_CONFIG))
