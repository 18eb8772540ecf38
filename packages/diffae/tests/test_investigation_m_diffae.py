"""`diffae.investigation.m_diffae.explain_open_points` on tiny synthetic headers, one per open
point, and the count verdict on the full-size layouts of both readings (header entries only)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from diffae.investigation.m_diffae import (
    CONFIRMED,
    DIFFERS,
    UNDECIDED,
    _count_verdicts,
    explain_open_points,
    format_verdicts,
)
from diffae_core.loading import state_info
from m_diffae import MDiffAE, MDiffAEConfig, OpenPoints
from m_diffae.family import TINY_CONFIG
from m_diffae.open_points import UNVERIFIED_KEYS

C = TINY_CONFIG.model_dim
HEADER_DECIDABLE = {
    "parameter count reading",
    "element count",
    "time_embed.freqs stored",
    "encoder patchify layout",
    "decoder patchify layout",
    "CCA name and layout",
    "conv3 name",
    "MLP attribute name",
    "encoder gate names and shapes",
    "mask feature name",
    "latent_norm width",
    "strict load",
}
FROM_OUTPUTS = {"modulation order", "MLP re-normalisation", "PDG mask placement", "PDG mask draw"}

Edit = Callable[[dict[str, torch.Tensor]], dict[str, torch.Tensor]]


def renamed(old: str, new: str) -> Edit:
    return lambda state: {k.replace(old, new): v for k, v in state.items()}


def reshaped(suffix: str, shape: Callable[[tuple[int, ...]], tuple[int, ...]]) -> Edit:
    def edit(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {
            k: v.reshape(shape(tuple(v.shape))).contiguous() if k.endswith(suffix) else v
            for k, v in state.items()
        }

    return edit


def without(prefix: str) -> Edit:
    return lambda state: {k: v for k, v in state.items() if not k.startswith(prefix)}


def write_checkpoint(folder: Path, edit: Edit | None = None, config: bool = True) -> Path:
    state = {k: v.contiguous() for k, v in MDiffAE(TINY_CONFIG).state_dict().items()}
    if edit is not None:
        state = edit(state)
    folder.mkdir(parents=True, exist_ok=True)
    save_file(state, folder / "model.safetensors")
    if config:
        TINY_CONFIG.save(folder / "config.json")
    return folder / "model.safetensors"


def verdicts_of(path: Path) -> dict[str, tuple[str, str]]:
    return {v.point: (v.status, v.detail) for v in explain_open_points(path)}


def test_a_matching_file_confirms_every_header_point(tmp_path: Path) -> None:
    verdicts = verdicts_of(write_checkpoint(tmp_path))
    assert set(verdicts) == HEADER_DECIDABLE | FROM_OUTPUTS
    assert {p for p, (status, _) in verdicts.items() if status == CONFIRMED} == HEADER_DECIDABLE
    assert {p for p, (status, _) in verdicts.items() if status == UNDECIDED} == FROM_OUTPUTS
    assert "reading A" in verdicts["parameter count reading"][1]
    assert "checkpoint matches the model" in verdicts["strict load"][1]
    assert "config.json" in verdicts["strict load"][1]
    assert (
        len(format_verdicts(explain_open_points(tmp_path / "model.safetensors")).splitlines()) == 16
    )


CASES: dict[str, tuple[Edit, str, str]] = {
    # case: (edit of our layout, point that must report `differs`, text its detail must hold)
    "reading_b": (without("encoder.norm_out."), "parameter count reading", "reading B"),
    "no_freqs": (
        without("decoder.time_embed.freqs"),
        "time_embed.freqs stored",
        "OpenPoints(time_embed_freqs_persistent=False)",
    ),
    "official_dico_cca": (renamed(".cca.proj.", ".ca.1."), "CCA name and layout", "ca.1.weight"),
    "other_conv3": (renamed(".conv3.", ".pwconv."), "conv3 name", "pwconv.weight"),
    "other_mlp": (renamed(".mlp.", ".ffn."), "MLP attribute name", "ffn.conv_in.weight"),
    "gamma_gates": (
        lambda s: renamed(".gate", ".gamma")(reshaped("gate1", lambda shape: (1, *shape, 1, 1))(s)),
        "encoder gate names and shapes",
        "gamma1 [1, 16, 1, 1]",
    ),
    "v2_mask_name": (
        renamed("decoder.mask_feature", "decoder.latent_mask_feature"),
        "mask feature name",
        "latent_mask_feature",
    ),
    "unshuffle_patchify": (
        reshaped("patchify.proj.weight", lambda shape: (shape[0], -1, 1, 1)),
        "encoder patchify layout",
        "PixelUnshuffle",
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_each_header_point_reports_what_differs(case: str, tmp_path: Path) -> None:
    edit, point, text = CASES[case]
    verdicts = verdicts_of(write_checkpoint(tmp_path, edit))
    status, detail = verdicts[point]
    assert status == DIFFERS and text in detail, detail
    loadable = case == "unshuffle_patchify"  # accepted on load by a reshape
    assert (verdicts["strict load"][0] == CONFIRMED) is loadable
    others = HEADER_DECIDABLE - {point, "strict load", "element count", "decoder patchify layout"}
    for other in others:
        assert verdicts[other][0] == CONFIRMED, (other, verdicts[other])
    if case == "reading_b":  # B counts every stored tensor, freqs included: our B model's total
        assert verdicts["element count"][0] == CONFIRMED, verdicts["element count"]
        assert "encoder_norm_out_affine=False" in verdicts["parameter count reading"][1]


def full_size_header(points: OpenPoints):
    """The preset's header entries (no weights) as built under `points`."""
    model_class = type("Variant", (MDiffAE,), {"open_points": points})
    return state_info(
        model_class.from_config_on_meta(MDiffAEConfig.preset("mdiffae_v1")).state_dict()
    )


@pytest.mark.parametrize(
    ("points", "keys", "reading"),
    [(OpenPoints(), 142, "A"), (OpenPoints(encoder_norm_out_affine=False), 140, "B")],
    ids=["reading_a", "reading_b"],
)
def test_full_size_element_count_agrees_with_the_card_under_either_reading(
    points: OpenPoints, keys: int, reading: str
) -> None:
    """142 keys with parameters() = 81,410,624 (A), or 140 keys holding 81,410,624 values,
    freqs included (B): both match the card's figure."""
    header = full_size_header(points)
    assert len(header) == keys
    verdicts = {v.point: (v.status, v.detail) for v in _count_verdicts(header, MDiffAEConfig())}
    status, detail = verdicts["element count"]
    assert status == CONFIRMED, detail
    assert f"reading {reading} counts 81,410,624, card 81,410,624" in detail
    expected_reading = CONFIRMED if reading == "A" else DIFFERS  # our default is A
    assert verdicts["parameter count reading"][0] == expected_reading


def test_unverified_key_table_names_the_inspected_points() -> None:
    """The inspector's key names come from `open_points.UNVERIFIED_KEYS`, and they are ours."""
    assert set(UNVERIFIED_KEYS) <= HEADER_DECIDABLE
    ours = MDiffAE(TINY_CONFIG).state_dict()
    assert all(key in ours for keys in UNVERIFIED_KEYS.values() for key in keys)


def test_linear_cca_layout_is_confirmed_and_loadable(tmp_path: Path) -> None:
    path = write_checkpoint(tmp_path, reshaped("cca.proj.weight", lambda shape: shape[:2]))
    verdicts = verdicts_of(path)
    assert verdicts["CCA name and layout"][0] == CONFIRMED
    assert "Linear layout" in verdicts["CCA name and layout"][1]
    assert verdicts["strict load"][0] == CONFIRMED


def test_wrong_freqs_values_and_latent_norm_width(tmp_path: Path) -> None:
    def edit(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        state["decoder.time_embed.freqs"] = state["decoder.time_embed.freqs"] * 2
        state["decoder.latent_norm.weight"] = torch.ones(TINY_CONFIG.bottleneck_dim)
        state["decoder.latent_norm.bias"] = torch.zeros(TINY_CONFIG.bottleneck_dim)
        return state

    verdicts = verdicts_of(write_checkpoint(tmp_path, edit))
    assert verdicts["time_embed.freqs stored"][0] == DIFFERS
    assert verdicts["latent_norm width"] == (
        DIFFERS,
        f"decoder.latent_norm.weight [{TINY_CONFIG.bottleneck_dim}] (4-wide)",
    )


def test_without_config_json_the_release_preset_is_used_and_said(tmp_path: Path) -> None:
    verdicts = verdicts_of(write_checkpoint(tmp_path, config=False))
    assert "mdiffae_v1 preset" in verdicts["strict load"][1]
    assert verdicts["strict load"][0] == DIFFERS  # a tiny file against the full-size model
    assert "card 81,410,624" in verdicts["element count"][1]
