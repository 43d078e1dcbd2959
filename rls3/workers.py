"""Parallel scene workers (`env.workers` = N > 1): N env processes through stable-baselines3's
`SubprocVecEnv`, with Algorithm 1's feedback applied in the main process, where the VLM lives.

Each worker process builds its own backend (an embedded simulator with its own GL context, or a
Unity player with its own worker id / port) and steps an `Rls3Env` without feedback hooks; every
valid step's `Frame` (image + ground truth) comes back pickled in `info["frame"]`. `FeedbackVecEnv`
wraps the workers and, in `step_wait`, calls the collector's hooks for each worker in index order
(per-sample feedback on each valid frame; episode feedback on the completing step, with that
worker's T0 frames) and adds the result to that worker's reward before SAC's `collect_rollouts`
stores the transition: what `Rls3Env` does in process at N = 1.

Iteration boundary (the discard rule): an iteration ends once E episodes completed across the
workers, taken in (vec step, worker index) order. Completions beyond E on that same vec step and
the other workers' unfinished episodes are *abandoned*: their steps count as generated samples (the
budget), their transitions stay in SAC's replay buffer, but they get no episode feedback and give no
fine-tuning samples (as episodes cut by the step cap). The next iteration resets every worker with
a fresh seed, so no worker state crosses the boundary and a checkpoint needs nothing more.

Seeds: in iteration i worker w is reset with `rls3.seeding.episode_seed(seed, i) + w` (SB3's
`VecEnv.seed` convention): worker 0 gets the N = 1 seed, and results are reproducible for a fixed
(N, seed).
"""

from __future__ import annotations

import logging
import os
import signal
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
from stable_baselines3.common.vec_env import SubprocVecEnv, VecEnv, VecEnvWrapper
from stable_baselines3.common.vec_env.base_vec_env import VecEnvStepReturn

from rls3.backends import BackendConfig, get_backend_spec, make_backend
from rls3.env import EnvConfig, Frame, Rls3Env, finite_reward

log = logging.getLogger(__name__)

#: how worker processes start: a fresh interpreter each (one GL context per process; forking a
#: process that holds torch and an EGL context is unsafe)
START_METHOD = "spawn"

#: what a dead worker process looks like from the main process's end of its pipe
_PIPE_ERRORS = (EOFError, ConnectionError)

EpisodeFeedback = Callable[[Sequence[Frame]], float]
WorkerStepFeedback = Callable[[Frame, int], float]


class WorkerError(RuntimeError):
    """A scene worker process failed: the message names which one and how it ended (a Python
    error in it prints its own traceback on stderr, above)."""


def worker_backend_config(cfg: BackendConfig, index: int) -> BackendConfig:
    """Worker `index`'s backend settings: the run's, unless its backend's spec gives each
    worker its own (a Unity player: worker w takes worker id k + 1 + w, k the main process's)."""
    return get_backend_spec(cfg.name).config_for_worker(cfg, index)


@dataclass(frozen=True)
class WorkerFactory:
    """Builds worker `index`'s env inside its own process (picklable, for `SubprocVecEnv`)."""

    backend: BackendConfig
    env: EnvConfig
    index: int

    def __call__(self) -> Rls3Env:
        backend = make_backend(worker_backend_config(self.backend, self.index), "train")
        return Rls3Env(backend, self.env)


class WorkerProcesses(SubprocVecEnv):
    """stable-baselines3's `SubprocVecEnv` that names a dead worker (`WorkerError`: which one,
    killed by which signal or exited with which code) instead of a bare EOFError from its pipe,
    and whose `close` ends every worker process, also after a worker died or an exchange was cut
    short (where SB3's would wait forever for a reply already read)."""

    def __init__(self, env_fns: list[Callable[[], Any]], start_method: str) -> None:
        self._broken = False
        try:
            super().__init__(env_fns, start_method=start_method)
        except _PIPE_ERRORS as e:
            what = self._ended()
            self._stop_processes()
            hint = ("" if "killed by" in what else "; if its error says it started before the "
                    "main process finished bootstrapping, the script that starts the run needs "
                    "an `if __name__ == '__main__':` guard")
            raise WorkerError(f"the scene workers did not start: {what}{hint}") from e

    @contextmanager
    def _named(self, when: str) -> Iterator[None]:
        """A broken pipe to a worker (it died) as a WorkerError naming it; any exchange cut
        short leaves the pipes in an unknown state, which `close` then does not rely on."""
        try:
            yield
        except _PIPE_ERRORS as e:
            self._broken = True
            raise WorkerError(f"a scene worker process ended {when}: {self._ended()}") from e
        except BaseException:
            self._broken = True
            raise

    def step_async(self, actions: np.ndarray) -> None:
        with self._named("during collection"):
            super().step_async(actions)

    def step_wait(self) -> VecEnvStepReturn:
        with self._named("during collection"):
            return super().step_wait()

    def reset(self) -> Any:
        with self._named("at an episode reset"):
            return super().reset()

    def env_method(self, method_name: str, *method_args: Any, indices: Any = None,
                   **method_kwargs: Any) -> list[Any]:
        with self._named(f"in {method_name}"):
            return super().env_method(method_name, *method_args, indices=indices,
                                      **method_kwargs)

    def get_attr(self, attr_name: str, indices: Any = None) -> list[Any]:
        with self._named(f"reading {attr_name}"):
            return super().get_attr(attr_name, indices)

    def set_attr(self, attr_name: str, value: Any, indices: Any = None) -> None:
        with self._named(f"setting {attr_name}"):
            super().set_attr(attr_name, value, indices)

    def close(self) -> None:
        """Close every worker: SB3's handshake when all is well, else `_stop_processes`."""
        if self.closed:
            return
        if not self._broken and all(p.exitcode is None for p in self.processes):
            try:
                super().close()
                return
            except _PIPE_ERRORS as e:   # a worker ended since its last reply
                log.debug("closing the scene workers: %s: %s", type(e).__name__, e)
        self._stop_processes()
        self.closed = True

    def _ended(self, wait_s: float = 2.0) -> str:
        """Which workers have ended and how, waiting up to `wait_s` for a dying one's exit to
        register (its pipe closes first)."""
        procs = list(getattr(self, "processes", []))
        deadline = time.monotonic() + wait_s
        while True:
            ended = [(w, p) for w, p in enumerate(procs) if p.exitcode is not None]
            if ended or time.monotonic() > deadline:
                break
            time.sleep(0.02)
        if not ended:
            return "its pipe closed (the process could not be identified)"
        return "; ".join(_how_it_ended(w, p.pid, p.exitcode) for w, p in ended)

    def _stop_processes(self, grace_s: float = 10.0) -> None:
        """Ask each live worker to close (after reading any reply it is still sending), give it
        `grace_s` to exit (its backend closes), then terminate or kill it; reap them all."""
        procs = list(getattr(self, "processes", []))
        remotes = list(getattr(self, "remotes", ()))
        for p, remote in zip(procs, remotes, strict=False):
            if p.exitcode is not None:
                continue
            try:
                while remote.poll(0):
                    remote.recv()
                remote.send(("close", None))
            except (*_PIPE_ERRORS, OSError):
                continue
        deadline = time.monotonic() + grace_s
        for p in procs:
            p.join(timeout=max(0.0, deadline - time.monotonic()))
            if p.is_alive():
                p.terminate()
                p.join(timeout=5)
            if p.is_alive():
                p.kill()
                p.join()
        for remote in remotes:
            remote.close()


def _how_it_ended(w: int, pid: int | None, code: int) -> str:
    """'worker 1 (pid 123) was killed by SIGKILL' / '... exited with code 1 (its error is
    printed above)'."""
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        return f"worker {w} (pid {pid}) was killed by {name}"
    return f"worker {w} (pid {pid}) exited with code {code}" + (
        " (its error is printed above)" if code else "")


class FeedbackVecEnv(VecEnvWrapper):
    """The loop's feedback hooks over N worker envs, applied in the main process in worker order.

    `feedback(frames)` is called on an episode's completing step with that worker's frames;
    `step_feedback(frame, worker)` on every valid step. Either return value is that worker's
    extrinsic reward on that step (added to its reward, reported as `info["extrinsic"]`).
    `begin(episodes)` sets how many completed episodes the iteration still takes; completions
    beyond it are marked `info["abandoned"] = True` and get no feedback. Every info gets
    `info["worker"]`."""

    def __init__(self, venv: VecEnv, t0: int, feedback: EpisodeFeedback | None = None,
                 step_feedback: WorkerStepFeedback | None = None) -> None:
        if feedback is not None and step_feedback is not None:
            raise ValueError("give feedback (per episode) or step_feedback (per sample), not both")
        super().__init__(venv)
        self.t0 = int(t0)
        self.feedback = feedback
        self.step_feedback = step_feedback
        self.quota: int | None = None
        self._frames: list[list[Frame]] = [[] for _ in range(self.num_envs)]

    def begin(self, episodes: int) -> None:
        """Start an iteration that ends after `episodes` completed episodes."""
        self.quota = int(episodes)

    def reset(self) -> Any:
        obs = self.venv.reset()
        self._frames = [[] for _ in range(self.num_envs)]
        return obs

    def step_wait(self) -> VecEnvStepReturn:
        obs, rewards, dones, infos = self.venv.step_wait()
        rewards = np.asarray(rewards, dtype=np.float64).copy()
        for w, info in enumerate(infos):
            rewards[w] += self._apply(w, info, bool(dones[w]))
        return obs, rewards, dones, infos

    def _apply(self, w: int, info: dict[str, Any], done: bool) -> float:
        """One worker's step: its feedback (the extrinsic reward) and the boundary bookkeeping."""
        info["worker"] = w
        frame = info.get("frame")
        extrinsic = 0.0
        if frame is not None:
            if self.feedback is not None:
                self._frames[w].append(frame)
            if self.step_feedback is not None:
                extrinsic = finite_reward(self.step_feedback(frame, w))
        if done and int(info.get("n_valid", 0)) >= self.t0:
            if self.quota is None or self.quota > 0:
                if self.quota is not None:
                    self.quota -= 1
                if self.feedback is not None:
                    extrinsic = finite_reward(self.feedback(tuple(self._frames[w])))
            else:
                info["abandoned"] = True
        if done:
            self._frames[w] = []
        info["extrinsic"] = extrinsic
        return extrinsic


def make_workers(backend: BackendConfig, env: EnvConfig, n: int,
                 hooks: dict[str, Any]) -> FeedbackVecEnv:
    """Start `n` worker processes (each builds its own backend) behind a `FeedbackVecEnv` that
    applies `hooks` (the collector's `env_hooks()`: `feedback` or `step_feedback`)."""
    if n < 2:
        raise ValueError(f"make_workers is for 2 or more workers, got {n} (1: use Rls3Env)")
    check = get_backend_spec(backend.name).workers_check
    if check is not None:  # a resumed run was checked when it started; ports may be taken now
        check(backend, n)
    cores = os.cpu_count() or 1
    if n > cores:
        log.warning("%d scene workers on %d CPU cores: they will time-share (slower, not "
                    "wrong)", n, cores)
    log.info("starting %d scene workers (%s)", n, START_METHOD)
    venv = WorkerProcesses([WorkerFactory(backend, env, w) for w in range(n)], START_METHOD)
    try:
        return FeedbackVecEnv(venv, env.t0, **hooks)
    except BaseException:
        venv.close()
        raise

