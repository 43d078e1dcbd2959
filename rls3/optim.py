"""Optimizer helpers shared by the agent and the VLM adapters."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch


@contextlib.contextmanager
def keeping_foreach(*optimizers: torch.optim.Optimizer) -> Iterator[None]:
    """Loading optimizer states inside the block keeps each group's `foreach` (how updates are
    computed, not what they are: a state saved by the per-parameter loop still runs multi-tensor)."""
    before = [[g.get("foreach") for g in opt.param_groups] for opt in optimizers]
    yield
    for opt, flags in zip(optimizers, before, strict=True):
        for g, flag in zip(opt.param_groups, flags, strict=True):
            g["foreach"] = flag
