"""Wall time of short `diffae` commands, each in a new process, side by side in one run.

    uv run python -m benchmarks.cli_startup [--repeats 5] [--out-dir benchmarks/results]

Measures `import torch` alone (the floor of any command that needs it), `diffae --help`,
`diffae inspect` of the embedded model (config.json and the safetensors header, no torch) and
the same with `--check` (which builds the model on the meta device). The commands alternate,
so a change in the machine's load touches them alike; the load is recorded at both ends.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

from diffae.models import EMBEDDED_MODEL

from .report import (
    RESULTS_DIR,
    default_machine_name,
    machine_info,
    markdown_table,
    write_results,
)

COMMANDS = {
    "import torch": ["-c", "import torch"],
    "diffae --help": ["-m", "diffae", "--help"],
    "diffae inspect MODEL": ["-m", "diffae", "inspect", str(EMBEDDED_MODEL)],
    "diffae inspect MODEL --check": ["-m", "diffae", "inspect", str(EMBEDDED_MODEL), "--check"],
}
"""What is timed: arguments of `python` (this interpreter), run from the repository root."""


def time_command(arguments: list[str]) -> float:
    """Seconds from start to exit of `python <arguments>`; a failure is an error."""
    start = time.perf_counter()
    subprocess.run([sys.executable, *arguments], check=True, capture_output=True, timeout=300)
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=5, help="runs of each command")
    parser.add_argument("--out-dir", type=Path, default=RESULTS_DIR)
    parser.add_argument("--machine", help="name in the results' file names")
    args = parser.parse_args(argv)
    info = machine_info(torch.device("cpu"))
    seconds: dict[str, list[float]] = {name: [] for name in COMMANDS}
    time_command(COMMANDS["import torch"])  # warm the file cache
    for _ in range(args.repeats):
        for name, arguments in COMMANDS.items():
            seconds[name].append(time_command(arguments))
    rows = [
        [name, f"{statistics.median(times):.2f}", f"{min(times):.2f}", f"{max(times):.2f}"]
        for name, times in seconds.items()
    ]
    data = {"machine": info, "repeats": args.repeats, "seconds": seconds}
    markdown = "\n".join(
        [
            "# `diffae` command start-up (wall seconds, each in a new process)",
            "",
            markdown_table(["command", "median", "min", "max"], rows),
            "",
            *(f"- {key}: `{value}`" for key, value in info.items()),
        ]
    )
    print(markdown)
    stem = f"cli-startup-{args.machine or default_machine_name(torch.device('cpu'))}"
    args.out_dir.mkdir(parents=True, exist_ok=True)
    write_results(args.out_dir, stem, markdown, data)
    return data


if __name__ == "__main__":
    main()
