"""No slow trap: a bf16 model on a CPU without native bf16 computes in float32 (warned once), and
`DIFFAE_CPU_BF16=1` keeps true bf16. The CPU's answer is monkeypatched, so these run the same on
every machine. Also: `encode` builds no autograd graph, and decode noise lands on the device."""

from __future__ import annotations

import warnings

import pytest
import torch

from diffae_core import runtime as precision
from diffae_core.diffusion import sample_noise
from diffae_core.families import Family, installed_families
from diffae_core.runtime import FORCE_CPU_BF16_ENV
from diffae_testing import randomize_weights

FAMILIES = installed_families()


@pytest.fixture(params=sorted(FAMILIES))
def family(request: pytest.FixtureRequest) -> Family:
    return FAMILIES[request.param]


@pytest.fixture
def no_native_bf16(monkeypatch: pytest.MonkeyPatch) -> None:
    """This CPU, as far as the package can tell, has no native bf16 kernels; nothing forced."""
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: False)
    monkeypatch.delenv(FORCE_CPU_BF16_ENV, raising=False)
    monkeypatch.setattr(precision, "_warned_cpu_bf16", False)


def sizes(family: Family) -> tuple[int, int, int]:
    config = family.tiny_config
    patch = config.effective_patch_size
    return config.latent_channels, patch, 2 * patch


def test_bf16_without_native_kernels_computes_in_float32(
    family: Family, no_native_bf16, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = randomize_weights(family.model_class(family.tiny_config)).eval()
    with pytest.warns(RuntimeWarning, match=FORCE_CPU_BF16_ENV):
        model.to(torch.bfloat16)
    assert {p.dtype for p in model.parameters()} == {torch.float32}
    # The weights hold their bf16 values (float32 islands as the policy keeps them): the same
    # as a true bf16 cast followed by an explicit upcast.
    reference = randomize_weights(family.model_class(family.tiny_config)).eval()
    monkeypatch.setenv(FORCE_CPU_BF16_ENV, "1")
    reference.to(torch.bfloat16)
    monkeypatch.delenv(FORCE_CPU_BF16_ENV)
    reference.float()
    channels, patch, side = sizes(family)
    latents = torch.randn(1, channels, side // patch, side // patch)
    torch.testing.assert_close(
        model.decode(latents, side, side, inference_config=family.inference_config_class(seed=1)),
        reference.decode(
            latents, side, side, inference_config=family.inference_config_class(seed=1)
        ),
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # warned once per process, not again
        family.model_class(family.tiny_config).to(torch.bfloat16)


def test_loading_in_bf16_takes_the_same_path(family: Family, no_native_bf16, tmp_path) -> None:
    family.model_class(family.tiny_config).save_pretrained(tmp_path)
    with pytest.warns(RuntimeWarning, match="upcast to float32"):
        model = family.model_class.from_pretrained(tmp_path, dtype=torch.bfloat16)
    assert {p.dtype for p in model.parameters()} == {torch.float32}


def test_true_bf16_when_forced_or_native(family: Family, no_native_bf16, monkeypatch) -> None:
    monkeypatch.setenv(FORCE_CPU_BF16_ENV, "1")
    forced = family.model_class(family.tiny_config).to(torch.bfloat16)
    assert torch.bfloat16 in {p.dtype for p in forced.parameters()}
    monkeypatch.delenv(FORCE_CPU_BF16_ENV)
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: True)
    native = family.model_class(family.tiny_config).to(torch.bfloat16)
    assert torch.bfloat16 in {p.dtype for p in native.parameters()}


def test_encode_builds_no_graph(family: Family) -> None:
    model = family.model_class(family.tiny_config).eval()
    if not callable(getattr(model, "encode", None)):
        pytest.skip(f"{family.name} is decode-only")
    _, _, side = sizes(family)
    images = torch.rand(1, 3, side, side) * 2 - 1
    assert not model.encode(images).requires_grad
    if callable(getattr(model, "encode_posterior", None)):
        assert model.encode_posterior(images).mean.requires_grad  # training keeps its graph


def test_seeded_noise_is_device_independent_and_unseeded_lands_on_the_device() -> None:
    seeded = sample_noise((2, 3, 4, 4), 0.5, seed=7, device="meta")
    assert seeded.device.type == "meta" and seeded.shape == (2, 3, 4, 4)
    torch.testing.assert_close(
        sample_noise((2, 3, 4, 4), 0.5, seed=7),
        torch.randn((2, 3, 4, 4), generator=torch.Generator().manual_seed(7)) * 0.5,
        rtol=0,
        atol=0,
    )
    assert sample_noise((1, 3, 2, 2), 0.5, device="meta").device.type == "meta"
