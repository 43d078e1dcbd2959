"""The frozen-prefix caches of the contrastive adapters (`rls3.vlm.contrastive`): outputs of the
frozen tower prefixes kept by sample identity, so that re-evaluated sets, fed-back samples the
loop then fine-tunes on, and replayed samples run only the trainable suffixes.

A prefix output ("rows") is a tensor or a dict of tensors whose first dimension runs over images
or texts. Every cache holds the samples it was filled from, so their ids stay unique while the
entry lives; a hit is checked by identity (`is`), never by id alone.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from rls3.sample import Sample

if TYPE_CHECKING:  # contrastive.py imports this module
    from rls3.vlm.contrastive import TextTable


class Rows:
    """A prefix output held row by row (each row a prefix output of one image), so that a
    fine-tuning batch and the per-sample caches share its rows instead of each holding a copy;
    selecting rows joins them in the order asked (the same values as indexing one tensor), cast
    to `upcast` when the rows are stored in a narrower dtype (`cache_dtype`)."""

    def __init__(self, rows: list[Any], upcast: torch.dtype | None = None) -> None:
        self.rows = rows
        self.upcast = upcast

    def joined(self) -> Any:
        """All rows as one prefix output (in the compute dtype)."""
        return cast_floating(concat(self.rows), self.upcast)

    def __len__(self) -> int:
        return len(self.rows)

    @classmethod
    def split(cls, out: Any) -> Rows:
        """Each row of a prefix output as its own tensor (a copy: the batch output is freed)."""
        n = len(out) if isinstance(out, torch.Tensor) else len(next(iter(out.values())))
        return cls([select_rows(out, torch.tensor([i], device=_device(out))) for i in range(n)])


def _device(rows: Any) -> torch.device:
    t = rows if isinstance(rows, torch.Tensor) else next(iter(rows.values()))
    return t.device


def select_rows(rows: Any, index: torch.Tensor) -> Any:
    """`rows[index]` of a prefix output (a tensor, a dict of tensors or `Rows`)."""
    if isinstance(rows, torch.Tensor):
        return rows[index]
    if isinstance(rows, Rows):
        return cast_floating(concat([rows.rows[i] for i in index.tolist()]), rows.upcast)
    if isinstance(rows, dict):
        return {k: select_rows(v, index) for k, v in rows.items()}
    raise TypeError(f"cannot index a cache of type {type(rows).__name__}")


def concat(parts: list[Any]) -> Any:
    """Prefix outputs of consecutive rows joined into one (tensors or dicts of tensors)."""
    if isinstance(parts[0], torch.Tensor):
        return torch.cat(parts)
    return {k: torch.cat([p[k] for p in parts]) for k in parts[0]}


def cast_floating(x: Any, dtype: torch.dtype | None) -> Any:
    """A tensor or a dict of tensors with its floating-point tensors cast to `dtype` (None:
    unchanged); integer tensors (pixels, token ids, masks) stay as they are."""
    if dtype is None:
        return x
    if isinstance(x, torch.Tensor):
        return x.to(dtype) if x.is_floating_point() else x
    return {k: cast_floating(v, dtype) for k, v in x.items()}


def to_device(x: Any, device: torch.device) -> Any:
    """A tensor or a dict of tensors moved to `device` (non-blocking)."""
    if isinstance(x, torch.Tensor):
        return x.to(device, non_blocking=True)
    return {k: v.to(device, non_blocking=True) for k, v in x.items()}


@dataclass(frozen=True)
class BatchPrefix:
    """Frozen-prefix outputs of one fine-tuning batch: image rows 0..n-1 are the samples, rows
    n..2n-1 (with mirror augmentation) their flipped copies; the loop fine-tunes the same batch
    in several calls, validating in between."""

    samples: list[Sample]
    table: TextTable
    images: Rows
    texts: Any

    def serves(self, samples: Sequence[Sample], image_rows: int) -> bool:
        """True when this is the batch of exactly `samples` with `image_rows` image rows."""
        return (len(self.samples) == len(samples) and len(self.table.index) == image_rows
                and all(a is b for a, b in zip(self.samples, samples, strict=True)))


class EvalCache:
    """Frozen-prefix outputs of evaluated chunks, keyed by the chunk's sample ids: the loop
    evaluates the same fixed validation/test samples every iteration and the prefix is frozen,
    so only the suffix runs again (about 10x faster evaluation with `lite`)."""

    def __init__(self) -> None:
        self._chunks: dict[tuple[int, ...], tuple[list[Sample], TextTable, Any, Any]] = {}

    def __len__(self) -> int:
        return len(self._chunks)

    @property
    def samples(self) -> int:
        """Samples held, over all chunks."""
        return sum(len(v[0]) for v in self._chunks.values())

    def get(self, chunk: Sequence[Sample]) -> tuple[TextTable, Any, Any] | None:
        """(text table, image rows, text rows) of `chunk`, or None when it is not held."""
        hit = self._chunks.get(tuple(id(s) for s in chunk))
        if hit is not None and all(a is b for a, b in zip(hit[0], chunk, strict=True)):
            return hit[1], hit[2], hit[3]
        return None

    def put(self, chunk: Sequence[Sample], table: TextTable, images: Any, texts: Any,
            limit: int) -> None:
        """Hold `chunk`'s outputs if the cache then holds at most `limit` samples."""
        if self.samples + len(chunk) <= limit:
            self._chunks[tuple(id(s) for s in chunk)] = (list(chunk), table, images, texts)

    def clear(self) -> None:
        self._chunks.clear()


class FeedbackCache:
    """The frozen image-prefix row of each sample scored by `feedback` since the last
    `finetune`: the loop fine-tunes on a subset of exactly those samples."""

    def __init__(self) -> None:
        self._rows: dict[int, tuple[Sample, Any]] = {}

    def __len__(self) -> int:
        return len(self._rows)

    def get(self, s: Sample) -> Any | None:
        hit = self._rows.get(id(s))
        return hit[1] if hit is not None and hit[0] is s else None

    def keep(self, chunk: Sequence[Sample], images: Any, limit: int,
             device: torch.device) -> None:
        """Hold the image row of each sample of `chunk` while fewer than `limit` are held."""
        room = limit - len(self._rows)
        for j, s in enumerate(chunk[:max(room, 0)]):
            self._rows[id(s)] = (s, select_rows(images, torch.tensor([j], device=device)))

    def clear(self) -> None:
        self._rows.clear()


class TrainCache:
    """The frozen image-prefix rows (original, flipped or None) of fine-tuned samples, least
    recently used first: a sample replayed in a later iteration (`loop.replay`) costs only the
    trainable part."""

    def __init__(self) -> None:
        self._rows: OrderedDict[int, tuple[Sample, Any, Any | None]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._rows)

    def has(self, s: Sample) -> bool:
        hit = self._rows.get(id(s))
        return hit is not None and hit[0] is s

    def get(self, s: Sample, flipped: bool) -> Any | None:
        """The held row of `s` (its flipped copy's with `flipped`), marked as recently used."""
        if not self.has(s):
            return None
        self._rows.move_to_end(id(s))
        hit = self._rows[id(s)]
        return hit[2] if flipped else hit[1]

    def remember(self, samples: Sequence[Sample], images: Rows, flipped: bool,
                 limit: int) -> None:
        """Hold the rows of a fine-tuning batch's `samples` (rows n.. of `images` are the
        flipped copies when `flipped`; shared, not copied), dropping the least recently used
        beyond `limit`."""
        if limit <= 0:
            return
        n = len(samples)
        for j, s in enumerate(samples):
            self._rows[id(s)] = (s, images.rows[j], images.rows[n + j] if flipped else None)
            self._rows.move_to_end(id(s))
        while len(self._rows) > limit:
            self._rows.popitem(last=False)

    def clear(self) -> None:
        self._rows.clear()


@dataclass
class PrefixCaches:
    """Every frozen-prefix cache of one adapter. `clear_samples` drops what is kept per sample
    (`VLM.clear_eval_cache`); `clear` also the fine-tuning batch (new weights: `load`)."""

    batch: BatchPrefix | None = None
    evaluated: EvalCache = field(default_factory=EvalCache)
    fed_back: FeedbackCache = field(default_factory=FeedbackCache)
    trained: TrainCache = field(default_factory=TrainCache)

    def kept_row(self, s: Sample, flipped: bool = False) -> Any | None:
        """A held image row of `s` from an earlier fine-tuning call or, unflipped, from
        feedback; None when neither holds one."""
        if self.trained.has(s):
            return self.trained.get(s, flipped)
        return None if flipped else self.fed_back.get(s)

    def clear_samples(self) -> None:
        self.evaluated.clear()
        self.fed_back.clear()
        self.trained.clear()

    def clear(self) -> None:
        self.clear_samples()
        self.batch = None
