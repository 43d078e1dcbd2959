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

With `loop.overlap` (a departure) step 1 of iteration i + 1 runs on this thread (the scene's: its
GL context lives here) while steps 2-3 of iteration i run on a second one, so the scene and the
fine-tuning share the cores; the agent's feedback then comes from a twin of the VLM as it was
before fine-tuning i (`feedback_twin`: frozen weights shared, trainable ones copied). The
checkpoint after iteration i holds the collection i + 1 made beside it (`RunState.pending`, its
batch saved in data/), so a resume continues bit for bit; when the run stops at i (early
stopping) that collection is dropped.

"Generated samples" (the paper's x-axis and the budget) are env steps, valid or not: every step
proposes a layout, as every Unity step produced a frame to check; `cum_valid` counts valid frames.
Iteration 0 is the untouched VLM (validation and test before any fine-tuning).

The run directory (format, metrics, checkpoints) is `rls3.rundir`, the per-episode bookkeeping
`rls3.collector`, the stopping rule `rls3.stopping`, the random streams `rls3.seeding`.
"""

from __future__ import annotations

import logging
import os
import shutil
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import Any, Generic, TypeVar, cast

import numpy as np
import torch

from rls3 import runtime
from rls3.agents import Agent, agent_spec, build_agent, restore_agent, torch_threads
from rls3.backends import backend_identity, make_backend
from rls3.collector import EpisodeCollector, RunningNorm
from rls3.config import Config
from rls3.data import (DatasetError, complexity_counts, prepare_fixed_sets, read_dataset,
                       term_counts, write_dataset)
from rls3.env import Rls3Env
from rls3.finetune import NEW, REPLAYED, Finetuner, FinetuneRecord
from rls3.manifest import MANIFEST_FILE, sha256, write_manifest
from rls3.preflight import check_runnable
from rls3.pretraining import BackgroundPretraining, background_possible
from rls3.progress import progress_bar
from rls3.replay import ReplayError, SampleReplay
from rls3.rngstate import RngStates
from rls3.rundir import (CHECKPOINTS, CONFIG_FILE, LOG_FILE, METRICS_FILE, RunDirError, RunLock,
                         append_metrics, batch_problems, check_resumable, check_run_paths,
                         create_run, latest_checkpoint, load_run_config, loading, lock_run,
                         read_checkpoint_state, read_metrics, resolve_budget, save_best_vlm,
                         truncate_metrics, write_checkpoint)
from rls3.sample import Sample
from rls3.seeding import episode_seed, seed_globals, stream_rng
from rls3.stopping import early_stopping
from rls3.vlm.base import VLM
from rls3.vlm.distributed import DataParallel
from rls3.vlm.launch import build_vlm_from_config, check_launch
from rls3.workers import FeedbackVecEnv, make_workers

log = logging.getLogger(__name__)

PhaseHook = Callable[[int, str], None]
T = TypeVar("T")


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
    #: terms of every frame captioned so far (`EpisodeCollector.term_counts`, loop.term_balance)
    term_counts: dict[str, int] = field(default_factory=dict)
    #: iteration -> SHA-256 of its saved batch's manifest (data/iter_NNNN/manifest.json), checked
    #: when replay reads the batch back on resume
    batch_digests: dict[str, str] = field(default_factory=dict)
    #: loop.overlap: the collection that ran beside this checkpoint's fine-tuning, whose own
    #: fine-tuning comes next ({"iteration": i, "summary": `Collected.summary`}; its batch is
    #: data/iter_NNNN), or None
    pending: dict[str, Any] | None = None

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


@dataclass
class Collected:
    """Step 1 of an iteration done: its fine-tuning batch and what its record takes from the
    collection (`summary`: counts, feedback, times; plain JSON, so that a checkpoint taken
    before the batch's fine-tuning, `loop.overlap`, can hold it)."""

    iteration: int
    batch: list[Sample]
    summary: dict[str, Any]


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
        self.replay: SampleReplay | None = None
        # the env's image size reaches a backend that renders at its own size; its logs go here
        self.backend_cfg = self.cfg.backend_config(log_folder=self.run_dir / "backend_logs")
        self.backend_key = backend_identity(self.cfg.backend)  # caches: build identity too
        # one owner per run directory, from before its checkpoint is read until `run` ends
        self._lock: RunLock | None = lock_run(self.run_dir)
        try:
            self._read_checkpoint()
        except BaseException:
            self.release()
            raise

    def _read_checkpoint(self) -> None:
        """The run's last committed checkpoint and counters (none: a fresh start), checked
        against its metrics and config before anything is written."""
        self.ckpt = latest_checkpoint(self.run_dir)  # verified before anything is written
        check_resumable(self.run_dir, self.ckpt)
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
            self.state = RunState.from_dict(read_checkpoint_state(self.run_dir, self.ckpt))
            if self.cfg.loop.replay.enabled and self.state.replay is None:
                raise RunDirError(f"checkpoint {str(self.ckpt)!r} has no fine-tuning replay "
                                  f"state but the run's config has loop.replay on (was "
                                  f"{CONFIG_FILE} edited?); nothing was changed")

    def release(self) -> None:
        """Give up the run directory (`run` does when it ends; so does the process's end)."""
        if self._lock is not None:
            self._lock.release()
            self._lock = None

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
        for split, folder, _ in prepare_fixed_sets(cfg, backend_config=self.backend_cfg,
                                                   progress=cfg.progress):
            out.append(read_dataset(folder, progress=cfg.progress))
            log.info("%s set: %s (%d samples)", split, folder, len(out[-1]))
        return out[0], out[1]

    def run(self) -> RunResult:
        """Run (or continue) to the end; returns the run's metrics records. The run directory is
        released however this ends."""
        try:
            return self._run_logged()
        finally:
            self.release()

    def _run_logged(self) -> RunResult:
        """`_run` with run.log attached, and the reason recorded there when it stops early."""
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
        seed_globals(cfg.seed)
        pre = None
        if self.ckpt is None and background_possible(cfg.agent, self.backend_cfg):
            pre = BackgroundPretraining(self.backend_cfg, cfg.env_config, cfg.agent, cfg.seed,
                                        self.backend_key)
        try:
            return self._run_started(t_start, pre)
        finally:
            if pre is not None:
                pre.stop()

    def _run_started(self, t_start: float, pre: BackgroundPretraining | None) -> RunResult:
        """The run from its data sets on; `pre`: SAC pre-training running in a child process,
        waited for when the agent is first needed (after iteration 0's evaluation)."""
        cfg = self.cfg
        val, test = self._datasets()
        vlm = build_vlm_from_config(cfg, parallel=self.parallel)
        self.vlm = vlm
        rng = stream_rng(cfg.seed, "samples")
        use_feedback = agent_spec(cfg.agent.name).learns_from_feedback or cfg.loop.random_feedback
        norm = RunningNorm(self.state.reward_norm) if cfg.loop.reward_norm == "running" else None
        collector = EpisodeCollector(vlm, rng, cfg.loop.eta, cfg.loop.beta, cfg.env.t0,
                                     feedback=use_feedback, mode=cfg.loop.feedback, norm=norm,
                                     signal=cfg.loop.signal, batch=cfg.loop.feedback_batch,
                                     keep=cfg.loop.keep, caption_pair=cfg.loop.caption_pair,
                                     term_balance=cfg.loop.term_balance,
                                     term_counts=self.state.term_counts)
        self.finetuner = Finetuner(vlm, cfg.loop, cfg.seed)
        self.replay = self.finetuner.replay
        if self.replay is not None and self.ckpt is None:
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
                # iteration 0 needs no agent: evaluated first, beside background pre-training
                base = self._evaluate_baseline(vlm, val, test)
                if pre is not None:
                    pre.wait(progress=cfg.progress)
                agent = build_agent(cfg.agent.name, env, cfg.agent, cfg.seed, self.backend_key,
                                    progress=cfg.progress, workers=workers)
                # whatever setup consumed (pretraining or a cache hit, data generation), the
                # first iteration starts from the same seeded RNG states
                seed_globals(cfg.seed)
            else:
                agent = self._restore(env, vlm, collector, workers)
            # metrics of a half-finished iteration are dropped (it is redone identically)
            if truncate_metrics(self.run_dir, self.state.metrics_bytes):
                log.info("dropping metrics of the unfinished iteration %d",
                         self.state.iteration + 1)
            if cfg.tensorboard:
                from torch.utils.tensorboard import SummaryWriter

                writer = SummaryWriter(str(self.run_dir / "tb"),
                                       purge_step=self.state.iteration + 1 if self.ckpt else 0)
            if self.ckpt is None:
                self._baseline(base, vlm, agent, env, collector, writer)
            self._iterations(vlm, agent, env, collector, val, test, writer,
                             elapsed0=self.state.elapsed_s - (time.perf_counter() - t_start),
                             t_start=t_start, use_feedback=use_feedback)
            log.info("run finished after %d iterations (%s): %s", self.state.iteration,
                     self.state.stop_reason, self.run_dir)
        except BaseException:
            _close_all((writer, workers, backend), failing=True)
            raise
        _close_all((writer, workers, backend), failing=False)
        return RunResult(self.run_dir, self.state.iteration, self.state.stop_reason,
                         read_metrics(self.run_dir))

    def _iterations(self, vlm: VLM, agent: Agent, env: Rls3Env, collector: EpisodeCollector,
                    val: list[Sample], test: list[Sample], writer: Any, *, elapsed0: float,
                    t_start: float, use_feedback: bool) -> None:
        """Iterations until a stop: each one's record, stopping check and checkpoint."""
        cfg = self.cfg
        pending = self._pending()
        if cfg.loop.overlap and use_feedback:   # scores feedback while `vlm` fine-tunes
            collector.vlm = vlm.feedback_twin()  # type: ignore[attr-defined]
        while self.state.stop_reason is None:
            i = self.state.iteration + 1
            if cfg.loop.overlap:
                record, pending = self._overlapped(i, vlm, agent, collector, val, test, pending)
            else:
                record = self._iteration(i, vlm, agent, collector, val, test)
            self.state.elapsed_s = elapsed0 + time.perf_counter() - t_start
            self._stop_check(record)
            if pending is not None and self.state.stop_reason is not None:
                self._drop(pending)
                pending = None
            self.state.pending = (None if pending is None else
                                  {"iteration": pending.iteration, "summary": pending.summary})
            self._tb(writer, record)
            self.state.metrics_bytes = append_metrics(self.run_dir, record)
            self._checkpoint(vlm, agent, env, collector)
            self._phase(i, "done")

    # -- pieces ------------------------------------------------------------------------------
    def _restore(self, env: Rls3Env, vlm: VLM, collector: EpisodeCollector,
                 workers: FeedbackVecEnv | None = None) -> Agent:
        assert self.ckpt is not None
        cfg = self.cfg
        log.info("resuming %s from %s (iteration %d)", self.run_dir, self.ckpt.name,
                 self.state.iteration)
        with loading(self.ckpt, self.run_dir):
            vlm.load(self.ckpt / "vlm")
            agent = restore_agent(cfg.agent.name, workers if workers is not None else env,
                                  self.ckpt / "agent", cfg.agent, cfg.seed)
            RngStates.read(self.ckpt).restore(collector.rng, vlm)
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
        """Iteration `iteration`'s saved batch, read back for replay after checking it against
        the digest the checkpoint recorded (a replaced image would change the results)."""
        folder = self.run_dir / "data" / f"iter_{iteration:04d}"
        if not folder.is_dir():
            raise ReplayError(f"{str(folder)!r} is missing (replayed samples are read back from "
                              f"the saved batches; do not delete data/ of a run to be resumed)")
        bad = batch_problems(folder, self.state.batch_digests.get(str(iteration)))
        if bad:
            raise ReplayError(f"{str(folder)!r} is not the batch this run saved ("
                              f"{', '.join(bad)}): replaying it would change the results; "
                              f"nothing was changed. Restore data/ from a copy of the run, or "
                              f"start a new run")
        try:
            return read_dataset(folder)
        except DatasetError as e:
            raise ReplayError(str(e)) from e

    def _evaluate(self, vlm: VLM, samples: list[Sample]) -> dict[str, Any]:
        return vlm.evaluate(samples).to_dict()

    def _evaluate_baseline(self, vlm: VLM, val: list[Sample],
                           test: list[Sample]) -> dict[str, Any]:
        """Iteration 0's validation and test scores (the VLM before fine-tuning) and times."""
        self._phase(0, "validate")
        t = time.perf_counter()
        v = self._evaluate(vlm, val)
        tv = time.perf_counter() - t
        self._phase(0, "test")
        t = time.perf_counter()
        te = self._evaluate(vlm, test)
        tt = time.perf_counter() - t
        log.info("iteration 0 (before fine-tuning): val %.4f, test %.4f", v["score"], te["score"])
        return {"val": v, "test": te, "time_s": {"validate": tv, "test": tt, "total": tv + tt}}

    def _baseline(self, base: dict[str, Any], vlm: VLM, agent: Agent, env: Rls3Env,
                  collector: EpisodeCollector, writer: Any) -> None:
        """Iteration 0's record (`_evaluate_baseline`'s scores) and first checkpoint."""
        v, te = base["val"], base["test"]
        self.state.val_scores = [v["score"]]
        record = self._record_base(0)
        record.update(val=v, val_points=[{"k": 0, **v}], test=te,
                      time_s=base["time_s"],
                      early_stopping={"best_iteration": 0, "best_score": v["score"],
                                      "since_best": 0, "stop": False})
        self._tb(writer, record)
        self.state.metrics_bytes = append_metrics(self.run_dir, record)
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

    def _iteration(self, i: int, vlm: VLM, agent: Agent, collector: EpisodeCollector,
                   val: list[Sample], test: list[Sample]) -> dict[str, Any]:
        """Steps 1-3 of iteration `i` (see the module docstring) up to its metrics record, which
        it returns: collect, save the batch, fine-tune and validate, test, count."""
        t_iter = time.perf_counter()
        collected = self._collect(i, agent, collector)
        ft, te, times = self._train(i, vlm, collected, val, test)
        return self._finish(collected, ft, te, times, t_iter)

    def _overlapped(self, i: int, vlm: VLM, agent: Agent, collector: EpisodeCollector,
                    val: list[Sample], test: list[Sample], pending: Collected | None
                    ) -> tuple[dict[str, Any], Collected | None]:
        """Iteration `i` with `loop.overlap`: its fine-tuning, validation and test on a second
        thread while this one (the scene's) collects iteration i + 1, whose feedback comes from
        the VLM as it was before (`collector.vlm`, a twin, follows `vlm` first). `pending`:
        iteration i's collection, made beside iteration i - 1 (None: collected now, alone).
        Returns iteration i's record and iteration i + 1's collection (None: the run ends at
        i)."""
        t_iter = time.perf_counter()
        twin = collector.vlm if collector.vlm is not vlm else None
        if twin is not None:
            twin.follow(vlm)  # type: ignore[attr-defined]
        if pending is None:
            pending = self._collect(i, agent, collector)
        if pending.iteration != i:  # a checkpoint that does not fit its state: a bug
            raise RuntimeError(f"collection of iteration {pending.iteration} pending at {i}")
        current = pending
        threads = torch.get_num_threads()   # a new thread starts at OpenMP's default count

        def train() -> tuple[FinetuneRecord, dict[str, Any], dict[str, float]]:
            with torch_threads(threads):
                return self._train(i, vlm, current, val, test)

        job = _Background(train, name=f"finetune-{i}")
        upcoming = None
        try:
            if self._continues_after(i, current.summary):
                upcoming = self._collect(i + 1, agent, collector)
        except KeyboardInterrupt:
            raise   # the fine-tuning thread is a daemon: the process may end at once
        except BaseException:
            job.wait()  # no thread left changing the VLM behind the caller's back
            raise
        ft, te, times = job.result()
        return self._finish(current, ft, te, times, t_iter), upcoming

    def _continues_after(self, i: int, summary: dict[str, Any]) -> bool:
        """Whether an iteration i + 1 can follow iteration `i` (collected as `summary`): not
        after the last iteration or once the budget is used (early stopping is known only after
        validation: a collection made for nothing is dropped, `_drop`)."""
        cfg = self.cfg
        if cfg.loop.budget > 0:
            return self._budget_used(summary) < cfg.loop.budget
        return i < cfg.loop.iterations

    def _budget_used(self, summary: dict[str, Any] | None = None) -> int:
        """Samples generated so far in `loop.budget_unit`, plus a collection not yet counted."""
        s, extra = self.state, summary or {"steps": 0, "valid": 0}
        if self.cfg.loop.budget_unit == "steps":
            return s.cum_steps + extra["steps"]
        return s.cum_valid + extra["valid"]

    def _drop(self, collected: Collected) -> None:
        """Forget a collection no fine-tuning will use (the run stopped beside it): its saved
        batch and digest go; its steps stay in the agent's replay buffer."""
        i = collected.iteration
        log.info("run stopped at iteration %d: the collection of iteration %d made beside its "
                 "fine-tuning is dropped", i - 1, i)
        self.state.batch_digests.pop(str(i), None)
        shutil.rmtree(self.run_dir / "data" / f"iter_{i:04d}", ignore_errors=True)

    def _pending(self) -> Collected | None:
        """The collection a checkpoint holds for its next fine-tuning (`loop.overlap`), its
        batch read back from data/, or None."""
        p = self.state.pending
        if p is None:
            return None
        try:
            batch = self._saved_batch(int(p["iteration"]))
        except ReplayError as e:
            raise RunDirError(f"{str(self.run_dir)!r}: cannot read back the batch collected "
                              f"for the next fine-tuning: {e}") from e
        return Collected(int(p["iteration"]), batch, dict(p["summary"]))

    def _train(self, i: int, vlm: VLM, collected: Collected, val: list[Sample],
               test: list[Sample]) -> tuple[FinetuneRecord, dict[str, Any], dict[str, float]]:
        """Steps 2-3 of iteration `i` on its collection: fine-tune and validate, test; returns
        the fine-tuning record, the test metrics and the iteration's times so far."""
        times: dict[str, float] = dict(collected.summary["time_s"])
        ft = self._finetune(i, vlm, collected.batch, val, times)
        te = self._test(i, vlm, test, times)
        return ft, te, times

    def _finish(self, collected: Collected, ft: FinetuneRecord, te: dict[str, Any],
                times: dict[str, float], t_iter: float) -> dict[str, Any]:
        """Iteration `collected.iteration` done: the run's counters and its metrics record."""
        s, i = self.state, collected.iteration
        self._count(collected.summary)
        s.val_scores.append(float(ft.val_points[-1]["score"]))
        s.iteration = i
        times["total"] = time.perf_counter() - t_iter
        rec = self._record(i, collected, ft, te, times)
        _log_iteration(rec)
        return rec

    def _collect(self, i: int, agent: Agent, collector: EpisodeCollector) -> Collected:
        """Step 1: the agent runs E episodes, the collector keeping their batch and feedback;
        times its feedback and the rest (generation); the batch is saved."""
        cfg, s = self.cfg, self.state
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
                agent.collect(cfg.loop.episodes, episode_seed(cfg.seed, i), collector.on_step,
                              collector if collector.deferring else None)
            finally:
                collector.bar = None
        if collector.queued:    # an agent that returned without flushing: a bug, not bad input
            raise RuntimeError(f"{collector.queued} frames were left unscored by the agent")
        collect_s = time.perf_counter() - t
        times = {"feedback": collector.feedback_s, "generate": collect_s - collector.feedback_s}
        summary = {
            "steps": collector.steps, "valid": collector.valid, "episodes": collector.episodes,
            "truncated": collector.truncated, "j2": list(collector.j2),
            "hardness": collector.hardness_fields(),
            "terms_generated": term_counts(collector.generated),
            "complexity_generated": complexity_counts(collector.generated),
            "scenes_valid": dict(sorted(collector.scenes.items())),
            "abandoned_episodes": collector.abandoned_episodes, "time_s": times}
        batch = list(collector.batch)
        if cfg.loop.save_batches:
            self._save_batch(i, batch, times)
        return Collected(i, batch, summary)

    def _count(self, summary: dict[str, Any]) -> None:
        """The run's counters after an iteration's collection (`Collected.summary`)."""
        s = self.state
        s.cum_steps += summary["steps"]
        s.cum_valid += summary["valid"]
        s.cum_episodes += summary["episodes"]
        s.cum_truncated += summary["truncated"]
        for k, v in summary["terms_generated"].items():
            s.cum_terms[k] = s.cum_terms.get(k, 0) + v

    def _save_batch(self, i: int, batch: list[Sample], times: dict[str, float]) -> None:
        """The iteration's fine-tuning batch as data/iter_NNNN, its manifest's digest recorded
        for the checkpoint (replay reads the batch back on resume)."""
        self._phase(i, "save_batch")
        t = time.perf_counter()
        folder = write_dataset(self.run_dir / "data" / f"iter_{i:04d}", batch,
                               info={"kind": "finetune-batch", "iteration": i,
                                     "agent": self.cfg.agent.name}, overwrite=True)
        write_manifest(folder)
        self.state.batch_digests[str(i)] = sha256(folder / MANIFEST_FILE)
        times["save_batch"] = time.perf_counter() - t

    def _finetune(self, i: int, vlm: VLM, batch: list[Sample], val: list[Sample],
                  times: dict[str, float]) -> FinetuneRecord:
        """Step 2: fine-tune K epochs/steps on the new batch (+ replayed samples), validating
        after every F."""
        ft = self.finetuner.run(i, batch, lambda: self._evaluate(vlm, val),
                                on_phase=lambda name: self._phase(i, name))
        times["finetune"], times["validate"] = ft.finetune_s, ft.validate_s
        self.state.finetune_steps += len(ft.losses)
        if self.replay is not None:
            self.state.replay = self.replay.state()
        return ft

    def _test(self, i: int, vlm: VLM, test: list[Sample],
              times: dict[str, float]) -> dict[str, Any]:
        """Step 3: the fine-tuned VLM's test metrics."""
        self._phase(i, "test")
        t = time.perf_counter()
        te = self._evaluate(vlm, test)
        times["test"] = time.perf_counter() - t
        return te

    def _record(self, i: int, collected: Collected, ft: FinetuneRecord, te: dict[str, Any],
                times: dict[str, float]) -> dict[str, Any]:
        """Iteration `i`'s metrics record (before `_stop_check` adds the stopping fields): what
        was generated and kept, the feedback, fine-tuning, validation and test, the times."""
        cfg, c, batch = self.cfg, collected.summary, collected.batch
        j2, losses, v = c["j2"], ft.losses, ft.val_points[-1]
        rec = self._record_base(i)
        rec.update({
            "steps": c["steps"], "valid": c["valid"],
            "yield": c["valid"] / c["steps"] if c["steps"] else None,
            "episodes": c["episodes"], "truncated_episodes": c["truncated"],
            "feedback_j2": float(np.mean(j2)) if j2 else None, "feedback_j2_episodes": j2,
            "feedback_reward": cfg.loop.beta * float(np.mean(j2)) if j2 else None,
            **c["hardness"],
            "batch_size": len(batch),
            "replay_stored": ft.stored, "replayed": ft.replayed, "finetune_set": ft.set_size,
            "finetune_losses": losses,
            "finetune_loss": float(np.mean(losses)) if losses else None,
            **_group_loss_fields(ft.group_losses, len(losses)),
            "val": {k: v[k] for k in v if k != "k"}, "val_points": ft.val_points, "test": te,
            "terms_generated": c["terms_generated"], "terms_batch": term_counts(batch),
            "complexity_generated": c["complexity_generated"],
            "complexity_batch": complexity_counts(batch),
            "scenes_valid": c["scenes_valid"],
            "samples_per_s": c["steps"] / times["generate"] if times["generate"] > 0 else None,
            "time_s": times, "elapsed_s": None,
        })
        if ft.lr_factors:  # (absent with a constant learning rate: records stay as they were)
            rec["finetune_lr_factors"] = ft.lr_factors
        if cfg.env.workers > 1:  # (absent at N = 1: its records stay as they were)
            rec.update(workers=cfg.env.workers, abandoned_episodes=c["abandoned_episodes"])
        if cfg.loop.overlap:  # (absent without: records stay as they were)
            rec["overlap"] = True
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
            if self._budget_used() >= cfg.loop.budget:
                reason = "budget"
        elif cfg.early_stopping.enabled and es.stop:
            reason = "early_stopping"
            log.info("early stopping: no improvement over %.4f (iteration %d) for %d iterations",
                     es.best_score, es.best_iteration, es.since_best)
        if reason is None and cfg.loop.budget == 0 and s.iteration >= cfg.loop.iterations:
            reason = "max_iterations"
        s.stop_reason = reason
        rec["stop_reason"] = reason

    def _save_best(self, vlm: VLM) -> None:
        """The VLM as the run's best so far (`best_vlm/`)."""
        save_best_vlm(self.run_dir, self.state.iteration, vlm.save)

    def _checkpoint(self, vlm: VLM, agent: Agent, env: Rls3Env,
                    collector: EpisodeCollector) -> None:
        """Commit the finished iteration's checkpoint: the VLM, the agent, the RNG states and
        the counters (`RunState`), what a resume continues from identically."""
        i = self.state.iteration
        self._phase(i, "checkpoint")
        t = time.perf_counter()
        self.state.env_episode = env.episode
        if collector.norm is not None:
            self.state.reward_norm = collector.norm.state()
        self.state.term_counts = dict(sorted(collector.term_counts.items()))

        def write_parts(folder: Path) -> None:
            vlm.save(folder / "vlm")
            agent.save(folder / "agent")
            RngStates.capture(collector.rng, vlm).write(folder)

        self.ckpt = write_checkpoint(self.run_dir, i, self.state.to_dict(), write_parts)
        log.debug("checkpoint %s written in %.1fs", self.ckpt, time.perf_counter() - t)

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
                    "move_median", "hardness_mean", "extrinsic_mean", "term_rarity_mean"):
            if rec.get(key) is not None:
                writer.add_scalar(f"data/{key}", rec[key], i)
        for phase, v in (rec.get("time_s") or {}).items():
            writer.add_scalar(f"time/{phase}", v, i)
        n0 = rec.get("finetune_steps_cum", 0) - len(rec.get("finetune_losses") or [])
        for j, loss in enumerate(rec.get("finetune_losses") or []):
            writer.add_scalar("finetune/step_loss", loss, n0 + j + 1)
        writer.flush()


def _close_all(resources: Sequence[Any], failing: bool) -> None:
    """Close each resource (None: not made yet). While the run is already failing, a close's
    own error is logged rather than raised: the first error is the one the user must see."""
    first: Exception | None = None
    for r in resources:
        if r is None:
            continue
        try:
            r.close()
        except Exception as e:  # noqa: BLE001 - reported below, after the others are closed
            if failing:
                log.warning("closing %s failed as well: %s: %s", type(r).__name__,
                            type(e).__name__, e)
            elif first is None:
                first = e
    if first is not None:
        raise first


def _log_iteration(rec: dict[str, Any]) -> None:
    """One log line summing up an iteration's record."""
    def g(x: float | None, fmt: str) -> str:
        return format(x, fmt) if x is not None else "-"

    log.info("iteration %d: %d steps, %d valid (yield %.2f), J2 %s, hardness %s, batch %d, "
             "loss %s, val %.4f, test %.4f; %.1fs (%.1f steps/s)", rec["iteration"],
             rec["steps"], rec["valid"], rec["yield"] or 0.0, g(rec["feedback_j2"], ".4g"),
             g(rec["hardness_mean"], ".4g"), rec["batch_size"], g(rec["finetune_loss"], ".4f"),
             rec["val"]["score"], rec["test"]["score"], rec["time_s"]["total"],
             rec["samples_per_s"] or 0.0)


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


# ------------------------------------------------------------------------------------ entry points
def run(cfg: Config, run_dir: str | Path | None = None,
        on_phase: PhaseHook | None = None, parallel: DataParallel | None = None) -> RunResult:
    """Start a new run of `cfg` (resolving `loop.budget_from`) and run it to the end.
    `parallel`: the process group when this is the main process of a multi-process launch (the
    others run `serve_vlm`); only this process writes the run directory."""
    # the run records absolute paths: it resumes the same from anywhere
    cfg = resolve_budget(cfg).resolved()
    check_runnable(cfg)   # nothing is written for a config that cannot run
    check_launch(cfg, parallel)
    check_run_paths(cfg, run_dir)
    d = create_run(cfg, run_dir)
    log.info("run directory %s", d)
    return Loop(d, on_phase=on_phase, parallel=parallel).run()


def resume(run_dir: str | Path, on_phase: PhaseHook | None = None,
           progress: bool | None = None, parallel: DataParallel | None = None) -> RunResult:
    """Continue a run from its last committed checkpoint (or start it, if it has none)."""
    return Loop(run_dir, on_phase=on_phase, progress=progress, parallel=parallel).run()



class _Background(Generic[T]):
    """`fn()` on a daemon thread (`loop.overlap`'s fine-tuning: a Ctrl-C on the main thread
    ends the process without waiting for it); `result` waits, then returns its value or raises
    its exception."""

    def __init__(self, fn: Callable[[], T], name: str) -> None:
        self._value: T | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, args=(fn,), name=name, daemon=True)
        self._thread.start()

    def _run(self, fn: Callable[[], T]) -> None:
        try:
            self._value = fn()
        except BaseException as e:  # noqa: BLE001 - handed to the caller by `result`
            self._error = e

    def wait(self) -> None:
        self._thread.join()

    def result(self) -> T:
        self.wait()
        if self._error is not None:
            raise self._error
        return cast(T, self._value)
