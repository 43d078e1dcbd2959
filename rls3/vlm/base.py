"""The VLM seam: one Protocol every adapter (lite, clip, paligemma) implements."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from rls3.sample import Sample

if TYPE_CHECKING:  # torch-free at import: the registry and `rls3 report` load this module
    import torch

    from rls3.vlm.distributed import DataParallel


@dataclass(frozen=True)
class Feedback:
    """Per-sample VLM performance on one episode and the scalar J2 the loop multiplies by beta.

    `per_sample` is the contrastive loss (CLIP-type) or the S_PG score (PaliGemma) of each sample.
    `hardness` is each sample's own difficulty, independent of what else shares the call (the
    per-sample feedback reward): for CLIP-type models the 3-way loss of its caption against its two
    hard negatives, for PaliGemma 6 - S_PG.
    """

    per_sample: tuple[float, ...]
    j2: float
    hardness: tuple[float, ...] = ()
    #: each sample's chance of being answered right, in [0, 1] (CLIP-type: the softmax
    #: probability of its caption against its hard negatives, exp(-hardness); PaliGemma:
    #: (S_PG - 1) / 4); the learnability signal p(1 - p) is built from it
    success: tuple[float, ...] = ()


@dataclass(frozen=True)
class Metrics:
    """Evaluation of a dataset: overall score, per spatial term, per complexity (1-3), mean loss.

    `score` is accuracy in [0, 1] for CLIP-type adapters and mean S_PG in [1, 5] for PaliGemma.
    """

    score: float
    per_term: dict[str, float] = field(default_factory=dict)
    per_complexity: dict[int, float] = field(default_factory=dict)
    loss: float | None = None
    n: int = 0

    def to_dict(self) -> dict:
        return {"score": self.score, "per_term": dict(self.per_term),
                "per_complexity": {str(k): v for k, v in self.per_complexity.items()},
                "loss": self.loss, "n": self.n}


@runtime_checkable
class VLM(Protocol):
    """A vision-language model RLS3 can query for feedback, fine-tune, evaluate and checkpoint.

    Every method the loop (`rls3.loop`, `.collector`, `.finetune`, `.value`, `.rngstate`) or the
    data-parallel layer (`rls3.vlm.distributed.COLLECTIVE_METHODS`) calls is listed here;
    `rls3.vlm.shell.AdapterShell` implements all but feedback, finetune and evaluate."""

    name: str
    #: samples per mini-batch: fine-tuning's, and the groups feedback and evaluation score
    batch_size: int
    #: per optimizer step of the last `finetune` call that was given `groups`: group label ->
    #: mean training loss of that group's samples in the step's mini-batch
    last_group_losses: list[dict[int, float]]

    def feedback(self, samples: Sequence[Sample]) -> Feedback:
        """Score an episode's samples; poor performance means a large J2."""
        ...

    def finetune(self, samples: Sequence[Sample], k: int,
                 groups: Sequence[int] | None = None) -> list[float]:
        """Fine-tune on `samples` for K epochs (CLIP-type) or K optimizer steps (PaliGemma);
        returns the training loss of every optimizer step. `groups`, one label per sample
        (the loop: 0 = new, 1 = replayed), also records each group's loss per step in
        `last_group_losses`."""
        ...

    def evaluate(self, samples: Sequence[Sample]) -> Metrics:
        """Metrics on a dataset (overall, per term, per complexity)."""
        ...

    def save(self, path: str | Path) -> None:
        """Write the weights (and what is needed to rebuild the model) into folder `path`."""
        ...

    def load(self, path: str | Path) -> None:
        """Restore weights written by `save`."""
        ...

    def rng_state(self) -> torch.Tensor | None:
        """The state of the adapter's own random generator (fine-tuning's shuffling) as a uint8
        tensor, or None; a checkpoint stores it (as data, `rls3.rngstate`) so a resumed run
        continues bit-identically."""
        ...

    def set_rng_state(self, state: torch.Tensor) -> None:
        """Restore a state returned by `rng_state`."""
        ...

    def set_lr_scale(self, factor: float) -> None:
        """Run the next fine-tuning steps at `factor` times the base learning rate."""
        ...

    def remember_initial(self) -> None:
        """Keep a copy of the trainable weights as they are now (the w0 of `shrink`)."""
        ...

    def shrink(self, factor: float) -> None:
        """Pull the trainable weights toward the kept w0: w <- w0 + factor * (w - w0)."""
        ...

    def restore_initial(self) -> None:
        """Trainable weights back to the kept w0 and a fresh optimizer (caches kept)."""
        ...

    def clear_eval_cache(self) -> None:
        """Forget whatever is cached per sample (frozen-prefix outputs of evaluated, fed-back
        and fine-tuned samples); results are unchanged, only recomputed."""
        ...

    def distribute(self, group: DataParallel | None) -> None:
        """Split fine-tuning, feedback and evaluation over the processes of `group` (a
        data-parallel launch; None: this process alone). Results equal one process's."""
        ...
