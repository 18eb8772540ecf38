"""Every family on every device: the CPU always, CUDA when there is one (the `device` fixture in
conftest.py skips it otherwise, saying why). Written to run unchanged on a GPU:
`bash benchmarks/gpu_check.sh` runs this file there.

Outputs on the device are compared with the float32 model's on the CPU: float32 within float32
rounding, bf16 within bf16 rounding. Tiny configs, random weights: the CPU half takes about
half a minute on 2 cores; torch.compile with inductor runs on CUDA only (tests/test_compile.py
captures every family's graphs on the CPU).
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import Tensor
from torch.nn.attention import SDPBackend, sdpa_kernel

from diffae_core.diffusion import host_to_device, sample_noise
from diffae_core.families import Family, installed_families
from diffae_core.runtime import value_checks
from diffae_testing import randomize_weights, randomize_whitening

FAMILIES = installed_families()
NAMES = sorted(FAMILIES)
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
WEIGHT_SCALE = 0.1
"""Random weights of this std keep the tiny models' outputs of order 1 (as the golden tests)."""
FLOAT32_RELATIVE = 1e-4
"""float32 on two devices: max |diff| relative to the output's scale (at least 1), ~1e3 ulps:
room for other kernels and summation orders, far below what a change of maths moves."""
BF16_RELATIVE = 0.05
"""bf16 against the float32 CPU outputs: max |diff| relative to the output's scale (at least 1);
a few bf16 steps (2^-8 relative) accumulated over a network."""
SEED = 5
SETTINGS = {"num_steps": 2, "pdg": True, "seed": SEED}
"""Two steps with PDG: both decoder paths (full and weak), m_diffae's token masks, the loop."""

pytestmark = pytest.mark.devices  # run by benchmarks/gpu_check.sh (see pyproject.toml)


def make_model(family: Family) -> torch.nn.Module:
    model = randomize_weights(family.model_class(family.tiny_config), scale=WEIGHT_SCALE)
    if hasattr(model, "latent_norm_running_mean"):
        randomize_whitening(model)
    return model.eval()


def grid(family: Family) -> tuple[int, int, int]:
    """(patch, height, width) of the test images: an odd 2 x 3 latent grid."""
    patch = family.tiny_config.effective_patch_size
    return patch, 2 * patch, 3 * patch


def inputs(family: Family) -> dict[str, Tensor]:
    """Seeded CPU inputs: images in [-1, 1], latents (whitened and raw), batch 2."""
    patch, height, width = grid(family)
    generator = torch.Generator().manual_seed(0)
    latent_shape = (2, family.tiny_config.latent_channels, height // patch, width // patch)
    return {
        "images": torch.rand(2, 3, height, width, generator=generator) * 2 - 1,
        "latents": torch.randn(latent_shape, generator=generator),
        "raw_latents": torch.randn(latent_shape, generator=generator) * 2 + 0.5,
    }


def run_everything(family: Family, model: torch.nn.Module, device: torch.device) -> dict:
    """encode, a seeded decode, predict_class and whiten where the family has them, moved to
    the CPU in float64 for comparison."""
    _, height, width = grid(family)
    given = {name: tensor.to(device) for name, tensor in inputs(family).items()}
    settings = family.inference_config_class(**SETTINGS)
    outputs = {"decode": model.decode(given["latents"], height, width, inference_config=settings)}
    with torch.no_grad():
        if callable(getattr(model, "encode", None)):
            outputs["encode"] = model.encode(given["images"])
        if callable(getattr(model, "predict_class", None)):
            outputs["predict_class"] = model.predict_class(given["latents"])
        if callable(getattr(model, "whiten", None)):
            outputs["whiten"] = model.whiten(given["raw_latents"])
    for name, output in outputs.items():
        assert output.device.type == device.type, f"{name} came back on {output.device}"
    return {name: output.double().cpu() for name, output in outputs.items()}


@functools.cache
def cpu_reference(name: str) -> dict[str, Tensor]:
    """The outputs of the float32 model on the CPU."""
    family = FAMILIES[name]
    return run_everything(family, make_model(family), torch.device("cpu"))


def tolerance(output: str, dtype: torch.dtype, reference: Tensor) -> float:
    scale = max(1.0, reference.abs().max().item())
    # dinac_ae's class head runs under bf16 autocast even in a float32 model, as the reference:
    # another device's bf16 kernels may round differently.
    bf16 = dtype == torch.bfloat16 or output == "predict_class"
    return (BF16_RELATIVE if bf16 else FLOAT32_RELATIVE) * scale


@pytest.mark.parametrize("dtype_name", list(DTYPES))
@pytest.mark.parametrize("name", NAMES)
def test_outputs_equal_the_cpu_outputs(name: str, dtype_name: str, device) -> None:
    """encode, decode, predict_class and whiten on the device equal the float32 CPU results:
    in float32 to float32 rounding, in bf16 to bf16 rounding. The decode is seeded: the same
    seed draws the same noise on every device (a CPU generator), so the images agree."""
    family, dtype = FAMILIES[name], DTYPES[dtype_name]
    model = make_model(family).to(device=device, dtype=dtype)
    outputs = run_everything(family, model, device)
    reference = cpu_reference(name)
    assert outputs.keys() == reference.keys()
    for output, expected in reference.items():
        torch.testing.assert_close(
            outputs[output],
            expected,
            rtol=0,
            atol=tolerance(output, dtype, expected),
            msg=lambda text, output=output: f"{name} {output} on {device}, {dtype_name}: {text}",
        )


def test_seeded_noise_is_the_cpu_draw_and_unseeded_noise_is_drawn_on_the_device(device) -> None:
    shape = (2, 3, 8, 8)
    on_cpu = sample_noise(shape, 0.5, seed=3)
    seeded = sample_noise(shape, 0.5, seed=3, device=device)
    assert seeded.device.type == device.type and torch.equal(seeded.cpu(), on_cpu)
    assert sample_noise(shape, 0.5, device=device).device.type == device.type


def test_host_tensors_are_pinned_only_for_cuda(device, monkeypatch) -> None:
    """Pinned (page-locked) memory buys a copy without a host sync on CUDA; on a CPU it would
    only cost an allocation, so nothing is pinned there."""
    pinned = []  # one entry per host tensor pinned
    original_randn, original_pin = torch.randn, torch.Tensor.pin_memory

    def randn(*args: Any, **kwargs: Any) -> Tensor:
        if kwargs.get("pin_memory"):
            pinned.append("noise")
        return original_randn(*args, **kwargs)

    def pin_memory(tensor: Tensor, *args: Any) -> Tensor:
        pinned.append("copy")
        return original_pin(tensor, *args)

    monkeypatch.setattr(torch, "randn", randn)
    monkeypatch.setattr(torch.Tensor, "pin_memory", pin_memory)
    sample_noise((1, 3, 4, 4), 1.0, seed=0, device=device)
    moved = host_to_device(torch.ones(3), device)
    assert moved.device.type == device.type
    assert pinned == (["noise", "copy"] if device.type == "cuda" else [])


@contextmanager
def host_syncs_refused(device: torch.device) -> Iterator[None]:
    """Inside the block a host sync is an error: on CUDA PyTorch's sync debug mode; on a CPU
    (where nothing is asynchronous) the Python calls that would sync on CUDA raise instead."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.set_sync_debug_mode("error")
        try:
            yield
        finally:
            torch.cuda.set_sync_debug_mode("default")
        return

    def refuse(tensor: Tensor, *args: Any, **kwargs: Any) -> None:
        raise AssertionError("a host sync (tensor value read on the host) in the decode loop")

    with pytest.MonkeyPatch.context() as patch:
        for method in ("item", "tolist", "__bool__", "__float__", "__int__", "__index__"):
            patch.setattr(Tensor, method, refuse)
        patch.setattr(Tensor, "cpu", refuse)
        patch.setattr(Tensor, "numpy", refuse)
        yield


@pytest.mark.parametrize("seed", [SEED, None], ids=["seeded", "unseeded"])
@pytest.mark.parametrize("name", NAMES)
def test_decode_makes_no_host_sync(name: str, seed: int | None, device) -> None:
    """With the input value checks off, a decode (2 steps, PDG) never waits for the device."""
    family = FAMILIES[name]
    _, height, width = grid(family)
    model = make_model(family).to(device)
    latents = inputs(family)["latents"].to(device)
    settings = family.inference_config_class(**{**SETTINGS, "seed": seed})
    with torch.no_grad(), value_checks(False), host_syncs_refused(device):
        model.decode(latents, height, width, inference_config=settings)


def test_value_checks_cost_one_host_sync_per_call(device) -> None:
    """The NaN/inf and range checks read one min/max pair back: one sync per call (CUDA)."""
    family = FAMILIES["capacitor_decoder" if "capacitor_decoder" in FAMILIES else NAMES[0]]
    _, height, width = grid(family)
    model = make_model(family).to(device)
    latents = inputs(family)["latents"].to(device)
    if device.type != "cuda":
        reads = []
        original = Tensor.tolist

        def tolist(tensor: Tensor) -> Any:
            reads.append(tensor.shape)
            return original(tensor)

        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(Tensor, "tolist", tolist)
            model.decode(latents, height, width)
        assert len(reads) == 1
        return
    torch.cuda.synchronize(device)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            model.decode(latents, height, width)
        finally:
            torch.cuda.set_sync_debug_mode("default")
    syncs = [w for w in caught if "synchroniz" in str(w.message)]
    assert len(syncs) == 1, [str(w.message) for w in syncs]


@pytest.mark.parametrize("name", NAMES)
def test_bf16_storage_policy_on_the_device(name: str, device, tmp_path) -> None:
    """bf16 weights on the device; every floating buffer (whitening statistics, time-embedding
    frequencies, RoPE periods) stays float32, as do dinac_ae's float32 islands; loading with
    `device=` and `dtype=` gives the same layout as a cast."""
    family = FAMILIES[name]
    make_model(family).save_pretrained(tmp_path)
    cast = make_model(family).to(device=device, dtype=torch.bfloat16)
    loaded = family.model_class.from_pretrained(tmp_path, device=device, dtype=torch.bfloat16)
    for model in (cast, loaded):
        for buffer_name, buffer in model.named_buffers():
            assert buffer.device.type == device.type, buffer_name
            if buffer.is_floating_point():
                assert buffer.dtype == torch.float32, buffer_name
        if hasattr(model, "validate_inference_storage"):
            model.validate_inference_storage()  # dinac_ae: islands float32, all on the device
        dtypes = {p.dtype for p in model.parameters()}
        assert torch.bfloat16 in dtypes and dtypes <= {torch.bfloat16, torch.float32}
        assert {p.device.type for p in model.parameters()} == {device.type}
    cast_dtypes = {n: p.dtype for n, p in cast.named_parameters()}
    assert cast_dtypes == {n: p.dtype for n, p in loaded.named_parameters()}


@pytest.mark.parametrize("name", NAMES)
def test_tiling_on_the_device(name: str, device) -> None:
    """One-row chunks on the device equal the untiled call up to float32 rounding."""
    family = FAMILIES[name]
    _, height, width = grid(family)
    model = make_model(family).to(device)
    given = {key: value.to(device) for key, value in inputs(family).items()}
    settings = family.inference_config_class(**SETTINGS)
    calls = {
        "decode": lambda: model.decode(given["latents"], height, width, inference_config=settings)
    }
    if callable(getattr(model, "encode", None)):
        calls["encode"] = lambda: model.encode(given["images"])
    for call_name, call in calls.items():
        plain = call()
        model.enable_tiling(tile_tokens=1)
        try:
            tiled = call()
        finally:
            model.disable_tiling()
        scale = max(1.0, plain.abs().max().item())
        torch.testing.assert_close(
            tiled, plain, rtol=0, atol=1e-5 * scale, msg=lambda text, c=call_name: f"{c}: {text}"
        )


@pytest.mark.parametrize("name", NAMES)
def test_compile_on_the_device(name: str, device) -> None:
    """`model.compile_for_inference()` (the families' recipe: inductor, freezing) equals eager
    on CUDA, also with CUDA graphs.

    On a CPU inductor's C++ build costs 10-30 s per graph, too much for the default run:
    tests/test_compile.py captures every family's graphs there, and `benchmarks/gpu_check.py`
    compiles with inductor on the CPU too."""
    if device.type != "cuda":
        pytest.skip("inductor on CUDA only; tests/test_compile.py captures the graphs on the CPU")
    family = FAMILIES[name]
    _, height, width = grid(family)
    model = make_model(family).to(device)
    given = {key: value.to(device) for key, value in inputs(family).items()}
    settings = family.inference_config_class(num_steps=2)
    noise = sample_noise((2, 3, height, width), family.tiny_config.pixel_noise_std, seed=SEED)
    noise = noise.to(device)
    calls = {
        "decode": lambda runner: runner.decode(
            given["latents"], height, width, inference_config=settings, noise=noise
        )
    }
    if callable(getattr(model, "encode", None)):
        calls["encode"] = lambda runner: runner.encode(given["images"])
    eager = {call_name: call(model) for call_name, call in calls.items()}
    # The recipe, then CUDA graphs ("reduce-overhead"; gpu_check.py times "max-autotune"):
    # with graphs, a result must stay valid after the next replay overwrote the graph's output.
    for options in ({}, {"mode": "reduce-overhead"}):
        torch._dynamo.reset()
        compiled_model = model.compile_for_inference(**options)
        try:
            for call_name, call in calls.items():
                compiled = [call(compiled_model) for _ in range(3)]  # records, then replays
                scale = max(1.0, eager[call_name].abs().max().item())
                for result in compiled:
                    torch.testing.assert_close(result, eager[call_name], rtol=0, atol=1e-4 * scale)
        finally:
            model.to(memory_format=torch.contiguous_format)
            torch._dynamo.reset()


@pytest.mark.parametrize("dtype_name", list(DTYPES))
def test_dinac_ae_attention_runs_on_fused_kernels(dtype_name: str, device) -> None:
    """The transformer encoder's attention is served by a fused SDPA kernel (flash or
    memory-efficient, cuDNN on CUDA; flash on a CPU), never only by the math kernel, which
    materialises the L x L scores: with the math backend excluded, encode still runs."""
    if "dinac_ae" not in FAMILIES:
        pytest.skip("dinac_ae is not installed")
    family = FAMILIES["dinac_ae"]
    model = make_model(family).to(device=device, dtype=DTYPES[dtype_name])
    images = inputs(family)["images"].to(device)
    reference = model.encode(images)
    fused = [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION]
    if device.type == "cuda":
        fused.append(SDPBackend.CUDNN_ATTENTION)
    with sdpa_kernel(fused):
        latents = model.encode(images)
    scale = max(1.0, reference.abs().max().item())
    atol = (BF16_RELATIVE if dtype_name == "bf16" else FLOAT32_RELATIVE) * scale
    torch.testing.assert_close(latents, reference, rtol=0, atol=atol)


def test_flux2_pipeline_vae_swap_on_the_device(device) -> None:
    """What a FLUX.2 pipeline calls after the swap `pipe.vae = decoder.as_flux2_vae(pipe.vae)`:
    `vae.decode(raw latents).sample` on the device, seeded, equals the CPU's; and any family
    behind the diffusers VAE interface (`AutoencoderDiffae`) runs on the device."""
    pytest.importorskip("diffusers")
    from diffusers import AutoencoderKLFlux2

    from capacitor_decoder import CapacitorDecoderInferenceConfig
    from diffae.diffusers_vae import AutoencoderDiffae

    torch.manual_seed(0)
    flux2 = AutoencoderKLFlux2(
        block_out_channels=(8, 8, 8, 8), layers_per_block=1, norm_num_groups=4
    ).eval()
    decoder = make_model(FAMILIES["capacitor_decoder"])
    with torch.no_grad():
        decoder.latent_norm_running_mean.copy_(flux2.bn.running_mean)
        decoder.latent_norm_running_var.copy_(flux2.bn.running_var)
    vae = decoder.as_flux2_vae(flux2, inference_config=CapacitorDecoderInferenceConfig(seed=SEED))
    raw = torch.randn(1, 32, 4, 6, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        on_cpu = vae.decode(raw).sample
        vae.to(device)
        on_device = vae.decode(raw.to(device)).sample
    assert on_device.device.type == device.type and on_device.shape == (1, 3, 32, 48)
    scale = max(1.0, on_cpu.abs().max().item())
    torch.testing.assert_close(on_device.cpu(), on_cpu, rtol=0, atol=1e-4 * scale)

    family = FAMILIES["fcdm_diffae" if "fcdm_diffae" in FAMILIES else NAMES[0]]
    wrapper = AutoencoderDiffae(make_model(family)).to(device)
    images = inputs(family)["images"].to(device)
    with torch.no_grad():
        latents = wrapper.encode(images).latent_dist.mode()
        decoded = wrapper.decode(latents).sample
    assert decoded.device.type == device.type and decoded.shape == images.shape


def test_cuda_graph_results_are_copied_out_of_the_graph(monkeypatch) -> None:
    """With CUDA graphs each compiled call starts a new graph step and returns a copy: the
    graph's own output memory is overwritten by the next replay. (The wrapper's logic, on any
    device; test_compile_on_the_device replays real graphs on CUDA.)"""
    from diffae_core.runtime import _compiled_method

    steps = []
    monkeypatch.setattr(torch.compiler, "cudagraph_mark_step_begin", lambda: steps.append(1))
    graph_output = torch.ones(1, 3, 2, 2)
    call = _compiled_method(
        lambda: graph_output,
        freezing=False,
        channels_last=False,
        dynamic_batch=False,
        options={"backend": "eager"},
        cuda_graphs=True,
    )
    result = call()
    assert steps == [1]
    assert torch.equal(result, graph_output) and result.data_ptr() != graph_output.data_ptr()


def test_gpu_check_without_a_gpu_says_so(capsys, monkeypatch) -> None:
    """`gpu_check.sh` asked for CUDA on a machine without it: one line, exit status 2."""
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    pytest.importorskip("diffusers")
    # The benchmarks are scripts beside the packages, not installed.
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parent.parent))
    from benchmarks import gpu_check

    assert gpu_check.main(["--device", "cuda"]) == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]  # after torch's import warnings
    assert error.startswith("gpu_check: --device cuda: no CUDA device")
