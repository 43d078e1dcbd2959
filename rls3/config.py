"""Typed run configuration: frozen dataclasses whose defaults are the paper's numbers, named
presets, YAML in/out and `key=value` overrides (the schema only: the backend specs live in
`rls3.backends`, the checks made before a run starts in `rls3.preflight`).

A `Config` is built as: preset (`paper-clip`, `paper-paligemma`, `quick`) -> YAML file (any
subset of keys) -> CLI flags -> `--set section.key=value` overrides. Every value is checked on construction;
errors name the key, the bad value and what is allowed (`ConfigError`, a `ValueError`).

Paper defaults (Sec. 5.2): T0 = 200 valid images per episode, eta = 0.5, E = 20 episodes per
iteration, beta = 10, K = 10 CLIP epochs (256 PaliGemma steps), early stopping after no significant
validation improvement for 5 iterations once at least 10 ran (10 after 15 for PaliGemma), a fixed
validation set of 500 frames from the training scenes and a test set of 1000 frames from the three
test scenes, and SAC pre-trained for 100k steps on the intrinsic reward.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

from rls3.backends import BackendConfig, get_backend_spec
from rls3.coerce import build_record, deep_merge, to_plain
from rls3.configerror import ConfigError
from rls3.configerror import require as _require
from rls3.envconfig import EnvConfig
from rls3.seeding import child_seed

__all__ = ["AGENTS", "FEEDBACK_MODES", "REWARD_NORMS", "SIGNALS", "STEP_CAP_T0", "BUDGET_UNITS",
           "LR_SCHEDULES", "PRESETS", "PRETRAIN_SCHEDULE", "AgentConfig", "BackendConfig",
           "Config", "ConfigError", "DataConfig", "EarlyStoppingConfig", "EnvConfig",
           "CAPTION_PAIRS", "FinetuneConfig", "KEEP_RULES", "LoopConfig", "ReplayConfig",
           "VLMConfig", "dump_yaml", "parse_assignment", "preset"]


#: the agents `agent.name` may name; `rls3.agents.AGENT_SPECS` makes them (tested to match)
AGENTS: tuple[str, ...] = ("sac", "random")
#: AgentConfig fields that set SAC's update schedule during pre-training only (None: the loop's),
#: each with the field it replaces while pre-training
PRETRAIN_SCHEDULE: dict[str, str] = {"pretrain_train_freq": "train_freq",
                                     "pretrain_gradient_steps": "gradient_steps",
                                     "pretrain_batch_size": "batch_size"}
FEEDBACK_MODES: tuple[str, ...] = ("episode", "sample")
REWARD_NORMS: tuple[str, ...] = ("none", "running")
SIGNALS: tuple[str, ...] = ("hardness", "learnability")
#: how an episode's round(eta * T0) fine-tuning samples are chosen (`loop.keep`)
KEEP_RULES: tuple[str, ...] = ("random", "hardest")
#: which pair of active objects a generated frame's caption describes (`loop.caption_pair`)
CAPTION_PAIRS: tuple[str, ...] = ("any", "moved")
#: `env.max_steps: 0` in a run config means this many T0 steps per episode at most. The paper has no
#: cap (an episode runs until T0 valid frames); the env's own default (10 T0) would cut many
#: random-agent episodes in the embedded simulator, whose random-action yield is about 12%.
STEP_CAP_T0 = 40
BUDGET_UNITS: tuple[str, ...] = ("steps", "valid")


# ------------------------------------------------------------------------------------ sections
@dataclass(frozen=True)
class ReplayConfig:
    """Replay of earlier fine-tuning samples (a departure from the paper, which fine-tunes each
    iteration on its new batch only and then clears it).

    With `capacity` > 0 the loop keeps up to `capacity` of the samples kept in earlier iterations
    (reservoir sampling: a uniform sample of everything kept so far, seeded) and fine-tunes each
    iteration on its new batch plus round(`fraction` * stored) of them, drawn without
    replacement. Fine-tuning 64 new samples alone memorised and forgot (`rls3 run`, quick: test
    0.24 -> 0.25); with replay the quick preset (then with the paper's agent) rose 0.29 -> 0.62
    (3 seeds, 7 iterations; benchmarks/results/quick_run). `limit` (> 0) replays at most that
    many per iteration, so that an iteration's fine-tuning costs at most K epochs over
    new + `limit` samples however many are stored (0: no limit)."""

    capacity: int = 0
    fraction: float = 1.0
    limit: int = 0

    def __post_init__(self) -> None:
        _require(isinstance(self.capacity, int) and self.capacity >= 0, "loop.replay.capacity",
                 self.capacity, "an integer >= 0 (0: no replay, the paper)")
        _require(0.0 <= self.fraction <= 1.0, "loop.replay.fraction", self.fraction,
                 "in [0, 1] (the share of stored samples replayed each iteration)")
        _require(isinstance(self.limit, int) and self.limit >= 0, "loop.replay.limit",
                 self.limit, "an integer >= 0 (the most samples replayed per iteration; 0: no "
                 "limit)")

    @property
    def enabled(self) -> bool:
        return self.capacity > 0 and self.fraction > 0


LR_SCHEDULES: tuple[str, ...] = ("constant", "cosine")


@dataclass(frozen=True)
class FinetuneConfig:
    """How each iteration's fine-tuning spends its K epochs/steps (`loop.finetune`); the paper's
    values leave the VLM's optimiser as it is (departures, see `rls3.finetune`).

    `lr_schedule`: "constant" (the paper) or "cosine": the learning rate falls from the
    adapter's `lr` to `lr_min` * `lr` over each iteration's fine-tuning and restarts at the next
    one, so every model the loop validates and tests was taken at a low learning rate.
    `shrink` in [0, 1]: before each iteration's fine-tuning the trainable weights are pulled
    toward the ones the VLM started the run with, w <- w0 + shrink * (w - w0) (1: off, the
    paper; 0: every iteration restarts from w0), the "shrink" of Ash & Adams' shrink-and-perturb
    against the generalisation loss of warm-started training."""

    lr_schedule: str = "constant"
    lr_min: float = 0.1
    shrink: float = 1.0

    def __post_init__(self) -> None:
        _require(self.lr_schedule in LR_SCHEDULES, "loop.finetune.lr_schedule",
                 self.lr_schedule, f"one of {list(LR_SCHEDULES)}")
        _require(isinstance(self.lr_min, (int, float)) and 0.0 <= self.lr_min <= 1.0,
                 "loop.finetune.lr_min", self.lr_min,
                 "in [0, 1] (the end of each iteration's cosine, as a share of vlm.lr)")
        _require(isinstance(self.shrink, (int, float)) and 0.0 <= self.shrink <= 1.0,
                 "loop.finetune.shrink", self.shrink,
                 "in [0, 1] (1: off; 0: restart from the run's initial weights each iteration)")

    @property
    def is_paper(self) -> bool:
        """Whether fine-tuning runs as the paper's (a constant learning rate, no shrinking)."""
        return self.lr_schedule == "constant" and self.shrink == 1.0


@dataclass(frozen=True)
class LoopConfig:
    """Algorithm 1: iterations of E episodes (T0 valid samples each, kept at rate eta), VLM
    feedback beta * J2 at each episode's completing step, K fine-tuning epochs/steps, validation
    every F (= `val_every`, in epochs/steps; 0 means once, after all K), test after each iteration.

    `budget` (> 0) stops the run once this many samples were generated (counted in `budget_unit`:
    "steps" = every env step, valid or not, the paper's "generated samples"; "valid" = valid
    frames only), checked after each iteration (a budget replaces the `iterations` limit);
    `rls3 run --budget-from RUN_DIR` fills it from a finished run and records the source in
    `budget_from`. `save_batches` keeps each iteration's fine-tuning batch in the run directory,
    `keep_best` the VLM at its best validation score, `random_feedback` computes (and logs) J2 for
    the random agent too, which ignores it. `replay` (off in the paper presets) adds earlier kept
    samples to each fine-tuning set (see `ReplayConfig`), `finetune` (also off in the paper
    presets) sets the learning-rate schedule and weight shrinking of each iteration's
    fine-tuning (see `FinetuneConfig`).

    `feedback` says how the VLM's poor performance reaches the agent: "episode" (the paper) adds
    beta * J2 to each episode's completing step; "sample" (the paper's stated future work, a
    departure) adds beta * hardness to every valid step, hardness being that sample's own loss
    against its hard negatives (CLIP-type) or 6 - S_PG (PaliGemma), scored on that step so SAC
    stores it with the transition. `reward_norm`: "none" (the paper) or "running" (J2 / hardness
    standardised by a running mean and std kept in the checkpoint; beta then says how many
    intrinsic +-1 units one standard deviation of hardness is worth). `signal` (with
    `feedback: sample`): what a valid frame is rewarded for, "hardness" (its loss, the paper's
    "poor performance") or "learnability" p(1 - p), p being its chance of being answered right
    (a departure: samples the VLM is unsure about, neither solved nor hopeless, as prioritized
    level replay scores levels). `feedback_batch` (with `feedback: sample`; 1, scoring each frame
    on its step, is the default): score up to this many valid frames in one VLM call (a
    departure): the frames of each SAC rollout (`agent.train_freq` steps, which must be at least
    `feedback_batch`) are scored together at its end, before SAC's gradient steps, and their
    rewards written into the replay buffer; the random agent's frames as they fill a batch.
    `keep`: which of an episode's frames make its round(eta * T0) fine-tuning samples, "random"
    (the paper: drawn without replacement) or "hardest" (a departure, selection: those the VLM
    scored hardest when they were generated, as prioritized level replay keeps its highest-scored
    levels; needs eta < 1 and the frames scored, i.e. SAC or `random_feedback`, and
    `feedback_batch` 1). `caption_pair`: which two of the three active objects a generated
    frame's caption relates, "any" (the paper: an ordered pair drawn at random, so a third of
    the captions leave out the object the agent moved) or "moved" (a departure: a pair the moved
    object is part of, in either role, so the agent's move decides the relation it is scored
    on); the fixed validation and test sets are captioned as before. `term_balance` (>= 0, with
    `feedback: sample`; 0, off, is the paper's): each valid frame's extrinsic reward also gets
    term_balance * its terms' rarity, the mean over its caption's spatial terms t of
    1 - 6 * share_t, share_t being t's share among the terms of every frame captioned so far in
    the run (+1 for a term never seen, 0 at an even share; a departure: it pays the agent for the
    relations the data lacks, e.g. "above"/"below", which the layouts give less than half as
    often as "left"/"right").

    `overlap` (off in the paper presets, a departure): iteration i + 1's collection runs on this
    thread while iteration i fine-tunes, validates and tests on another, so the scene and the
    VLM's fine-tuning share the cores. Algorithm 1 orders fine-tuning i before collection i + 1;
    with overlap the agent's feedback in collection i + 1 comes from the VLM before fine-tuning
    i (a copy, one iteration older), the only change. A collection that ran beside the run's
    last fine-tuning (an early stop) is dropped; a run resumes between the two halves exactly.
    Meant for accelerators: on a 2-core CPU the fine-tuning already keeps both cores busy and
    the default run took 480 s with it against 437 s without (benchmarks/results).
    """

    iterations: int = 50
    episodes: int = 20
    eta: float = 0.5
    beta: float = 10.0
    k: int = 10
    val_every: int = 0
    budget: int = 0
    budget_unit: str = "steps"
    budget_from: str | None = None
    save_batches: bool = True
    keep_best: bool = True
    random_feedback: bool = True
    replay: ReplayConfig = field(default_factory=ReplayConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    feedback: str = "episode"
    reward_norm: str = "none"
    signal: str = "hardness"
    feedback_batch: int = 1
    keep: str = "random"
    caption_pair: str = "any"
    term_balance: float = 0.0
    overlap: bool = False

    def __post_init__(self) -> None:
        _require(self.iterations >= 1, "loop.iterations", self.iterations, "an integer >= 1")
        _require(self.episodes >= 1, "loop.episodes", self.episodes, "an integer >= 1 (E)")
        _require(0.0 < self.eta <= 1.0, "loop.eta", self.eta, "in (0, 1]")
        _require(self.beta >= 0.0, "loop.beta", self.beta, ">= 0")
        _require(self.k >= 1, "loop.k", self.k, "an integer >= 1 (K epochs or steps)")
        _require(self.val_every >= 0, "loop.val_every", self.val_every,
                 "0 (validate once after K) or a positive number of epochs/steps (F)")
        _require(self.budget >= 0, "loop.budget", self.budget, ">= 0 (0: no budget)")
        _require(self.budget_unit in BUDGET_UNITS, "loop.budget_unit", self.budget_unit,
                 f"one of {list(BUDGET_UNITS)}")
        _require(self.feedback in FEEDBACK_MODES, "loop.feedback", self.feedback,
                 f"one of {list(FEEDBACK_MODES)}")
        _require(self.reward_norm in REWARD_NORMS, "loop.reward_norm", self.reward_norm,
                 f"one of {list(REWARD_NORMS)}")
        _require(self.signal in SIGNALS, "loop.signal", self.signal, f"one of {list(SIGNALS)}")
        _require(self.signal == "hardness" or self.feedback == "sample", "loop.signal",
                 self.signal, "'hardness' unless loop.feedback is 'sample' (the episode "
                 "feedback is the paper's J2)")
        _require(self.feedback_batch >= 1, "loop.feedback_batch", self.feedback_batch,
                 "an integer >= 1 (valid frames per feedback call)")
        _require(self.feedback_batch == 1 or self.feedback == "sample", "loop.feedback_batch",
                 self.feedback_batch, "1 unless loop.feedback is 'sample' (the episode feedback "
                 "already scores an episode's T0 frames in one call)")
        _require(self.keep in KEEP_RULES, "loop.keep", self.keep, f"one of {list(KEEP_RULES)}")
        _require(self.keep == "random" or self.eta < 1.0, "loop.keep", self.keep,
                 "'random' unless loop.eta < 1 (with eta = 1 every frame is kept, there is "
                 "nothing to select)")
        _require(self.keep == "random" or self.feedback_batch == 1, "loop.keep", self.keep,
                 "'random' unless loop.feedback_batch is 1 (selection needs each frame's score "
                 "when its episode ends)")
        _require(self.caption_pair in CAPTION_PAIRS, "loop.caption_pair", self.caption_pair,
                 f"one of {list(CAPTION_PAIRS)}")
        _require(math.isfinite(self.term_balance) and self.term_balance >= 0.0,
                 "loop.term_balance", self.term_balance, "a finite number >= 0 (0: off)")
        _require(self.term_balance == 0.0 or self.feedback == "sample", "loop.term_balance",
                 self.term_balance, "0 unless loop.feedback is 'sample' (the bonus is paid per "
                 "valid frame)")
        _require(self.save_batches or not self.replay.enabled, "loop.save_batches",
                 self.save_batches, "true while loop.replay is on (replayed samples are read "
                 "back from the saved batches when a run resumes)")
        _require(isinstance(self.overlap, bool), "loop.overlap", self.overlap, "true or false")
        _require(self.save_batches or not self.overlap, "loop.save_batches", self.save_batches,
                 "true while loop.overlap is on (a checkpoint taken between a collection and "
                 "its fine-tuning finds the batch in data/ when the run resumes)")

    @property
    def validation_points(self) -> tuple[int, ...]:
        """Fine-tuning epochs/steps k (1-based) after which validation runs; always ends at K."""
        f = self.val_every or self.k
        pts = list(range(f, self.k + 1, f))
        if not pts or pts[-1] != self.k:
            pts.append(self.k)
        return tuple(pts)


@dataclass(frozen=True)
class EarlyStoppingConfig:
    """Stop when the validation score has not improved by more than `min_delta` for `patience`
    iterations, once at least `min_iterations` iterations ran (paper: 5 after 10 for CLIP-type,
    10 after 15 for PaliGemma). Not applied to runs with a sample budget (the random baseline)."""

    enabled: bool = True
    patience: int = 5
    min_iterations: int = 10
    min_delta: float = 0.0

    def __post_init__(self) -> None:
        _require(self.patience >= 1, "early_stopping.patience", self.patience, "an integer >= 1")
        _require(self.min_iterations >= 1, "early_stopping.min_iterations", self.min_iterations,
                 "an integer >= 1")
        _require(self.min_delta >= 0.0, "early_stopping.min_delta", self.min_delta, ">= 0")


#: `vlm.cache_dtype` values (torch dtype names; `rls3.vlm.contrastive.CACHE_DTYPES` maps them)
CACHE_DTYPE_NAMES = (None, "float16", "bfloat16")


@dataclass(frozen=True)
class VLMConfig:
    """Which VLM adapter (`rls3.vlm` registry name), its weights (hub id, folder, or for the clip
    adapter an OpenAI-CLIP / open_clip state-dict file; None: the adapter's default) and
    optional training settings; `options` go to `build_vlm` as keywords."""

    name: str = "lite"
    weights: str | None = None
    device: str | None = None
    dtype: str | None = None
    batch_size: int | None = None
    lr: float | None = None
    options: dict[str, Any] = field(default_factory=dict)
    #: precision the adapter holds its cached frozen-prefix outputs in ("float16" / "bfloat16";
    #: None: as computed). Adapters whose constructor takes no `cache_dtype` (clip, paligemma:
    #: nothing frozen is cached) ignore it, so a preset can set it and still follow `--vlm`
    cache_dtype: str | None = None
    #: data-parallel VLM processes the run must be launched with (torchrun / accelerate launch);
    #: None accepts whatever was launched (1 without a launcher)
    processes: int | None = None

    def __post_init__(self) -> None:
        from rls3.vlm import available_vlms  # the registry alone: no adapter, nothing above us

        known = available_vlms()
        _require(self.processes is None or (isinstance(self.processes, int)
                                            and self.processes >= 1), "vlm.processes",
                 self.processes, "null or an integer >= 1")
        _require(self.name in known, "vlm.name", self.name, f"one of {sorted(known)}")
        _require(self.batch_size is None or self.batch_size >= 1, "vlm.batch_size",
                 self.batch_size, "null or an integer >= 1")
        _require(self.lr is None or self.lr > 0, "vlm.lr", self.lr, "null or > 0")
        _require(self.cache_dtype in CACHE_DTYPE_NAMES, "vlm.cache_dtype", self.cache_dtype,
                 "null, float16 or bfloat16")
        given = self.options.get("cache_dtype")
        _require(given is None or self.cache_dtype is None or given == self.cache_dtype,
                 "vlm.options.cache_dtype", given,
                 f"unset or equal to vlm.cache_dtype ({self.cache_dtype}), which sets it")

    def build_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for `rls3.vlm.build_vlm` (unset values are left to the adapter);
        `cache_dtype` only for an adapter that takes it."""
        kw: dict[str, Any] = dict(self.options)
        for key in ("weights", "device", "dtype", "batch_size", "lr"):
            v = getattr(self, key)
            if v is not None:
                kw[key] = v
        if self.cache_dtype is not None and "cache_dtype" not in kw:
            from rls3.vlm import adapter_takes

            if adapter_takes(self.name, "cache_dtype"):
                kw["cache_dtype"] = self.cache_dtype
        return kw


@dataclass(frozen=True)
class AgentConfig:
    """The data-generation agent: "sac" (stable-baselines3 SAC, MlpPolicy) or "random".

    SAC is first pre-trained for `pretrain_steps` on the intrinsic reward alone with rendering off;
    the result is cached under `pretrained_dir` (None: `<runs_dir>/_pretrained`) keyed by scenes,
    env settings, SAC settings and seed and reused by later runs. `torch_threads` is torch's
    thread count while SAC collects and trains (small MLPs gain nothing from more and lose a lot
    under CPU contention). The other fields are SAC's constructor arguments; with scene workers
    (`env.workers` = N > 1) SAC runs N envs and takes N * `gradient_steps` gradient steps per
    vectorised step, keeping `gradient_steps` per `train_freq` env steps. `pretrain_train_freq`,
    `pretrain_gradient_steps` and `pretrain_batch_size` (None: the loop's values) set SAC's update
    schedule during pre-training only, where steps need no rendering and gradient steps dominate
    the cost (fewer, larger ones: `quick`); the loop always runs with the fields below.
    `pretrain_background`: a run that must pre-train does it in a child process while it builds
    its data sets, loads the VLM and evaluates iteration 0 (the same cache, so the same agent;
    runs of fewer than `rls3.pretraining.MIN_BACKGROUND_STEPS` steps, and backends whose extra
    processes need their own settings, e.g. a Unity player, pre-train in the run's process).
    """

    name: str = "sac"
    pretrain_steps: int = 100_000
    pretrained_dir: str | None = None
    pretrain_train_freq: int | None = None
    pretrain_gradient_steps: int | None = None
    pretrain_batch_size: int | None = None
    pretrain_background: bool = True
    learning_rate: float = 3e-4
    buffer_size: int = 1_000_000
    batch_size: int = 256
    learning_starts: int = 100
    gamma: float = 0.99
    tau: float = 0.005
    train_freq: int = 1
    gradient_steps: int = 1
    net_arch: tuple[int, ...] = (256, 256)
    ent_coef: str = "auto"
    target_entropy: float | None = None  # None: SB3's "auto" (-3, one nat less per action dim)
    device: str = "cpu"
    torch_threads: int = 1

    def __post_init__(self) -> None:
        _require(self.name in AGENTS, "agent.name", self.name, f"one of {list(AGENTS)}")
        _require(self.pretrain_steps >= 0, "agent.pretrain_steps", self.pretrain_steps, ">= 0")
        for key in PRETRAIN_SCHEDULE:
            v = getattr(self, key)
            _require(v is None or v >= 1, f"agent.{key}", v,
                     "null (the loop's value) or an integer >= 1")
        _require(isinstance(self.pretrain_background, bool), "agent.pretrain_background",
                 self.pretrain_background, "true or false")
        _require(self.learning_rate > 0, "agent.learning_rate", self.learning_rate, "> 0")
        _require(self.buffer_size >= 1, "agent.buffer_size", self.buffer_size, ">= 1")
        _require(self.batch_size >= 1, "agent.batch_size", self.batch_size, ">= 1")
        _require(self.learning_starts >= 0, "agent.learning_starts", self.learning_starts, ">= 0")
        _require(0.0 <= self.gamma <= 1.0, "agent.gamma", self.gamma, "in [0, 1]")
        _require(0.0 < self.tau <= 1.0, "agent.tau", self.tau, "in (0, 1]")
        _require(self.train_freq >= 1, "agent.train_freq", self.train_freq, ">= 1")
        _require(self.gradient_steps >= 1, "agent.gradient_steps", self.gradient_steps, ">= 1")
        _require(len(self.net_arch) >= 1 and all(n >= 1 for n in self.net_arch),
                 "agent.net_arch", self.net_arch, "a non-empty list of layer widths")
        _require(self.torch_threads >= 0, "agent.torch_threads", self.torch_threads,
                 ">= 0 (0: leave torch's default; SAC's small MLP is fastest on 1 thread)")
        _require(self.target_entropy is None or math.isfinite(self.target_entropy),
                 "agent.target_entropy", self.target_entropy,
                 "null (SB3's 'auto', -3) or a finite number of nats")
        number = self.ent_coef[5:] if self.ent_coef.startswith("auto_") else self.ent_coef
        try:
            ok = self.ent_coef == "auto" or 0 < float(number) < math.inf
        except ValueError:
            ok = False
        _require(ok, "agent.ent_coef", self.ent_coef, "'auto', 'auto_<init>' or a positive number")


@dataclass(frozen=True)
class DataConfig:
    """The fixed validation (training scenes) and test (test scenes) sets: sizes, generation seed
    (independent of the run seed, so all runs share them) and the folder they are cached in."""

    dir: str = "data"
    val_size: int = 500
    test_size: int = 1000
    seed: int = 0

    def __post_init__(self) -> None:
        _require(self.val_size >= 1, "data.val_size", self.val_size, "an integer >= 1")
        _require(self.test_size >= 1, "data.test_size", self.test_size, "an integer >= 1")


def dump_yaml(data: Any) -> str:
    """The YAML text of plain config data, as `Config.to_yaml` writes it (keys in order)."""
    return yaml.safe_dump(data, sort_keys=False, default_flow_style=None)


@dataclass(frozen=True)
class Config:
    """Everything a run needs. `preset` names the preset it started from (used in run folder
    names); `seed` seeds agent, env, captions' choices and VLM initialisation."""

    preset: str = "custom"
    seed: int = 0
    env: EnvConfig = field(default_factory=EnvConfig)
    backend: BackendConfig = field(default_factory=BackendConfig)
    loop: LoopConfig = field(default_factory=LoopConfig)
    early_stopping: EarlyStoppingConfig = field(default_factory=EarlyStoppingConfig)
    vlm: VLMConfig = field(default_factory=VLMConfig)
    agent: AgentConfig = field(default_factory=AgentConfig)
    data: DataConfig = field(default_factory=DataConfig)
    runs_dir: str = "runs"
    progress: bool = True
    tensorboard: bool = True

    def __post_init__(self) -> None:
        _require(self.preset in PRESETS or self.preset == "custom", "preset", self.preset,
                 f"one of {sorted(PRESETS)} (or 'custom')")
        _require(0 <= self.seed < 2**31, "seed", self.seed, "an integer in [0, 2**31)")
        _require(round(self.loop.eta * self.env.t0) >= 1, "loop.eta", self.loop.eta,
                 f"large enough that eta * t0 (t0={self.env.t0}) keeps at least one sample")
        _require(self.agent.name == "random" or self.loop.feedback_batch <= self.agent.train_freq,
                 "loop.feedback_batch", self.loop.feedback_batch,
                 f"at most agent.train_freq ({self.agent.train_freq}): SAC trains after every "
                 f"train_freq steps and a frame's reward must be in its replay buffer first "
                 f"(raise agent.train_freq and agent.gradient_steps with it)")
        _require(self.loop.keep == "random" or self.agent.name != "random"
                 or self.loop.random_feedback, "loop.keep", self.loop.keep,
                 "'random' for the random agent unless loop.random_feedback is true (selection "
                 "ranks frames by the VLM's score of them)")

    def resolved(self, cwd: str | Path | None = None) -> Config:
        """This config with its paths absolute (relative ones taken from `cwd`, default the
        current directory; `vlm.weights` when it names a local path) and `agent.pretrained_dir`
        None made `<runs_dir>/_pretrained`: what a run directory records, so that it means the
        same from wherever it is resumed."""
        base = Path(cwd) if cwd is not None else Path.cwd()

        def absolute(p: str) -> str:
            return os.path.abspath(base / os.path.expanduser(p))

        runs = absolute(self.runs_dir)
        pre = absolute(self.agent.pretrained_dir) if self.agent.pretrained_dir else \
            os.path.join(runs, "_pretrained")
        loop = replace(self.loop, budget_from=absolute(self.loop.budget_from)) \
            if self.loop.budget_from else self.loop
        # local VLM weights (a folder or a state-dict file); a hub id stays as it is
        w = self.vlm.weights
        vlm = replace(self.vlm, weights=absolute(w)) \
            if w and os.path.exists(base / os.path.expanduser(w)) else self.vlm
        return replace(self, runs_dir=runs, data=replace(self.data, dir=absolute(self.data.dir)),
                       agent=replace(self.agent, pretrained_dir=pre), loop=loop, vlm=vlm)

    def backend_config(self, log_folder: str | Path | None = None) -> BackendConfig:
        """The backend settings a run uses: a backend that renders at a size of its own (Unity)
        is asked for the env's image size, one that writes logs of its own writes them into
        `log_folder`, and one that draws random numbers of its own is seeded from the run seed
        (`rls3.seeding`), unless its options say otherwise."""
        options = dict(self.backend.options)
        spec = get_backend_spec(self.backend.name)
        if spec.image_option is not None:
            options.setdefault(spec.image_option, self.env.image_size)
        if spec.log_option is not None and log_folder is not None:
            options.setdefault(spec.log_option, str(log_folder))
        if spec.seed_option is not None:
            options.setdefault(spec.seed_option, child_seed(self.seed, "backend"))
        return replace(self.backend, options=options)

    @property
    def env_config(self) -> EnvConfig:
        """The env settings a run uses: `max_steps` 0 resolved to STEP_CAP_T0 * t0."""
        return replace(self.env, max_steps=self.env.max_steps or STEP_CAP_T0 * self.env.t0)

    # ---------------------------------------------------------------- conversions
    def to_dict(self) -> dict[str, Any]:
        """Plain nested dict (tuples as lists), the YAML layout."""
        return to_plain(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], base: Config | None = None) -> Config:
        """Build from a (partial) nested dict on top of `base` (default: the dataclass defaults,
        or the preset named by `data["preset"]` when present)."""
        if not isinstance(data, Mapping):
            raise ConfigError(f"a config must be a mapping of sections, got {type(data).__name__}")
        if base is None:
            base = preset(data["preset"]) if data.get("preset") in PRESETS else cls()
        merged = deep_merge(base.to_dict(), data, "")
        return build_record(cls, merged, "")

    def to_yaml(self, path: str | Path | None = None) -> str:
        text = dump_yaml(self.to_dict())
        if path is not None:
            Path(path).write_text(text)
        return text

    @classmethod
    def from_yaml(cls, path: str | Path, base: Config | None = None) -> Config:
        p = Path(path)
        if p.is_dir():
            raise ConfigError(f"config file {str(p)!r} is a directory, not a YAML file")
        if not p.is_file():
            raise ConfigError(f"config file {str(p)!r} does not exist")
        try:
            data = yaml.load(p.read_text(encoding="utf-8"), Loader=_UniqueKeyLoader) or {}
        except UnicodeDecodeError as e:
            raise ConfigError(f"config file {str(p)!r} is not a UTF-8 text file ({e})") from e
        except yaml.YAMLError as e:
            raise ConfigError(f"config file {str(p)!r} is not valid YAML: {e}") from e
        return cls.from_dict(data, base)

    def override(self, assignments: Sequence[str] | Mapping[str, Any]) -> Config:
        """Apply `section.key=value` strings (values parsed as YAML) or a {dotted.key: value}
        map."""
        if isinstance(assignments, Mapping):
            pairs = list(assignments.items())
        else:
            pairs = [parse_assignment(a) for a in assignments]
        data: dict[str, Any] = {}
        for key, value in pairs:
            node = data
            parts = key.split(".")
            for part in parts[:-1]:
                node = node.setdefault(part, {})
                if not isinstance(node, dict):
                    raise ConfigError(f"override {key!r} conflicts with another override")
            node[parts[-1]] = value
        return Config.from_dict(data, base=self)


class _UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML's safe loader, refusing a mapping that names a key twice (YAML says keys are
    unique; PyYAML would silently keep the last value)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    "while constructing a mapping", node.start_mark,
                    f"found duplicate key {key!r}", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def parse_assignment(text: str) -> tuple[str, Any]:
    """'loop.eta=0.3' -> ('loop.eta', 0.3); the value is parsed as YAML ('null', lists, ...)."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ConfigError(f"override {text!r} must look like section.key=value (e.g. loop.eta=0.3)")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as e:
        raise ConfigError(f"override {text!r}: value is not valid YAML: {e}") from e
    return key, value


# ------------------------------------------------------------------------------------ presets
def _paper_clip() -> Config:
    return Config(preset="paper-clip", vlm=VLMConfig(name="clip"),
                  env=EnvConfig(t0=200),
                  loop=LoopConfig(k=10),
                  early_stopping=EarlyStoppingConfig(patience=5, min_iterations=10))


def _paper_paligemma() -> Config:
    return Config(preset="paper-paligemma", vlm=VLMConfig(name="paligemma"),
                  env=EnvConfig(t0=200),
                  loop=LoopConfig(k=256),
                  early_stopping=EarlyStoppingConfig(patience=10, min_iterations=15))


def _quick() -> Config:
    """A CPU demo that runs end to end (data sets, pretraining, iterations, report) in minutes
    and shows the VLM learning (benchmarks/results/quick_run). Departures from the paper, each
    measured on this scale:

    * fine-tuning: every frame kept (eta = 1: 128 new samples per iteration), K = 6 epochs, and
      earlier batches replayed (`loop.replay`), since fine-tuning 64 new samples alone memorised
      and forgot them (test 0.24 -> 0.25);
    * the agent: the `relative` observation (`env.observation`: the moved object's offset from
      its surface's edges, its neighbours', ...), gamma = 0 (the object to move is redrawn each
      step, so feasibility is a one-step problem), a 64x64 MLP at lr 1e-3, pre-trained 40k steps
      (benchmarks/results/yield.json: distinct-layout yield 0.93 against 0.10 for random, median
      move 8 cm), with one gradient step of 512 every 4 env steps while pre-training
      (`agent.pretrain_*`: the same samples per step as 128 every step; 1.8x faster, distinct
      yield 0.927 against 0.951, seeds 0-2, benchmarks/results/pretrain.json);
    * per-sample VLM feedback (`loop.feedback: sample`) standardised by running statistics
      (`loop.reward_norm: running`, beta = 1: one standard deviation of hardness is worth one
      valid step), the paper's stated future work; chosen over the paper's episode feedback on
      validation (0.649 vs 0.582 after 7 iterations, 3 seeds; test 0.558 vs 0.511,
      benchmarks/results/comparison);
    * short episodes: T0 = 8 valid frames, E = 16 episodes per iteration (the same 128 frames);
      with `env.scene_every` at its default T0 // 5 = 1 every valid frame also moves to the next
      training room with a fresh layout. Chosen on validation over T0 = 32, E = 4 (5 paired
      seeds, 500-frame validation set: final +0.099 [+0.029, +0.169], AUC +0.087 [+0.035,
      +0.139]; benchmarks/results/sampler). The random agent gains as much from it;
    * `lite`'s cached frozen-prefix outputs held in 16 bits (`vlm.cache_dtype: float16`; other
      adapters ignore it): peak RSS of the default run 2.7 -> 2.2 GB, taken for memory; no loss
      on validation (final val 0.727 / 0.787 / 0.713 against 0.713 / 0.767 / 0.707, seeds 0-2,
      150-frame sets: within their +-0.08; benchmarks/results/quick_run/cache_fp16)."""
    return Config(
        preset="quick",
        env=EnvConfig(t0=8, observation="relative"),  # 224-px renders: at 96 px objects vanish
        loop=LoopConfig(iterations=7, episodes=16, eta=1.0, beta=1.0, k=6,
                        replay=ReplayConfig(capacity=1024, fraction=1.0),
                        feedback="sample", reward_norm="running"),
        early_stopping=EarlyStoppingConfig(patience=3, min_iterations=5, min_delta=0.0),
        vlm=VLMConfig(name="lite", cache_dtype="float16"),
        agent=AgentConfig(pretrain_steps=40_000, buffer_size=50_000, batch_size=128, gamma=0.0,
                          net_arch=(64, 64), learning_rate=1e-3, pretrain_train_freq=4,
                          pretrain_gradient_steps=1, pretrain_batch_size=512),
        data=DataConfig(val_size=150, test_size=150),  # +-0.04 standard error
    )


PRESETS: dict[str, Callable[[], Config]] = {
    "paper-clip": _paper_clip,
    "paper-paligemma": _paper_paligemma,
    "quick": _quick,
}


def preset(name: str) -> Config:
    """The named preset's config."""
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; allowed: {sorted(PRESETS)}")
    return PRESETS[name]()
