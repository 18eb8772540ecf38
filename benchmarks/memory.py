"""Peak memory of one call: CUDA peak allocated on GPU, peak resident-set growth on CPU."""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

MALLOC_MMAP_THRESHOLD = -3
"""glibc's mallopt parameter M_MMAP_THRESHOLD (malloc.h)."""
MMAP_THRESHOLD_BYTES = 1 << 16
"""Blocks above 64 KiB are mmapped and go back to the OS when freed."""
RSS_POLL_SECONDS = 0.0005
STATM = Path("/proc/self/statm")


def return_freed_memory_to_os() -> bool:
    """Fix glibc's mmap threshold at 64 KiB so freed tensors leave the resident set.

    glibc raises the threshold after each large free, after which freed blocks stay resident
    and the next case's growth would be hidden. Returns False where this is not glibc.
    """
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        libc = ctypes.CDLL(name)
        return bool(libc.mallopt(MALLOC_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES))
    except (OSError, AttributeError):
        return False


def resident_bytes() -> int | None:
    """This process's resident set size in bytes (Linux /proc), or None elsewhere."""
    try:
        resident_pages = int(STATM.read_text().split()[1])
    except (OSError, IndexError, ValueError):
        return None
    return resident_pages * os.sysconf("SC_PAGE_SIZE")


def peak_growth_bytes(call: Callable[[], Any], device: torch.device) -> int | None:
    """Bytes the call adds at its peak over what was allocated before it (None if unknown).

    CUDA: `max_memory_allocated` after a reset. CPU: the resident set polled every 0.5 ms by a
    thread, so a peak shorter than that can be missed.
    """
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        call()
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) - before
    before = resident_bytes()
    if before is None:
        call()
        return None
    peak = before
    done = threading.Event()

    def poll() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, resident_bytes() or 0)
            done.wait(RSS_POLL_SECONDS)

    poller = threading.Thread(target=poll, daemon=True)
    poller.start()
    try:
        call()
    finally:
        done.set()
        poller.join()
    peak = max(peak, resident_bytes() or 0)
    return peak - before


def tensor_bytes(module: torch.nn.Module) -> int:
    """Bytes held by a module's parameters and buffers."""
    tensors = [*module.parameters(), *module.buffers()]
    return sum(t.numel() * t.element_size() for t in tensors)
