"""What a run's generated data is worth, apart from how its loop used it.

Two offline measures over a finished (or stopped) run directory's saved fine-tuning batches
(`data/iter_NNNN/`, written when `loop.save_batches` is on):

- `dataset_value`: a fresh VLM of the run's config trained on all its kept samples, shuffled
  together, for as many sample passes as the run's loop spent fine-tuning (K epochs over every
  iteration's fine-tuning set), then validated and tested on the run's fixed sets. Comparing it
  with the loop's own final test separates "the agent produced good data" from "the loop used it
  well".
- `replay_schedule`: the run's batches fed to `rls3.finetune.Finetuner` iteration by iteration
  under the run's (or a changed) `loop` config, validating and testing after each iteration. For
  a random-agent run, whose data does not depend on the VLM, this is exactly the loop with that
  schedule; for SAC it shows what another schedule makes of the same samples.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from rls3.config import Config, LoopConfig, VLMConfig
from rls3.data import DatasetError, prepare_fixed_sets, read_dataset
from rls3.finetune import Finetuner
from rls3.progress import progress_bar
from rls3.rundir import RunDirError, load_run_config, read_metrics
from rls3.sample import Sample
from rls3.seeding import seed_globals
from rls3.vlm import get_vlm_spec
from rls3.vlm.base import VLM
from rls3.vlm.launch import build_vlm_from_config

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RunData:
    """A run's config, its finished iterations' metrics and their saved fine-tuning batches."""

    run_dir: Path
    cfg: Config
    records: list[dict[str, Any]]
    batches: list[list[Sample]]

    @property
    def samples(self) -> list[Sample]:
        return [s for b in self.batches for s in b]


def read_run_data(run_dir: str | Path, iterations: int | None = None,
                  progress: bool = False) -> RunData:
    """The run's config, metrics and batches of iterations 1..`iterations` (default: all
    finished ones); RunDirError when a batch is missing or damaged."""
    d = Path(run_dir)
    cfg = load_run_config(d)
    records = [r for r in read_metrics(d) if isinstance(r.get("iteration"), int)
               and r["iteration"] > 0]
    if iterations is not None:
        if iterations < 1:
            raise ValueError(f"iterations must be >= 1, got {iterations!r}")
        records = records[:iterations]
    if not records:
        raise RunDirError(f"{str(d)!r} has no finished iteration: nothing to re-train on")
    batches = []
    for r in records:
        folder = d / "data" / f"iter_{r['iteration']:04d}"
        if not folder.is_dir():
            raise RunDirError(f"{str(folder)!r} is missing: the run did not save its batches "
                              f"(loop.save_batches) or they were deleted")
        try:
            batches.append(read_dataset(folder, progress=progress))
        except DatasetError as e:
            raise RunDirError(f"saved batch {str(folder)!r} is damaged: {e}") from e
    return RunData(d, cfg, records, batches)


def loop_sample_passes(cfg: Config, records: Sequence[dict[str, Any]],
                       batch_size: int = 1) -> int:
    """Sample passes the run's fine-tuning spent: K epochs over each iteration's fine-tuning
    set (CLIP-type), or its optimizer steps times `batch_size` (PaliGemma, whose K counts
    steps; pass the adapter's mini-batch size)."""
    if _counts_steps(cfg):
        return sum(len(r.get("finetune_losses") or []) for r in records) * batch_size
    return sum(int(r.get("finetune_set") or r.get("batch_size") or 0) * cfg.loop.k
               for r in records)


def _counts_steps(cfg: Config) -> bool:
    return get_vlm_spec(cfg.vlm.name).adapter == "paligemma"


def _fixed_sets(cfg: Config, progress: bool) -> tuple[list[Sample], list[Sample]]:
    out = []
    for _, folder, _ in prepare_fixed_sets(cfg, progress=progress):
        out.append(read_dataset(folder, progress=progress))
    return out[0], out[1]


class Trainer:
    """The run's VLM built once, with its fixed sets: every `fresh()` puts it back as built
    (initial weights, a fresh optimizer, the seeded shuffle) while keeping the frozen-prefix
    outputs it computed, so several schedules of one run cost their fine-tuning only. Results
    equal those of a newly built VLM."""

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.val, self.test = _fixed_sets(cfg, cfg.progress)
        seed_globals(cfg.seed)
        self.vlm: VLM = build_vlm_from_config(cfg)
        self.vlm.remember_initial()
        self._rng = self.vlm.rng_state()
        self._used = False

    def fresh(self) -> VLM:
        """The VLM as built (the first call returns it untouched)."""
        if self._used:
            self.vlm.restore_initial()
            if self._rng is not None:       # an adapter without a generator has none to reset
                self.vlm.set_rng_state(self._rng)
        self._used = True
        return self.vlm

    def metrics(self) -> dict[str, Any]:
        return {"val": self.vlm.evaluate(self.val).to_dict(),
                "test": self.vlm.evaluate(self.test).to_dict()}


def dataset_value(run_dir: str | Path, *, iterations: int | None = None,
                  passes: int | None = None, data_dir: str | None = None,
                  test_size: int | None = None, progress: bool = True,
                  trainer: Trainer | None = None) -> dict[str, Any]:
    """Train a fresh VLM of the run's config on all kept samples of iterations
    1..`iterations` for `passes` sample passes (default: what the loop spent on them), then
    validate and test it. `data_dir` / `test_size` evaluate on other fixed sets than the run's;
    `trainer` reuses a `Trainer` of this run (and its sets)."""
    rd = read_run_data(run_dir, iterations, progress=progress)
    cfg = _with_sets(rd.cfg, data_dir, test_size, progress)
    samples = rd.samples
    trainer = trainer or Trainer(cfg)
    vlm = trainer.fresh()
    batch = vlm.batch_size
    budget = passes if passes is not None else loop_sample_passes(cfg, rd.records, batch)
    if budget < 1:
        raise ValueError(f"passes must be >= 1, got {budget!r}")
    if _counts_steps(cfg):
        units = max(1, round(budget / batch))
        spent = units * batch
    else:
        units = max(1, round(budget / len(samples)))
        spent = units * len(samples)
    log.info("dataset value of %s: %d samples of %d iterations, %d %s (%d sample passes; the "
             "loop spent %d)", rd.run_dir, len(samples), len(rd.records), units,
             "steps" if _counts_steps(cfg) else "epochs", spent, budget)
    losses = vlm.finetune(samples, units)
    return {"run_dir": str(rd.run_dir), "agent": cfg.agent.name, "seed": cfg.seed,
            "iterations": len(rd.records), "samples": len(samples), "units": units,
            "sample_passes": spent, "loop_sample_passes": budget,
            "final_loss": float(losses[-1]) if losses else None, **trainer.metrics(),
            "loop_final_test": rd.records[-1].get("test", {}).get("score")}


def replay_schedule(run_dir: str | Path, *, loop: LoopConfig | None = None,
                    vlm_config: VLMConfig | None = None,
                    iterations: int | None = None, data_dir: str | None = None,
                    test_size: int | None = None, progress: bool = True,
                    trainer: Trainer | None = None) -> dict[str, Any]:
    """Re-run the loop's fine-tuning on the run's saved batches, iteration by iteration, under
    `loop` (default: the run's own loop config), from the run's initial VLM; returns validation
    and test metrics after every iteration (iteration 0: before fine-tuning). `vlm_config` (default:
    the run's) builds the VLM with other options (e.g. `cache_dtype`). `trainer` reuses a `Trainer`
    of this run (of its VLM settings)."""
    rd = read_run_data(run_dir, iterations, progress=progress)
    cfg = _with_sets(rd.cfg, data_dir, test_size, progress)
    if loop is not None:
        cfg = replace(cfg, loop=loop)
    if vlm_config is not None:
        cfg = replace(cfg, vlm=vlm_config)
    trainer = trainer or Trainer(cfg)
    vlm = trainer.fresh()
    finetuner = Finetuner(vlm, cfg.loop, cfg.seed)
    curve = [{"iteration": 0, **trainer.metrics()}]
    with progress_bar(total=len(rd.batches), desc="replay schedule", unit="iter",
                      enabled=progress) as bar:
        for i, batch in enumerate(rd.batches, start=1):
            ft = finetuner.run(i, batch, lambda: vlm.evaluate(trainer.val).to_dict())
            curve.append({"iteration": i, "val": ft.val_points[-1],
                          "test": vlm.evaluate(trainer.test).to_dict(),
                          "finetune_set": ft.set_size,
                          "finetune_loss": sum(ft.losses) / len(ft.losses) if ft.losses
                          else None})
            bar.update(1)
    return {"run_dir": str(rd.run_dir), "agent": cfg.agent.name, "seed": cfg.seed,
            "loop": cfg.to_dict()["loop"], "vlm": cfg.to_dict()["vlm"], "curve": curve,
            "loop_test": [r.get("test", {}).get("score") for r in rd.records]}


def trainer_for(run_dir: str | Path, *, data_dir: str | None = None,
                test_size: int | None = None, progress: bool = True) -> Trainer:
    """A `Trainer` of the run's config (and of other fixed sets, if asked)."""
    cfg = _with_sets(load_run_config(run_dir), data_dir, test_size, progress)
    return Trainer(cfg)


def _with_sets(cfg: Config, data_dir: str | None, test_size: int | None,
               progress: bool) -> Config:
    """`cfg` with other fixed sets (and no progress bars when asked)."""
    data = cfg.data
    if data_dir is not None:
        data = replace(data, dir=str(Path(data_dir).resolve()))
    if test_size is not None:
        data = replace(data, test_size=test_size)
    return replace(cfg, data=data, progress=progress)
