"""Early stopping on the validation history (Algorithm 1's stopping rule)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass


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

