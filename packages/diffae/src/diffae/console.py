"""What the command prints: notes and tables on stdout, problems on stderr, tqdm progress bars."""

from __future__ import annotations

import sys
from collections.abc import Callable

from tqdm import tqdm


class CliError(Exception):
    """A problem the user can fix (bad argument, missing model, missing extra): one line, exit 1."""


class ModelError(RuntimeError):
    """The model cannot do what was asked, or failed doing it: one line naming what failed."""


class MissingDependency(ImportError):
    """A package an optional feature needs is not installed: one line saying how to install it."""


class ArgumentError(ValueError):
    """A library call's argument its caller can fix, in one line that starts with the argument.

    `argument` is the parameter's name as the caller wrote it (`batch_size`, `out`), `detail`
    the rest of the line (": expected ..., got ..." or " 6: not divisible ..."): a command line
    puts its own spelling of the argument (`--batch-size`) in front of the same detail.
    """

    def __init__(self, argument: str, detail: str) -> None:
        super().__init__(f"{argument}{detail}")
        self.argument, self.detail = argument, detail


class Console:
    """Writes through tqdm, so messages never break a progress bar; `quiet` silences stdout.

    `words` rewrites every message (a command line puts its own spellings, `--fit pad`, for
    the library's `fit=pad`)."""

    def __init__(self, quiet: bool = False, words: Callable[[str], str] | None = None) -> None:
        self.quiet = quiet
        self.words = words or (lambda text: text)

    def note(self, message: str) -> None:
        """Say what was done (to stdout), unless quiet."""
        if not self.quiet:
            tqdm.write(self.words(message), file=sys.stdout)

    def problem(self, message: str) -> None:
        """Report a skipped input or a failure (to stderr), even when quiet."""
        tqdm.write(self.words(message), file=sys.stderr)

    def progress(self, total: int, description: str) -> tqdm:
        """A progress bar over `total` images on stderr; none when quiet or stderr is no
        terminal (a log file or pipe would fill with redrawn bars)."""
        return tqdm(
            total=total,
            desc=description,
            unit="image",
            disable=self.quiet or not sys.stderr.isatty(),
            file=sys.stderr,
            dynamic_ncols=True,
            leave=False,
        )
