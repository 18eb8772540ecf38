"""What the results files say about the machine, Markdown tables, and writing the files."""

from __future__ import annotations

import json
import os
import platform
import re
import subprocess
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from diffae_core.io import atomic_write_text

RESULTS_DIR = Path(__file__).resolve().parent / "results"


def processor_name() -> str:
    """The CPU model from /proc/cpuinfo (Linux), else what `platform` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


CPU_LIMITS = ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA")
IDLE_LOAD_PER_CPU = 0.25
"""A machine counts as idle when the 1-minute load average of other work stays below this per
CPU: at the start (nothing of ours running yet) and at the end (less our own torch threads)."""


RESULTS = "benchmarks/results"


def git_commit() -> str | None:
    """The checkout's commit, with '+dirty' when tracked files differ from it (results files
    aside: an earlier run of the same session writes them); None outside git."""
    root = Path(__file__).resolve().parents[1]
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True
        ).stdout.strip()
        changes = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no", "--", ".", f":!{RESULTS}"],
            cwd=root,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None
    return commit + ("+dirty" if changes else "")


def load_average() -> list[float] | None:
    """The 1-, 5- and 15-minute load averages (None where the OS has none)."""
    try:
        return [round(value, 2) for value in os.getloadavg()]
    except (AttributeError, OSError):
        return None


def other_load_is_idle(load: list[float] | None, own_threads: int) -> bool | None:
    """Whether the 1-minute load, less `own_threads`, is below IDLE_LOAD_PER_CPU per CPU."""
    if load is None:
        return None
    return load[0] - own_threads < IDLE_LOAD_PER_CPU * (os.cpu_count() or 1)


def machine_info(device: torch.device) -> dict[str, Any]:
    """Device, its name, threads, torch/diffusers versions, the date, the commit and the load
    average at the start, for every header (`write_results` adds the load at the end and the
    verdict `idle`)."""
    load = load_average()
    info: dict[str, Any] = {
        "commit": git_commit(),
        "load_average_start": load,
        "idle_at_start": other_load_is_idle(load, own_threads=0),
        "device": str(device),
        "device_name": (
            torch.cuda.get_device_name(device) if device.type == "cuda" else processor_name()
        ),
        "cpu": processor_name(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "python": platform.python_version(),
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    }
    info["native_bf16"] = native_bf16(device)
    # The kernels PyTorch dispatches to, and any limit set on them (a run under
    # ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 stands in for an AVX2-only CPU).
    info["cpu_capability"] = torch.backends.cpu.get_cpu_capability()
    for name in CPU_LIMITS:
        if name in os.environ:
            info[name] = os.environ[name]
    try:
        import diffusers

        info["diffusers"] = diffusers.__version__
    except ImportError:
        info["diffusers"] = None
    return info


def native_bf16(device: torch.device) -> bool | None:
    """Whether the device computes bf16 natively (CPU: oneDNN's check; None if unknown).

    Without it (e.g. AVX2-only CPUs) bf16 is emulated and far slower than float32.
    """
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return None


def slug(text: str) -> str:
    """'NVIDIA GeForce RTX 5090' -> 'nvidia-geforce-rtx-5090' (for file names)."""
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def default_machine_name(device: torch.device) -> str:
    """The GPU's name on CUDA, else 'cpu-<threads>t' plus the processor name."""
    if device.type == "cuda":
        return slug(torch.cuda.get_device_name(device))
    return slug(f"cpu {torch.get_num_threads()}t {processor_name()}")


def markdown_table(headers: list[str], rows: list[list[Any]]) -> str:
    """A GitHub Markdown table; the first column left-aligned, the others right-aligned."""
    lines = ["| " + " | ".join(headers) + " |"]
    lines.append("|" + "|".join(["---"] + ["---:"] * (len(headers) - 1)) + "|")
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def header_lines(info: dict[str, Any]) -> list[str]:
    """The machine description as Markdown bullet lines."""
    return [f"- {key}: `{value}`" for key, value in info.items()]


def load_record(data: dict[str, Any]) -> dict[str, Any]:
    """The load at the end of the run and whether the run was idle throughout, from the start
    figures `machine_info` put in `data` (under any key) and the load now."""
    info = next(
        (value for value in data.values() if isinstance(value, dict) and "idle_at_start" in value),
        {},
    )
    end = load_average()
    threads = info.get("torch_threads", torch.get_num_threads())
    at_end = other_load_is_idle(end, own_threads=threads)
    verdicts = [info.get("idle_at_start"), at_end]
    idle = None if None in verdicts else all(verdicts)
    return {"load_average_end": end, "idle": idle}


def write_results(out_dir: Path, stem: str, markdown: str, data: dict[str, Any]) -> list[Path]:
    """Write `<stem>.md` and `<stem>.json` in `out_dir` (atomically), saying so; returns both.

    Both get (and `data` is updated with) the load at the end and the verdict `idle`
    (`load_record`): a figure measured while other work ran says so in its own file.
    """
    record = load_record(data)
    data.update(record)
    markdown = markdown.rstrip("\n") + "\n\n" + "\n".join(header_lines(record)) + "\n"
    markdown_path, json_path = out_dir / f"{stem}.md", out_dir / f"{stem}.json"
    atomic_write_text(markdown_path, markdown)
    atomic_write_text(json_path, json.dumps(data, indent=2) + "\n")
    for path in (markdown_path, json_path):
        print(f"wrote {path}")
    return [markdown_path, json_path]


def write_table_results(
    args: Any, stem: str, title: str, table: str, info: dict[str, Any], rows: list[Any]
) -> dict[str, Any]:
    """Print `# title`, the table and the machine header, and write them (and {"machine": info,
    "rows": rows}) as `<stem>-<machine>.md/.json` in `args.out_dir`; the machine is
    `args.machine`, else the CPU's `default_machine_name`. Returns the JSON data."""
    markdown = "\n".join([f"# {title}", "", table, "", *header_lines(info)])
    print(markdown)
    machine = args.machine or default_machine_name(torch.device("cpu"))
    data = {"machine": info, "rows": rows}
    write_results(args.out_dir, f"{stem}-{machine}", markdown, data)
    return data
