"""`main`: parse the command line, run one command, turn a user-fixable problem into one line.

Exit status: 0 success; 1 an error, or some inputs skipped; 2 a bad command line (argparse).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

from diffae_core.checkpoint import CheckpointError, CheckpointMismatchError
from diffae_core.config import ConfigError
from diffae_core.families import installed_families

from ..console import CliError, Console
from .arguments import build_parser
from .bundling import bundle
from .coding import decode, encode
from .dataset_encoding import encode_dataset
from .demo import demo
from .inspection import inspect
from .reconstruction import reconstruct
from .training import train_command
from .verification import verify
from .viewing import viewer

COMMANDS = {
    "reconstruct": reconstruct,
    "encode": encode,
    "decode": decode,
    "inspect": inspect,
    "verify": verify,
    "bundle": bundle,
    "encode-dataset": encode_dataset,
    "train": train_command,
    "demo": demo,
    "viewer": viewer,
}
USER_ERRORS = (CliError, OSError, ConfigError, CheckpointError, CheckpointMismatchError)
"""Problems with the inputs (missing files, offline hub, bad config or checkpoint), reported
without a traceback; anything else is a bug and keeps its traceback."""


def main(argv: Sequence[str] | None = None) -> int:
    """Run `diffae` with `argv` (default: sys.argv[1:]); returns the exit status."""
    args = build_parser(installed_families().values()).parse_args(argv)
    console = Console(quiet=args.quiet)
    try:
        return COMMANDS[args.command](args, console)
    except BrokenPipeError:
        # The reader went away (`diffae inspect MODEL | head`): stop quietly, and point stdout
        # at /dev/null so the interpreter's final flush does not fail again.
        silence_stdout()
        return 1
    except USER_ERRORS as error:
        console.problem(f"diffae {args.command}: error: {error}")
        return 1
    except KeyboardInterrupt:
        console.problem(f"diffae {args.command}: interrupted")
        return 130


def silence_stdout() -> None:
    """Send whatever is still buffered for stdout to /dev/null."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):
        pass  # stdout is no real file (e.g. captured by a test): nothing will be flushed to it
