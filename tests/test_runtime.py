"""How rls3's processes run: allocator choice, re-execution, the OpenMP wait policy, and results
that do not depend on the allocator."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import tiny_cli_config

from rls3 import runtime
from rls3.rundir import RUN_FILE, read_metrics, without_timings

needs_tcmalloc = pytest.mark.skipif(runtime.find_tcmalloc() is None,
                                    reason="tcmalloc is not installed (setup.sh installs it)")


def test_wanted_reads_the_environment_variable():
    assert runtime.wanted({}) == "tcmalloc"
    assert runtime.wanted({"RLS3_ALLOCATOR": "System"}) == "system"
    assert runtime.wanted({"RLS3_ALLOCATOR": "off"}) == "system"
    with pytest.raises(runtime.AllocatorError, match="'jemalloc'.*allowed: tcmalloc, system"):
        runtime.wanted({"RLS3_ALLOCATOR": "jemalloc"})


def _active_after_ensure(value: str | None, preload: str | None = None,
                         library: str | None = None, omp: str | None = None) -> str:
    """'<allocator> <OMP_WAIT_POLICY> <note>' of a fresh process after `runtime.ensure()`."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("RLS3_ALLOCATOR", "RLS3_TCMALLOC", "LD_PRELOAD", "OMP_WAIT_POLICY")}
    for k, v in (("RLS3_ALLOCATOR", value), ("LD_PRELOAD", preload), ("RLS3_TCMALLOC", library),
                 ("OMP_WAIT_POLICY", omp)):
        if v is not None:
            env[k] = v
    code = ("import os; from rls3 import runtime; st = runtime.ensure(); "
            "print(runtime.active_allocator(), os.environ['OMP_WAIT_POLICY'], st.note or '')")
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          check=True, timeout=60).stdout.strip()


@needs_tcmalloc
def test_ensure_reexecutes_once_into_the_wanted_allocator():
    assert _active_after_ensure(None) == "tcmalloc PASSIVE"
    assert _active_after_ensure(None, library=runtime.find_tcmalloc()) == "tcmalloc PASSIVE"
    assert _active_after_ensure("system") == "glibc PASSIVE"
    # 'system' also undoes a preload inherited from a parent that ran under tcmalloc
    assert _active_after_ensure("system", preload=runtime.find_tcmalloc()) == "glibc PASSIVE"
    # a wait policy the user chose is kept
    assert _active_after_ensure(None, omp="ACTIVE") == "tcmalloc ACTIVE"


def test_a_missing_or_refused_library_keeps_glibc_and_says_so(tmp_path):
    out = _active_after_ensure(None, library=str(tmp_path / "nowhere.so"))
    assert out.startswith("glibc PASSIVE") and "tcmalloc not found at" in out and "slower" in out
    # a file the loader refuses to preload: one re-execution, then glibc with a note (no loop)
    bogus = tmp_path / "libtcmalloc_broken.so"
    bogus.write_text("not an ELF file")
    out = _active_after_ensure(None, library=str(bogus))
    assert out.startswith("glibc") and "could not be preloaded" in out
    assert _active_after_ensure("system", library=str(bogus)) == "glibc PASSIVE"


def test_a_preloaded_library_that_is_not_tcmalloc_is_named_as_such():
    """`RLS3_TCMALLOC` naming a real library that is not tcmalloc (here glibc's libm): it is
    preloaded once, and the note says it is loaded but not tcmalloc, not that it "could not be
    preloaded"."""
    maps = Path("/proc/self/maps").read_text().split()
    lib = next((m for m in maps if m.endswith("/libm.so.6")), None)
    if lib is None:
        pytest.skip("no libm.so.6 mapped in this process")
    out = _active_after_ensure(None, library=lib)
    assert out.startswith("glibc PASSIVE"), out
    assert f"{lib} is preloaded but is not tcmalloc" in out and "RLS3_TCMALLOC" in out
    assert "could not be preloaded" not in out


@pytest.fixture(scope="module")
def runs_under_both(tmp_path_factory):
    """The same tiny `rls3 run` (console entry, so it re-executes itself) under each allocator,
    each with its own fixed sets and SAC pre-training."""
    out = {}
    for name in ("tcmalloc", "system"):
        root = tmp_path_factory.mktemp(name)
        cfg = tiny_cli_config(root, **{"loop.episodes": 2, "loop.iterations": 2,
                                       "agent.pretrain_steps": 120, "data.val_size": 4,
                                       "data.test_size": 4,
                                       "backend.train_scenes": ["kitchen", "office"]})
        cfg.to_yaml(root / "c.yaml")
        env = {k: v for k, v in os.environ.items() if k != "LD_PRELOAD"}
        env["RLS3_ALLOCATOR"] = name
        exe = Path(sys.executable).with_name("rls3")
        cmd = [str(exe)] if exe.is_file() else [sys.executable, "-m", "rls3.cli"]
        p = subprocess.run(cmd + ["run", "--config", str(root / "c.yaml"), "--run-dir",
                                  str(root / "run"), "--no-report", "-q"],
                           env=env, capture_output=True, text=True, timeout=600)
        assert p.returncode == 0, p.stderr[-3000:]
        out[name] = root / "run"
    return out


@pytest.mark.slow
@needs_tcmalloc
def test_results_do_not_depend_on_the_allocator(runs_under_both):
    marks = {k: json.loads((d / RUN_FILE).read_text()) for k, d in runs_under_both.items()}
    assert marks["tcmalloc"]["allocator"] == "tcmalloc"
    assert marks["system"]["allocator"] == "glibc"
    assert marks["system"]["omp_wait_policy"] == "PASSIVE"
    recs = {k: [without_timings(r) for r in read_metrics(d)]
            for k, d in runs_under_both.items()}
    assert len(recs["tcmalloc"]) == 3  # baseline + 2 iterations
    assert recs["tcmalloc"] == recs["system"]
