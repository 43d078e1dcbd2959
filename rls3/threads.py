"""torch CPU thread counts per block of work. SAC's small networks run fastest on one thread
(`agent.torch_threads`), the VLM on all of the process's: its calls made from inside SAC's
collection (feedback) take the VLM's count back. A count is per calling thread (OpenMP), and
results depend on it in the last bits."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch


@contextlib.contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Run a block with `n` torch CPU threads (0: unchanged), restoring the previous count."""
    if n <= 0:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)
