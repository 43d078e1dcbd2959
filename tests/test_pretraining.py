"""SAC pre-training in a background process (`agent.pretrain_background`): the same agent and
run as pre-training in the run's process, a clear error when the child fails, and no orphan when
the run is killed."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import tiny_cli_config

from rls3 import pretraining
from rls3.agents import BUFFER_FILE, MODEL_FILE, STATE_FILE
from rls3.backends import BackendConfig
from rls3.config import AgentConfig
from rls3.loop import run
from rls3.pretraining import BackgroundPretraining, PretrainingError, background_possible
from rls3.rundir import read_metrics, without_timings

ROOT = Path(__file__).resolve().parents[1]


def _config(root: Path, tag: str, **over):
    values = {"loop.episodes": 2, "loop.iterations": 1, "agent.pretrain_steps": 300,
              "agent.pretrained_dir": str(root / f"pre_{tag}"), "runs_dir": str(root / "runs"),
              "progress": False, "data.val_size": 6, "data.test_size": 6}
    values.update(over)
    return tiny_cli_config(root, **values)


def test_which_runs_pretrain_in_the_background():
    sac = AgentConfig(pretrain_steps=pretraining.MIN_BACKGROUND_STEPS)
    assert background_possible(sac, BackendConfig())
    assert not background_possible(AgentConfig(pretrain_steps=10), BackendConfig())
    assert not background_possible(AgentConfig(name="random"), BackendConfig())
    off = AgentConfig(pretrain_steps=10**5, pretrain_background=False)
    assert not background_possible(off, BackendConfig())
    # a Unity player per process needs its own worker id: pre-training stays in the run's process
    assert not background_possible(sac, BackendConfig(name="unity"))


def test_background_pretraining_gives_the_same_agent_and_run(tmp_path, monkeypatch, caplog):
    """The child writes the cache the run would have written itself, bit for bit, and the run
    that waited for it records the same metrics as the run that pre-trained in its process."""
    caplog.set_level("INFO", logger="rls3")
    here = run(_config(tmp_path, "here", **{"agent.pretrain_background": False}),
               run_dir=tmp_path / "runs" / "here")
    assert "background process" not in caplog.text
    monkeypatch.setattr(pretraining, "MIN_BACKGROUND_STEPS", 0)
    bg = run(_config(tmp_path, "bg"), run_dir=tmp_path / "runs" / "bg")
    assert "pre-trained SAC in a background process: 300 steps" in caplog.text
    assert ([without_timings(r) for r in read_metrics(bg.run_dir)]
            == [without_timings(r) for r in read_metrics(here.run_dir)])
    (a,), (b,) = ((tmp_path / f"pre_{t}").iterdir() for t in ("here", "bg"))
    assert (a / MODEL_FILE).read_bytes() == (b / MODEL_FILE).read_bytes()
    assert json.loads((a / STATE_FILE).read_text()) == json.loads((b / STATE_FILE).read_text())
    with np.load(a / BUFFER_FILE) as x, np.load(b / BUFFER_FILE) as y:
        assert sorted(x.files) == sorted(y.files)
        for k in x.files:
            assert np.array_equal(x[k], y[k]), k


def test_the_wait_follows_the_childs_steps(tmp_path, capsys):
    """The parent's bar hears the child's step count (every 250 steps) and the cache entry is
    there when `wait` returns."""
    cfg = _config(tmp_path, "w", **{"agent.pretrain_steps": 600})
    pre = BackgroundPretraining(cfg.backend, cfg.env_config, cfg.agent, 0, "sim")
    pre.wait(progress=True)
    assert pre.done.value == 500
    (entry,) = (tmp_path / "pre_w").iterdir()
    assert (entry / MODEL_FILE).is_file()
    assert "pretrain SAC (background)" in capsys.readouterr().err


def test_a_failing_pretraining_process_is_a_named_error(tmp_path):
    blocked = tmp_path / "not_a_folder"
    blocked.write_text("a file where the cache folder should go")
    cfg = _config(tmp_path, "x", **{"agent.pretrained_dir": str(blocked)})
    pre = BackgroundPretraining(cfg.backend, cfg.env_config, cfg.agent, 0, "sim")
    with pytest.raises(PretrainingError, match="pre-training process failed .*exit 1.*"
                                               "agent.pretrain_background=false"):
        pre.wait()
    assert not pre.process.is_alive()


def test_a_failed_pretraining_process_ends_rls3_run_with_one_line(tmp_path, capsys, monkeypatch):
    from rls3.cli import EXIT_FAILED, main
    from rls3.loop import Loop

    def failed(self):
        raise PretrainingError("the SAC pre-training process failed (exit 1); its error is above")

    monkeypatch.setattr(Loop, "_run", failed)
    code = main(["run", "--run-dir", str(tmp_path / "r"), "--set", f"runs_dir={tmp_path}", "-q",
                 "--no-report"])
    err = capsys.readouterr().err.strip()
    assert code == EXIT_FAILED and "\n" not in err and "Traceback" not in err
    assert "pre-training process failed" in err and "--resume" in err


_PARENT = """
import sys, time
from pathlib import Path
sys.path.insert(0, {tests!r})
from conftest import tiny_cli_config
from rls3.pretraining import BackgroundPretraining
cfg = tiny_cli_config(Path({root!r}), **{{"agent.pretrain_steps": 10**6}})
pre = BackgroundPretraining(cfg.backend, cfg.env_config, cfg.agent, 0, "sim")
print(pre.process.pid, flush=True)
time.sleep(600)
"""


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"  # a zombie has ended


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_a_killed_run_leaves_no_pretraining_process_behind(tmp_path):
    code = _PARENT.format(tests=str(ROOT / "tests"), root=str(tmp_path))
    parent = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True,
                              env=dict(os.environ, PYTHONPATH=str(ROOT)))
    try:
        assert parent.stdout is not None
        child = int(parent.stdout.readline())
        time.sleep(8)  # the child is up and pre-training (its imports take a few seconds)
        assert _alive(child)
        parent.send_signal(signal.SIGKILL)
        parent.wait()
        deadline = time.monotonic() + 20
        while _alive(child) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not _alive(child)
    finally:
        parent.kill()
