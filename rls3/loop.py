"""Algorithm 1 (RLS3): generate with an agent, score with the VLM, fine-tune, validate, test;
resume and early stopping.

One iteration:
  1. E episodes, each until T0 valid frames. On an episode's completing step the env calls the
     `EpisodeCollector`: it captions the T0 frames, asks the VLM for feedback (J2) and returns
     beta * J2 as extrinsic reward (SAC learns from it; the random agent ignores it), then keeps
     round(eta * T0) of the frames, drawn without replacement, for the fine-tuning batch. With
     `loop.feedback: sample` (a departure) every valid frame is captioned and scored on its own
     step instead and beta * its hardness is that step's extrinsic reward; `loop.reward_norm:
     running` standardises J2 / hardness first (`RunningNorm`, saved in the checkpoint).
     Episodes cut by the env's step cap produce no feedback and no batch samples, but their steps
     count as generated data.
  2. The VLM is fine-tuned K epochs (CLIP-type) / K steps (PaliGemma) on the E * eta * T0 batch
     (with `loop.replay`, a departure from the paper: plus a seeded share of earlier kept samples,
     see `rls3.replay`); validation runs after every F = `loop.val_every` epochs/steps (0: once,
     after K).
  3. The test set is evaluated, a metrics record is appended, and a checkpoint is committed.
  4. Stop on early stopping (validation, SAC runs), on the sample budget (random runs with
     `--budget-from`) or after `loop.iterations`.

With scene workers (`env.workers` = N > 1, `rls3.workers`) the agent steps N env processes; the
hooks above run in this process for each worker in turn, an iteration takes E completed episodes
across workers, and the other workers' unfinished episodes are abandoned at its end (their steps
count; no feedback, no batch samples; recorded as `abandoned_episodes`).

"Generated samples" (the paper's x-axis and the budget) are env steps, valid or not: every step
proposes a layout, as every Unity step produced a frame to check; `cum_valid` counts valid frames.
Iteration 0 is the untouched VLM (validation and test before any fine-tuning).

The run directory (format, metrics, checkpoints) is `rls3.rundir`.
"""

from __future__ import annotations

import json
import logging
import math
import os
import pickle
import random
import shutil
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from rls3 import runtime
from rls3.agents import Agent, RandomAgent, SACAgent, build_agent
from rls3.config import (FEEDBACK_MODES, Config, ConfigError, backend_identity, check_runnable,
                         make_backend)
from rls3.data import (DatasetError, complexity_counts, ensure_fixed_set, fixed_set_dir,
                       make_sample, read_dataset, replace_folder, term_counts, write_dataset)
from rls3.env import Frame, Rls3Env
from rls3.manifest import write_manifest
from rls3.progress import progress_bar
from rls3.replay import ReplayError, SampleReplay
from rls3.rundir import (BEST_VLM, CHECKPOINTS, CONFIG_FILE, LATEST_FILE, LOG_FILE, METRICS_FILE,
                         RNG_FILE, STATE_FILE, RunDirError, atomic_write, budget_from_run,
                         create_run, latest_checkpoint, load_run_config, read_metrics, saving)
from rls3.sample import Sample
from rls3.vlm.distributed import DataParallel
from rls3.workers import FeedbackVecEnv, make_workers

log = logging.getLogger(__name__)

PhaseHook = Callable[[int, str], None]


# ------------------------------------------------------------------------------------ early stop
@dataclass(frozen=True)
class EarlyStopStatus:
    stop: bool
    best_iteration: int
    best_score: float
    since_best: int


def early_stopping(scores: Sequence[float], patience: int, min_iterations: int,
                   min_delta: float = 0.0) -> EarlyStopStatus:
    """Early stopping on a validation history (higher is better).

    `scores[0]` is the score before any fine-tuning (iteration 0), `scores[i]` the score after
    iteration i. An iteration improves significantly when it beats the best so far by more than
    `min_delta`. Stop once at least `min_iterations` iterations ran and none of the last
    `patience` iterations improved significantly. NaN scores never improve."""
    if not scores:
        raise ValueError("early_stopping needs at least the iteration-0 score")
    if patience < 1 or min_iterations < 1 or min_delta < 0:
        raise ValueError(f"bad early-stopping settings patience={patience}, "
                         f"min_iterations={min_iterations}, min_delta={min_delta}")
    best_i, best = 0, float(scores[0])
    for i, s in enumerate(scores[1:], 1):
        s = float(s)
        if math.isnan(s):
            continue
        if math.isnan(best) or s > best + min_delta:
            best_i, best = i, s
    n = len(scores) - 1
    since = n - best_i
    return EarlyStopStatus(n >= min_iterations and since >= patience, best_i, best, since)


def should_stop(scores: Sequence[float], patience: int, min_iterations: int,
                min_delta: float = 0.0) -> bool:
    """True when `early_stopping(...)` says stop."""
    return early_stopping(scores, patience, min_iterations, min_delta).stop


# ------------------------------------------------------------------------------------ VLM
def build_vlm_from_config(cfg: Config, weights: str | Path | None = None,
                          parallel: DataParallel | None = None) -> Any:
    """The run's VLM adapter (seeded with the run seed). With `parallel` (a multi-process
    launch, main process) every process builds its replica and the main process gets a
    `RemoteVLM` that forwards each collective call to the others (see `serve_vlm`)."""
    if parallel is None:
        return build_vlm_replica(cfg, None if weights is None else str(weights))
    from rls3.vlm.distributed import build_remote

    log.info("VLM data-parallel over %d processes (%s); this main process alone runs the scene, "
             "the agent and the run directory", parallel.world_size, parallel.device)
    return build_remote(parallel, partial(build_vlm_replica, parallel=parallel), cfg,
                        None if weights is None else str(weights))


def build_vlm_replica(cfg: Config, weights: str | None = None,
                      parallel: DataParallel | None = None) -> Any:
    """This process's adapter: on a multi-GPU launch each process takes its own GPU; the
    adapter splits its work over the processes when it has a data-parallel path."""
    from rls3.vlm import build_vlm

    kw = cfg.vlm.build_kwargs()
    if weights is not None:
        kw["weights"] = weights
    progress = cfg.progress
    if parallel is not None:
        progress = progress and parallel.is_main
        if parallel.device.type == "cuda" and kw.get("device") in (None, "cuda"):
            kw["device"] = str(parallel.device)
    try:
        vlm = build_vlm(cfg.vlm.name, seed=cfg.seed, progress=progress, **kw)
    except (ValueError, OSError) as e:
        raise ConfigError(f"cannot build VLM {cfg.vlm.name!r}: {e}") from e
    if parallel is not None:
        if hasattr(vlm, "distribute"):
            vlm.distribute(parallel)
        elif parallel.is_main:
            log.warning("VLM %r has no data-parallel path: each of the %d processes computes "
                        "every call in full (same results, no speed-up)", cfg.vlm.name,
                        parallel.world_size)
    return vlm


def serve_vlm(parallel: DataParallel) -> int:
    """A non-main process of a multi-process run: build the VLM replica and run the main
    process's VLM calls, in its order, until it stops; returns the number of calls."""
    from rls3.vlm.distributed import serve

    return serve(parallel, partial(build_vlm_replica, parallel=parallel))


def check_launch(cfg: Config, parallel: DataParallel | None) -> None:
    """ConfigError when `vlm.processes` disagrees with the processes actually launched."""
    from rls3.vlm.distributed import check_processes

    world = 1 if parallel is None else parallel.world_size
    try:
        check_processes(cfg.vlm.processes, world)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    workers = getattr(cfg.env, "workers", 1)
    if world > 1 and isinstance(workers, int) and workers > 1:
        log.info("%d scene workers run for the main process only; the %d VLM processes share "
                 "the fine-tuning, feedback and evaluation", workers, world)


def _vlm_rng_get(vlm: Any) -> Any:
    if hasattr(vlm, "rng_state"):
        return vlm.rng_state()
    g = getattr(vlm, "_generator", None)  # the contrastive adapters' shuffling generator
    return g.get_state() if isinstance(g, torch.Generator) else None


def _vlm_rng_set(vlm: Any, state: Any) -> None:
    if state is None:
        return
    if hasattr(vlm, "set_rng_state"):
        vlm.set_rng_state(state)
        return
    g = getattr(vlm, "_generator", None)
    if isinstance(g, torch.Generator):
        g.set_state(state)


# ------------------------------------------------------------------------------------ episodes
class RunningNorm:
    """Running mean and standard deviation (Welford) that standardises the extrinsic reward
    (`loop.reward_norm: running`); its state goes into every checkpoint, so a resumed run
    normalises exactly as an uninterrupted one."""

    CLIP = 5.0

    def __init__(self, state: dict[str, float] | None = None) -> None:
        state = state or {}
        self.count = int(state.get("count", 0))
        self.mean = float(state.get("mean", 0.0))
        self.m2 = float(state.get("m2", 0.0))

    def __call__(self, x: float) -> float:
        """Add `x` to the statistics, then return it standardised (0 until two values were seen;
        clipped to +-CLIP standard deviations)."""
        self.count += 1
        delta = x - self.mean
        self.mean += delta / self.count
        self.m2 += delta * (x - self.mean)
        if self.count < 2 or self.m2 <= 0.0:
            return 0.0
        std = math.sqrt(self.m2 / (self.count - 1))
        return float(np.clip((x - self.mean) / std, -self.CLIP, self.CLIP))

    def state(self) -> dict[str, float]:
        return {"count": self.count, "mean": self.mean, "m2": self.m2}


class EpisodeCollector:
    """The env's feedback hook and the iteration's bookkeeping.

    `feedback="episode"` (the paper): on each completed episode caption the frames, ask the VLM for
    J2 and return beta * J2 as the completing step's extrinsic reward. `feedback="sample"` (the
    paper's future work, a departure): caption and score every valid frame on its own step and
    return beta * its hardness as that step's extrinsic reward. `reward_norm="running"`
    standardises J2 / hardness by a running mean and std first. Either way every completed episode
    keeps round(eta * T0) samples for the fine-tuning batch, and the hardness of every scored
    sample under the VLM as it was then is recorded. `on_step` counts every env step."""

    def __init__(self, vlm: Any, rng: np.random.Generator, eta: float, beta: float, t0: int,
                 feedback: bool = True, mode: str = "episode",
                 norm: RunningNorm | None = None) -> None:
        if mode not in FEEDBACK_MODES:
            raise ValueError(f"feedback mode must be one of {list(FEEDBACK_MODES)}, got {mode!r}")
        self.vlm = vlm
        self.rng = rng
        self.eta = eta
        self.beta = beta
        self.t0 = t0
        self.feedback_enabled = feedback
        self.mode = mode
        self.norm = norm
        self.bar: tqdm | None = None
        self.last_val: float | None = None  # shown in the progress bar
        self.start()

    def start(self) -> None:
        self.batch: list[Sample] = []
        self.generated: list[Sample] = []  # descriptions only matter here; images are dropped
        self.j2: list[float] = []
        self.hardness: list[float] = []   # per scored sample, in generation order
        self.hardness_terms: list[tuple[str, ...]] = []
        self.extrinsic: list[float] = []  # per step that received one
        self.moves: list[float] = []      # per valid step, metres
        self.steps = self.valid = self.distinct = self.episodes = self.truncated = 0
        self.abandoned = 0  # completed beyond E on the last step (scene workers only)
        self.feedback_s = 0.0
        self.scenes: dict[str, int] = {}
        self._pending: dict[int, list[Sample]] = {}  # sample mode: each worker's episode so far
        self._open: set[int] = set()  # workers whose current episode has not ended

    def env_hooks(self) -> dict[str, Any]:
        """Keyword arguments for `Rls3Env`: the episode or the per-sample feedback hook."""
        return {"feedback": self} if self.mode == "episode" else {"step_feedback": self.score_step}

    def _reward(self, x: float) -> float:
        return self.beta * (self.norm(x) if self.norm is not None else x)

    def _scored(self, samples: Sequence[Sample], hardness: Sequence[float]) -> None:
        self.hardness.extend(float(h) for h in hardness)
        self.hardness_terms.extend(s.description.terms for s in samples)

    def __call__(self, frames: Sequence[Frame]) -> float:
        """Episode feedback (`mode="episode"`): called by the env on the completing step."""
        samples = [make_sample(f.image, f.state, self.rng) for f in frames]
        reward = 0.0
        if self.feedback_enabled:
            t = time.perf_counter()
            fb = self.vlm.feedback(samples)
            self.feedback_s += time.perf_counter() - t
            self.j2.append(float(fb.j2))
            if fb.hardness:
                self._scored(samples, fb.hardness)
            reward = self._reward(float(fb.j2))
        self._episode_done(samples)
        return reward

    def score_step(self, frame: Frame, worker: int = 0) -> float:
        """Per-sample feedback (`mode="sample"`): called on every valid step, by the env (N = 1)
        or by `rls3.workers.FeedbackVecEnv` with the worker's index."""
        sample = make_sample(frame.image, frame.state, self.rng)
        self._pending.setdefault(worker, []).append(sample)
        if not self.feedback_enabled:
            return 0.0
        t = time.perf_counter()
        fb = self.vlm.feedback([sample])
        self.feedback_s += time.perf_counter() - t
        h = float(fb.hardness[0]) if fb.hardness else float(fb.per_sample[0])
        self._scored([sample], [h])
        return self._reward(h)

    def _episode_done(self, samples: list[Sample]) -> None:
        n_keep = max(1, round(self.eta * len(samples)))
        keep = np.sort(self.rng.choice(len(samples), size=min(n_keep, len(samples)),
                                       replace=False))
        self.batch.extend(samples[int(i)] for i in keep)
        self.generated.extend(Sample(np.zeros((1, 1, 3), np.uint8), s.state, s.description)
                              for s in samples)
        self.episodes += 1
        if self.bar is not None:
            self.bar.set_postfix(self.postfix(), refresh=False)

    def on_step(self, info: dict[str, Any], reward: float, done: bool) -> None:
        self.steps += 1
        worker = int(info.get("worker", 0))
        completed = int(info.get("n_valid", 0)) >= self.t0
        abandoned = bool(info.get("abandoned", False))
        scored = (info.get("valid") if self.mode == "sample"
                  else done and completed and not abandoned)
        if self.feedback_enabled and scored:
            self.extrinsic.append(float(info.get("extrinsic", 0.0)))
        if info.get("valid"):
            self.valid += 1
            self.distinct += bool(info.get("distinct", True))
            self.moves.append(float(info.get("move", 0.0)))
            scene = str(info.get("scene", ""))
            self.scenes[scene] = self.scenes.get(scene, 0) + 1
            if self.bar is not None:
                self.bar.set_postfix(self.postfix(), refresh=False)
                self.bar.update(1)
        if done and self.mode == "sample":
            pending = self._pending.pop(worker, [])
            if completed and not abandoned:
                self._episode_done(pending)
        if done and not completed:
            self.truncated += 1
        if done and abandoned:
            self.abandoned += 1
        if done:
            self._open.discard(worker)
        else:
            self._open.add(worker)

    @property
    def abandoned_episodes(self) -> int:
        """Episodes left at the iteration boundary (scene workers): completed beyond E on the
        last step, or unfinished; their steps count, they give no feedback or batch samples."""
        return self.abandoned + len(self._open)

    def postfix(self) -> dict[str, str]:
        d = {"ep": str(self.episodes), "yield": f"{self.valid / max(self.steps, 1):.2f}"}
        if self.j2:
            d["J2"] = f"{np.mean(self.j2):.3g}"
        if self.hardness:
            d["hard"] = f"{np.mean(self.hardness):.3g}"
        if self.last_val is not None:
            d["val"] = f"{self.last_val:.3f}"
        return d

    def hardness_fields(self) -> dict[str, Any]:
        """The iteration's data-generation record: distinct yield, move sizes and the hardness
        of the scored samples (overall and per spatial term)."""
        h = np.asarray(self.hardness, dtype=np.float64)
        by_term: dict[str, list[float]] = {}
        for v, terms in zip(self.hardness, self.hardness_terms):
            for t in dict.fromkeys(terms):
                by_term.setdefault(t, []).append(v)
        return {
            "feedback_mode": self.mode,
            "distinct": self.distinct,
            "yield_distinct": self.distinct / self.steps if self.steps else None,
            "move_median": float(np.median(self.moves)) if self.moves else None,
            "hardness_mean": float(h.mean()) if h.size else None,
            "hardness_std": float(h.std()) if h.size else None,
            "hardness_n": int(h.size),
            "hardness_by_term": {t: float(np.mean(v)) for t, v in sorted(by_term.items())},
            "extrinsic_mean": float(np.mean(self.extrinsic)) if self.extrinsic else None,
        }


# ------------------------------------------------------------------------------------ the run
@dataclass
class RunState:
    """Counters carried across iterations (saved in every checkpoint)."""

    iteration: int = 0
    cum_steps: int = 0
    cum_valid: int = 0
    cum_episodes: int = 0
    cum_truncated: int = 0
    finetune_steps: int = 0
    val_scores: list[float] = field(default_factory=list)
    cum_terms: dict[str, int] = field(default_factory=dict)
    env_episode: int = -1
    stop_reason: str | None = None
    metrics_bytes: int = 0
    elapsed_s: float = 0.0
    replay: dict[str, Any] | None = None      # `SampleReplay.state()` when loop.replay is on
    reward_norm: dict[str, float] | None = None  # `RunningNorm.state()` (loop.reward_norm)

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RunState:
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in d.items() if k in known})


@dataclass(frozen=True)
class RunResult:
    run_dir: Path
    iterations: int
    stop_reason: str | None
    records: list[dict[str, Any]]

    @property
    def final(self) -> dict[str, Any]:
        return self.records[-1] if self.records else {}


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _iteration_seed(seed: int, iteration: int) -> int:
    return int(np.random.SeedSequence([seed, iteration, 0x1715]).generate_state(1)[0] & 0x7FFFFFFF)


class Loop:
    """One run of Algorithm 1 in a run directory (fresh, or continuing its last checkpoint)."""

    def __init__(self, run_dir: str | Path, on_phase: PhaseHook | None = None,
                 progress: bool | None = None, parallel: DataParallel | None = None) -> None:
        self.run_dir = Path(run_dir)
        self.cfg = load_run_config(self.run_dir, resume=True)
        if progress is not None:  # display only: does not change results
            self.cfg = replace(self.cfg, progress=progress)
        #: the process group of a multi-process launch (this is its main process), or None
        self.parallel = parallel
        check_launch(self.cfg, parallel)
        self.on_phase = on_phase
        self.ckpt = latest_checkpoint(self.run_dir)  # verified before anything is written
        self.state = RunState()
        if self.ckpt is None:
            done = [r.get("iteration") for r in read_metrics(self.run_dir)
                    if isinstance(r.get("iteration"), int) and r["iteration"] > 0]
            if done:
                raise RunDirError(
                    f"{str(self.run_dir)!r} has {len(done)} finished iteration(s) in "
                    f"{METRICS_FILE} but no checkpoint ({CHECKPOINTS}/ deleted?); continuing "
                    f"would start over and discard them, so nothing was changed. Its results "
                    f"stay readable (`rls3 report {self.run_dir}`); to run it again, start a "
                    f"new run: `rls3 run --config {self.run_dir / CONFIG_FILE}`")
        if self.ckpt is not None:
            try:
                self.state = RunState.from_dict(json.loads((self.ckpt / STATE_FILE).read_text()))
            except (json.JSONDecodeError, TypeError) as e:
                raise RunDirError(f"checkpoint {str(self.ckpt)!r} is corrupt: bad "
                                  f"{STATE_FILE}") from e
            mf = self.run_dir / METRICS_FILE
            if not mf.is_file() or mf.stat().st_size < self.state.metrics_bytes:
                raise RunDirError(f"{str(mf)!r} is shorter than checkpoint "
                                  f"{self.ckpt.name} recorded; the run directory is damaged")
            if self.cfg.loop.replay.enabled and self.state.replay is None:
                raise RunDirError(f"checkpoint {str(self.ckpt)!r} has no fine-tuning replay "
                                  f"state but the run's config has loop.replay on (was "
                                  f"{CONFIG_FILE} edited?); nothing was changed")
        self.replay: SampleReplay | None = None
        # the env's image size reaches a backend that renders at its own size; its logs go here
        self.backend_cfg = self.cfg.backend_config(log_folder=self.run_dir / "backend_logs")
        self.backend_key = backend_identity(self.cfg.backend)  # caches: build identity too

    @property
    def finished(self) -> bool:
        return self.state.stop_reason is not None

    # -- setup -------------------------------------------------------------------------------
    def _phase(self, iteration: int, name: str) -> None:
        if self.on_phase is not None:
            self.on_phase(iteration, name)

    def _datasets(self) -> tuple[list[Sample], list[Sample]]:
        cfg = self.cfg
        out = []
        for split, backend_split, n in (("val", "train", cfg.data.val_size),
                                        ("test", "test", cfg.data.test_size)):
            backend = make_backend(self.backend_cfg, backend_split)
            try:
                folder = fixed_set_dir(cfg.data.dir, split, self.backend_key, backend.scene_names,
                                       n, cfg.env.image_size, cfg.data.seed)
                ensure_fixed_set(folder, backend, split, n, cfg.env.image_size, cfg.data.seed,
                                 self.backend_key, progress=cfg.progress)
            finally:
                backend.close()
            out.append(read_dataset(folder, progress=cfg.progress))
            log.info("%s set: %s (%d samples)", split, folder, len(out[-1]))
        return out[0], out[1]

    def run(self) -> RunResult:
        """Run (or continue) to the end; returns the run's metrics records."""
        if self.finished:
            log.info("run %s already finished (%s)", self.run_dir, self.state.stop_reason)
            return RunResult(self.run_dir, self.state.iteration, self.state.stop_reason,
                             read_metrics(self.run_dir))
        handler = logging.FileHandler(self.run_dir / LOG_FILE)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        root = logging.getLogger("rls3")
        root.addHandler(handler)
        level = root.level
        if level == logging.NOTSET or level > logging.INFO:
            root.setLevel(logging.INFO)  # run.log gets INFO whatever the console shows
        try:
            return self._run()
        except KeyboardInterrupt:
            log.warning("interrupted; continue with: rls3 run --resume %s", self.run_dir)
            raise
        except Exception as e:  # recorded in run.log only (the caller reports it), re-raised
            handler.handle(log.makeRecord(
                log.name, logging.ERROR, __file__, 0, "run stopped by %s: %s; the last finished "
                "iteration is kept; continue with: rls3 run --resume %s",
                (type(e).__name__, e, self.run_dir), None))
            raise
        finally:
            root.removeHandler(handler)
            root.setLevel(level)
            handler.close()

    def _run(self) -> RunResult:
        cfg = self.cfg
        t_start = time.perf_counter()
        log.info("allocator: %s, OMP_WAIT_POLICY=%s", runtime.active_allocator(),
                 os.environ.get("OMP_WAIT_POLICY", "(unset)"))
        if not cfg.env.render:
            log.warning("env.render is off: the VLM sees blank images (use it for timing only)")
        _seed_everything(cfg.seed)
        val, test = self._datasets()
        vlm = build_vlm_from_config(cfg, parallel=self.parallel)
        self.vlm = vlm
        rng = np.random.default_rng(np.random.SeedSequence([cfg.seed, 0xC0FFEE]))
        use_feedback = cfg.agent.name == "sac" or cfg.loop.random_feedback
        norm = RunningNorm(self.state.reward_norm) if cfg.loop.reward_norm == "running" else None
        collector = EpisodeCollector(vlm, rng, cfg.loop.eta, cfg.loop.beta, cfg.env.t0,
                                     feedback=use_feedback, mode=cfg.loop.feedback, norm=norm)
        if cfg.loop.replay.enabled:
            self.replay = SampleReplay(cfg.loop.replay.capacity, cfg.loop.replay.fraction,
                                       cfg.seed)
            if self.ckpt is None:
                self.state.replay = self.replay.state()
        backend = make_backend(self.backend_cfg, "train")
        writer = None
        workers: FeedbackVecEnv | None = None
        try:
            env = Rls3Env(backend, cfg.env_config, **collector.env_hooks())
            if cfg.env.workers > 1:  # the main process's env then only pre-trains SAC
                workers = make_workers(self.backend_cfg, cfg.env_config, cfg.env.workers,
                                       collector.env_hooks())
            agent: Agent
            if self.ckpt is None:
                agent = build_agent(cfg.agent.name, env, cfg.agent, cfg.seed, self.backend_key,
                                    progress=cfg.progress, workers=workers)
                # whatever setup consumed (pretraining or a cache hit, data generation), the
                # first iteration starts from the same seeded RNG states
                _seed_everything(cfg.seed)
            else:
                agent = self._restore(env, vlm, collector, workers)
            # metrics of a half-finished iteration are dropped (it is redone identically)
            self._truncate_metrics()
            if cfg.tensorboard:
                from torch.utils.tensorboard import SummaryWriter

                writer = SummaryWriter(str(self.run_dir / "tb"),
                                       purge_step=self.state.iteration + 1 if self.ckpt else 0)
            if self.ckpt is None:
                self._baseline(vlm, val, test, agent, env, collector, writer)
            elapsed0 = self.state.elapsed_s - (time.perf_counter() - t_start)
            while self.state.stop_reason is None:
                i = self.state.iteration + 1
                record = self._iteration(i, vlm, agent, env, collector, val, test, writer)
                self.state.elapsed_s = elapsed0 + time.perf_counter() - t_start
                self._stop_check(record)
                self._tb(writer, record)
                self._append_metrics(record)
                self._checkpoint(vlm, agent, env, collector)
                self._phase(i, "done")
            log.info("run finished after %d iterations (%s): %s", self.state.iteration,
                     self.state.stop_reason, self.run_dir)
        finally:
            if writer is not None:
                writer.close()
            if workers is not None:
                workers.close()
            backend.close()
        return RunResult(self.run_dir, self.state.iteration, self.state.stop_reason,
                         read_metrics(self.run_dir))

    # -- pieces ------------------------------------------------------------------------------
    def _restore(self, env: Rls3Env, vlm: Any, collector: EpisodeCollector,
                 workers: FeedbackVecEnv | None = None) -> Agent:
        assert self.ckpt is not None
        cfg = self.cfg
        log.info("resuming %s from %s (iteration %d)", self.run_dir, self.ckpt.name,
                 self.state.iteration)
        try:
            vlm.load(self.ckpt / "vlm")
            agent: Agent
            driven = workers if workers is not None else env
            if cfg.agent.name == "sac":
                agent = SACAgent.from_folder(driven, self.ckpt / "agent", cfg.agent)
            else:
                agent = RandomAgent(driven, cfg.seed)
                agent.load(self.ckpt / "agent")
            with open(self.ckpt / RNG_FILE, "rb") as f:
                rngs = pickle.load(f)
        except (OSError, ValueError, KeyError, pickle.UnpicklingError, EOFError) as e:
            raise RunDirError(f"checkpoint {str(self.ckpt)!r} cannot be loaded: {e}") from e
        random.setstate(rngs["python"])
        np.random.set_state(rngs["numpy"])
        torch.set_rng_state(rngs["torch"])
        collector.rng.bit_generator.state = rngs["loop"]
        _vlm_rng_set(vlm, rngs["vlm"])
        env.episode = self.state.env_episode
        if self.replay is not None:
            assert self.state.replay is not None  # checked in __init__
            try:
                self.replay.restore(self.state.replay, self._saved_batch)
            except ReplayError as e:
                raise RunDirError(f"{str(self.run_dir)!r}: cannot restore the fine-tuning "
                                  f"replay: {e}") from e
        return agent

    def _saved_batch(self, iteration: int) -> list[Sample]:
        folder = self.run_dir / "data" / f"iter_{iteration:04d}"
        if not folder.is_dir():
            raise ReplayError(f"{str(folder)!r} is missing (replayed samples are read back from "
                              f"the saved batches; do not delete data/ of a run to be resumed)")
        try:
            return read_dataset(folder)
        except DatasetError as e:
            raise ReplayError(str(e)) from e

    def _truncate_metrics(self) -> None:
        mf = self.run_dir / METRICS_FILE
        if mf.is_file() and mf.stat().st_size > self.state.metrics_bytes:
            log.info("dropping metrics of the unfinished iteration %d", self.state.iteration + 1)
            with open(mf, "r+b") as f:
                f.truncate(self.state.metrics_bytes)
        elif not mf.exists():
            mf.touch()

    def _evaluate(self, vlm: Any, samples: list[Sample]) -> dict[str, Any]:
        return vlm.evaluate(samples).to_dict()

    def _baseline(self, vlm: Any, val: list[Sample], test: list[Sample], agent: Agent,
                  env: Rls3Env, collector: EpisodeCollector, writer: Any) -> None:
        self._phase(0, "validate")
        t = time.perf_counter()
        v = self._evaluate(vlm, val)
        tv = time.perf_counter() - t
        self._phase(0, "test")
        t = time.perf_counter()
        te = self._evaluate(vlm, test)
        tt = time.perf_counter() - t
        self.state.val_scores = [v["score"]]
        record = self._record_base(0)
        record.update(val=v, val_points=[{"k": 0, **v}], test=te,
                      time_s={"validate": tv, "test": tt, "total": tv + tt},
                      early_stopping={"best_iteration": 0, "best_score": v["score"],
                                      "since_best": 0, "stop": False})
        log.info("iteration 0 (before fine-tuning): val %.4f, test %.4f", v["score"], te["score"])
        self._tb(writer, record)
        self._append_metrics(record)
        if self.cfg.loop.keep_best:
            self._save_best(vlm)
        self._checkpoint(vlm, agent, env, collector)

    def _record_base(self, i: int) -> dict[str, Any]:
        s, cfg = self.state, self.cfg
        return {"iteration": i, "agent": cfg.agent.name, "vlm": cfg.vlm.name, "seed": cfg.seed,
                "preset": cfg.preset, "time": datetime.now().isoformat(timespec="seconds"),
                "cum_steps": s.cum_steps, "cum_valid": s.cum_valid,
                "cum_yield": s.cum_valid / s.cum_steps if s.cum_steps else None,
                "cum_episodes": s.cum_episodes, "finetune_steps_cum": s.finetune_steps,
                "cum_terms_generated": dict(sorted(s.cum_terms.items()))}

    def _iteration(self, i: int, vlm: Any, agent: Agent, env: Rls3Env,
                   collector: EpisodeCollector, val: list[Sample], test: list[Sample],
                   writer: Any) -> dict[str, Any]:
        cfg, s = self.cfg, self.state
        times: dict[str, float] = {}
        t_iter = time.perf_counter()
        collector.start()
        collector.last_val = s.val_scores[-1] if s.val_scores else None
        n_iter = "" if cfg.loop.budget else f"/{cfg.loop.iterations}"
        self._phase(i, "collect")
        t = time.perf_counter()
        with progress_bar(total=cfg.loop.episodes * cfg.env.t0, desc=f"iter {i}{n_iter} collect",
                          unit="frame", enabled=cfg.progress) as bar:
            collector.bar = bar
            bar.set_postfix(collector.postfix(), refresh=False)
            try:
                agent.collect(cfg.loop.episodes, _iteration_seed(cfg.seed, i), collector.on_step)
            finally:
                collector.bar = None
        collect_s = time.perf_counter() - t
        times["feedback"] = collector.feedback_s
        times["generate"] = collect_s - collector.feedback_s
        batch = list(collector.batch)
        s.cum_steps += collector.steps
        s.cum_valid += collector.valid
        s.cum_episodes += collector.episodes
        s.cum_truncated += collector.truncated
        generated_terms = term_counts(collector.generated)
        for k, v in generated_terms.items():
            s.cum_terms[k] = s.cum_terms.get(k, 0) + v
        if cfg.loop.save_batches:
            self._phase(i, "save_batch")
            t = time.perf_counter()
            write_dataset(self.run_dir / "data" / f"iter_{i:04d}", batch,
                          info={"kind": "finetune-batch", "iteration": i, "agent": cfg.agent.name},
                          overwrite=True)
            times["save_batch"] = time.perf_counter() - t
        # fine-tune K epochs/steps on the new batch (+ replayed samples), validating after every F
        stored = len(self.replay) if self.replay is not None else 0
        replayed = self.replay.draw() if self.replay is not None else []
        ft_set = batch + replayed
        groups = [NEW] * len(batch) + [REPLAYED] * len(replayed)
        losses: list[float] = []
        group_losses: list[dict[int, float]] = []
        val_points: list[dict[str, Any]] = []
        times["finetune"] = times["validate"] = 0.0
        done_k = 0
        for point in cfg.loop.validation_points:
            self._phase(i, "finetune")
            t = time.perf_counter()
            losses += [float(x) for x in vlm.finetune(ft_set, point - done_k, groups=groups)]
            group_losses += list(vlm.last_group_losses)
            times["finetune"] += time.perf_counter() - t
            done_k = point
            self._phase(i, "validate")
            t = time.perf_counter()
            val_points.append({"k": point, **self._evaluate(vlm, val)})
            times["validate"] += time.perf_counter() - t
        s.finetune_steps += len(losses)
        if self.replay is not None:
            self.replay.add(i, batch)
            s.replay = self.replay.state()
        self._phase(i, "test")
        t = time.perf_counter()
        te = self._evaluate(vlm, test)
        times["test"] = time.perf_counter() - t
        v = val_points[-1]
        s.val_scores.append(float(v["score"]))
        s.iteration = i
        s.env_episode = env.episode
        times["total"] = time.perf_counter() - t_iter
        rec = self._record_base(i)
        j2 = collector.j2
        rec.update({
            "steps": collector.steps, "valid": collector.valid,
            "yield": collector.valid / collector.steps if collector.steps else None,
            "episodes": collector.episodes, "truncated_episodes": collector.truncated,
            "feedback_j2": float(np.mean(j2)) if j2 else None, "feedback_j2_episodes": j2,
            "feedback_reward": cfg.loop.beta * float(np.mean(j2)) if j2 else None,
            **collector.hardness_fields(),
            "batch_size": len(batch),
            "replay_stored": stored, "replayed": len(replayed), "finetune_set": len(ft_set),
            "finetune_losses": losses,
            "finetune_loss": float(np.mean(losses)) if losses else None,
            **_group_loss_fields(group_losses, len(losses)),
            "val": {k: v[k] for k in v if k != "k"}, "val_points": val_points, "test": te,
            "terms_generated": generated_terms, "terms_batch": term_counts(batch),
            "complexity_generated": complexity_counts(collector.generated),
            "complexity_batch": complexity_counts(batch),
            "scenes_valid": dict(sorted(collector.scenes.items())),
            "samples_per_s": collector.steps / times["generate"] if times["generate"] > 0 else None,
            "time_s": times, "elapsed_s": None,
        })
        if cfg.env.workers > 1:  # (absent at N = 1: its records stay as they were)
            rec.update(workers=cfg.env.workers, abandoned_episodes=collector.abandoned_episodes)
        hard = rec["hardness_mean"]
        log.info("iteration %d: %d steps, %d valid (yield %.2f), J2 %s, hardness %s, batch %d, "
                 "loss %s, val %.4f, test %.4f; %.1fs (%.1f steps/s)", i, collector.steps,
                 collector.valid, rec["yield"] or 0.0,
                 f"{rec['feedback_j2']:.4g}" if j2 else "-",
                 f"{hard:.4g}" if hard is not None else "-", len(batch),
                 f"{rec['finetune_loss']:.4f}" if losses else "-", v["score"], te["score"],
                 times["total"], rec["samples_per_s"] or 0.0)
        return rec

    def _stop_check(self, rec: dict[str, Any]) -> None:
        cfg, s = self.cfg, self.state
        es = early_stopping(s.val_scores, cfg.early_stopping.patience,
                            cfg.early_stopping.min_iterations, cfg.early_stopping.min_delta)
        rec["early_stopping"] = {"best_iteration": es.best_iteration, "best_score": es.best_score,
                                 "since_best": es.since_best, "stop": es.stop}
        rec["elapsed_s"] = s.elapsed_s
        if cfg.loop.keep_best and es.best_iteration == s.iteration:
            self._save_best(self.vlm)
        reason = None
        if cfg.loop.budget > 0:
            used = s.cum_steps if cfg.loop.budget_unit == "steps" else s.cum_valid
            if used >= cfg.loop.budget:
                reason = "budget"
        elif cfg.early_stopping.enabled and es.stop:
            reason = "early_stopping"
            log.info("early stopping: no improvement over %.4f (iteration %d) for %d iterations",
                     es.best_score, es.best_iteration, es.since_best)
        if reason is None and cfg.loop.budget == 0 and s.iteration >= cfg.loop.iterations:
            reason = "max_iterations"
        s.stop_reason = reason
        rec["stop_reason"] = reason

    def _save_best(self, vlm: Any) -> None:
        final = self.run_dir / BEST_VLM
        tmp = self.run_dir / f".{BEST_VLM}.tmp-{uuid.uuid4().hex[:8]}"
        with saving(tmp, self.run_dir):
            vlm.save(tmp)
            (tmp / "iteration.json").write_text(json.dumps({"iteration": self.state.iteration}))
            write_manifest(tmp)
            replace_folder(tmp, final)

    def _append_metrics(self, rec: dict[str, Any]) -> None:
        mf = self.run_dir / METRICS_FILE
        with open(mf, "a") as f:
            f.write(json.dumps(_jsonable(rec)) + "\n")
            f.flush()
            os.fsync(f.fileno())
        self.state.metrics_bytes = mf.stat().st_size

    def _checkpoint(self, vlm: Any, agent: Agent, env: Rls3Env,
                    collector: EpisodeCollector) -> None:
        i = self.state.iteration
        self._phase(i, "checkpoint")
        t = time.perf_counter()
        ck = self.run_dir / CHECKPOINTS
        ck.mkdir(exist_ok=True)
        for stale in ck.glob(".tmp-*"):
            shutil.rmtree(stale, ignore_errors=True)
        tmp = ck / f".tmp-{uuid.uuid4().hex[:8]}"
        name = f"iter_{i:04d}"
        final = ck / name
        with saving(tmp, self.run_dir):
            tmp.mkdir()
            vlm.save(tmp / "vlm")
            agent.save(tmp / "agent")
            self.state.env_episode = env.episode
            if collector.norm is not None:
                self.state.reward_norm = collector.norm.state()
            rngs = {"python": random.getstate(), "numpy": np.random.get_state(),
                    "torch": torch.get_rng_state(), "loop": collector.rng.bit_generator.state,
                    "vlm": _vlm_rng_get(vlm)}
            with open(tmp / RNG_FILE, "wb") as f:
                pickle.dump(rngs, f)
            (tmp / STATE_FILE).write_text(json.dumps(self.state.to_dict(), indent=1))
            write_manifest(tmp)
            if final.exists():  # left by a crash between rename and commit; LATEST is older
                shutil.rmtree(final)
            os.replace(tmp, final)
            atomic_write(ck / LATEST_FILE, json.dumps({"dir": name, "iteration": i}))
        for old in ck.glob("iter_*"):
            if old.name != name:
                shutil.rmtree(old, ignore_errors=True)
        self.ckpt = final
        log.debug("checkpoint %s written in %.1fs", final, time.perf_counter() - t)

    def _tb(self, writer: Any, rec: dict[str, Any]) -> None:
        if writer is None:
            return
        i = rec["iteration"]
        for split in ("val", "test"):
            m = rec.get(split) or {}
            if m.get("score") is not None:
                writer.add_scalar(f"{split}/score", m["score"], i)
            if m.get("loss") is not None:
                writer.add_scalar(f"{split}/loss", m["loss"], i)
            for t, v in (m.get("per_term") or {}).items():
                writer.add_scalar(f"{split}/term/{t}", v, i)
            for c, v in (m.get("per_complexity") or {}).items():
                writer.add_scalar(f"{split}/complexity/{c}", v, i)
        for key in ("cum_steps", "cum_valid", "yield", "cum_yield", "feedback_j2",
                    "finetune_loss", "samples_per_s", "truncated_episodes", "yield_distinct",
                    "move_median", "hardness_mean", "extrinsic_mean"):
            if rec.get(key) is not None:
                writer.add_scalar(f"data/{key}", rec[key], i)
        for phase, v in (rec.get("time_s") or {}).items():
            writer.add_scalar(f"time/{phase}", v, i)
        n0 = rec.get("finetune_steps_cum", 0) - len(rec.get("finetune_losses") or [])
        for j, loss in enumerate(rec.get("finetune_losses") or []):
            writer.add_scalar("finetune/step_loss", loss, n0 + j + 1)
        writer.flush()


#: `finetune` group labels of the new batch and of replayed samples
NEW, REPLAYED = 0, 1


def _group_loss_fields(group_losses: list[dict[int, float]], n_steps: int) -> dict[str, Any]:
    """Per-step losses of the new batch and of the replayed samples (None where a step's
    mini-batch had none of them, or where the adapter does not report them), and their
    means."""
    if len(group_losses) != n_steps:
        group_losses = [{} for _ in range(n_steps)]
    out: dict[str, Any] = {}
    for key, g in (("new", NEW), ("replay", REPLAYED)):
        per_step = [gl.get(g) for gl in group_losses]
        vals = [v for v in per_step if v is not None]
        out[f"finetune_losses_{key}"] = per_step
        out[f"finetune_loss_{key}"] = float(np.mean(vals)) if vals else None
    return out


def _jsonable(x: Any) -> Any:
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, (np.floating, float)):
        f = float(x)
        return f if math.isfinite(f) else None
    if isinstance(x, np.integer):
        return int(x)
    return x


# ------------------------------------------------------------------------------------ entry points
def run(cfg: Config, run_dir: str | Path | None = None,
        on_phase: PhaseHook | None = None, parallel: DataParallel | None = None) -> RunResult:
    """Start a new run of `cfg` (resolving `loop.budget_from`) and run it to the end.
    `parallel`: the process group when this is the main process of a multi-process launch (the
    others run `serve_vlm`); only this process writes the run directory."""
    if cfg.loop.budget_from and cfg.loop.budget == 0:
        cfg = cfg.override({"loop.budget": budget_from_run(cfg.loop.budget_from,
                                                            cfg.loop.budget_unit)})
    cfg = cfg.resolved()  # the run records absolute paths: it resumes the same from anywhere
    check_runnable(cfg)   # nothing is written for a config that cannot run
    check_launch(cfg, parallel)
    d = create_run(cfg, run_dir)
    log.info("run directory %s", d)
    return Loop(d, on_phase=on_phase, parallel=parallel).run()


def resume(run_dir: str | Path, on_phase: PhaseHook | None = None,
           progress: bool | None = None, parallel: DataParallel | None = None) -> RunResult:
    """Continue a run from its last committed checkpoint (or start it, if it has none)."""
    return Loop(run_dir, on_phase=on_phase, progress=progress, parallel=parallel).run()

