"""Shared pytest setup: the suite runs under the allocator rls3 itself uses (see rls3.runtime)."""

from __future__ import annotations

import os

import pytest

from rls3 import runtime

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
