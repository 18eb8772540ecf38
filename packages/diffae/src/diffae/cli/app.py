"""`main`: parse the command line, run one command, turn a user-fixable problem into one line.

Exit status: 0 success; 1 an error, or some inputs skipped; 2 a bad command line (argparse).
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Sequence
from importlib import import_module

from diffae_core.families import installed_families

from ..console import ArgumentError, CliError, Console, MissingDependency, ModelError
from .arguments import build_parser

COMMANDS = {
    "reconstruct": "reconstruction:reconstruct_command",
    "encode": "coding:encode",
    "decode": "coding:decode",
    "inspect": "inspection:inspect",
    "verify": "verification:verify",
    "bundle": "bundling:bundle",
    "encode-dataset": "dataset_encoding:encode_dataset_command",
    "train": "training:train_command",
    "demo": "demo:demo_command",
    "viewer": "viewing:viewer",
}
"""Each command's function (module:name in this package), imported only when it runs: the
modules import torch, which `--help` and argument errors do without."""

ARGUMENT_FLAGS = {
    "batch_size": "--batch-size",
    "device": "--device",
    "family": "--family",
    "fit": "--fit",
    "model": "--model",
    "crop_size": "--crop-size",
    "data": "FOLDER",
    "folder_or_list": "INPUT",
    "images": "IMAGES",
    "latents": "LATENTS",
    "num_workers": "--num-workers",
    "out": "--out",
    "overwrite=True": "--overwrite",
    "resume=True": "--resume",
    "resume": "--resume",
    "labels": "--labels",
    "run_folders": "RUN_DIR",
    "device=": "--device ",
    "fit=": "--fit ",
    "family=": "--family ",
    "model=": "--model ",
}
"""The command line's spelling of the library arguments its errors name (`ArgumentError`);
a `name=value` spelling is also replaced where the message suggests it."""

POSITIONAL_MODEL = {"bundle": "MODEL", "verify": "MODEL", "inspect": "MODEL_OR_FILE"}
"""Commands whose model is a positional argument, not --model."""


LIBRARY_PHRASES = {
    "run again with the same arguments": "run the same command again",
    "give no family or": "drop --family or pass",
}
"""How a library message's advice reads on the command line."""


def in_cli_words(text: str) -> str:
    """A library message with the command line's spellings (`--overwrite`, "the same
    command") for its `name=value` and phrases."""
    for spelling, flag in ARGUMENT_FLAGS.items():
        if "=" in spelling:  # a whole word: `family=` but not `sub_family=`
            text = re.sub(rf"(?<![\w-]){re.escape(spelling)}", flag, text)
    for phrase, words in LIBRARY_PHRASES.items():
        text = text.replace(phrase, words)
    return text


def as_cli_error(error: ArgumentError, command: str = "") -> CliError:
    """A library's ArgumentError in the command line's words: its flag (or positional
    argument, for `command`) for its argument."""
    flag = ARGUMENT_FLAGS.get(error.argument, error.argument)
    if error.argument == "model" and command in POSITIONAL_MODEL:
        flag = POSITIONAL_MODEL[command]
    return CliError(f"{flag}{in_cli_words(error.detail)}")


def user_errors() -> tuple[type[BaseException], ...]:
    """Problems with the inputs (missing files, offline hub, bad config or checkpoint), reported
    without a traceback; anything else is a bug and keeps its traceback.

    A checkpoint that does not match its model can only be raised once `diffae_core.loading`
    (torch) is imported; a command that never imports it (`inspect`) does not get it here."""
    from diffae_core.config import ConfigError
    from diffae_core.io import CheckpointError

    loading = sys.modules.get("diffae_core.loading")
    mismatch = () if loading is None else (loading.CheckpointMismatchError,)
    return (
        CliError,
        ArgumentError,
        ModelError,
        MissingDependency,
        OSError,
        ConfigError,
        CheckpointError,
        *mismatch,
    )


def command_of(argv: Sequence[str]) -> str:
    """The sub-command named in `argv` (its first word that is not an option), or ""."""
    return next((word for word in argv if not word.startswith("-")), "")


def main(argv: Sequence[str] | None = None) -> int:
    """Run `diffae` with `argv` (default: sys.argv[1:]); returns the exit status."""
    argv = sys.argv[1:] if argv is None else list(argv)
    command = command_of(argv)
    # Only decode has family switches (the other commands' help needs no family).
    families = installed_families().values() if command == "decode" else ()
    args = build_parser(families, only=command).parse_args(argv)
    console = Console(quiet=args.quiet, words=in_cli_words)
    try:
        module, function = COMMANDS[args.command].split(":")
        run = getattr(import_module(f"{__package__}.{module}"), function)
        return run(args, console)
    except BrokenPipeError:
        # The reader went away (`diffae inspect MODEL | head`): stop quietly, and point stdout
        # at /dev/null so the interpreter's final flush does not fail again.
        silence_stdout()
        return 1
    except Exception as error:
        if not isinstance(error, user_errors()):
            raise
        message = str(
            as_cli_error(error, args.command) if isinstance(error, ArgumentError) else error
        )
        console.problem(f"diffae {args.command}: error: {message}")
        return 1
    except KeyboardInterrupt as interruption:
        # A library's `Interrupted` says what was kept and how to go on; a bare Ctrl-C nothing.
        message = str(interruption) or "interrupted"
        console.problem(f"diffae {args.command}: {message}")
        return 130


def silence_stdout() -> None:
    """Send whatever is still buffered for stdout to /dev/null."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):
        pass  # stdout is no real file (e.g. captured by a test): nothing will be flushed to it
