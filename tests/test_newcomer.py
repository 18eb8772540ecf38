"""What a newcomer meets first: the files we write, the photos we read, the errors we print."""

from __future__ import annotations

import json
import os
import shutil
import stat
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from diffae.cli import main
from diffae.cli.inspection import latent_shape
from diffae.images import TRUNCATED_16_BIT_NOTE, probe_image, read_image, sample_photos
from diffae.models import EMBEDDED_MODEL, patch_multiple
from diffae_core.families import installed_families
from diffae_core.io import atomic_write, atomic_write_text
from diffae_core.loading import FamilyMismatchError
from diffae_testing import randomize_weights

FAMILIES = installed_families()


@pytest.fixture
def umask():
    """Set the process umask for one test; restored afterwards (it is process-wide)."""
    previous = os.umask(0o022)
    try:
        yield lambda mask: os.umask(mask)
    finally:
        os.umask(previous)


def mode_of(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.parametrize("mask, expected", [(0o022, 0o644), (0o002, 0o664), (0o077, 0o600)])
def test_atomic_write_gives_the_mode_open_gives(umask, tmp_path: Path, mask: int, expected: int):
    umask(mask)
    atomic_write_text(tmp_path / "a.txt", "text")
    atomic_write(tmp_path / "b.bin", lambda tmp: tmp.write_bytes(b"\0"))
    with open(tmp_path / "plain.txt", "w") as handle:
        handle.write("text")
    assert mode_of(tmp_path / "a.txt") == mode_of(tmp_path / "plain.txt") == expected
    assert mode_of(tmp_path / "b.bin") == expected
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []


def test_atomic_write_leaves_no_temporary_on_failure(tmp_path: Path):
    def fail(tmp: Path) -> None:
        tmp.write_bytes(b"half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(tmp_path / "out.bin", fail)
    assert list(tmp_path.iterdir()) == []


def test_command_line_outputs_are_readable_by_others(umask, tmp_path: Path):
    """Every file `diffae reconstruct` writes (PNGs, grids, metrics) is 0644 under umask 022."""
    umask(0o022)
    out = tmp_path / "recon"
    assert main(["reconstruct", str(sample_photos()[1]), "--out", str(out), "--grid"]) == 0
    written = [path for path in out.rglob("*") if path.is_file()]
    assert written
    assert {path.relative_to(out).as_posix(): oct(mode_of(path)) for path in written} == {
        path.relative_to(out).as_posix(): oct(0o644) for path in written
    }


def write_rotated_jpeg(path: Path, orientation: int) -> Image.Image:
    """A 288x448 (W x H) JPEG whose EXIF says how to turn it upright; returns the upright image."""
    stored = Image.new("RGB", (288, 448))
    stored.paste((200, 30, 30), (0, 0, 288, 100))  # a red band at the stored top
    exif = Image.Exif()
    exif[0x0112] = orientation
    stored.save(path, quality=95, exif=exif)
    turn = {3: Image.Transpose.ROTATE_180, 6: Image.Transpose.ROTATE_270}
    return stored.transpose(turn.get(orientation, Image.Transpose.ROTATE_90))  # 8: 90° ccw


@pytest.mark.parametrize("orientation", [6, 8, 3])
def test_photos_are_read_upright(tmp_path: Path, orientation: int):
    """A phone photo shown as 448x288 is read as 448x288, in every reader and in training."""
    path = tmp_path / "phone.jpg"
    upright = write_rotated_jpeg(path, orientation)
    pixels, note = read_image(path)
    assert probe_image(path) == upright.size
    assert tuple(pixels.shape) == (1, 3, upright.size[1], upright.size[0])
    assert "EXIF orientation" in note
    # The red band is where a viewer shows it (JPEG-compressed: compare coarse colour).
    expected = torch.from_numpy(np.asarray(upright, dtype=np.float32)).permute(2, 0, 1) / 127.5 - 1
    assert (pixels[0] - expected).abs().mean() < 0.02


def test_reconstruct_keeps_a_phone_photo_upright(tmp_path: Path, capsys):
    path = tmp_path / "phone.jpg"
    upright = write_rotated_jpeg(path, 6)
    out = tmp_path / "recon"
    assert main(["reconstruct", str(path), "--out", str(out)]) == 0
    with Image.open(out / "phone.png") as written:
        assert written.size == upright.size == (448, 288)
    captured = capsys.readouterr()
    assert "rotated 90° clockwise upright (EXIF orientation)" in captured.out + captured.err


def write_png_16(path: Path, values: np.ndarray) -> None:
    """A 16-bit PNG of uint16 values [H, W] (greyscale) or [H, W, 3] (RGB), written by hand:
    Pillow cannot write 16-bit RGB."""
    height, width = values.shape[:2]
    colour_type = 2 if values.ndim == 3 else 0
    rows = b"".join(b"\0" + values[y].astype(">u2").tobytes() for y in range(height))

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    header = struct.pack(">IIBBBBB", width, height, 16, colour_type, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(rows))
        + chunk(b"IEND", b"")
    )


def test_sixteen_bit_greyscale_keeps_its_sixteen_bits(tmp_path: Path):
    values = np.arange(64 * 64, dtype=np.uint16).reshape(64, 64) * 16  # 0 .. 65520
    write_png_16(tmp_path / "grey16.png", values)
    pixels, note = read_image(tmp_path / "grey16.png")
    expected = torch.from_numpy(values.astype(np.float64) / 32767.5 - 1.0).float()
    torch.testing.assert_close(pixels[0], expected.expand(3, 64, 64))
    assert note == "16-bit greyscale -> RGB"


def test_sixteen_bit_colour_says_it_is_read_as_eight_bits(tmp_path: Path):
    values = (np.arange(16 * 16 * 3, dtype=np.uint16).reshape(16, 16, 3) * 80).astype(np.uint16)
    write_png_16(tmp_path / "rgb16.png", values)
    pixels, note = read_image(tmp_path / "rgb16.png")
    assert tuple(pixels.shape) == (1, 3, 16, 16)
    assert note == TRUNCATED_16_BIT_NOTE


# -- a folder's family is known, not guessed --------------------------------------------------


def test_embedded_model_folder_needs_no_family(capsys):
    """`diffae inspect packages/diffae/src/diffae/data/model` names its family from diffae.json."""
    assert main(["inspect", str(EMBEDDED_MODEL)]) == 0
    assert "family: fcdm_diffae (from " in capsys.readouterr().out


def test_a_wrong_family_is_refused_before_loading(tmp_path: Path, capsys):
    """The embedded model under --family full_capacitor once reconstructed at 19 dB silently."""
    code = main(
        [
            "reconstruct",
            str(sample_photos()[0]),
            "--model",
            str(EMBEDDED_MODEL),
            "--family",
            "full_capacitor",
            "--out",
            str(tmp_path / "out"),
        ]
    )
    assert code == 1
    error = capsys.readouterr().err
    assert "--family full_capacitor" in error and "is a fcdm_diffae model" in error
    assert not (tmp_path / "out").exists()


def test_the_python_loader_refuses_another_familys_folder(tmp_path: Path):
    FCDM = FAMILIES["fcdm_diffae"]
    model = randomize_weights(FCDM.model_class(FCDM.tiny_config))
    model.save_pretrained(tmp_path)
    with pytest.raises(FamilyMismatchError, match="holds a fcdm_diffae model"):
        FAMILIES["full_capacitor"].model_class.from_pretrained(tmp_path)


def copy_model_files(source: Path, folder: Path) -> Path:
    """config.json and model.safetensors only: a folder as published, with no diffae.json."""
    folder.mkdir(parents=True)
    for name in ("config.json", "model.safetensors"):
        shutil.copyfile(source / name, folder / name)
    return folder


def test_an_unrecorded_ambiguous_folder_lists_the_flags(tmp_path: Path, capsys):
    bare = copy_model_files(EMBEDDED_MODEL, tmp_path / "bare")
    assert main(["inspect", str(bare)]) == 1
    error = capsys.readouterr().err
    assert "pass --family fcdm_diffae or --family full_capacitor" in error
    assert main(["inspect", str(bare), "--family", "full_capacitor"]) == 0  # the user decides


def test_a_hub_cache_folder_is_known_by_its_repo_id(tmp_path: Path, capsys):
    snapshot = tmp_path / "models--data-archetype--semdisdiffae_p32_v2" / "snapshots" / "abc123"
    copy_model_files(EMBEDDED_MODEL, snapshot)
    assert main(["inspect", str(snapshot)]) == 0
    out = capsys.readouterr().out
    assert "family: fcdm_diffae (from published repo id data-archetype/semdisdiffae_p32_v2)" in out


@pytest.mark.parametrize("family_name", ["fcdm_diffae", "full_capacitor"])
def test_a_published_config_is_known_without_weights(tmp_path: Path, capsys, family_name: str):
    family = FAMILIES[family_name]
    preset = family.repo_ids[-1].split("/")[1]
    family.config_class.preset(preset).save(tmp_path / "config.json")
    assert main(["inspect", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert f"family: {family_name} (from config.json is the published {preset} config)" in out


def test_inspect_as_a_user_runs_it():
    """In a subprocess, as printed in the README: no --family, exit 0."""
    result = subprocess.run(
        [sys.executable, "-m", "diffae", "inspect", str(EMBEDDED_MODEL)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert "family: fcdm_diffae" in result.stdout


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_inspect_latent_shapes_from_the_config_are_what_encode_gives(name: str):
    """`inspect` reads the latent shape off the config (fast); it must be what encode returns."""
    family = FAMILIES[name]
    model = family.model_class(family.tiny_config).eval()
    size = 2 * patch_multiple(family.tiny_config)
    shape = latent_shape(family.tiny_config, size)
    assert family.has_encoder == callable(getattr(model, "encode", None))
    if family.has_encoder:
        with torch.no_grad():
            assert tuple(model.encode(torch.zeros(1, 3, size, size)).shape[1:]) == shape
    else:
        assert shape == (family.tiny_config.latent_channels, 2, 2)


# -- devices: one line, before anything loads --------------------------------------------------


@pytest.mark.parametrize(
    "device, expected",
    [
        ("mps", "--device mps: no mps device available"),
        ("xpu", "--device xpu: no xpu device available"),
        ("gpu", "--device: expected e.g. cpu, cuda or cuda:1, got 'gpu'"),
        ("cpu:1", "--device cpu:1: there is one CPU device"),
    ],
)
@pytest.mark.parametrize("command", ["reconstruct", "train"])
def test_unavailable_devices_are_one_line_errors(
    tmp_path: Path, capsys, device: str, expected: str, command: str
):
    if device in ("mps", "xpu") and getattr(torch, device, None) and available(device):
        pytest.skip(f"this machine has an {device} device")
    photo = str(sample_photos()[0])
    args = {
        "reconstruct": ["reconstruct", photo, "--out", str(tmp_path / "out")],
        "train": ["train", str(tmp_path), "--out", str(tmp_path / "run"), "--init", "x"],
    }[command]
    assert main([*args, "--device", device]) == 1
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and expected in error
    assert not (tmp_path / "out").exists() and not (tmp_path / "run").exists()


def available(device: str) -> bool:
    backend = torch.backends.mps if device == "mps" else getattr(torch, device)
    return backend.is_available()


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA device")
def test_train_without_cuda_says_so(tmp_path: Path, capsys):
    args = ["train", str(tmp_path), "--out", str(tmp_path / "run"), "--init", "x"]
    assert main([*args, "--device", "cuda"]) == 1
    assert "--device cuda: no cuda device available" in capsys.readouterr().err


def test_train_refuses_zero_threads(tmp_path: Path, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["train", str(tmp_path), "--out", str(tmp_path / "run"), "--threads", "0"])
    assert exit_.value.code == 2
    assert "argument --threads: expected an integer >= 1, got 0" in capsys.readouterr().err


def test_cpu_zero_is_the_cpu(tmp_path: Path):
    assert (
        main(["reconstruct", str(sample_photos()[0]), "--out", str(tmp_path), "--device", "cpu:0"])
        == 0
    )
    model = FAMILIES["fcdm_diffae"].model_class.from_pretrained(EMBEDDED_MODEL, device="cpu:0")
    assert next(model.parameters()).device == torch.device("cpu")


# -- outputs: never mixed or replaced without a word -------------------------------------------


def test_a_used_output_folder_is_refused_unless_overwrite(tmp_path: Path, capsys):
    photos = [str(path) for path in sample_photos()[:2]]
    out = tmp_path / "recon"
    assert main(["reconstruct", *photos, "--out", str(out), "--grid"]) == 0
    (out / "notes.txt").write_text("mine")
    capsys.readouterr()
    assert main(["reconstruct", photos[0], "--out", str(out)]) == 1
    error = capsys.readouterr().err
    assert f"--out: {out} is not empty" in error and "pass --overwrite" in error
    assert main(["reconstruct", photos[0], "--out", str(out), "--overwrite"]) == 0
    first = Path(photos[0]).stem
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()) == [
        f"{first}.png",
        "metrics.csv",
        "metrics.json",
        "notes.txt",
    ]


def test_an_existing_latents_file_is_refused_unless_overwrite(tmp_path: Path, capsys):
    photos = [str(path) for path in sample_photos()[:2]]
    latents = tmp_path / "latents.safetensors"
    assert main(["encode", *photos, "--out", str(latents)]) == 0
    before = latents.read_bytes()
    assert main(["encode", photos[0], "--out", str(latents)]) == 1
    assert f"--out: {latents} exists; pass --overwrite" in capsys.readouterr().err
    assert latents.read_bytes() == before
    assert main(["encode", photos[0], "--out", str(latents), "--overwrite"]) == 0
    assert latents.read_bytes() != before


def test_decode_refuses_latents_of_another_model(tmp_path: Path, capsys):
    """Same family, same channels, other weights: refused before loading, unless --any-model."""
    latents = tmp_path / "latents.safetensors"
    assert main(["encode", str(sample_photos()[0]), "--out", str(latents)]) == 0
    other = FAMILIES["fcdm_diffae"].model_class.from_pretrained(EMBEDDED_MODEL)
    with torch.no_grad():
        for parameter in other.parameters():
            parameter.mul_(1.01)
    other.save_pretrained(tmp_path / "other")
    capsys.readouterr()
    args = ["decode", str(latents), "--model", str(tmp_path / "other")]
    assert main([*args, "--out", str(tmp_path / "a")]) == 1
    error = capsys.readouterr().err
    assert "encoded with the embedded model (no --model)" in error and "--any-model" in error
    assert not (tmp_path / "a").exists()
    assert main([*args, "--out", str(tmp_path / "b"), "--any-model"]) == 0
    assert main(["decode", str(latents), "--out", str(tmp_path / "c")]) == 0  # its own model


def test_missing_inputs_are_refused_before_the_model_loads(tmp_path: Path, capsys):
    out = tmp_path / "out"
    assert main(["reconstruct", str(tmp_path / "nope"), "--out", str(out)]) == 1
    error = capsys.readouterr().err
    assert error == (
        f"diffae reconstruct: error: IMAGES: nothing to read ({tmp_path / 'nope'}: "
        "no such file or folder)\n"
    )
    assert not out.exists()


def test_decode_of_an_image_says_what_to_use(tmp_path: Path, capsys):
    photo = sample_photos()[0]
    renamed = tmp_path / "photo.safetensors"
    shutil.copyfile(photo, renamed)  # an image under a latents name: found by its bytes
    for path in (photo, renamed):
        assert main(["decode", str(path), "--out", str(tmp_path / "out")]) == 1
        error = capsys.readouterr().err
        assert "this is an image, not a latents file: use `diffae reconstruct`" in error
        assert "skipped" not in error


def test_model_errors_name_the_option_not_a_python_parameter(tmp_path: Path, capsys):
    photo = str(sample_photos()[0])
    assert main(["reconstruct", photo, "--model", "nope", "--out", str(tmp_path / "o")]) == 1
    error = capsys.readouterr().err
    assert error.startswith("diffae reconstruct: error: --model: 'nope' is neither")
    assert "path_or_repo_id" not in error


def test_the_readme_snippet_runs_as_printed(monkeypatch):
    """The README's first Python block, with a tiny model standing in for the Hub download."""
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    snippet = readme.split("```python\n", 1)[1].split("```", 1)[0]
    family = FAMILIES["fcdm_diffae"]
    asked = []

    def tiny_from_pretrained(cls, repo_id, **options):
        asked.append(repo_id)
        model = randomize_weights(cls(family.tiny_config))
        return model.to(options["device"], options["dtype"]).eval()

    monkeypatch.setattr(family.model_class, "from_pretrained", classmethod(tiny_from_pretrained))
    namespace: dict = {}
    exec(compile(snippet, "README.md", "exec"), namespace)
    assert asked == ["data-archetype/semdisdiffae_p32_v2"]
    assert namespace["recon"].shape == (1, 3, 512, 512)
    assert namespace["recon"].dtype == torch.float32


def test_demo_runs_again_over_its_own_outputs_only(tmp_path: Path, capsys):
    out = tmp_path / "demo"  # as an earlier `diffae demo` left it (a newcomer runs it twice)
    out.mkdir()
    (out / "metrics.json").write_text(json.dumps({"settings": {"model": "embedded"}}))
    (out / "stale.png").write_bytes(b"an earlier run's output")
    assert main(["demo", "--out", str(out)]) == 0
    assert not (out / "stale.png").exists()
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    (theirs / "holiday.png").write_bytes(b"not ours")
    capsys.readouterr()
    assert main(["demo", "--out", str(theirs)]) == 1
    assert f"--out: {theirs} is not empty" in capsys.readouterr().err
    assert (theirs / "holiday.png").read_bytes() == b"not ours"


# -- a quick start: help and argument errors without torch -------------------------------------

NO_TORCH_SCRIPT = """
import sys
from diffae.cli import main
for argv in {argvs!r}:
    try:
        main(argv)
    except SystemExit:
        pass
print("torch imported:", "torch" in sys.modules, file=sys.stderr)
"""


def test_help_and_argument_errors_do_not_import_torch():
    """`diffae --help` took 2-6 s and 850 MB importing torch; now it answers at once."""
    argvs = [
        ["--help"],
        ["reconstruct", "--help"],
        ["encode", "--help"],
        ["reconstruct", "x", "--out", "o", "--steps", "0"],
        ["reconstruct", "x", "--out", "o", "--sampler", "euler"],
        ["no-such-command"],
    ]
    result = subprocess.run(
        [sys.executable, "-c", NO_TORCH_SCRIPT.format(argvs=argvs)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert "torch imported: False" in result.stderr, result.stderr
    assert "usage: diffae" in result.stdout
    assert "argument --steps: expected an integer >= 1, got 0" in result.stderr
    assert "argument --sampler: invalid choice: 'euler'" in result.stderr


def test_the_command_line_names_are_the_cores():
    from diffae.cli import arguments
    from diffae_core.config import SAMPLER_NAMES, SCHEDULE_KINDS

    assert (arguments.SAMPLER_NAMES, arguments.SCHEDULE_KINDS) == (SAMPLER_NAMES, SCHEDULE_KINDS)
