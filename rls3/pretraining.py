"""SAC pre-training in a child process, beside the run's own start-up (issue 23, item 1).

Pre-training needs no images and no VLM, and the data sets, the VLM's loading and its first
evaluation need no agent, so a fresh run can do both at once on two cores. The child writes the
same cache `rls3.agents.pretrained_sac` writes and reads (same key, same seeded arithmetic), and
the run loads the agent from it when it needs one: the run's results are those of pre-training in
its own process, bit for bit (tests/test_pretraining.py).
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import multiprocessing as mp
import os
import signal
import time
from dataclasses import replace
from typing import Any

from rls3.backends import BackendConfig, get_backend_spec, make_backend
from rls3.config import AgentConfig
from rls3.env import EnvConfig, Rls3Env
from rls3.progress import progress_bar
from rls3.workers import START_METHOD

__all__ = ["MIN_BACKGROUND_STEPS", "BackgroundPretraining", "PretrainingError",
           "background_possible"]

log = logging.getLogger(__name__)

#: fewer pre-training steps than this run in the run's own process: a child's start (a fresh
#: interpreter importing torch, SB3 and pybullet, ~3 s) would cost more than it overlaps
MIN_BACKGROUND_STEPS = 2000

_PR_SET_PDEATHSIG = 1


class PretrainingError(RuntimeError):
    """The pre-training child process failed (its own traceback is on stderr, above)."""


def background_possible(agent: AgentConfig, backend: BackendConfig) -> bool:
    """Whether a run with these settings pre-trains SAC in a child process: asked for, long
    enough to be worth a process, and a backend that builds alike in any process (no per-process
    settings such as a Unity player's worker id)."""
    return (agent.name == "sac" and agent.pretrain_background
            and agent.pretrain_steps >= MIN_BACKGROUND_STEPS
            and get_backend_spec(backend.name).worker_config is None)


def _die_with_parent(parent: int) -> None:
    """Linux: this process is killed when its parent dies (a SIGKILLed run leaves no orphan
    pre-training for nothing); elsewhere a no-op."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:  # the parent died before the line above took effect
        os._exit(1)


def _pretrain_child(parent: int, backend_cfg: BackendConfig, env_cfg: EnvConfig,
                    agent: AgentConfig, seed: int, backend_key: str, steps: Any) -> None:
    """The child's work: the run's training backend, a quiet env, `ensure_pretrained`; `steps`
    (a shared integer) follows its progress for the parent's bar."""
    _die_with_parent(parent)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C: the run stops this process itself
    from rls3.agents import ensure_pretrained

    def report(n: int) -> None:
        steps.value = n

    backend = make_backend(backend_cfg, "train")
    try:
        ensure_pretrained(Rls3Env(backend, replace(env_cfg, render=False)), agent, seed,
                          backend_key, progress=False, report=report)
    finally:
        backend.close()


class BackgroundPretraining:
    """A started pre-training child process; `wait()` blocks until its cache is written (and
    raises `PretrainingError` if it failed), `stop()` ends it early (the run calls it however it
    ends)."""

    def __init__(self, backend_cfg: BackendConfig, env_cfg: EnvConfig, agent: AgentConfig,
                 seed: int, backend_key: str) -> None:
        ctx: Any = mp.get_context(START_METHOD)
        self.started = time.perf_counter()
        #: pre-training steps the child has taken (to the last `_StepProgress.REPORT_EVERY`)
        self.done = ctx.Value("q", 0, lock=False)
        self.process = ctx.Process(
            target=_pretrain_child, name="rls3-pretrain", daemon=True,
            args=(os.getpid(), backend_cfg, env_cfg, agent, seed, backend_key, self.done))
        self.process.start()
        self.steps = agent.pretrain_steps
        log.info("pre-training SAC (%d steps) in a background process (pid %d) while the run "
                 "starts", agent.pretrain_steps, self.process.pid)

    def wait(self, progress: bool = False) -> None:
        """Block until the child has finished (with `progress`, a bar over its steps);
        PretrainingError unless it succeeded."""
        waited = time.perf_counter()
        if self.process.is_alive():
            log.info("waiting for the SAC pre-training process (%d of %d steps done)",
                     self.done.value, self.steps)
            with progress_bar(total=self.steps, desc="pretrain SAC (background)", unit="step",
                              enabled=progress) as bar:
                while self.process.is_alive():
                    bar.update(self.done.value - bar.n)
                    self.process.join(timeout=0.5)
                bar.update(self.done.value - bar.n)
        self.process.join()
        code = self.process.exitcode
        if code != 0:
            how = f"killed by signal {-code}" if code is not None and code < 0 else f"exit {code}"
            raise PretrainingError(f"the SAC pre-training process failed ({how}); its error is "
                                   f"above. Set agent.pretrain_background=false to pre-train "
                                   f"in the run's own process")
        now = time.perf_counter()
        log.info("pre-trained SAC in a background process: %d steps in %.1fs, %.1fs of it "
                 "waited for", self.steps, now - self.started, now - waited)

    def stop(self) -> None:
        """End the child if it still runs (the run failed or was interrupted)."""
        if self.process.is_alive():
            self.process.terminate()
        self.process.join(timeout=10)
        if self.process.is_alive():
            self.process.kill()
            self.process.join()
