"""Replay of earlier fine-tuning samples across iterations of Algorithm 1 (`loop.replay`).

A departure from the paper, which fine-tunes each iteration on its new batch only: at CPU scale
(64-128 new samples per iteration) that memorises each batch and forgets the last one. The store
keeps a bounded, seeded reservoir sample of every sample kept so far; each iteration replays a
seeded share of it beside the new batch.

Samples are referenced by (iteration, index in that iteration's saved batch), so a checkpoint
stores only the references and the RNG state; a resumed run reads the images back from
`data/iter_NNNN/` (lossless PNG) and continues bit-identically.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from rls3.sample import Sample
from rls3.seeding import stream_rng


class ReplayError(ValueError):
    """A replay state cannot be restored (missing or changed batch, malformed state)."""


class SampleReplay:
    """Up to `capacity` earlier samples (reservoir sampling over all added samples); `draw()`
    returns round(`fraction` * stored) of them (at most `limit` when > 0) without replacement,
    in storage order."""

    def __init__(self, capacity: int, fraction: float, seed: int, limit: int = 0) -> None:
        if not isinstance(capacity, int) or capacity < 0:
            raise ValueError(f"replay capacity must be an integer >= 0, got {capacity!r}")
        if not 0.0 <= fraction <= 1.0:
            raise ValueError(f"replay fraction must be in [0, 1], got {fraction!r}")
        if not isinstance(limit, int) or limit < 0:
            raise ValueError(f"replay limit must be an integer >= 0, got {limit!r}")
        self.limit = limit
        self.capacity = capacity
        self.fraction = float(fraction)
        self.rng = stream_rng(seed, "replay")
        self.refs: list[tuple[int, int]] = []
        self.samples: list[Sample] = []
        self.seen = 0

    def __len__(self) -> int:
        return len(self.samples)

    def draw(self) -> list[Sample]:
        """The samples to replay in this iteration (none while the store is empty)."""
        n = round(self.fraction * len(self.samples))
        if self.limit:
            n = min(n, self.limit)
        if n == 0:
            return []
        idx = np.sort(self.rng.choice(len(self.samples), size=n, replace=False))
        return [self.samples[int(i)] for i in idx]

    def add(self, iteration: int, batch: Sequence[Sample]) -> None:
        """Offer an iteration's kept batch (Algorithm R: once full, the j-th sample ever offered
        replaces a random slot with probability capacity / j)."""
        for index, sample in enumerate(batch):
            self.seen += 1
            if self.capacity == 0:
                continue
            if len(self.samples) < self.capacity:
                self.refs.append((iteration, index))
                self.samples.append(sample)
                continue
            slot = int(self.rng.integers(self.seen))
            if slot < self.capacity:
                self.refs[slot] = (iteration, index)
                self.samples[slot] = sample

    # ------------------------------------------------------------------ checkpoints
    def state(self) -> dict[str, Any]:
        """JSON-ready state: references, count offered and the RNG state."""
        return {"capacity": self.capacity, "fraction": self.fraction, "limit": self.limit,
                "seen": self.seen,
                "refs": [list(r) for r in self.refs], "rng": self.rng.bit_generator.state}

    def restore(self, state: dict[str, Any], load_batch: Callable[[int], Sequence[Sample]]
                ) -> None:
        """Restore `state` (from `state()`), reading each referenced iteration's batch once
        through `load_batch(iteration)`."""
        try:
            refs = [(int(it), int(ix)) for it, ix in state["refs"]]
            seen = int(state["seen"])
            rng_state = state["rng"]
            capacity, fraction = int(state["capacity"]), float(state["fraction"])
            limit = int(state.get("limit", 0))      # states from before `limit` had none
        except (KeyError, TypeError, ValueError) as e:
            raise ReplayError(f"malformed replay state: {e!r}") from e
        if (capacity, fraction, limit) != (self.capacity, self.fraction, self.limit):
            raise ReplayError(f"replay state was saved with capacity={capacity}, "
                              f"fraction={fraction}, limit={limit}; this run has "
                              f"capacity={self.capacity}, fraction={self.fraction}, "
                              f"limit={self.limit}")
        batches: dict[int, Sequence[Sample]] = {}
        samples = []
        for it, ix in refs:
            if it not in batches:
                batches[it] = load_batch(it)
            if not 0 <= ix < len(batches[it]):
                raise ReplayError(f"replayed sample {ix} of iteration {it} is missing: that "
                                  f"batch has {len(batches[it])} samples")
            samples.append(batches[it][ix])
        try:
            self.rng.bit_generator.state = rng_state
        except (TypeError, ValueError, KeyError) as e:
            raise ReplayError(f"malformed replay RNG state: {e!r}") from e
        self.refs, self.samples, self.seen = refs, samples, seen
