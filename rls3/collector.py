"""What an iteration's episodes produce: the env's feedback hook (J2 or per-sample hardness as
extrinsic reward), the eta-subsample kept for fine-tuning and the iteration's data record."""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from rls3.captions import TERMS
from rls3.config import CAPTION_PAIRS, FEEDBACK_MODES, KEEP_RULES, SIGNALS
from rls3.data import make_sample
from rls3.env import Frame, finite_reward
from rls3.sample import Sample
from rls3.vlm.base import VLM


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


def term_rarity(terms: Sequence[str], counts: Mapping[str, int]) -> float:
    """Mean over `terms` of 1 - len(TERMS) * share_t, share_t being term t's share of `counts`:
    +1 for a term never counted, 0 at an even share, negative for a common one (0 before any
    count)."""
    total = sum(counts.values())
    if not terms or total == 0:
        return 0.0
    return float(np.mean([1.0 - len(TERMS) * counts.get(t, 0) / total for t in terms]))


def learnability(p: float) -> float:
    """p (1 - p) of a sample answered right with probability p: largest for samples the VLM
    is unsure about (p = 1/2), zero for solved and for hopeless ones."""
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"a success probability must be in [0, 1], got {p!r}")
    return p * (1.0 - p)


class EpisodeCollector:
    """The env's feedback hook and the iteration's bookkeeping.

    `feedback="episode"` (the paper): on each completed episode caption the frames, ask the VLM for
    J2 and return beta * J2 as the completing step's extrinsic reward. `feedback="sample"` (the
    paper's future work, a departure): caption and score every valid frame on its own step and
    return beta * its hardness as that step's extrinsic reward. `reward_norm="running"`
    standardises J2 / hardness by a running mean and std first. Either way every completed episode
    keeps round(eta * T0) samples for the fine-tuning batch, and the hardness of every scored
    sample under the VLM as it was then is recorded. `signal="learnability"` (sample mode) rewards
    p (1 - p) instead of the hardness. `on_step` counts every env step.

    `batch` > 1 (sample mode, `loop.feedback_batch`, a departure) defers the scoring: a valid
    step is captioned on its step but returns no extrinsic reward; the agent calls `flush`
    before the frame can matter (SAC: at the end of each rollout, before `train()`, and writes
    the rewards into its replay buffer), which scores the queued frames `batch` at a time
    (`feedback_batch`). `keep="hardest"` (`loop.keep`) keeps the episode's highest-scored frames
    instead of a random eta-subsample. `caption_pair="moved"` (`loop.caption_pair`) captions
    each frame with a pair of objects that includes the one its step moved. `term_balance` > 0
    (sample mode, `loop.term_balance`) adds term_balance * `term_rarity` of each valid frame's
    caption, against the counts of every frame captioned before it (`term_counts`, carried
    across iterations in the checkpoint), to its extrinsic reward."""

    def __init__(self, vlm: VLM, rng: np.random.Generator, eta: float, beta: float, t0: int,
                 feedback: bool = True, mode: str = "episode",
                 norm: RunningNorm | None = None, signal: str = "hardness",
                 batch: int = 1, keep: str = "random", caption_pair: str = "any",
                 term_balance: float = 0.0, term_counts: Mapping[str, int] | None = None
                 ) -> None:
        if mode not in FEEDBACK_MODES:
            raise ValueError(f"feedback mode must be one of {list(FEEDBACK_MODES)}, got {mode!r}")
        if signal not in SIGNALS:
            raise ValueError(f"signal must be one of {list(SIGNALS)}, got {signal!r}")
        if not isinstance(batch, int) or batch < 1:
            raise ValueError(f"feedback batch must be an integer >= 1, got {batch!r}")
        if keep not in KEEP_RULES:
            raise ValueError(f"keep must be one of {list(KEEP_RULES)}, got {keep!r}")
        if keep != "random" and (not feedback or batch > 1):
            raise ValueError("keep='hardest' needs every frame scored on its step (feedback on, "
                             "batch 1)")
        if caption_pair not in CAPTION_PAIRS:
            raise ValueError(f"caption_pair must be one of {list(CAPTION_PAIRS)}, got "
                             f"{caption_pair!r}")
        if not (math.isfinite(term_balance) and term_balance >= 0.0):
            raise ValueError(f"term_balance must be a finite number >= 0, got {term_balance!r}")
        if term_balance and mode != "sample":
            raise ValueError("term_balance pays each valid frame: it needs mode='sample'")
        self.keep = keep
        self.caption_pair = caption_pair
        self.term_balance = term_balance
        #: spatial terms of every frame captioned so far in the run (term_balance > 0)
        self.term_counts: dict[str, int] = dict(term_counts or {})
        self.signal = signal
        self.feedback_batch = batch
        #: whether valid frames are queued for `flush` instead of scored on their step
        self.deferring = feedback and mode == "sample" and batch > 1
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
        self.term_bonus: list[float] = []  # term_rarity of each scored frame (term_balance > 0)
        self.moves: list[float] = []      # per valid step, metres
        self.steps = self.valid = self.distinct = self.episodes = self.truncated = 0
        self.abandoned = 0  # completed beyond E on the last step (scene workers only)
        self.feedback_s = 0.0
        self.scenes: dict[str, int] = {}
        self._pending: dict[int, list[Sample]] = {}  # sample mode: each worker's episode so far
        self._open: set[int] = set()  # workers whose current episode has not ended
        #: deferred feedback: (worker, sample, its term rarity) to score
        self._queue: list[tuple[int, Sample, float]] = []
        self._score: dict[int, float] = {}  # keep="hardest": id(sample) -> its hardness, until kept

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
        samples = [self._sample(f) for f in frames]
        reward = 0.0
        if self.feedback_enabled:
            t = time.perf_counter()
            fb = self.vlm.feedback(samples)
            self.feedback_s += time.perf_counter() - t
            self.j2.append(float(fb.j2))
            if fb.hardness:
                self._scored(samples, fb.hardness)
            if self.keep != "random":
                self._note_scores(samples, fb.hardness if fb.hardness else fb.per_sample)
            reward = self._reward(float(fb.j2))
        self._episode_done(samples)
        return reward

    def score_step(self, frame: Frame, worker: int = 0) -> float:
        """Per-sample feedback (`mode="sample"`): called on every valid step, by the env (N = 1)
        or by `rls3.workers.FeedbackVecEnv` with the worker's index. Deferring, the sample is
        queued for `flush` and the step's extrinsic reward is 0."""
        sample = self._sample(frame)
        rarity = self._count_terms(sample)
        self._pending.setdefault(worker, []).append(sample)
        if not self.feedback_enabled:
            return 0.0
        if self.deferring:
            self._queue.append((worker, sample, rarity))
            return 0.0
        return self._sample_rewards([sample], [rarity])[0]

    def _count_terms(self, sample: Sample) -> float:
        """With term_balance: the caption's `term_rarity` against the frames before it, then its
        terms counted (0.0 and nothing counted without)."""
        if not self.term_balance:
            return 0.0
        terms = sample.description.terms
        rarity = term_rarity(terms, self.term_counts)
        for t in terms:
            self.term_counts[t] = self.term_counts.get(t, 0) + 1
        return rarity

    def _sample(self, frame: Frame) -> Sample:
        """The frame captioned (with `caption_pair="moved"`, about the object its step moved)."""
        subject = frame.moved if self.caption_pair == "moved" else None
        if self.caption_pair == "moved" and subject is None:
            raise ValueError(f"caption_pair='moved' needs the moved object of each frame; frame "
                             f"of step {frame.step} has none")
        return make_sample(frame.image, frame.state, self.rng, subject=subject)

    @property
    def queued(self) -> int:
        """Valid frames waiting for `flush` (deferred feedback)."""
        return len(self._queue)

    def flush(self) -> list[tuple[int, float]]:
        """Score the queued frames, `batch` per VLM call, in queue order; returns (worker,
        extrinsic reward) per frame, the rewards as `score_step` would have returned them."""
        out: list[tuple[int, float]] = []
        queue, self._queue = self._queue, []
        for start in range(0, len(queue), self.feedback_batch):
            part = queue[start:start + self.feedback_batch]
            rewards = self._sample_rewards([s for _, s, _ in part], [r for _, _, r in part])
            self.extrinsic.extend(rewards)
            out.extend((w, r) for (w, _, _), r in zip(part, rewards, strict=True))
        return out

    def _sample_rewards(self, samples: list[Sample], rarity: list[float]) -> list[float]:
        """Score `samples` in one VLM call; the extrinsic reward of each (its hardness or
        learnability, standardised when `norm` is set, times beta, plus term_balance times its
        term rarity), in order."""
        t = time.perf_counter()
        fb = self.vlm.feedback(samples)
        self.feedback_s += time.perf_counter() - t
        hardness = [float(h) for h in (fb.hardness if fb.hardness else fb.per_sample)]
        self._scored(samples, hardness)
        if self.keep != "random":
            self._note_scores(samples, hardness)
        if self.term_balance:
            self.term_bonus.extend(rarity)
        signal = ([learnability(float(p)) for p in fb.success] if self.signal == "learnability"
                  else hardness)
        return [finite_reward(self._reward(x) + self.term_balance * r)
                for x, r in zip(signal, rarity, strict=True)]

    def _note_scores(self, samples: Sequence[Sample], scores: Sequence[float]) -> None:
        if len(scores) != len(samples):
            raise RuntimeError(f"keep='hardest' needs one score per sample; the VLM returned "
                               f"{len(scores)} for {len(samples)}")
        self._score.update((id(s), float(v)) for s, v in zip(samples, scores, strict=True))

    def _episode_done(self, samples: list[Sample]) -> None:
        n_keep = min(max(1, round(self.eta * len(samples))), len(samples))
        if self.keep == "hardest":  # the n_keep highest scores; ties to the earlier frame
            scores = np.array([self._score.pop(id(s)) for s in samples], dtype=np.float64)
            keep = np.sort(np.argsort(-scores, kind="stable")[:n_keep])
        else:
            keep = np.sort(self.rng.choice(len(samples), size=n_keep, replace=False))
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
        if self.feedback_enabled and scored and not self.deferring:  # deferred: in `flush`
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
        for v, terms in zip(self.hardness, self.hardness_terms, strict=True):
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
            "term_rarity_mean": float(np.mean(self.term_bonus)) if self.term_bonus else None,
        }


