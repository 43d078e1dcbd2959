"""Step 2 of an iteration of Algorithm 1: fine-tune the VLM on the iteration's kept batch (plus
replayed earlier samples), validating after every F epochs/steps.

One place decides how the iteration spends its K epochs (CLIP-type) or K steps (PaliGemma), so
that the loop and offline re-training of a run's saved batches (`rls3.value`) spend compute the
same way. The paper fine-tunes the new batch K epochs at a constant learning rate; the
departures (`loop.replay`, `loop.finetune`) are named options:

- replay: a seeded share of earlier kept samples joins the new batch (`rls3.replay`);
- `lr_schedule: cosine`: each iteration's K units run in up to `MAX_LR_CHUNKS` consecutive
  `finetune` calls, each at the cosine learning rate of its midpoint, from `lr` down to
  `lr_min * lr` (a warm restart every iteration);
- `shrink` < 1: the trainable weights are pulled toward the run's initial ones before the
  iteration's first step.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from rls3.config import LoopConfig
from rls3.replay import SampleReplay
from rls3.sample import Sample
from rls3.vlm.base import VLM

#: `finetune` group labels of the new batch and of replayed samples
NEW, REPLAYED = 0, 1
#: at most this many learning-rate levels per iteration with `lr_schedule: cosine`
MAX_LR_CHUNKS = 16


def cosine_factor(t: float, lr_min: float) -> float:
    """The cosine schedule's learning-rate factor at progress `t` in [0, 1]: 1 -> `lr_min`."""
    return lr_min + (1.0 - lr_min) * 0.5 * (1.0 + math.cos(math.pi * t))


def chunks(k: int, points: Sequence[int], schedule: str) -> list[tuple[int, int, float]]:
    """The iteration's `finetune` calls as (first unit, units, midpoint as a share of K): one
    call per validation point for a constant rate; with "cosine" also cut into at most
    `MAX_LR_CHUNKS` near-equal pieces, each run at the cosine factor of its midpoint."""
    cuts = set(points)
    if schedule == "cosine":
        n = min(k, MAX_LR_CHUNKS)
        cuts |= {round(k * j / n) for j in range(1, n + 1)}
    out, start = [], 0
    for end in sorted(c for c in cuts if 0 < c <= k):
        out.append((start, end - start, (start + end) / (2.0 * k)))
        start = end
    return out


@dataclass
class FinetuneRecord:
    """What one iteration's fine-tuning did (the loop's metrics record takes it)."""

    losses: list[float] = field(default_factory=list)
    group_losses: list[dict[int, float]] = field(default_factory=list)
    val_points: list[dict[str, Any]] = field(default_factory=list)
    stored: int = 0
    replayed: int = 0
    set_size: int = 0
    finetune_s: float = 0.0
    validate_s: float = 0.0
    lr_factors: list[float] = field(default_factory=list)


class Finetuner:
    """Fine-tunes `vlm` once per iteration as `loop` says; holds the replay store (its state
    goes into every checkpoint)."""

    def __init__(self, vlm: VLM, loop: LoopConfig, seed: int) -> None:
        self.vlm = vlm
        self.loop = loop
        self.replay: SampleReplay | None = None
        if loop.replay.enabled:
            self.replay = SampleReplay(loop.replay.capacity, loop.replay.fraction, seed,
                                       limit=loop.replay.limit)
        if loop.finetune.shrink < 1.0:
            vlm.remember_initial()      # before a resumed run loads its checkpoint

    def run(self, iteration: int, batch: Sequence[Sample],
            validate: Callable[[], dict[str, Any]],
            on_phase: Callable[[str], None] | None = None) -> FinetuneRecord:
        """Fine-tune on `batch` (+ replayed samples), calling `validate` at every validation
        point; then offer `batch` to the replay store."""
        cfg, vlm = self.loop, self.vlm
        rec = FinetuneRecord()
        rec.stored = len(self.replay) if self.replay is not None else 0
        replayed = self.replay.draw() if self.replay is not None else []
        ft_set = list(batch) + replayed
        groups = [NEW] * len(batch) + [REPLAYED] * len(replayed)
        rec.replayed, rec.set_size = len(replayed), len(ft_set)
        if cfg.finetune.shrink < 1.0:
            vlm.shrink(cfg.finetune.shrink)
        points = set(cfg.validation_points)
        for start, units, t in chunks(cfg.k, cfg.validation_points, cfg.finetune.lr_schedule):
            if on_phase is not None:
                on_phase("finetune")
            tic = time.perf_counter()
            if cfg.finetune.lr_schedule == "cosine":
                factor = cosine_factor(t, cfg.finetune.lr_min)
                vlm.set_lr_scale(factor)
                rec.lr_factors.append(factor)
            rec.losses += [float(x) for x in vlm.finetune(ft_set, units, groups=groups)]
            rec.group_losses += list(vlm.last_group_losses)
            rec.finetune_s += time.perf_counter() - tic
            if start + units in points:
                if on_phase is not None:
                    on_phase("validate")
                tic = time.perf_counter()
                rec.val_points.append({"k": start + units, **validate()})
                rec.validate_s += time.perf_counter() - tic
        if self.replay is not None:
            self.replay.add(iteration, batch)
        return rec
