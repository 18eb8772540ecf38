"""Wall-clock timing of one call, with device synchronisation, and the median of repeats."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

import torch


def synchronize(device: torch.device) -> None:
    """Wait for queued GPU work; a no-op on the CPU, where calls return when done."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_call(call: Callable[[], Any], device: torch.device) -> float:
    """Seconds one `call()` takes, synchronised before and after so queued work is counted."""
    synchronize(device)
    start = time.perf_counter()
    call()
    synchronize(device)
    return time.perf_counter() - start


def median_ms(seconds: list[float]) -> float:
    """The median of a non-empty list of durations in seconds, in milliseconds."""
    return 1000.0 * statistics.median(seconds)
