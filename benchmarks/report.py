"""What the results files say about the machine, Markdown tables, and writing the files."""

from __future__ import annotations

import json
import os
import platform
import re
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


def machine_info(device: torch.device) -> dict[str, Any]:
    """Device, its name, threads, torch/diffusers versions and the date, for every header."""
    info: dict[str, Any] = {
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


def write_results(out_dir: Path, stem: str, markdown: str, data: dict[str, Any]) -> list[Path]:
    """Write `<stem>.md` and `<stem>.json` in `out_dir` (atomically), saying so; returns both."""
    markdown_path, json_path = out_dir / f"{stem}.md", out_dir / f"{stem}.json"
    atomic_write_text(markdown_path, markdown)
    atomic_write_text(json_path, json.dumps(data, indent=2) + "\n")
    for path in (markdown_path, json_path):
        print(f"wrote {path}")
    return [markdown_path, json_path]
