"""Contrastive (CLIP-type) evaluation, feedback and fine-tuning shared by the `lite` and `clip`
adapters.

Loss (paper Eq. 1 with NegCLIP hard negatives). For a group of N samples (one mini-batch: the
`batch_size` consecutive samples of the given order in evaluation/feedback, a shuffled mini-batch
in fine-tuning) the text side holds every sample's caption and its two hard negatives
(`spatial_negative`, `order_negative`), i.e. up to 3N texts; identical strings are one text (so a
caption shared by two images is never a false negative of either). With cosine similarities
s(i, t) and the learned temperature tau (`scale` = 1/tau, at most 100):

    L_i2t(i) = -log softmax_t( s(i, t) / tau )[caption_i]           over all texts t of the group
    L_t2i(i) = -log softmax_j( s(j, caption_i) / tau )[i]           over the N images j, leaving
                                                                     out other images j whose own
                                                                     caption is that same string
    loss(i)  = (L_i2t(i) + L_t2i(i)) / 2                             (the per-sample loss)

The group loss L is the mean of loss(i); fine-tuning minimises it. Feedback reports loss(i) for
every sample of the episode and J2 = (mean_i loss(i))**2 — the mean per-sample loss over all the
episode's samples, squared; the loop multiplies J2 by beta.

Mirror augmentation (`mirror_augment`, on by default for `lite`): while fine-tuning, each sample
is used in each epoch either as it is or, with probability 1/2, horizontally flipped with its
captions mirrored by `rls3.captions.mirror` (left <-> right in the caption and both negatives), a
label-preserving pair (samples whose captions `mirror` cannot parse are never flipped). It teaches
that left/right is about position, not about which object or room; in
benchmarks/bench_learning.py it lifts `lite` from 0.605 to 0.690 on held-out renders.

Cached prefix outputs are held in the dtype they are computed in unless `cache_dtype` (float16
or bfloat16, a departure for memory: `lite` at 384 px holds ~0.9 MB per fine-tuned sample with
flips) says otherwise; then every use of a frozen-prefix output, cached or fresh, goes through that
dtype and back to float32, so a run's arithmetic does not depend on what was cached.

Accuracy: an image is right when its true caption scores strictly above each of its hard negatives
(negatives that are missing — an empty string — or equal to the caption are skipped).
"""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from rls3.captions import Description, mirror
from rls3.config import CACHE_DTYPE_NAMES
from rls3.sample import Sample
from rls3.vlm.base import Feedback, Metrics
from rls3.vlm.caches import (BatchPrefix, PrefixCaches, Rows, cast_floating, concat, select_rows,
                              to_device)
from rls3.vlm.common import autocast, batches, breakdown, progress
from rls3.vlm.distributed import Shards, scale_grad
from rls3.vlm.shell import AdapterShell

log = logging.getLogger(__name__)

#: Upper bound on the learned logit scale 1/tau, as in CLIP.
MAX_LOGIT_SCALE = 100.0


@dataclass(frozen=True)
class TextTable:
    """The distinct texts of a group of samples and, per sample, the row of its caption, spatial
    negative and order negative in `texts` (-1 where a negative is absent)."""

    texts: tuple[str, ...]
    index: torch.Tensor  # (N, 3) long


def text_table(descriptions: Sequence[Description]) -> TextTable:
    """Collect captions and hard negatives, each distinct string once, in first-seen order."""
    rows: dict[str, int] = {}
    index = torch.full((len(descriptions), 3), -1, dtype=torch.long)
    for i, d in enumerate(descriptions):
        if not d.caption:
            raise ValueError(f"sample {i} has an empty caption")
        for j, text in enumerate((d.caption, d.spatial_negative, d.order_negative)):
            if j > 0 and (not text or text == d.caption):
                continue
            index[i, j] = rows.setdefault(text, len(rows))
    return TextTable(tuple(rows), index)


def contrastive_loss(image_emb: torch.Tensor, text_emb: torch.Tensor, index: torch.Tensor,
                     scale: torch.Tensor | float) -> torch.Tensor:
    """Per-sample symmetric InfoNCE with hard negatives (see the module docstring).

    image_emb: (N, D) image embeddings; text_emb: (U, D) embeddings of the group's distinct texts;
    index: (N, 3) rows of each sample's caption/negatives in text_emb (-1 = absent; only column 0
    is needed here, since every text of the group is in the denominator anyway); scale: 1/tau.
    Returns the (N,) per-sample losses."""
    img = F.normalize(image_emb.float(), dim=-1)
    txt = F.normalize(text_emb.float(), dim=-1)
    pos = index[:, 0].to(img.device)
    logits = scale * img @ txt.T                                       # (N, U)
    l_i2t = torch.logsumexp(logits, dim=1) - logits.gather(1, pos[:, None]).squeeze(1)
    t2i = scale * txt[pos] @ img.T                                     # (N captions, N images)
    n = img.shape[0]
    eye = torch.eye(n, dtype=torch.bool, device=img.device)
    same = (pos[:, None] == pos[None, :]) & ~eye
    t2i = t2i.masked_fill(same, float("-inf"))
    l_t2i = torch.logsumexp(t2i, dim=1) - t2i.diagonal()
    return 0.5 * (l_i2t + l_t2i)


def hard_negative_correct(image_emb: torch.Tensor, text_emb: torch.Tensor,
                          index: torch.Tensor) -> torch.Tensor:
    """(N,) bool: the caption's similarity is strictly above that of every present negative."""
    img = F.normalize(image_emb.float(), dim=-1)
    txt = F.normalize(text_emb.float(), dim=-1)
    index = index.to(img.device)
    sims = (img[:, None, :] * txt[index.clamp(min=0)]).sum(-1)        # (N, 3)
    wins = (sims[:, :1] > sims[:, 1:]) | (index[:, 1:] < 0)
    return wins.all(dim=1)


def hard_negative_loss(image_emb: torch.Tensor, text_emb: torch.Tensor, index: torch.Tensor,
                       scale: torch.Tensor | float) -> torch.Tensor:
    """(N,) cross-entropy of each image's caption against its own present hard negatives (0 when
    it has none): a sample's difficulty that does not depend on the rest of its batch."""
    img = F.normalize(image_emb.float(), dim=-1)
    txt = F.normalize(text_emb.float(), dim=-1)
    index = index.to(img.device)
    logits = scale * (img[:, None, :] * txt[index.clamp(min=0)]).sum(-1)   # (N, 3)
    logits = logits.masked_fill(index < 0, float("-inf"))
    return torch.logsumexp(logits, dim=1) - logits[:, 0]


def _group_labels(groups: Sequence[int] | None, n: int) -> torch.Tensor | None:
    """`groups` as a (n,) long tensor (None stays None); ValueError on a length mismatch."""
    if groups is None:
        return None
    if len(groups) != n:
        raise ValueError(f"groups has {len(groups)} labels for {n} samples")
    return torch.as_tensor(list(groups), dtype=torch.long)


def _mini_batch_texts(table: TextTable, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The rows of `table.texts` the samples `rows` of a batch need, and those samples'
    caption/negative index into that selection (-1 where a negative is absent)."""
    sub = table.index[rows]
    needed = torch.unique(sub[sub >= 0])
    lut = torch.full((len(table.texts),), -1, dtype=torch.long)
    lut[needed] = torch.arange(len(needed))
    return needed, torch.where(sub >= 0, lut[sub.clamp(min=0)], -1)


def _group_means(values: torch.Tensor, labels: torch.Tensor) -> dict[int, float]:
    """Mean of `values` per label present in `labels`."""
    return {int(g): float(values[labels == g].mean()) for g in torch.unique(labels)}


def _mirrored(sample: Sample) -> tuple[np.ndarray, Description]:
    """The horizontally flipped image and mirrored description of `sample`, or the sample itself
    when its captions are not ones `rls3.captions.mirror` can mirror (e.g. hand-written)."""
    try:
        d = mirror(sample.description)
    except ValueError:
        return sample.image, sample.description
    return np.ascontiguousarray(sample.image[:, ::-1]), d


#: `cache_dtype` values (the names `vlm.cache_dtype` allows): narrower storage for cached
#: frozen-prefix outputs
CACHE_DTYPES: dict[str, torch.dtype] = {n: getattr(torch, n) for n in CACHE_DTYPE_NAMES if n}


class ContrastiveVLM(AdapterShell):
    """Base class of the CLIP-type adapters: implements the `VLM` Protocol on top of a few hooks.

    Each tower is split into a frozen *prefix* (run once per fine-tuning call without gradients;
    its outputs are cached across the K epochs, `rls3.vlm.caches`) and a trainable *suffix*.
    Subclasses provide:

    - `module`: the `nn.Module` holding every weight;
    - `image_inputs(images)` / `text_inputs(texts)`: CPU preprocessing (pixels, token ids);
    - `image_prefix` / `image_suffix`, `text_prefix` / `text_suffix` (on `self.device`);
    - `logit_scale()`: 1/tau as a tensor; the checkpoint hooks of `AdapterShell`.

    All modules stay in eval mode, also while fine-tuning (BatchNorm statistics frozen, no
    dropout), so results depend only on the weights, the data and the seed. `mirror_augment`
    flips samples while fine-tuning (see the module doc).
    """

    #: at most this many evaluated samples keep their frozen-prefix outputs (0 disables the cache)
    eval_cache_samples: int = 4096
    #: at most this many fed-back samples keep their frozen image-prefix outputs until the next
    #: `finetune`, which reuses them for the kept batch (0 disables)
    feedback_cache_samples: int = 1024
    #: at most this many fine-tuned samples keep their frozen image-prefix outputs (and those of
    #: their flipped copies) for later `finetune` calls, least recently used dropped first: a
    #: sample replayed in a later iteration (`loop.replay`) costs only the trainable part. About
    #: 0.9 MB per sample for `lite` at 384 px with flips (0 disables)
    train_cache_samples: int = 1024

    def __init__(self, name: str, *, device: str | torch.device | None = None,
                 dtype: str | torch.dtype | None = None, batch_size: int = 32, lr: float = 1e-4,
                 weight_decay: float = 0.01, grad_clip: float | None = 1.0, seed: int = 0,
                 progress: bool = True, mirror_augment: bool = False,
                 cache_dtype: str | None = None) -> None:
        super().__init__(name, device=device, dtype=dtype, batch_size=batch_size, lr=lr,
                         weight_decay=weight_decay, grad_clip=grad_clip, seed=seed,
                         progress=progress)
        if not isinstance(mirror_augment, bool):
            raise ValueError(f"mirror_augment must be true or false, got {mirror_augment!r}")
        self.mirror_augment = mirror_augment
        self.check_options({"cache_dtype": cache_dtype})
        #: the dtype cached frozen-prefix outputs are held in (None: as computed)
        self.cache_dtype = None if cache_dtype is None else CACHE_DTYPES[str(cache_dtype).lower()]
        #: the dtype a prefix output is used in after passing through `cache_dtype`
        self.upcast = None if cache_dtype is None else torch.float32
        #: frozen-prefix outputs kept by sample: evaluated, fed back, fine-tuned, the last batch
        self.caches = PrefixCaches()

    @staticmethod
    def check_options(options: dict[str, Any]) -> None:
        """ValueError for an option value no contrastive adapter takes (before one is built)."""
        value = options.get("cache_dtype")
        if value is not None and str(value).lower() not in CACHE_DTYPES:
            raise ValueError(f"cache_dtype must be one of {sorted(CACHE_DTYPES)} (or null: the "
                             f"dtype the prefix computes in), got {value!r}")

    # ----------------------------------------------------------------- hooks (subclasses)
    def image_inputs(self, images: Sequence[np.ndarray]) -> torch.Tensor:
        raise NotImplementedError

    def text_inputs(self, texts: Sequence[str]) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def image_prefix(self, x: torch.Tensor) -> Any:
        return x

    def image_suffix(self, h: Any) -> torch.Tensor:
        raise NotImplementedError

    def text_prefix(self, tokens: dict[str, torch.Tensor]) -> Any:
        return tokens

    def text_suffix(self, h: Any) -> torch.Tensor:
        raise NotImplementedError

    def logit_scale(self) -> torch.Tensor:
        raise NotImplementedError

    def lr_multiplier(self, param_name: str) -> float:
        """Learning-rate factor of a trainable parameter (e.g. larger for freshly initialised
        heads); 1 by default."""
        return 1.0

    # ----------------------------------------------------------------- embeddings
    @torch.no_grad()
    def encode_images(self, images: Sequence[np.ndarray]) -> torch.Tensor:
        """L2-normalised image embeddings (N, D), float32 on the CPU, in batches."""
        self.module.eval()
        out = []
        for sl in batches(len(images), self.batch_size):
            x = to_device(self.image_inputs(images[sl]), self.device)
            with autocast(self.device, self.dtype):
                h = self._used(self._stored(self.image_prefix(x)))
                out.append(self.image_suffix(h).float())
        return F.normalize(torch.cat(out), dim=-1).cpu()

    @torch.no_grad()
    def encode_texts(self, texts: Sequence[str]) -> torch.Tensor:
        """L2-normalised text embeddings (N, D), float32 on the CPU, in batches."""
        self.module.eval()
        out = []
        for sl in batches(len(texts), self.batch_size * 3):
            tok = to_device(self.text_inputs(list(texts[sl])), self.device)
            with autocast(self.device, self.dtype):
                out.append(self.text_suffix(self.text_prefix(tok)).float())
        return F.normalize(torch.cat(out), dim=-1).cpu()

    # ----------------------------------------------------------------- feedback twin
    def feedback_twin(self) -> ContrastiveVLM:
        """A copy of this adapter that scores feedback in one thread while this one fine-tunes
        in another (`loop.overlap`): the frozen weights shared (read-only), its own trainable
        weights (`follow` copies this adapter's in), tokenizer and empty caches that keep
        nothing. It is never fine-tuned."""
        if self.parallel is not None:
            raise RuntimeError("a feedback twin needs a one-process adapter")
        memo: dict[int, Any] = {id(p): p for p in self.module.parameters() if not p.requires_grad}
        memo[id(self.caches)] = PrefixCaches()
        memo[id(self._generator)] = self._generator       # feedback draws no random numbers
        for unused in (self._optimizer, self._initial):
            if unused is not None:
                memo[id(unused)] = None
        twin = copy.deepcopy(self, memo)
        twin.feedback_cache_samples = twin.eval_cache_samples = twin.train_cache_samples = 0
        twin.progress = False
        return twin

    @torch.no_grad()
    def follow(self, other: ContrastiveVLM) -> None:
        """Take `other`'s trainable weights (a `feedback_twin` catching up with its adapter)."""
        mine = dict(self.trainable_parameters())
        theirs = dict(other.trainable_parameters())
        if mine.keys() != theirs.keys():
            raise ValueError("follow: the two adapters train different parameters")
        for name, p in mine.items():
            p.copy_(theirs[name])

    # ----------------------------------------------------------------- caches
    def clear_eval_cache(self) -> None:
        """Forget the cached frozen-prefix outputs of evaluated, fed-back and fine-tuned
        samples."""
        self.caches.clear_samples()

    def _forget_weights(self) -> None:
        """New weights (`load`): a fresh optimizer and no cached prefix outputs."""
        super()._forget_weights()
        self.caches.clear()

    def _chunk_prefix(self, chunk: Sequence[Sample], memo: bool) -> tuple[TextTable, Any, Any]:
        """Text table and frozen-prefix outputs of one evaluation chunk (cached when `memo`)."""
        hit = self.caches.evaluated.get(chunk) if memo else None
        if hit is not None:
            return hit
        table = text_table([s.description for s in chunk])
        x = to_device(self.image_inputs([s.image for s in chunk]), self.device)
        tok = to_device(self.text_inputs(list(table.texts)), self.device)
        with autocast(self.device, self.dtype):
            img_h, txt_h = self.image_prefix(x), self.text_prefix(tok)
        img_h = self._stored(img_h)
        if memo:
            self.caches.evaluated.put(chunk, table, img_h, txt_h, self.eval_cache_samples)
        return table, img_h, txt_h

    def _stored(self, out: Any) -> Any:
        """An image-prefix output in the dtype caches hold it in (`cache_dtype`)."""
        return cast_floating(out, self.cache_dtype)

    def _used(self, out: Any) -> Any:
        """A (stored) image-prefix output in the dtype the suffix takes."""
        return cast_floating(out, self.upcast)

    # ----------------------------------------------------------------- scoring
    @torch.no_grad()
    def _score(self, samples: Sequence[Sample], desc: str, memo: bool = False,
               keep: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per-sample loss, hard-negative correctness and hard-negative loss (`hardness`), group
        by group of `batch_size`;
        `memo` caches the frozen-prefix outputs of the groups (for sets evaluated repeatedly),
        `keep` each sample's image-prefix row for the next `finetune`."""
        self.module.eval()
        t0 = time.perf_counter()
        groups = list(batches(len(samples), self.batch_size))
        mine = groups if self.parallel is None else self.parallel.deal(groups)
        per_group: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        with progress(sum(g.stop - g.start for g in mine), desc, self.progress) as bar:
            for sl in mine:
                chunk = samples[sl]
                table, img_h, txt_h = self._chunk_prefix(chunk, memo)
                if keep:
                    self.caches.fed_back.keep(chunk, img_h, self.feedback_cache_samples,
                                              self.device)
                with autocast(self.device, self.dtype):
                    img = self.image_suffix(self._used(img_h)).float()
                    txt = self.text_suffix(txt_h).float()
                scale = self.logit_scale().float()
                per_group.append((contrastive_loss(img, txt, table.index, scale).cpu().numpy(),
                                  hard_negative_correct(img, txt, table.index).cpu().numpy(),
                                  hard_negative_loss(img, txt, table.index, scale).cpu().numpy()))
                bar.update(len(chunk))
        dt = time.perf_counter() - t0
        log.debug("%s: %d samples in %.2fs (%.1f samples/s)", desc, len(samples), dt,
                  len(samples) / max(dt, 1e-9))
        if self.parallel is not None:   # every group, in order, on every process
            per_group = self.parallel.undeal(per_group, len(groups))
        if not per_group:
            return np.zeros(0), np.zeros(0), np.zeros(0)
        loss, correct, hard = (np.concatenate(f) for f in zip(*per_group, strict=True))
        return loss, correct, hard

    # ----------------------------------------------------------------- VLM Protocol
    def feedback(self, samples: Sequence[Sample]) -> Feedback:
        """Per-sample contrastive loss of the episode's samples; J2 = (mean loss)**2; hardness:
        each sample's loss against its own hard negatives."""
        if not samples:
            raise ValueError("feedback needs at least one sample")
        losses, _, hard = self._score(list(samples), f"{self.name} feedback", keep=True)
        mean = float(np.mean(losses, dtype=np.float64))
        return Feedback(per_sample=tuple(float(v) for v in losses), j2=mean * mean,
                        hardness=tuple(float(v) for v in hard),
                        success=tuple(float(v) for v in np.exp(-np.asarray(hard, np.float64))))

    def evaluate(self, samples: Sequence[Sample]) -> Metrics:
        """Hard-negative accuracy overall / per term / per complexity, and the mean loss."""
        samples = list(samples)
        if not samples:
            raise ValueError("evaluate needs at least one sample")
        losses, correct, _ = self._score(samples, f"{self.name} eval", memo=True)
        score, per_term, per_cx = breakdown(correct.astype(float).tolist(),
                                            [s.description for s in samples])
        return Metrics(score=score, per_term=per_term, per_complexity=per_cx,
                       loss=float(np.mean(losses, dtype=np.float64)), n=len(samples))

    def _make_optimizer(self) -> torch.optim.Optimizer:
        """AdamW with one group per (decayed or not, learning-rate multiplier): matrices decay,
        vectors and scalars do not. `foreach`: each update is a few multi-tensor kernels instead of
        a dozen per parameter (torch's CPU default is the per-parameter loop); the same values."""
        groups: dict[tuple[bool, float], list[nn.Parameter]] = {}
        for name, p in self.trainable_parameters():
            groups.setdefault((p.ndim >= 2, self.lr_multiplier(name)), []).append(p)
        if not groups:
            raise RuntimeError(f"adapter {self.name!r} has no trainable parameters")
        return torch.optim.AdamW(
            [{"params": ps, "lr": self.lr * mult,
              "weight_decay": self.weight_decay if decay else 0.0}
             for (decay, mult), ps in sorted(groups.items(), key=lambda kv: kv[0])],
            lr=self.lr, foreach=True)

    # ----------------------------------------------------------------- frozen prefixes
    @torch.no_grad()
    def _prefix_cache(self, images: Sequence[np.ndarray], table: TextTable,
                      known: Sequence[Any | None] | None = None) -> tuple[Rows, Any]:
        """Frozen-prefix outputs of `images` (in order, row by row; rows given in `known` are
        reused, not recomputed or copied) and of the table's texts. With several processes each
        computes its share and the shares are all-gathered."""
        tok = self.text_inputs(list(table.texts))        # one padding length for all texts
        if self.parallel is not None:
            img = self._gathered(len(images), lambda idx: self._image_prefix_rows(
                [images[i] for i in idx], None if known is None else [known[i] for i in idx]
            ).joined())
            return (Rows(Rows.split(self._stored(img)).rows, self.upcast),
                    self._gathered(len(table.texts), lambda idx: self._text_prefix_rows(
                        select_rows(tok, torch.tensor(idx, dtype=torch.long)))))
        return self._image_prefix_rows(images, known), self._text_prefix_rows(tok)

    def _image_prefix_rows(self, images: Sequence[np.ndarray],
                           known: Sequence[Any | None] | None) -> Rows:
        """Frozen image-prefix rows of `images`, in order: those in `known` reused, the others
        computed in batches."""
        rows = list(known) if known is not None else [None] * len(images)
        todo = [i for i, row in enumerate(rows) if row is None]
        for sl in batches(len(todo), self.batch_size):
            x = to_device(self.image_inputs([images[i] for i in todo[sl]]), self.device)
            with autocast(self.device, self.dtype):
                out = self.image_prefix(x)
            for i, row in zip(todo[sl], Rows.split(self._stored(out)).rows, strict=True):
                rows[i] = row
        return Rows(rows, self.upcast)

    def _text_prefix_rows(self, tok: dict[str, torch.Tensor]) -> Any:
        """Frozen text-prefix outputs of the tokenised texts `tok`, in batches."""
        n = len(next(iter(tok.values())))
        txt_parts = []
        for sl in batches(n, self.batch_size * 3):
            with autocast(self.device, self.dtype):
                txt_parts.append(self.text_prefix(to_device(select_rows(tok, torch.arange(
                    sl.start, sl.stop)), self.device)))
        return concat(txt_parts)

    def _gathered(self, n: int, compute: Any) -> Any:
        """`compute(rows)` over rows 0..n-1 with each process computing its contiguous share
        (padded with row 0 to equal shapes), all-gathered into every process, in row order."""
        group = self.parallel
        assert group is not None
        shards = Shards.of(n, group.world_size)
        start, size = shards.starts[group.rank], shards.sizes[group.rank]
        local = compute(list(range(start, start + size)) + [0] * (shards.widest - size))

        def gather(t: torch.Tensor) -> torch.Tensor:
            return torch.cat(group.gather_rows(t, shards))

        if isinstance(local, torch.Tensor):
            return gather(local)
        return {k: gather(v) for k, v in local.items()}

    def _parallel_suffix(self, suffix: Any, cache: Any, rows: torch.Tensor) -> torch.Tensor:
        """`suffix` of the cached prefix `rows`, this process computing only its share: the
        others' outputs arrive by all-gather (no gradient), this process's keep theirs, scaled by
        the world size so that averaging gradients over processes gives the one-process
        gradient (see rls3.vlm.distributed)."""
        group = self.parallel
        assert group is not None
        shards = Shards.of(len(rows), group.world_size)
        start, size = shards.starts[group.rank], shards.sizes[group.rank]
        mine = rows[start:start + size]
        if size < shards.widest:    # pad with a real row so every process sends equal shapes
            mine = torch.cat([mine, rows[:shards.widest - size]])
        inputs = select_rows(cache, mine.to(self.device))  # (no cat of cached rows in autocast)
        with autocast(self.device, self.dtype):
            local = suffix(inputs).float()
        parts = group.gather_rows(local, shards)
        parts[group.rank] = scale_grad(local[:size], float(group.world_size))
        return torch.cat(parts)

    # ----------------------------------------------------------------- fine-tuning
    def finetune(self, samples: Sequence[Sample], k: int,
                 groups: Sequence[int] | None = None) -> list[float]:
        """K epochs over `samples` in shuffled mini-batches of `batch_size` (seeded; with
        `mirror_augment` each sample flipped with probability 1/2 per epoch); returns the loss of
        every optimizer step. `groups` (one label per sample, e.g. new vs replayed) fills
        `last_group_losses` with each group's mean loss per step."""
        if not isinstance(k, int) or k < 0:
            raise ValueError(f"k (epochs) must be a non-negative integer, got {k!r}")
        samples = list(samples)
        label = _group_labels(groups, len(samples))
        self.last_group_losses = []
        if not samples or k == 0:
            return []
        t0 = time.perf_counter()
        self.module.eval()
        batch = self._batch_prefix(samples)
        self.caches.fed_back.clear()    # the batch is formed; the next feedback starts afresh
        params = [p for _, p in self.trainable_parameters()]
        opt = self.optimizer
        n = len(samples)
        step_losses: list[float] = []
        with progress(n * k, f"{self.name} finetune", self.progress) as bar:
            for epoch in range(k):
                order = self._epoch_order(n)
                for sl in batches(n, self.batch_size):
                    rows = order[sl]
                    step_losses.append(self._step(batch, rows, label, opt, params))
                    bar.update(len(rows))
                    bar.set_postfix(epoch=epoch, loss=f"{step_losses[-1]:.3f}")
        dt = time.perf_counter() - t0
        log.info("%s: fine-tuned %d epochs x %d samples in %.1fs (%.1f samples/s), "
                 "loss %.4f -> %.4f", self.name, k, n, dt, n * k / max(dt, 1e-9),
                 step_losses[0], step_losses[-1])
        return step_losses

    def _batch_prefix(self, samples: list[Sample]) -> BatchPrefix:
        """The frozen-prefix outputs of a fine-tuning batch (and of its flipped copies): the
        last batch's when `samples` are that batch, else computed, reusing the rows feedback
        or earlier fine-tuning kept."""
        image_rows = len(samples) * (2 if self.mirror_augment else 1)
        kept = self.caches.batch
        if kept is not None and kept.serves(samples, image_rows):
            return kept
        self.caches.batch = None
        images, descriptions = self._training_views(samples)
        table = text_table(descriptions)
        known = [self.caches.kept_row(s) for s in samples]
        if self.mirror_augment:
            known += [self.caches.kept_row(s, flipped=True) for s in samples]
        img_cache, txt_cache = self._prefix_cache(images, table, known)
        self.caches.batch = BatchPrefix(samples, table, img_cache, txt_cache)
        self.caches.trained.remember(samples, img_cache, self.mirror_augment,
                                     self.train_cache_samples)
        log.debug("%s: %d of %d frozen image prefixes reused from feedback or earlier "
                  "fine-tuning", self.name, sum(row is not None for row in known), len(images))
        return self.caches.batch

    def _training_views(self, samples: list[Sample]) -> tuple[list[np.ndarray],
                                                                list[Description]]:
        """Images and descriptions a batch trains on: the samples, then (with
        `mirror_augment`) their flipped copies."""
        images = [s.image for s in samples]
        descriptions = [s.description for s in samples]
        if self.mirror_augment:     # rows n..2n-1: the flipped copies
            flipped = [_mirrored(s) for s in samples]
            images += [im for im, _ in flipped]
            descriptions += [d for _, d in flipped]
            kept = sum(d is s.description for s, (_, d) in zip(samples, flipped, strict=True))
            if kept:
                log.warning("%s: %d of %d samples have captions rls3.captions.mirror cannot "
                            "mirror; they are never flipped", self.name, kept, len(samples))
        return images, descriptions

    def _epoch_order(self, n: int) -> torch.Tensor:
        """One epoch's rows of the batch prefix: a seeded shuffle of the n samples, each (with
        `mirror_augment`) replaced by its flipped copy, row n + i, with probability 1/2."""
        perm = torch.randperm(n, generator=self._generator)
        if self.mirror_augment:
            perm += n * torch.randint(0, 2, (n,), generator=self._generator)
        return perm

    def _step(self, batch: BatchPrefix, rows: torch.Tensor, label: torch.Tensor | None,
              opt: torch.optim.Optimizer, params: list[nn.Parameter]) -> float:
        """One optimizer step on the mini-batch `rows` of `batch`: the trainable suffixes of
        its cached prefixes, the contrastive loss (and each group's share of it), the gradient
        averaged over processes and clipped, AdamW; returns the loss."""
        needed, local = _mini_batch_texts(batch.table, rows)
        if self.parallel is None:
            # rows joined outside autocast: on the CPU it refuses to join 16-bit cached rows
            img_in = select_rows(batch.images, rows.to(self.device))
            txt_in = select_rows(batch.texts, needed.to(self.device))
            with autocast(self.device, self.dtype):
                img, txt = self.image_suffix(img_in), self.text_suffix(txt_in)
        else:
            img = self._parallel_suffix(self.image_suffix, batch.images, rows)
            txt = self._parallel_suffix(self.text_suffix, batch.texts, needed)
        per_sample = contrastive_loss(img.float(), txt.float(), local,
                                      self.logit_scale().float())
        loss = per_sample.mean()
        if label is not None:
            self.last_group_losses.append(
                _group_means(per_sample.detach(), label[rows % len(batch.samples)]))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if self.parallel is not None:
            self.parallel.mean_gradients(params)
        if self.grad_clip:
            torch.nn.utils.clip_grad_norm_(params, self.grad_clip)
        opt.step()
        return float(loss.detach())
