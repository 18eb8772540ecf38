"""One intra-op thread for these tiny models: on a shared 2-core machine, torch's thread pool
spins against other processes and makes millisecond decodes take seconds."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch


@pytest.fixture(autouse=True)
def single_torch_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
