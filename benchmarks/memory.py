"""Peak memory of one call: CUDA peak allocated on GPU, peak resident-set growth on CPU."""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

MALLOC_TRIM_THRESHOLD = -1
"""glibc's mallopt parameter M_TRIM_THRESHOLD (malloc.h)."""
MALLOC_MMAP_THRESHOLD = -3
"""glibc's mallopt parameter M_MMAP_THRESHOLD (malloc.h)."""
MEASURING_MMAP_THRESHOLD = 1 << 16
"""While measuring: blocks above 64 KiB are mmapped and go back to the OS when freed."""
TIMING_MMAP_THRESHOLD = 32 << 20
TIMING_TRIM_THRESHOLD = 64 << 20
"""Where glibc's dynamic thresholds settle once a process has freed large blocks (the 64-bit
maximum, 32 MiB, and twice it): what a long-running PyTorch process works with."""
RSS_POLL_SECONDS = 0.0005
STATM = Path("/proc/self/statm")


def _glibc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        libc = ctypes.CDLL(name)
        libc.mallopt, libc.malloc_trim  # noqa: B018 (glibc only)
    except (OSError, AttributeError):
        return None
    return libc


@contextmanager
def freed_memory_returned() -> Iterator[None]:
    """Inside the block, freed tensors leave the resident set at once (glibc's mmap threshold
    fixed at 64 KiB, the heap trimmed first), so resident-set growth is the call's own.

    Only the measuring call runs so: every large allocation is then a fresh mmap whose pages
    fault in, which made timed calls up to 1.7x slower (benchmarks/README.md). On leaving, the
    thresholds go to where glibc's own adjustment settles. A no-op where this is not glibc.
    """
    libc = _glibc()
    if libc is None:
        yield
        return
    libc.mallopt(MALLOC_MMAP_THRESHOLD, MEASURING_MMAP_THRESHOLD)
    libc.malloc_trim(0)
    try:
        yield
    finally:
        libc.mallopt(MALLOC_MMAP_THRESHOLD, TIMING_MMAP_THRESHOLD)
        libc.mallopt(MALLOC_TRIM_THRESHOLD, TIMING_TRIM_THRESHOLD)


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
    thread (so a peak shorter than that can be missed), inside `freed_memory_returned`.
    """
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        call()
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) - before
    with freed_memory_returned():
        return _resident_growth(call)


def _resident_growth(call: Callable[[], Any]) -> int | None:
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
