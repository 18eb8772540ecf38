"""File writing that never leaves a half-written file behind."""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable
from pathlib import Path

_NEW_FILE_MODE = 0o666
"""What `open(path, "w")` asks for; the kernel takes the umask off, so files are readable by others
wherever the user's umask allows it (`tempfile.mkstemp` would force 0600)."""


def _create_temporary(folder: Path, name: str) -> Path:
    """A new empty file `.<name>.<random>.tmp` in `folder`, created exclusively with the mode an
    ordinary `open()` gives."""
    while True:
        temporary = folder / f".{name}.{secrets.token_hex(6)}.tmp"
        try:
            handle = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, _NEW_FILE_MODE)
        except FileExistsError:
            continue
        os.close(handle)
        return temporary


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Call `write(tmp)` on a temporary file next to `path`, then rename it over `path`.

    The file gets the mode `open()` would give it (0666 less the umask), so outputs are as
    readable as the user's other files.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = _create_temporary(path.parent, path.name)
    try:
        write(temporary)
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    """Write UTF-8 text to `path` atomically."""
    atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))
