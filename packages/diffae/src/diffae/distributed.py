"""Running under `torchrun`: this process's rank, its device, the process group and the few
collectives training and dataset encoding use. Without torchrun: process 0 of 1, and every
collective is the identity.

    processes = Processes.from_environment()
    device = processes.device_for(torch.device("cuda"))  # cuda:LOCAL_RANK under torchrun
    with process_group(processes, device):
        ...  # processes.all_mean(loss), processes.all_gather(records), processes.barrier()
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

from .console import ArgumentError


@dataclass(frozen=True)
class Processes:
    """This process's place under torchrun (RANK, WORLD_SIZE, LOCAL_RANK), else 0 of 1."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @classmethod
    def from_environment(cls) -> Processes:
        """RANK, WORLD_SIZE and LOCAL_RANK as torchrun sets them (absent: 0, 1, 0)."""
        values = {}
        for name, default in (("RANK", 0), ("WORLD_SIZE", 1), ("LOCAL_RANK", 0)):
            text = os.environ.get(name, str(default))
            if not text.isdigit():
                raise ArgumentError(
                    f"environment variable {name}", f": expected an integer, got {text!r}"
                )
            values[name] = int(text)
        if not 0 <= values["RANK"] < max(values["WORLD_SIZE"], 1):
            raise ArgumentError(
                f"environment variable RANK={values['RANK']}",
                f": not below WORLD_SIZE={values['WORLD_SIZE']}",
            )
        return cls(values["RANK"], max(values["WORLD_SIZE"], 1), values["LOCAL_RANK"])

    @property
    def main(self) -> bool:
        """Whether this is rank 0, the process that writes shared files and speaks."""
        return self.rank == 0

    def device_for(self, device: torch.device) -> torch.device:
        """`device`, where an unindexed cuda is this process's own GPU (cuda:LOCAL_RANK), made
        the current CUDA device."""
        if device.type == "cuda" and device.index is None:
            device = torch.device("cuda", self.local_rank)
        if device.type == "cuda":
            torch.cuda.set_device(device)
        return device

    def all_mean(self, value: Tensor) -> Tensor:
        """The mean of `value` over the processes (itself in one process)."""
        if self.world_size > 1:
            value = value.clone()
            dist.all_reduce(value)
            value /= self.world_size
        return value

    def all_gather(self, value: Any) -> list[Any]:
        """Every process's `value` (picklable), in rank order."""
        if self.world_size == 1:
            return [value]
        gathered: list[Any] = [None] * self.world_size
        dist.all_gather_object(gathered, value)
        return gathered

    def barrier(self) -> None:
        """Wait until every process gets here."""
        if self.world_size > 1:
            dist.barrier()


@contextmanager
def process_group(
    processes: Processes, device: torch.device, timeout: timedelta | None = None
) -> Iterator[Processes]:
    """torch.distributed joined (nccl on CUDA, gloo elsewhere) when WORLD_SIZE > 1, and left
    (`destroy_process_group`) at the end; nothing in one process. `timeout`: how long a
    collective waits for the slowest process (torch's default when None)."""
    if processes.world_size == 1 or dist.is_initialized():
        yield processes  # one process, or the caller runs the group
        return
    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(backend, timeout=timeout)
    try:
        yield processes
    finally:
        dist.destroy_process_group()
