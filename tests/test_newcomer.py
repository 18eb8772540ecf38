"""What a newcomer meets first: the files we write, the photos we read, the errors we print."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from diffae.cli import main
from diffae.images import sample_photos
from diffae_core.io import atomic_write, atomic_write_text


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
