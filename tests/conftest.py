"""Shared pytest setup: the suite runs under the allocator rls3 itself uses (see rls3.runtime)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from rls3 import runtime
from rls3.captions import Description
from rls3.config import Config, preset

ALLOCATOR_KEY = pytest.StashKey[runtime.AllocatorStatus]()


def pytest_configure(config: pytest.Config) -> None:
    """Run the suite as `rls3` runs: the OpenMP wait policy, and pytest re-executed once under
    tcmalloc (``RLS3_ALLOCATOR=system`` keeps glibc malloc)."""
    runtime.set_env_defaults()  # before any test imports torch
    try:
        reexec = runtime.needs_reexec()
    except runtime.AllocatorError as e:
        raise pytest.UsageError(str(e)) from None
    if reexec:
        capman = config.pluginmanager.getplugin("capturemanager")
        if capman is not None:  # give the real stdout/stderr back before the process is replaced
            capman.stop_global_capturing()
        runtime.ensure()  # returns only if re-executing is not possible
        if capman is not None:
            capman.start_global_capturing()
    config.stash[ALLOCATOR_KEY] = runtime.status()


def pytest_report_header(config: pytest.Config) -> str:
    st = config.stash[ALLOCATOR_KEY]
    return (f"rls3 allocator: {st.active}" + (f" ({st.note})" if st.note else "")
            + f", OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY')}")


def tiny_cli_config(root: Path, **over: Any) -> Config:
    """`quick` shrunk to seconds (32-px frames, clip-tiny, a few SAC steps), its caches and runs
    under `root`: for tests that run the `rls3` command itself."""
    values = {
        "env.t0": 4, "env.image_size": 32, "loop.episodes": 1, "loop.iterations": 1,
        "loop.k": 1, "vlm.name": "clip-tiny", "agent.pretrain_steps": 100,
        "agent.learning_starts": 50, "agent.batch_size": 16, "agent.buffer_size": 2000,
        "agent.net_arch": [16, 16], "agent.pretrained_dir": str(root / "pre"),
        "data.dir": str(root / "data"), "data.val_size": 3, "data.test_size": 3,
        "runs_dir": str(root / "runs"), "backend.train_scenes": ["kitchen"],
        "backend.test_scenes": ["test_study"]}
    values.update(over)
    return preset("quick").override(values)


def desc(caption: str, spatial: str = "", order: str = "", terms=("left",)) -> Description:
    """A hand-written Description (objects "a" and "b"): for tests of the VLM text side."""
    return Description(primary="a", secondary="b", terms=tuple(terms), caption=caption,
                       spatial_negative=spatial, order_negative=order, question="q?")
