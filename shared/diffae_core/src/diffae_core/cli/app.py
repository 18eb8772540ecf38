"""`main`: parse the command line, run one command, turn a user-fixable problem into one line.

Exit status: 0 success; 1 an error, or some inputs skipped; 2 a bad command line (argparse).
"""

from __future__ import annotations

from collections.abc import Sequence

from ..checkpoint import CheckpointMismatchError
from ..config import ConfigError
from .arguments import build_parser
from .commands import decode, encode, reconstruct
from .console import CliError, Console
from .inspection import inspect

COMMANDS = {"reconstruct": reconstruct, "encode": encode, "decode": decode, "inspect": inspect}
USER_ERRORS = (CliError, OSError, ConfigError, CheckpointMismatchError)
"""Problems with the inputs (missing files, offline hub, bad config or checkpoint), reported
without a traceback; anything else is a bug and keeps its traceback."""


def main(argv: Sequence[str] | None = None) -> int:
    """Run `diffae` with `argv` (default: sys.argv[1:]); returns the exit status."""
    args = build_parser().parse_args(argv)
    console = Console(quiet=args.quiet)
    try:
        return COMMANDS[args.command](args, console)
    except USER_ERRORS as error:
        console.problem(f"diffae {args.command}: error: {error}")
        return 1
    except KeyboardInterrupt:
        console.problem(f"diffae {args.command}: interrupted")
        return 130
