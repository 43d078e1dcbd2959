"""Data-generation agents: stable-baselines3 SAC (pre-trained on the intrinsic reward) and the
random baseline, behind one small interface, chosen by name from one registry (`AGENT_SPECS`).

Both agents drive an `Rls3Env` episode by episode: `collect(episodes, seed, on_step)` resets the env
with `seed` and runs until `episodes` episodes have *completed* (reached T0 valid frames; episodes
cut by the env's step cap do not count), calling `on_step(info, reward, done)` after every env step.

SAC learns while it collects (`learn(..., reset_num_timesteps=False)` with an SB3 callback that
ends `learn` after the E-th completed episode). The stop happens at the start of the *next* rollout,
not by returning False from `_on_step`: in SB3 (2.x, `OffPolicyAlgorithm.collect_rollouts`) a
False return skips storing the current transition, which here is the episode-completing one that
carries the VLM reward beta * J2, and skips its gradient step. Stopping one hook later keeps the
replay buffer and the update schedule exactly as in one uninterrupted `learn` call.

With scene workers (`env.workers` = N > 1, `rls3.workers`) both agents drive a `FeedbackVecEnv`
of N envs instead: SAC with `n_envs = N` and N * `gradient_steps` gradient steps per vec step
(the same gradient steps per env step as N = 1), the random agent with N actions per step. An
iteration counts E completed episodes across the workers (see `rls3.workers` for the boundary
rule). Pre-training always runs in one in-process env; its replay buffer is laid out for N envs
when loaded (`_relayout_buffer`), so the cache is shared by every N.

Saved agents (checkpoints, the pre-training cache) are data only, since run directories and caches
are shared between people and machines: SAC's policy, critics, target critics and entropy
coefficient as safetensors, its optimiser states as plain tensor dicts (read with `torch.load(...,
weights_only=True)`), its replay buffer as arrays (npz, read with `allow_pickle=False`), counters
and generator states as JSON. Loading rebuilds the SB3 model from the run's `AgentConfig` and
fills it (`set_parameters`). SB3's own `sac.zip` and `replay_buffer.pkl` are pickles: they are
never loaded (`PICKLED_FILES`).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import shutil
import zipfile
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from stable_baselines3 import SAC
from stable_baselines3.common.buffers import ReplayBuffer
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.policies import ContinuousCritic
from stable_baselines3.sac.policies import Actor, SACPolicy

from rls3.atomic import atomic_folder
from rls3.config import PRETRAIN_SCHEDULE, AgentConfig
from rls3.env import Rls3Env
from rls3.manifest import manifest_problems, write_manifest
from rls3.optim import keeping_foreach
from rls3.progress import progress_bar
from rls3.rundir import RunDirError
from rls3.safeload import NotDataError, load_torch_data
from rls3.seeding import stream_rng
from rls3.workers import FeedbackVecEnv

log = logging.getLogger(__name__)

StepHook = Callable[[dict[str, Any], float, bool], None]


class DeferredFeedback(Protocol):
    """Per-sample feedback scored in batches (`EpisodeCollector` with `loop.feedback_batch` > 1):
    every valid step queues its frame (its extrinsic reward is 0 on the step) and `flush` scores
    the queue, returning (worker, extrinsic reward) per frame in step order."""

    feedback_batch: int

    @property
    def queued(self) -> int: ...

    def flush(self) -> list[tuple[int, float]]: ...

#: SAC's networks (policy, critics, target critics) and its entropy coefficient
MODEL_FILE = "sac_model.safetensors"
#: SAC's optimiser states (a dict of state dicts: tensors and numbers only)
OPTIMIZERS_FILE = "sac_optimizers.pt"
#: SAC's replay buffer, filled rows only (`BUFFER_ARRAYS` plus pos, full, capacity)
BUFFER_FILE = "sac_buffer.npz"
#: SAC's counters, seed and action-space generator
STATE_FILE = "sac_state.json"
RANDOM_FILE = "random_agent.json"
KEY_FILE = "key.json"
#: 2: data only (format 1 held SB3's pickles, `PICKLED_FILES`)
AGENT_FORMAT = 2
#: files of agent format 1 that are pickles: never loaded (unpickling can run any code)
PICKLED_FILES = ("sac.zip", "replay_buffer.pkl")
BUFFER_ARRAYS = ("observations", "next_observations", "actions", "rewards", "dones", "timeouts")
#: the actor's and critics' Adam: multi-tensor kernels (torch's CPU default loops over the
#: parameters, a dozen small kernels each per update); the same values, tested
ADAM_KWARGS: dict[str, Any] = {"foreach": True}


class _DiscountFreeActor(Actor):
    """SAC's actor for gamma = 0: a gradient-free `action_log_prob` (SB3 calls one only for the
    next states' target, which gamma = 0 multiplies by 0) draws the same noise as the real one,
    so the RNG stream stays SB3's, and returns zeros instead of running the network."""

    def action_log_prob(self, obs: Any) -> tuple[torch.Tensor, torch.Tensor]:
        if torch.is_grad_enabled():
            return super().action_log_prob(obs)
        shape = (obs.shape[0], int(self.action_space.shape[0]))
        torch.empty(shape, dtype=torch.get_default_dtype(), device=obs.device).normal_()
        return (torch.zeros(shape, device=obs.device),
                torch.zeros(shape[0], device=obs.device))


class _DiscardedTargetCritic(ContinuousCritic):
    """SAC's target critics for gamma = 0: SB3 multiplies their values by 0, so they return
    zeros; their weights are still kept in step with the critics (Polyak), as SB3 does."""

    def forward(self, obs: Any, actions: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return tuple(torch.zeros((obs.shape[0], 1), device=obs.device)
                     for _ in self.q_networks)


class LazyModePolicy(SACPolicy):
    """SB3's SAC `MlpPolicy`, faster on CPU with the same numbers (tested bit for bit):

    - its train/eval switch returns at once when the actor and critic are in that mode already:
      SB3 sets the mode on every `predict` (every env step), walking every submodule (0.2 of a
      0.5 ms predict); an MLP without dropout or batch norm computes the same in either mode;
    - with `discount_free` (SAC's gamma = 0, `quick`) a gradient step skips the next states'
      actions and target Q values, which gamma = 0 multiplies by 0 (~1/7 of a step).
    """

    def __init__(self, *args: Any, discount_free: bool = False, **kwargs: Any) -> None:
        self.discount_free = discount_free  # read by _build, which SACPolicy.__init__ calls
        super().__init__(*args, **kwargs)

    def _build(self, lr_schedule: Any) -> None:
        super()._build(lr_schedule)
        if self.discount_free:
            # same modules and weights, only the gamma = 0 shortcuts added (no RNG drawn here)
            self.actor.__class__ = _DiscountFreeActor
            self.critic_target.__class__ = _DiscardedTargetCritic

    def set_training_mode(self, mode: bool) -> None:
        if mode != self.training or mode != self.actor.training or mode != self.critic.training:
            super().set_training_mode(mode)


#: SAC's policy class (`LazyModePolicy`; tests swap in SB3's "MlpPolicy" to compare)
POLICY: type[SACPolicy] | str = LazyModePolicy
#: SAC's entropy coefficient, as SB3 keeps it (learned: log_ent_coef; fixed: ent_coef_tensor)
_ENT_COEF_VARS = ("log_ent_coef", "ent_coef_tensor")


class AgentStateError(RunDirError):
    """A saved agent (checkpoint or pre-training cache) cannot be loaded: a file is missing,
    malformed or of an older, pickled format (the message names it)."""


class Agent(Protocol):
    """What the loop needs from a data-generation agent."""

    name: str
    env: Rls3Env | FeedbackVecEnv

    def collect(self, episodes: int, seed: int, on_step: StepHook | None = None,
                deferred: DeferredFeedback | None = None) -> int:
        """Reset the env with `seed`, run until `episodes` episodes completed; returns env steps.
        With `deferred`, flush it before a queued frame's reward can be used and before
        returning."""
        ...

    def save(self, folder: str | Path) -> None:
        """Write everything needed to continue identically into `folder`."""
        ...

    def load(self, folder: str | Path) -> None:
        """Restore what `save` wrote."""
        ...


def _t0(env: Rls3Env | FeedbackVecEnv) -> int:
    return env.t0 if isinstance(env, FeedbackVecEnv) else env.config.t0


def _counted(t0: int, info: Mapping[str, Any], done: bool) -> bool:
    """An episode that completed (T0 valid frames) and counts towards the iteration's E."""
    return (bool(done) and int(info.get("n_valid", 0)) >= t0
            and not info.get("abandoned", False))


# ------------------------------------------------------------------------------------ random
def _flushing(on_step: StepHook | None, deferred: DeferredFeedback) -> StepHook:
    """`on_step` followed by a flush of `deferred` once it holds a full batch."""
    def hook(info: dict[str, Any], reward: float, done: bool) -> None:
        if on_step is not None:
            on_step(info, reward, done)
        if deferred.queued >= deferred.feedback_batch:
            deferred.flush()
    return hook


class RandomAgent:
    """Uniform random actions in [-1, 1]^3, ignoring every reward; episodic like SAC."""

    name = "random"

    def __init__(self, env: Rls3Env | FeedbackVecEnv, seed: int = 0) -> None:
        self.env = env
        self.rng = stream_rng(seed, "random_agent")
        self.num_timesteps = 0

    def collect(self, episodes: int, seed: int, on_step: StepHook | None = None,
                deferred: DeferredFeedback | None = None) -> int:
        """Random actions until `episodes` completed; deferred feedback (which it ignores) is
        flushed `feedback_batch` frames at a time."""
        if episodes < 1:
            raise ValueError(f"episodes must be >= 1, got {episodes}")
        if deferred is None:
            return self._collect(episodes, seed, on_step)
        steps = self._collect(episodes, seed, _flushing(on_step, deferred))
        deferred.flush()
        return steps

    def _collect(self, episodes: int, seed: int, on_step: StepHook | None) -> int:
        if isinstance(self.env, FeedbackVecEnv):
            return self._collect_workers(self.env, episodes, seed, on_step)
        env = self.env
        env.reset(seed=int(seed))
        done_eps = steps = 0
        while done_eps < episodes:
            action = self.rng.uniform(-1.0, 1.0, size=3).astype(np.float32)
            _, reward, terminated, truncated, info = env.step(action)
            steps += 1
            done = terminated or truncated
            if on_step is not None:
                on_step(info, float(reward), done)
            if done:
                done_eps += _counted(env.config.t0, info, done)
                env.reset()
        self.num_timesteps += steps
        return steps

    def _collect_workers(self, vec: FeedbackVecEnv, episodes: int, seed: int,
                         on_step: StepHook | None) -> int:
        """`collect` over N scene workers: N actions per step, hooks in worker order."""
        vec.begin(episodes)
        vec.seed(int(seed))
        vec.reset()
        done_eps = steps = 0
        while done_eps < episodes:
            actions = self.rng.uniform(-1.0, 1.0, size=(vec.num_envs, 3)).astype(np.float32)
            _, rewards, dones, infos = vec.step(actions)
            for w, info in enumerate(infos):
                steps += 1
                if on_step is not None:
                    on_step(info, float(rewards[w]), bool(dones[w]))
                done_eps += _counted(vec.t0, info, bool(dones[w]))
        self.num_timesteps += steps
        return steps

    def save(self, folder: str | Path) -> None:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        state = {"format": AGENT_FORMAT, "agent": self.name,
                 "rng": self.rng.bit_generator.state, "num_timesteps": self.num_timesteps}
        (folder / RANDOM_FILE).write_text(json.dumps(state))

    def load(self, folder: str | Path) -> None:
        f = Path(folder) / RANDOM_FILE
        if not f.is_file():
            raise FileNotFoundError(f"{str(folder)!r} holds no random-agent state ({RANDOM_FILE})")
        state = _read_json(f)
        if state.get("agent") != self.name or state.get("format") != AGENT_FORMAT:
            raise AgentStateError(f"{str(f)!r} is not a random-agent state of format "
                                  f"{AGENT_FORMAT}")
        try:
            self.rng.bit_generator.state = state["rng"]
            self.num_timesteps = _count(state, "num_timesteps")
        except (KeyError, TypeError, ValueError) as e:
            raise AgentStateError(f"{str(f)!r} holds a malformed random-agent state: {e!r}") from e


# ------------------------------------------------------------------------------------ SAC
class _IterationDone(Exception):
    """Raised by `_EpisodeCounter` at the start of the rollout after the last wanted episode."""


class _EpisodeCounter(BaseCallback):
    """Counts completed episodes, forwards each env step (each worker's, in worker order) to
    `on_step` and ends `learn` once `episodes` completed episodes are stored (see the module
    docstring for why not earlier).

    With `deferred` feedback it notes the replay-buffer cell (row, worker) each valid step's
    transition is about to be stored in, and at the end of every rollout, which SB3 calls
    before `train()`, flushes the queue and adds each frame's extrinsic reward to its cell: no
    gradient step samples a transition before its reward is complete."""

    def __init__(self, t0: int, episodes: int, on_step: StepHook | None,
                 deferred: DeferredFeedback | None = None) -> None:
        super().__init__(verbose=0)
        self.t0 = t0
        self.episodes = episodes
        self.hook = on_step
        self.deferred = deferred
        self.completed = 0
        self.steps = 0
        self._cells: dict[int, list[tuple[int, float]]] = {}  # worker -> (row, base reward)

    def _on_rollout_start(self) -> None:
        if self.completed >= self.episodes:
            raise _IterationDone

    def _on_step(self) -> bool:
        dones, rewards = self.locals["dones"], self.locals["rewards"]
        row = self._buffer().pos if self.deferred is not None else -1
        for w, info in enumerate(self.locals["infos"]):
            done = bool(dones[w])
            self.steps += 1
            if self.deferred is not None and info.get("valid"):
                self._cells.setdefault(w, []).append((row, float(rewards[w])))
            if self.hook is not None:
                self.hook(info, float(rewards[w]), done)
            if _counted(self.t0, info, done):
                self.completed += 1
        return True

    def _buffer(self) -> ReplayBuffer:
        buffer = getattr(self.model, "replay_buffer", None)
        assert isinstance(buffer, ReplayBuffer)
        return buffer

    def _on_rollout_end(self) -> None:
        if self.deferred is None:
            return
        rewards = self._buffer().rewards
        for w, extrinsic in self.deferred.flush():
            row, base = self._cells[w].pop(0)
            rewards[row, w] = base + extrinsic   # the sum the env would have returned
        left = sum(len(c) for c in self._cells.values())
        if left:
            raise RuntimeError(f"deferred feedback left {left} stored transitions unscored")


class _StepProgress(BaseCallback):
    """A tqdm bar over SAC pretraining steps; `report(steps)` (if given) hears the count every
    `REPORT_EVERY` steps (a background process's parent shows its bar from it)."""

    REPORT_EVERY = 250

    def __init__(self, total: int, enabled: bool,
                 report: Callable[[int], None] | None = None) -> None:
        super().__init__(verbose=0)
        self.bar = progress_bar(total=total, desc="pretrain SAC", unit="step", enabled=enabled)
        self.report = report

    def _on_step(self) -> bool:
        self.bar.update(1)
        if self.report is not None and self.num_timesteps % self.REPORT_EVERY == 0:
            self.report(self.num_timesteps)
        return True

    def _on_training_end(self) -> None:
        self.bar.close()


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


def _sac_kwargs(cfg: AgentConfig, policy: type[SACPolicy] | str) -> dict[str, Any]:
    policy_kwargs: dict[str, Any] = {"net_arch": list(cfg.net_arch),
                                     "optimizer_kwargs": ADAM_KWARGS}
    if isinstance(policy, type) and issubclass(policy, LazyModePolicy):
        policy_kwargs["discount_free"] = cfg.gamma == 0.0
    return {"learning_rate": cfg.learning_rate, "buffer_size": cfg.buffer_size,
            "batch_size": cfg.batch_size, "learning_starts": cfg.learning_starts,
            "gamma": cfg.gamma, "tau": cfg.tau, "train_freq": cfg.train_freq,
            "gradient_steps": cfg.gradient_steps, "ent_coef": cfg.ent_coef,
            "target_entropy": "auto" if cfg.target_entropy is None else cfg.target_entropy,
            "policy_kwargs": policy_kwargs, "device": cfg.device}


class SACAgent:
    """SB3 SAC (MlpPolicy) continuing to learn across loop iterations."""

    name = "sac"

    def __init__(self, env: Rls3Env | FeedbackVecEnv, model: SAC, threads: int = 1) -> None:
        self.env = env
        self.model = model
        self.threads = threads

    # -- construction ------------------------------------------------------------------------
    @classmethod
    def new(cls, env: Rls3Env | FeedbackVecEnv, cfg: AgentConfig, seed: int) -> SACAgent:
        """A fresh, untrained SAC on `env`."""
        with torch_threads(cfg.torch_threads):
            model = SAC(POLICY, env, seed=int(seed), verbose=0, **_sac_kwargs(cfg, POLICY))
        _scale_gradient_steps(model, cfg)
        return cls(env, model, cfg.torch_threads)

    @classmethod
    def from_folder(cls, env: Rls3Env | FeedbackVecEnv, folder: str | Path,
                    cfg: AgentConfig) -> SACAgent:
        """A SAC built from `cfg` on `env` and filled with what `save` wrote into `folder`; a
        model saved with another number of envs (the pre-training cache, one env) is loaded for
        `env`'s."""
        folder = Path(folder)
        state = _read_state(folder)
        try:
            seed = _count(state, "seed")
        except (KeyError, ValueError) as e:
            raise AgentStateError(f"{str(folder / STATE_FILE)!r} holds a malformed SAC state: "
                                  f"{e!r}") from e
        agent = cls.new(env, cfg, seed)
        agent.load(folder)
        return agent

    # -- Agent interface -----------------------------------------------------------------------
    @property
    def num_timesteps(self) -> int:
        return int(self.model.num_timesteps)

    def collect(self, episodes: int, seed: int, on_step: StepHook | None = None,
                deferred: DeferredFeedback | None = None) -> int:
        """Learn until `episodes` completed; `deferred` feedback is flushed and written into
        the replay buffer at the end of every rollout (every `train_freq` steps), before SAC's
        gradient steps."""
        if episodes < 1:
            raise ValueError(f"episodes must be >= 1, got {episodes}")
        vec = self.model.get_env()
        assert vec is not None
        if isinstance(vec, FeedbackVecEnv):
            vec.begin(episodes)
        vec.seed(int(seed))  # applied by the reset `learn` performs because _last_obs is None
        self.model._last_obs = None  # start a fresh episode: iterations are self-contained
        counter = _EpisodeCounter(_t0(self.env), episodes, on_step, deferred)
        try:
            with torch_threads(self.threads):
                self.model.learn(total_timesteps=2**62, callback=counter,
                                 reset_num_timesteps=False, progress_bar=False)
        except _IterationDone:
            pass
        else:  # pragma: no cover - learn() cannot end on its own with this budget
            raise RuntimeError("SAC.learn returned before the episodes completed")
        return counter.steps

    def save(self, folder: str | Path) -> None:
        """Write the networks, optimiser states, replay buffer and counters (data only)."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        m = self.model
        params = m.get_parameters()
        tensors = {f"policy.{k}": v.detach().cpu().contiguous()
                   for k, v in params.pop("policy").items()}
        for name in _ENT_COEF_VARS:
            var = getattr(m, name, None)
            if isinstance(var, torch.Tensor):
                tensors[name] = var.detach().cpu().contiguous()
        save_file(tensors, str(folder / MODEL_FILE), metadata={"format": str(AGENT_FORMAT)})
        torch.save(params, folder / OPTIMIZERS_FILE)
        if m.replay_buffer is not None:
            _save_buffer(m.replay_buffer, folder / BUFFER_FILE)
        state = {"format": AGENT_FORMAT, "agent": self.name, "seed": m.seed,
                 "n_envs": m.n_envs, "num_timesteps": m.num_timesteps,
                 "total_timesteps": m._total_timesteps,
                 "timesteps_at_start": m._num_timesteps_at_start,
                 "n_updates": m._n_updates, "episode_num": m._episode_num,
                 "progress_remaining": m._current_progress_remaining,
                 "action_space_rng": m.action_space.np_random.bit_generator.state}
        (folder / STATE_FILE).write_text(json.dumps(state))

    def load(self, folder: str | Path) -> None:
        """Fill this agent's model in place with what `save` wrote into `folder`
        (AgentStateError naming the file when one is missing, malformed or pickled)."""
        folder = Path(folder)
        state = _read_state(folder)
        m = self.model
        tensors = _read_tensors(folder / MODEL_FILE)
        params: dict[str, Any] = {"policy": {k[len("policy."):]: v for k, v in tensors.items()
                                             if k.startswith("policy.")}}
        params.update(_read_optimizers(folder / OPTIMIZERS_FILE, m))
        try:
            with keeping_foreach(m.actor.optimizer, m.critic.optimizer):
                m.set_parameters(params, exact_match=True, device=m.device)
            for name in _ENT_COEF_VARS:
                var = getattr(m, name, None)
                if isinstance(var, torch.Tensor):
                    if tensors[name].shape != var.shape:
                        raise ValueError(f"{name} has shape {list(tensors[name].shape)}, "
                                         f"expected {list(var.shape)}")
                    with torch.no_grad():
                        var.copy_(tensors[name])
        except (KeyError, RuntimeError, TypeError, ValueError) as e:
            raise AgentStateError(f"{str(folder)!r} does not hold this SAC's networks "
                                  f"({MODEL_FILE}, {OPTIMIZERS_FILE}): {e}") from e
        if (folder / BUFFER_FILE).is_file() and m.replay_buffer is not None:
            m.replay_buffer = _load_buffer(folder / BUFFER_FILE, m.replay_buffer, m.buffer_size)
        try:
            m.num_timesteps = _count(state, "num_timesteps")
            m._total_timesteps = _count(state, "total_timesteps")
            m._num_timesteps_at_start = _count(state, "timesteps_at_start")
            m._n_updates = _count(state, "n_updates")
            m._episode_num = _count(state, "episode_num")
            progress = state["progress_remaining"]
            if type(progress) not in (int, float):
                raise TypeError(f"progress_remaining must be a number, got {progress!r}")
            m._current_progress_remaining = float(progress)
            m.action_space.np_random.bit_generator.state = state["action_space_rng"]
        except (KeyError, TypeError, ValueError) as e:
            raise AgentStateError(f"{str(folder / STATE_FILE)!r} holds a malformed SAC state: "
                                  f"{e!r}") from e
        m._last_obs = None  # as SB3's load: the next learn() resets the env


# ------------------------------------------------------------------------------------ agent files
def _read_json(path: Path) -> dict[str, Any]:
    """A JSON object from `path`, or AgentStateError naming it."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise AgentStateError(f"{str(path)!r} cannot be read: {e}") from e
    if not isinstance(data, dict):
        raise AgentStateError(f"{str(path)!r} must hold a JSON object")
    return data


def _count(state: Mapping[str, Any], key: str) -> int:
    """A non-negative integer field of a saved state."""
    v = state[key]
    if type(v) is not int or v < 0:
        raise ValueError(f"{key} must be an integer >= 0, got {v!r}")
    return v


def _read_state(folder: Path) -> dict[str, Any]:
    """`sac_state.json` of a SAC folder, after refusing a folder of the pickled format 1."""
    pickled = [n for n in PICKLED_FILES if (folder / n).exists()]
    if pickled:
        raise AgentStateError(f"{str(folder)!r} holds {', '.join(pickled)}, written by an "
                              f"older rls3 as a pickle, which is never loaded (unpickling can "
                              f"run any code)")
    f = folder / STATE_FILE
    if not f.is_file():
        raise AgentStateError(f"{str(folder)!r} holds no SAC state ({STATE_FILE})")
    state = _read_json(f)
    if state.get("format") != AGENT_FORMAT or state.get("agent") != SACAgent.name:
        raise AgentStateError(f"{str(f)!r} is not a SAC agent state of format {AGENT_FORMAT}")
    return state


def _read_tensors(path: Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(str(path))
    except (OSError, SafetensorError) as e:
        raise AgentStateError(f"{str(path)!r} cannot be read: {e}") from e


def _read_optimizers(path: Path, model: SAC) -> dict[str, Any]:
    """The optimiser state dicts in `path` (tensors and numbers only: `weights_only`), exactly
    the ones `model` has."""
    try:
        data = load_torch_data(path, model.device)
    except NotDataError as e:
        raise AgentStateError(str(e)) from e
    wanted = set(model._get_torch_save_params()[0]) - {"policy"}
    if not isinstance(data, dict) or set(data) != wanted or not all(
            isinstance(v, dict) for v in data.values()):
        raise AgentStateError(f"{str(path)!r} must hold the optimiser states {sorted(wanted)}")
    return data


def _save_buffer(buffer: ReplayBuffer, path: Path) -> None:
    """The buffer's filled rows (all rows once it wrapped) with its position, as npz."""
    rows = buffer.buffer_size if buffer.full else buffer.pos
    arrays = {name: getattr(buffer, name)[:rows] for name in BUFFER_ARRAYS
              if getattr(buffer, name, None) is not None}
    with open(path, "wb") as f:
        np.savez(f, pos=np.int64(buffer.pos), full=np.bool_(buffer.full),
                 capacity=np.int64(buffer.buffer_size), **arrays)


def _load_buffer(path: Path, fresh: ReplayBuffer, total: int) -> ReplayBuffer:
    """`fresh` (the model's empty buffer) holding the transitions saved in `path`, laid out for
    its number of envs; `total` is SAC's `buffer_size`, which fixes a layout's capacity."""
    try:
        with np.load(path, allow_pickle=False) as z:
            data = {k: z[k] for k in (*BUFFER_ARRAYS, "pos", "full", "capacity")
                    if k in z.files}
        pos, full, capacity = int(data["pos"]), bool(data["full"]), int(data["capacity"])
        arrays = {k: data[k] for k in BUFFER_ARRAYS if getattr(fresh, k, None) is not None}
        n_envs = arrays["observations"].shape[1]
    except (OSError, ValueError, KeyError, TypeError, IndexError, EOFError,
            zipfile.BadZipFile) as e:
        raise AgentStateError(f"{str(path)!r} cannot be read as a replay buffer: {e}") from e
    rows = capacity if full else pos
    bad = _buffer_problems(arrays, fresh, rows, n_envs)
    if n_envs < 1 or capacity != max(total // n_envs, 1) or not 0 <= pos < capacity:
        bad.append(f"capacity {capacity} / position {pos} for {n_envs} env(s) do not match "
                   f"buffer_size {total}")
    if bad:
        raise AgentStateError(f"{str(path)!r} does not hold this SAC's replay buffer: "
                              f"{'; '.join(bad)}")
    same = n_envs == fresh.n_envs
    target = fresh if same else ReplayBuffer(
        capacity * n_envs, fresh.observation_space, fresh.action_space, device=fresh.device,
        n_envs=n_envs, handle_timeout_termination=fresh.handle_timeout_termination)
    for name, arr in arrays.items():
        getattr(target, name)[:rows] = arr
    target.pos, target.full = pos, full
    return fresh if same else _relayout_buffer(target, fresh)


def _buffer_problems(arrays: Mapping[str, np.ndarray], fresh: ReplayBuffer, rows: int,
                     n_envs: int) -> list[str]:
    """How saved buffer arrays differ from what `fresh`'s layout needs (shape, dtype)."""
    bad = []
    for name in BUFFER_ARRAYS:
        want = getattr(fresh, name, None)
        if want is None:
            continue
        arr = arrays.get(name)
        shape = (rows, n_envs, *want.shape[2:])
        if arr is None:
            bad.append(f"{name} missing")
        elif arr.shape != shape or arr.dtype != want.dtype:
            bad.append(f"{name} is {arr.dtype}{list(arr.shape)}, expected "
                       f"{want.dtype}{list(shape)}")
    return bad


def _scale_gradient_steps(model: SAC, cfg: AgentConfig) -> None:
    """N envs add N transitions per vec step: N * `gradient_steps` gradient steps per vec step
    keep `gradient_steps` per `train_freq` env steps, as with one env."""
    model.gradient_steps = cfg.gradient_steps * model.n_envs


def _relayout_buffer(old: ReplayBuffer, new: ReplayBuffer) -> ReplayBuffer:
    """`old`'s transitions (oldest first) copied into `new`, laid out for `new.n_envs` envs: row
    r holds transitions r * n ... r * n + n - 1. The oldest len % n (< n) transitions, and any
    beyond `new`'s capacity, are dropped. Every transition keeps its own next observation."""
    rows_old = old.buffer_size if old.full else old.pos
    order = np.arange(rows_old)
    if old.full:
        order = (order + old.pos) % old.buffer_size
    flat = (order[:, None] * old.n_envs + np.arange(old.n_envs)).reshape(-1)  # oldest first
    n = new.n_envs
    rows = min(len(flat) // n, new.buffer_size)
    take = flat[len(flat) - rows * n:]
    for name in ("observations", "next_observations", "actions", "rewards", "dones", "timeouts"):
        src = getattr(old, name, None)
        dst = getattr(new, name, None)
        if src is None or dst is None:
            continue
        picked = src.reshape(old.buffer_size * old.n_envs, *src.shape[2:])[take]
        dst[:rows] = picked.reshape(rows, n, *src.shape[2:])
    new.pos = rows % new.buffer_size
    new.full = rows == new.buffer_size
    log.info("replay buffer of %d transitions (%d env(s)) laid out for %d envs: %d kept",
             len(flat), old.n_envs, n, rows * n)
    return new


# ------------------------------------------------------------------------------------ pretraining
def pretrain_key(cfg: AgentConfig, env: Rls3Env, seed: int, backend_name: str) -> dict[str, Any]:
    """What determines a pre-trained SAC: scenes, object pool, env dynamics, SAC settings, seed.
    (Rendering and image size do not: pretraining runs without images; nor does the number of
    scene workers: pretraining always runs in one in-process env.)"""
    import stable_baselines3

    env_cfg = {k: v for k, v in asdict(env.config).items()
               if k not in ("render", "image_size", "workers")
               and not (k == "action" and v == "move")}  # the paper's: the key of older caches
    agent = {k: v for k, v in asdict(cfg).items()
             if k not in ("name", "pretrained_dir", "device", "torch_threads",
                          "pretrain_background")
             and not (k in PRETRAIN_SCHEDULE and v is None)}  # unset: the key of older caches
    agent["net_arch"] = list(cfg.net_arch)
    return {"format": AGENT_FORMAT, "backend": backend_name,
            "scenes": list(env.backend.scene_names), "objects": list(env.backend.object_pool),
            "env": env_cfg, "agent": agent, "seed": int(seed),
            "sb3": stable_baselines3.__version__}


def pretrain_schedule(cfg: AgentConfig) -> AgentConfig:
    """`cfg` with the pre-training update schedule in place of the loop's (the model saved after
    pre-training is loaded into a SAC built from `cfg` itself, so the loop keeps its own)."""
    return replace(cfg, **{loop_key: getattr(cfg, key) for key, loop_key in
                           PRETRAIN_SCHEDULE.items() if getattr(cfg, key) is not None})


def pretrained_folder(cfg: AgentConfig, key: Mapping[str, Any]) -> Path:
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    base = Path(cfg.pretrained_dir) if cfg.pretrained_dir else Path("runs") / "_pretrained"
    return base / f"sac-{key['backend']}-{digest}"


def pretrained_sac(env: Rls3Env, cfg: AgentConfig, seed: int, backend_name: str,
                   progress: bool = False, workers: FeedbackVecEnv | None = None) -> SACAgent:
    """SAC pre-trained for `cfg.pretrain_steps` on the intrinsic reward (rendering off), loaded
    onto `env` (or onto `workers`, with N envs). The pre-trained model and replay buffer are cached
    under `cfg.pretrained_dir` and reused by any run with the same scenes, env dynamics, SAC
    settings and seed, whatever its number of workers (pre-training runs in `env`)."""
    folder = ensure_pretrained(env, cfg, seed, backend_name, progress)
    try:
        return SACAgent.from_folder(workers if workers is not None else env, folder, cfg)
    except AgentStateError as e:
        raise AgentStateError(f"pre-trained agent cache: {e}; delete {str(folder)!r} to "
                              f"pre-train again") from e


def ensure_pretrained(env: Rls3Env, cfg: AgentConfig, seed: int, backend_name: str,
                      progress: bool = False,
                      report: Callable[[int], None] | None = None) -> Path:
    """The cache folder of the SAC `pretrained_sac` loads, pre-training it first when it is
    missing (a damaged one is rebuilt; one whose key differs is an `AgentStateError`);
    `report(steps)` hears pre-training's progress."""
    key = pretrain_key(cfg, env, seed, backend_name)
    folder = pretrained_folder(cfg, key)
    bad = manifest_problems(folder) if folder.is_dir() else []
    if bad:     # a damaged (or pre-manifest) cache is rebuilt, never loaded
        log.warning("pre-trained agent cache %s is unusable (%s); pre-training again", folder,
                    ", ".join(bad))
        shutil.rmtree(folder, ignore_errors=True)
    if (folder / MODEL_FILE).is_file() and (folder / KEY_FILE).is_file():
        try:
            stored = json.loads((folder / KEY_FILE).read_text())
        except ValueError:
            stored = None
        if stored != json.loads(json.dumps(key)):
            raise AgentStateError(f"pre-trained agent cache {str(folder)!r} does not match its "
                                  f"key; delete the folder to pre-train again")
        log.info("reusing the pre-trained SAC in %s", folder)
    else:
        _pretrain(env, cfg, seed, key, folder, progress, report)
    return folder


def _pretrain(env: Rls3Env, cfg: AgentConfig, seed: int, key: Mapping[str, Any], folder: Path,
              progress: bool, report: Callable[[int], None] | None = None) -> None:
    import time

    quiet = Rls3Env(env.backend, replace(env.config, render=False), feedback=None)
    agent = SACAgent.new(quiet, pretrain_schedule(cfg), seed)
    t0, c0 = time.perf_counter(), time.process_time()
    if cfg.pretrain_steps > 0:
        with torch_threads(cfg.torch_threads):
            agent.model.learn(total_timesteps=cfg.pretrain_steps,
                              callback=_StepProgress(cfg.pretrain_steps, progress, report),
                              progress_bar=False)
    dt, cpu = time.perf_counter() - t0, time.process_time() - c0
    log.info("pre-trained SAC for %d steps on the intrinsic reward in %.1fs (%.1f CPU s, %.0f "
             "steps/s)", cfg.pretrain_steps, dt, cpu, cfg.pretrain_steps / max(dt, 1e-9))
    with atomic_folder(folder, keep_existing=True) as tmp:  # a concurrent run may win: use it
        agent.save(tmp)
        (tmp / KEY_FILE).write_text(json.dumps(key, indent=2, sort_keys=True))
        write_manifest(tmp)


# ------------------------------------------------------------------------------------ registry
#: what an agent drives: one env, or the scene workers
AgentEnv = Rls3Env | FeedbackVecEnv


def _restore_sac(driven: AgentEnv, folder: Path, cfg: AgentConfig, seed: int) -> Agent:
    return SACAgent.from_folder(driven, folder, cfg)


def _build_random(env: Rls3Env, cfg: AgentConfig, seed: int, backend_name: str, progress: bool,
                  workers: FeedbackVecEnv | None) -> Agent:
    return RandomAgent(workers if workers is not None else env, seed)


def _restore_random(driven: AgentEnv, folder: Path, cfg: AgentConfig, seed: int) -> Agent:
    agent = RandomAgent(driven, seed)
    agent.load(folder)
    return agent


@dataclass(frozen=True)
class AgentSpec:
    """One data-generation agent as the loop uses it: how a run's start builds it (`build(env,
    cfg, seed, backend_name, progress, workers)`), how a resume restores it from a checkpoint's
    agent folder (`restore(driven, folder, cfg, seed)`), and whether it learns from the VLM's
    feedback (otherwise feedback is computed only with `loop.random_feedback`)."""

    name: str
    build: Callable[[Rls3Env, AgentConfig, int, str, bool, FeedbackVecEnv | None], Agent]
    restore: Callable[[AgentEnv, Path, AgentConfig, int], Agent]
    learns_from_feedback: bool


#: the agents, by the names `rls3.config.AGENTS` allows (config.py may not import this module;
#: tests/test_agents.py checks that both list the same names, in the same order)
AGENT_SPECS: dict[str, AgentSpec] = {spec.name: spec for spec in (
    AgentSpec("sac", pretrained_sac, _restore_sac, learns_from_feedback=True),
    AgentSpec("random", _build_random, _restore_random, learns_from_feedback=False),
)}


def agent_spec(name: str) -> AgentSpec:
    """The registered agent `name` (ValueError naming the allowed ones)."""
    spec = AGENT_SPECS.get(name)
    if spec is None:
        raise ValueError(f"unknown agent {name!r}; allowed: {list(AGENT_SPECS)}")
    return spec


def build_agent(name: str, env: Rls3Env, cfg: AgentConfig, seed: int, backend_name: str,
                progress: bool = False, workers: FeedbackVecEnv | None = None) -> Agent:
    """The loop's agent at the start of a run: pre-trained SAC or a seeded random agent, driving
    `workers` when given (scene workers), else `env`."""
    return agent_spec(name).build(env, cfg, seed, backend_name, progress, workers)


def restore_agent(name: str, driven: AgentEnv, folder: str | Path, cfg: AgentConfig,
                  seed: int) -> Agent:
    """The agent `name` driving `driven` (the env, or the scene workers), restored from the
    agent folder of a checkpoint (what its `save` wrote)."""
    return agent_spec(name).restore(driven, Path(folder), cfg, seed)
