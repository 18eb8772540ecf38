"""The behaviour every family promises, on each family's tiny variants (random weights), and
what every family declares: presets on `meta`, config files, loading from the Hub cache.

One module parametrised over every installed family (x tiny variant), found through the
`diffae.families` entry points, as diffusers' model tester mixins are: a family package keeps
only the tests of what is its own (its checkpoint key lists and its cards' figures and snippets).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from diffae_core.families import Family, installed_families
from diffae_core.io import ModelNotAvailableError
from diffae_core.loading import CheckpointMismatchError, PretrainedModel
from diffae_testing import add_to_hub_cache, randomize_weights, randomize_whitening

FLOAT32_RELATIVE = 1e-5
"""Two float32 computations of the same value (PDG at strength 1 vs none; a loaded model, whose
memory-mapped weights may take another kernel path): max |diff| relative to the output's
max |value| (random-weight outputs reach 1e4, real ones ~1). ~80 float32 ulps; measured <= 6e-7."""
BF16_RELATIVE = 0.05
"""bf16 vs fp32: max |diff| relative to the fp32 output's max |value| (8-bit mantissa)."""
SIZEABLE = 0.1
"""A change that must reach the output (another seed, another PDG strength) moves it by more
than this fraction of its max |value| (measured: 0.27 to 1.2)."""

CASES = [
    (family, variant, config)
    for family in installed_families().values()
    for variant, config in family.tiny_configs().items()
]


@pytest.fixture(params=CASES, ids=[f"{f.name}-{v}" for f, v, _ in CASES])
def case(request: pytest.FixtureRequest):
    return request.param


def make_model(family, config, seed: int = 0):
    model = randomize_weights(family.model_class(config), seed)
    if hasattr(model, "latent_norm_running_mean"):
        randomize_whitening(model)
    return model.eval()


def patch_of(config) -> int:
    return getattr(config, "effective_patch_size", config.patch_size)


def sample_images(config, n: int = 2) -> torch.Tensor:
    p = patch_of(config)
    generator = torch.Generator().manual_seed(7)
    return torch.rand(n, 3, 2 * p, 3 * p, generator=generator) * 2 - 1


def latents_for(model, images: torch.Tensor) -> torch.Tensor:
    """What `decode` takes: `encode`'s output, or random latents for a decoder-only family."""
    if hasattr(model, "encode"):
        return model.encode(images)
    config, p = model.config, patch_of(model.config)
    shape = (images.shape[0], config.latent_channels, images.shape[2] // p, images.shape[3] // p)
    return torch.randn(shape, generator=torch.Generator().manual_seed(3))


def decode(family, model, latents, images, **settings) -> torch.Tensor:
    cfg = family.inference_config_class(**settings)
    return model.decode(latents, images.shape[-2], images.shape[-1], inference_config=cfg)


def test_shapes_and_dtypes(case) -> None:
    family, _, config = case
    model = make_model(family, config)
    images = sample_images(config)
    latents = latents_for(model, images)
    p = patch_of(config)
    assert latents.shape[2:] == (images.shape[2] // p, images.shape[3] // p)
    assert latents.dtype == torch.float32
    recon = decode(family, model, latents, images, seed=0)
    assert recon.shape == images.shape and recon.dtype == torch.float32
    assert recon.isfinite().all()


def test_seeded_decode_is_bitwise_deterministic(case) -> None:
    family, _, config = case
    model = make_model(family, config)
    images = sample_images(config)
    latents = latents_for(model, images)
    first = decode(family, model, latents, images, seed=42)
    assert torch.equal(first, decode(family, model, latents, images, seed=42))
    other_seed = decode(family, model, latents, images, seed=43)
    assert (other_seed - first).abs().max() > SIZEABLE * first.abs().max()


@pytest.mark.parametrize(
    ("sampler", "schedule", "pdg"),
    [("ddim", "linear", False), ("dpmpp_2m", "cosine", True)],
    ids=["ddim-linear", "dpmpp_2m-cosine-pdg"],
)
def test_num_steps_counts_decoder_evaluations(case, sampler, schedule, pdg) -> None:
    family, _, config = case
    model = make_model(family, config)
    images = sample_images(config, n=1)
    latents = latents_for(model, images)
    calls = []
    handle = model.decoder.register_forward_hook(lambda *_: calls.append(1))
    settings = dict(num_steps=3, sampler=sampler, schedule=schedule, pdg=pdg, seed=0)
    recon = decode(family, model, latents, images, pdg_strength=1.5, **settings)
    handle.remove()
    assert len(calls) == 3 * (2 if pdg else 1)
    assert recon.isfinite().all()


def assert_relatively_close(actual: torch.Tensor, expected: torch.Tensor, relative: float) -> None:
    atol = relative * max(1.0, expected.abs().max().item())
    torch.testing.assert_close(actual, expected, rtol=0, atol=atol)


def test_pdg_strength_one_equals_no_pdg_and_strength_acts_linearly(case) -> None:
    """One DDIM step is affine in the guided x0 = u + s (c - u), so in the strength s."""
    family, _, config = case
    model = make_model(family, config)
    images = sample_images(config)
    latents = latents_for(model, images)
    plain = decode(family, model, latents, images, seed=1)
    guided = {
        strength: decode(family, model, latents, images, seed=1, pdg=True, pdg_strength=strength)
        for strength in (1.0, 2.0, 3.0)
    }
    assert_relatively_close(guided[1.0], plain, FLOAT32_RELATIVE)
    step = guided[2.0] - guided[1.0]
    assert step.abs().max() > SIZEABLE * plain.abs().max()
    assert_relatively_close(guided[3.0] - guided[1.0], 2 * step, FLOAT32_RELATIVE)


def test_save_load_round_trip_is_bitwise_outputs_close(case, tmp_path: Path) -> None:
    family, _, config = case
    model = make_model(family, config)
    model.save_pretrained(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "config.json",
        "diffae.json",
        "model.safetensors",
    ]
    assert json.loads((tmp_path / "diffae.json").read_text()) == {"family": family.name}
    loaded = family.model_class.from_pretrained(tmp_path)
    assert loaded.config == config and not loaded.training
    expected, actual = model.state_dict(), loaded.state_dict()
    assert list(actual) == list(expected)
    for key, tensor in actual.items():
        assert tensor.dtype == expected[key].dtype and torch.equal(tensor, expected[key]), key
    # Outputs with a tolerance: the loaded weights are memory-mapped (8-byte aligned), which
    # can take another kernel path than the original's.
    images = sample_images(config)
    latents = latents_for(model, images)
    assert_relatively_close(latents_for(loaded, images), latents, FLOAT32_RELATIVE)
    assert_relatively_close(
        decode(family, loaded, latents, images, seed=5),
        decode(family, model, latents, images, seed=5),
        FLOAT32_RELATIVE,
    )


EDITS = {
    "missing": (lambda state: state.pop("decoder.out_proj.bias"), "missing keys"),
    "unexpected": (
        lambda state: state.__setitem__("decoder.not_a_module.weight", torch.zeros(1)),
        "unexpected keys",
    ),
    "misshapen": (
        lambda state: state.__setitem__("decoder.out_proj.bias", torch.zeros(5)),
        "shape mismatches",
    ),
}


@pytest.mark.parametrize("edit", sorted(EDITS))
def test_strict_loading_names_the_key(case, edit: str, tmp_path: Path) -> None:
    family, _, config = case
    make_model(family, config).save_pretrained(tmp_path)
    state = load_file(tmp_path / "model.safetensors")
    change, kind = EDITS[edit]
    change(state)
    save_file(state, tmp_path / "model.safetensors")
    with pytest.raises(CheckpointMismatchError) as caught:
        family.model_class.from_pretrained(tmp_path)
    message = str(caught.value)
    assert kind in message
    assert ("not_a_module" if edit == "unexpected" else "decoder.out_proj.bias") in message
    assert not family.model_class.inspect_checkpoint(tmp_path / "model.safetensors").loadable


def test_bad_sizes_raise_value_errors_naming_the_argument(case) -> None:
    family, _, config = case
    model = make_model(family, config)
    images = sample_images(config, n=1)
    latents = latents_for(model, images)
    height, width = images.shape[-2:]
    p = patch_of(config)
    if p > 1:
        with pytest.raises(ValueError, match="height"):
            model.decode(latents, height + 1, width)
        if hasattr(model, "encode"):
            with pytest.raises(ValueError, match="images"):
                model.encode(images[..., : height - 1, :])
    with pytest.raises(ValueError, match="latents"):
        model.decode(latents, height + p, width)
    with pytest.raises(ValueError, match="latents"):
        model.decode(latents[:, :1], height, width)


@pytest.mark.parametrize(
    ("field", "value"), [("num_steps", 0), ("sampler", "euler"), ("schedule", "karras")]
)
def test_bad_inference_settings_name_the_field(case, field: str, value: object) -> None:
    family, _, config = case
    model = make_model(family, config)
    images = sample_images(config, n=1)
    latents = latents_for(model, images)
    with pytest.raises(ValueError, match=field):
        decode(family, model, latents, images, **{field: value})


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    return ((actual.float() - expected.float()).abs().max() / expected.abs().max()).item()


def test_bf16_close_to_fp32_with_float32_buffers(case) -> None:
    family, _, config = case
    model = make_model(family, config)
    images = sample_images(config)
    latents = latents_for(model, images)
    reference = decode(family, model, latents, images, seed=0)
    buffers = {name: b.clone() for name, b in model.named_buffers() if b.dtype == torch.float32}
    model.to(torch.bfloat16)
    for name, buffer in model.named_buffers():
        if name in buffers:
            assert buffer.dtype == torch.float32 and torch.equal(buffer, buffers[name]), name
    bf16_latents = latents_for(model, images)
    assert relative_error(bf16_latents, latents) < BF16_RELATIVE
    recon = decode(family, model, bf16_latents, images, seed=0)
    assert recon.dtype == torch.float32
    assert relative_error(recon, reference) < BF16_RELATIVE


# -- every family, once ------------------------------------------------------------------------
FAMILIES = installed_families()


@pytest.fixture(params=sorted(FAMILIES), ids=sorted(FAMILIES))
def family(request: pytest.FixtureRequest) -> Family:
    return FAMILIES[request.param]


def tiny(family: Family) -> PretrainedModel:
    return randomize_weights(family.model_class(family.tiny_config)).eval()


def test_the_foundation_family_is_installed() -> None:
    assert "fcdm_diffae" in FAMILIES


def test_family_declaration(family: Family) -> None:
    assert issubclass(family.model_class, PretrainedModel)
    assert family.model_class.config_class is family.config_class
    assert isinstance(family.tiny_config, family.config_class)
    assert family.repo_ids and all(r.startswith("data-archetype/") for r in family.repo_ids)
    assert family.presets()
    family.inference_config_class().validate()


def test_presets_build_on_meta(family: Family) -> None:
    for name in family.presets():
        model = family.model_class.from_config_on_meta(family.config_class.preset(name))
        assert model.num_parameters() == sum(p.numel() for p in model.parameters()) > 0
        assert all(t.is_meta for t in model.state_dict().values())


def test_round_trip_and_float32_buffers(family: Family, tmp_path: Path) -> None:
    model = tiny(family)
    model.save_pretrained(tmp_path)
    loaded = family.model_class.from_pretrained(tmp_path, dtype=torch.bfloat16)
    original = model.state_dict()
    for key, tensor in loaded.state_dict().items():
        source = original[key]
        if source.dtype == torch.float32 and key in dict(loaded.named_buffers()):
            assert tensor.dtype == torch.float32 and torch.equal(tensor, source), key
    assert family.model_class.inspect_checkpoint(tmp_path / "model.safetensors").loadable


def test_loads_from_an_offline_hub_cache(
    family: Family, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    tiny(family).save_pretrained(tmp_path / "files")
    files = {name: tmp_path / "files" / name for name in ("config.json", "model.safetensors")}
    # Every published spelling is cached: a family may map one spelling to another.
    for repo_id in family.repo_ids:
        add_to_hub_cache(tmp_path / "hub", repo_id, files)
    for repo_id in family.repo_ids:
        model = family.model_class.from_pretrained(repo_id, cache_dir=tmp_path / "hub")
        assert model.config == family.tiny_config


def test_preset_configs_round_trip_through_their_files(family: Family, tmp_path: Path) -> None:
    for name in family.presets():
        config = family.config_class.preset(name)
        assert family.config_class.from_dict(config.to_dict()) == config, name
        config.save(tmp_path / f"{name}.json")
        text = (tmp_path / f"{name}.json").read_text()
        assert text.startswith('{\n  "') and text.endswith("}\n"), name
        assert family.config_class.load(tmp_path / f"{name}.json") == config, name


def test_uncached_hub_id_offline_fails_with_instructions(
    family: Family, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    repo_id = family.repo_ids[0]
    with pytest.raises(ModelNotAvailableError) as caught:
        family.model_class.from_pretrained(repo_id, cache_dir=tmp_path / "empty")
    message = str(caught.value)
    assert repr(repo_id) in message and "pass a local directory" in message
