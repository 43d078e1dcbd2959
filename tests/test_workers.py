"""Scene worker processes that die: the error names the worker and how it ended, closing the
others neither raises nor leaves a process behind, and `rls3 run` reports it in one line."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import psutil
import pytest
from conftest import tiny_cli_config

from rls3.backends import BackendConfig
from rls3.env import EnvConfig
from rls3.rundir import CHECKPOINTS, LATEST_FILE, latest_checkpoint
from rls3.workers import WorkerError, make_workers


def _workers_of(pid: int) -> list[psutil.Process]:
    """The spawned scene worker processes of process `pid`."""
    return [c for c in psutil.Process(pid).children()
            if any("spawn_main" in part for part in c.cmdline())]


def test_a_worker_killed_mid_collection_is_named_and_closing_ends_the_others():
    vec = make_workers(BackendConfig(train_scenes=("kitchen",)),
                       EnvConfig(t0=3, image_size=16, render=False), 2, {})
    procs = list(vec.venv.processes)
    try:
        vec.reset()
        vec.step(np.zeros((2, vec.action_space.shape[0]), dtype=np.float32))
        os.kill(procs[1].pid, signal.SIGKILL)
        with pytest.raises(WorkerError, match=rf"worker 1 \(pid {procs[1].pid}\) was killed by "
                                              r"SIGKILL"):
            for _ in range(50):  # the pipe may take the first action before the kill lands
                vec.step(np.zeros((2, vec.action_space.shape[0]), dtype=np.float32))
    finally:
        vec.close()          # does not raise EOFError for the dead worker
    assert not any(p.is_alive() for p in procs)
    vec.close()              # a second close is a no-op


@pytest.mark.slow
def test_rls3_run_reports_a_killed_worker_in_one_line(tmp_path):
    """`rls3 run --workers 2` with one worker killed (SIGKILL) after the first checkpoint: exit
    code 1, one line naming the worker and the signal (not the EOFError of closing it), no
    worker left running, and the run keeps its checkpoint."""
    cfg = tiny_cli_config(tmp_path, **{"loop.iterations": 2, "loop.episodes": 2,
                                       "progress": False})
    cfg.to_yaml(tmp_path / "c.yaml")
    d = tmp_path / "run"
    exe = Path(sys.executable).with_name("rls3")
    cmd = [str(exe)] if exe.is_file() else [sys.executable, "-m", "rls3.cli"]
    proc = subprocess.Popen(cmd + ["run", "--config", str(tmp_path / "c.yaml"), "--run-dir",
                                   str(d), "--workers", "2", "--no-report", "-q"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 400
    latest = d / CHECKPOINTS / LATEST_FILE
    while time.time() < deadline and proc.poll() is None and not latest.is_file():
        time.sleep(0.05)
    assert proc.poll() is None, proc.communicate()[1][-3000:]
    workers = _workers_of(proc.pid)
    assert len(workers) == 2
    workers[1].send_signal(signal.SIGKILL)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 1, err[-3000:]
    lines = [ln for ln in err.splitlines() if ln.strip() and "pybullet build time" not in ln]
    assert len(lines) == 1 and "Traceback" not in err, err[-3000:]
    assert f"(pid {workers[1].pid}) was killed by SIGKILL" in lines[0]
    assert "EOFError" not in err and "--resume" in lines[0]
    assert not any(w.is_running() and w.status() != psutil.STATUS_ZOMBIE for w in workers)
    assert json.loads(latest.read_text())["iteration"] >= 0
    assert latest_checkpoint(d) is not None
