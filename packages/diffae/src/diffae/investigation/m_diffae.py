"""What a real `model.safetensors` header settles of m_diffae's open points (`OpenPoints`).

The choices our m_diffae port had to make without the original code (names and shapes of some
tensors, whether the time-embedding frequencies are stored, which reading of the card's
parameter count holds) are checked against the published file's header: names and shapes
first, then a strict load of our model; what the header cannot show is decided by
reconstruction PSNR over the switch grid, or (the PDG mask) not from files at all.

    from diffae.investigation.m_diffae import explain_open_points, format_verdicts

    print(format_verdicts(explain_open_points("mdiffae-v1/model.safetensors")))

Reads the JSON header (and the 128-value `freqs` buffer when stored), never the weights.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path

from safetensors import safe_open

from diffae_core.layers import mlp_hidden_channels, sinusoidal_frequencies
from diffae_core.loading import TensorInfo, read_header
from m_diffae.config import MDiffAEConfig
from m_diffae.model import MDiffAE
from m_diffae.open_points import DEFAULT_OPEN_POINTS, UNVERIFIED_KEYS

CARD_PARAMETERS = 81_410_624
"""The mdiffae_v1 card's "Parameters" figure (architecture table)."""

CONFIRMED, DIFFERS, UNDECIDED = "confirmed", "differs", "undecided"
READING_A, READING_B = "A", "B"
FREQS_KEY = "decoder.time_embed.freqs"
ENCODER_BLOCK_0 = "encoder.blocks.0."
FREQS_TOLERANCE = 1e-6
"""Stored `freqs` vs the formula: the file's float32 exp() against ours (float64, rounded once)
differ by < 1e-7 absolute; a wrong table is off by far more."""
BY_PSNR = (
    "not in the header: decide by reconstruction PSNR over the switch grid (1-step decodes of "
    "natural photos; the right combination reaches the card's mid-30s dB, wrong ones < 20 dB)"
)
NOT_FROM_FILES = (
    "not in the header nor settled by outputs; only PDG results depend on it (keep the default)"
)


@dataclass(frozen=True)
class Verdict:
    """One open point: `confirmed` (the file agrees with our default), `differs` (the file shows
    another choice; `detail` says which and what to change) or `undecided` (the file cannot tell).
    """

    point: str
    status: str
    detail: str

    def __str__(self) -> str:
        return f"{self.point}: {self.status} - {self.detail}"


def _shape(header: dict[str, TensorInfo], key: str) -> tuple[int, ...] | None:
    return header[key].shape if key in header else None


def _block_keys(header: dict[str, TensorInfo], stack: str) -> dict[str, tuple[int, ...]]:
    """Keys of block 0 of `stack` ('encoder' or 'decoder'), relative to the block."""
    prefix = f"{stack}.blocks.0."
    return {k[len(prefix) :]: v.shape for k, v in header.items() if k.startswith(prefix)}


def _named_shape(
    point: str, header: dict[str, TensorInfo], key: str, shapes: dict[str, tuple[int, ...]]
) -> Verdict:
    """Verdict for a key we expect under one name with one of a few accepted shapes."""
    found = _shape(header, key)
    if found is None:
        return Verdict(
            point,
            DIFFERS,
            f"no {key}; add its published spelling to MDiffAE.checkpoint_key_aliases",
        )
    for description, shape in shapes.items():
        if found == shape:
            status = CONFIRMED if description == "default" else DIFFERS
            return Verdict(point, status, f"{key} {list(found)} ({description})")
    return Verdict(
        point, DIFFERS, f"{key} has shape {list(found)}, expected {list(shapes.values())}"
    )


def _role_candidates(
    block: dict[str, tuple[int, ...]], shapes: tuple[tuple[int, ...], ...], known: tuple[str, ...]
) -> list[str]:
    return sorted(f"{k} {list(s)}" for k, s in block.items() if s in shapes and k not in known)


def _relative(key: str) -> str:
    """A block key of `UNVERIFIED_KEYS` relative to its block (encoder.blocks.0.gate1 -> gate1)."""
    return key.removeprefix(ENCODER_BLOCK_0)


def _block_name_verdicts(header: dict[str, TensorInfo], config: MDiffAEConfig) -> list[Verdict]:
    c, hidden = config.model_dim, mlp_hidden_channels(config.model_dim, config.mlp_ratio)
    encoder_block = _block_keys(header, "encoder")
    square = ((c, c, 1, 1), (c, c))
    accepted_shapes = {  # first: our layout; others are reshaped on load
        "CCA name and layout": square,
        "conv3 name": square[:1],
        "MLP attribute name": ((hidden, c, 1, 1),),
    }
    square_roles = (
        "conv1.weight",
        _relative(UNVERIFIED_KEYS["CCA name and layout"][0]),
        _relative(UNVERIFIED_KEYS["conv3 name"][0]),
    )
    verdicts = []
    for point, shapes in accepted_shapes.items():
        name = _relative(UNVERIFIED_KEYS[point][0])
        if name in encoder_block and encoder_block[name] in shapes:
            layout = (
                "" if encoder_block[name] == shapes[0] else " (Linear layout, reshaped on load)"
            )
            verdicts.append(
                Verdict(point, CONFIRMED, f"blocks.i.{name} {list(encoder_block[name])}{layout}")
            )
            continue
        candidates = _role_candidates(encoder_block, shapes, square_roles)
        verdicts.append(
            Verdict(
                point, DIFFERS, f"no blocks.i.{name}; candidates in encoder.blocks.0: {candidates}"
            )
        )
    gate_point = "encoder gate names and shapes"
    gates = {k: s for k, s in encoder_block.items() if not k.endswith((".weight", ".bias"))}
    expected_gates = {_relative(key): (c,) for key in UNVERIFIED_KEYS[gate_point]}
    status = CONFIRMED if gates == expected_gates else DIFFERS
    listing = sorted(f"{k} {list(s)}" for k, s in gates.items())
    verdicts.append(
        Verdict(gate_point, status, f"found {listing}, expected {sorted(expected_gates)} [{c}]")
    )
    decoder_gates = sorted(
        k for k in _block_keys(header, "decoder") if not k.endswith((".weight", ".bias"))
    )
    if decoder_gates:
        verdicts.append(Verdict("decoder block gates", DIFFERS, f"unexpected {decoder_gates}"))
    return verdicts


def _freqs_verdict(header: dict[str, TensorInfo], path: Path) -> Verdict:
    point, ours = "time_embed.freqs stored", DEFAULT_OPEN_POINTS.time_embed_freqs_persistent
    if FREQS_KEY not in header:
        if not ours:
            return Verdict(
                point, CONFIRMED, f"no {FREQS_KEY}, as time_embed_freqs_persistent=False"
            )
        return Verdict(
            point, DIFFERS, f"no {FREQS_KEY}: set OpenPoints(time_embed_freqs_persistent=False)"
        )
    with safe_open(os.fspath(path), framework="pt") as handle:
        stored = handle.get_tensor(FREQS_KEY).float()
    error = (stored - sinusoidal_frequencies(2 * stored.numel())).abs().max().item()
    detail = f"{FREQS_KEY} {list(stored.shape)}, max |diff| {error:.1e} from the formula"
    if not ours:
        return Verdict(
            point, DIFFERS, f"{detail}: set OpenPoints(time_embed_freqs_persistent=True)"
        )
    return Verdict(point, CONFIRMED if error <= FREQS_TOLERANCE else DIFFERS, detail)


def _header_reading(header: dict[str, TensorInfo], config: MDiffAEConfig) -> str | None:
    """Which reading of the card's 81,410,624 parameters a header shows: A (an affine encoder
    `norm_out`, 142 tensors, parameters() counts it), B (no `norm_out`, the `freqs` buffer
    stored, 140 tensors whose elements count it), or None (neither)."""
    z = config.bottleneck_dim
    norm_out = {
        k: header[k].shape
        for k in ("encoder.norm_out.weight", "encoder.norm_out.bias")
        if k in header
    }
    if norm_out == {"encoder.norm_out.weight": (z,), "encoder.norm_out.bias": (z,)}:
        return READING_A
    if not norm_out and FREQS_KEY in header:
        return READING_B
    return None


def _reading_verdict(header: dict[str, TensorInfo], reading: str | None) -> Verdict:
    point = "parameter count reading"
    ours = READING_A if DEFAULT_OPEN_POINTS.encoder_norm_out_affine else READING_B
    if reading is None:
        entries = sorted(k for k in header if k.startswith("encoder.norm_out."))
        return Verdict(point, DIFFERS, f"neither reading: encoder.norm_out entries {entries}")
    if reading == READING_A:
        detail = "affine encoder.norm_out stored: reading A (parameters() = card figure)"
    else:
        detail = "no encoder.norm_out, freqs stored: reading B (stored elements = card figure)"
    if reading != ours:
        detail += f"; set encoder_norm_out_affine={reading == READING_A}"
    return Verdict(point, CONFIRMED if reading == ours else DIFFERS, detail)


def _expected_count(config: MDiffAEConfig, reading: str) -> tuple[int, str]:
    """The figure a header's count should equal under `reading`, and what it is."""
    if config == MDiffAEConfig.preset("mdiffae_v1"):
        return CARD_PARAMETERS, "card"
    points = replace(DEFAULT_OPEN_POINTS, encoder_norm_out_affine=reading == READING_A)
    variant = type("Variant", (MDiffAE,), {"open_points": points})
    model = variant.from_config_on_meta(config)
    if reading == READING_A:
        return model.num_parameters(), "our parameters()"
    return sum(t.numel() for t in model.state_dict().values()), "our stored elements"


def _count_verdicts(header: dict[str, TensorInfo], config: MDiffAEConfig) -> list[Verdict]:
    """The count reading, and the header's element count against the card (or our model).

    Reading B counts every stored tensor, `freqs` included; reading A counts parameters only,
    so `freqs` is left out. A header showing neither reading is counted as A (our default).
    """
    reading = _header_reading(header, config)
    counted_as = reading or READING_A
    total = sum(info.numel for info in header.values())
    freqs = header[FREQS_KEY].numel if FREQS_KEY in header else 0
    counted = total if counted_as == READING_B else total - freqs
    expected, source = _expected_count(config, counted_as)
    detail = (
        f"{len(header)} tensors, {total:,} elements, {total - freqs:,} without freqs; "
        f"reading {counted_as} counts {counted:,}, {source} {expected:,}"
    )
    status = CONFIRMED if counted == expected else DIFFERS
    return [_reading_verdict(header, reading), Verdict("element count", status, detail)]


def _config_beside(path: Path) -> tuple[MDiffAEConfig, str]:
    """The config.json next to the weights, else the mdiffae_v1 preset; and which it was."""
    beside = path.parent / "config.json"
    if beside.is_file():
        return MDiffAEConfig.load(beside), str(beside)
    return MDiffAEConfig.preset("mdiffae_v1"), "the mdiffae_v1 preset (no config.json beside it)"


def explain_open_points(
    weights_path: str | os.PathLike[str], config: MDiffAEConfig | None = None
) -> list[Verdict]:
    """One verdict per open point (`OpenPoints`), from a `model.safetensors` header.

    `config` defaults to the `config.json` beside the file, else the mdiffae_v1 preset (the
    'strict load' verdict says which). Checks the raw published names, then our strict-load diff.
    """
    path = Path(weights_path)
    header = read_header(path)
    if config is None:
        config, source = _config_beside(path)
    else:
        source = "the config argument"
    c, z, p = config.model_dim, config.bottleneck_dim, config.patch_size
    patchify_shapes = {
        "default": (c, config.in_channels, p, p),
        "PixelUnshuffle + 1x1 layout, reshaped on load": (c, config.in_channels * p * p, 1, 1),
    }
    verdicts = _count_verdicts(header, config)
    verdicts.append(_freqs_verdict(header, path))
    for stack in ("encoder", "decoder"):
        key = f"{stack}.patchify.proj.weight"
        verdicts.append(_named_shape(f"{stack} patchify layout", header, key, patchify_shapes))
    verdicts += _block_name_verdicts(header, config)
    mask_candidates = sorted(
        k for k, v in header.items() if k.startswith("decoder.") and v.shape == (1, c, 1, 1)
    )
    expected_mask = list(UNVERIFIED_KEYS["mask feature name"])
    status = CONFIRMED if mask_candidates == expected_mask else DIFFERS
    verdicts.append(
        Verdict(
            "mask feature name", status, f"[1, {c}, 1, 1] tensors in decoder: {mask_candidates}"
        )
    )
    verdicts.append(
        _named_shape(
            "latent_norm width",
            header,
            "decoder.latent_norm.weight",
            {"default": (c,), f"{z}-wide": (z,)},
        )
    )
    diff = MDiffAE.inspect_checkpoint(path, config)
    detail = f"against the model of {source}: {diff.report()}"
    verdicts.append(Verdict("strict load", CONFIRMED if diff.loadable else DIFFERS, detail))
    for point, default, how in (
        ("modulation order", DEFAULT_OPEN_POINTS.modulation_order, BY_PSNR),
        ("MLP re-normalisation", f"mlp_renorm={DEFAULT_OPEN_POINTS.mlp_renorm}", BY_PSNR),
        ("PDG mask placement", DEFAULT_OPEN_POINTS.mask_at, NOT_FROM_FILES),
        ("PDG mask draw", DEFAULT_OPEN_POINTS.mask_draw, NOT_FROM_FILES),
    ):
        verdicts.append(Verdict(point, UNDECIDED, f"default {default}; {how}"))
    return verdicts


def format_verdicts(verdicts: list[Verdict]) -> str:
    """One line per verdict."""
    return "\n".join(str(v) for v in verdicts)


__all__ = ["CONFIRMED", "DIFFERS", "UNDECIDED", "Verdict", "explain_open_points", "format_verdicts"]
