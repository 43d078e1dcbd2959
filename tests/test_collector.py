"""The episode collector's feedback signals (rls3.collector)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from rls3.collector import EpisodeCollector, learnability
from rls3.config import ConfigError, preset
from rls3.data import generate_samples
from rls3.env import Frame
from rls3.sim import SimBackend
from rls3.vlm import build_vlm


def test_learnability_peaks_at_one_half():
    assert learnability(0.5) == 0.25
    assert learnability(0.0) == learnability(1.0) == 0.0
    assert learnability(0.2) == pytest.approx(learnability(0.8))
    with pytest.raises(ValueError):
        learnability(1.5)


def test_signal_option_is_checked():
    with pytest.raises(ConfigError, match="loop.signal"):
        preset("quick").override({"loop.signal": "loss"})
    with pytest.raises(ConfigError, match="loop.signal"):
        preset("paper-clip").override({"loop.signal": "learnability"})  # episode feedback
    assert preset("quick").override({"loop.signal": "learnability"}).loop.signal == \
        "learnability"


@pytest.mark.parametrize("name", ["clip-tiny", "paligemma-tiny"])
def test_feedback_success_matches_hardness(name):
    be = SimBackend(["kitchen"], shadows=False)
    try:
        samples = generate_samples(be, 3, 32, seed=1)
    finally:
        be.close()
    fb = build_vlm(name, seed=0, progress=False).feedback(samples)
    assert len(fb.success) == len(fb.hardness) == 3
    assert all(0.0 <= p <= 1.0 for p in fb.success)
    if name == "clip-tiny":   # the softmax probability of the caption among its negatives
        assert fb.success == pytest.approx([math.exp(-h) for h in fb.hardness])
    else:                     # hardness 6 - S, success (S - 1) / 4
        assert fb.success == pytest.approx([(5 - h) / 4 for h in fb.hardness])


def test_learnability_is_the_per_sample_reward():
    """In sample mode with signal learnability each valid frame's extrinsic reward is
    beta * p (1 - p) of that frame, while the recorded hardness stays its loss."""
    be = SimBackend(["kitchen"], shadows=False)
    try:
        state = be.load_scene(0, seed=3)
        frames = [Frame(be.render(32, 32), state.rendered_at(32, 32), 0)]
    finally:
        be.close()
    vlm = build_vlm("clip-tiny", seed=0, progress=False)
    rewards = {}
    for signal in ("hardness", "learnability"):
        col = EpisodeCollector(vlm, np.random.default_rng(0), 1.0, 2.0, 1, mode="sample",
                               signal=signal)
        rewards[signal] = col.score_step(frames[0])
        h = col.hardness[-1]
    assert rewards["hardness"] == pytest.approx(2.0 * h)
    p = math.exp(-h)
    assert rewards["learnability"] == pytest.approx(2.0 * p * (1 - p))


def test_deferred_feedback_scores_the_queue_in_batches_as_step_feedback_would():
    """`batch` > 1 queues each valid frame (0 on its step); `flush` scores the queue at most
    `batch` per VLM call and returns the rewards, normalised in the same order, that scoring
    frame by frame gives (up to batched arithmetic), with the same captions and records."""
    from rls3.collector import RunningNorm

    be = SimBackend(["kitchen"], shadows=False)
    try:
        frames = []
        for seed in range(5):
            state = be.load_scene(0, seed=seed)
            frames.append(Frame(be.render(32, 32), state.rendered_at(32, 32), seed))
    finally:
        be.close()
    vlm = build_vlm("clip-tiny", seed=0, progress=False)
    calls = []
    feedback = vlm.feedback
    vlm.feedback = lambda samples: calls.append(len(samples)) or feedback(samples)
    runs = {}
    for batch in (1, 2):
        col = EpisodeCollector(vlm, np.random.default_rng(0), 1.0, 2.0, 5, mode="sample",
                               norm=RunningNorm(), batch=batch)
        on_step = [col.score_step(f, worker=i % 2) for i, f in enumerate(frames)]
        if batch == 1:
            assert not col.deferring and col.queued == 0
            runs[batch] = (list(enumerate(on_step)), col)
            continue
        assert col.deferring and on_step == [0.0] * 5 and col.queued == 5 and not col.hardness
        calls.clear()
        out = col.flush()
        assert calls == [2, 2, 1] and col.queued == 0 and col.flush() == []
        assert [w for w, _ in out] == [0, 1, 0, 1, 0]
        runs[batch] = (list(enumerate(r for _, r in out)), col)
    (one, a), (two, b) = runs[1], runs[2]
    np.testing.assert_allclose([r for _, r in two], [r for _, r in one], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(b.hardness, a.hardness, rtol=1e-4)
    assert b.extrinsic == [r for _, r in two] and b.norm.count == a.norm.count == 5
    assert [s.description for s in b._pending[0]] == [s.description for s in a._pending[0]]


def test_feedback_batch_option_is_checked():
    with pytest.raises(ConfigError, match="loop.feedback_batch"):
        preset("quick").override({"loop.feedback_batch": 0})
    with pytest.raises(ConfigError, match=r"loop.feedback_batch.*episode feedback"):
        preset("paper-clip").override({"loop.feedback_batch": 4})
    with pytest.raises(ConfigError, match=r"at most agent.train_freq \(1\)"):
        preset("quick").override({"loop.feedback_batch": 4})
    cfg = preset("quick").override({"loop.feedback_batch": 4, "agent.train_freq": 4,
                                    "agent.gradient_steps": 4})
    assert cfg.loop.feedback_batch == 4
    assert preset("quick").override({"loop.feedback_batch": 8, "agent.name": "random"})


def _kitchen_frames(n: int, size: int = 32) -> list[Frame]:
    be = SimBackend(["kitchen"], shadows=False)
    try:
        frames = []
        for seed in range(n):
            state = be.load_scene(0, seed=seed)
            frames.append(Frame(be.render(size, size), state.rendered_at(size, size), seed))
    finally:
        be.close()
    return frames


@pytest.mark.parametrize("mode", ["sample", "episode"])
def test_keep_hardest_keeps_the_highest_scored_frames_of_each_episode(mode):
    """`keep="hardest"`: an episode's round(eta * T0) fine-tuning samples are the frames the VLM
    scored hardest (in generation order); `keep="random"` draws them, here a different set."""
    frames = _kitchen_frames(6)
    vlm = build_vlm("clip-tiny", seed=0, progress=False)
    kept = {}
    for keep in ("random", "hardest"):
        col = EpisodeCollector(vlm, np.random.default_rng(1), 0.5, 1.0, 6, mode=mode, keep=keep)
        if mode == "sample":
            for i, f in enumerate(frames):
                col.score_step(f)
                col.on_step({"valid": True, "n_valid": i + 1}, 1.0, i == 5)
        else:
            col(frames)
        assert len(col.hardness) == 6 and len(col.batch) == 3 and col.episodes == 1
        states = [id(s.state) for s in col.generated]  # the generated frames, in order
        kept[keep] = [states.index(id(s.state)) for s in col.batch]
        if keep == "hardest":
            top = sorted(np.argsort(-np.asarray(col.hardness), kind="stable")[:3].tolist())
            assert kept[keep] == top
            assert not col._score  # scores are dropped once their episode is kept
    assert kept["random"] != kept["hardest"]


def test_keep_option_is_checked():
    with pytest.raises(ConfigError, match="loop.keep"):
        preset("quick").override({"loop.keep": "easiest"})
    with pytest.raises(ConfigError, match=r"loop.keep.*eta < 1"):
        preset("quick").override({"loop.keep": "hardest"})  # quick keeps every frame
    with pytest.raises(ConfigError, match=r"loop.keep.*feedback_batch"):
        preset("quick").override({"loop.keep": "hardest", "loop.eta": 0.5,
                                  "loop.feedback_batch": 2, "agent.train_freq": 2})
    with pytest.raises(ConfigError, match=r"loop.keep.*random_feedback"):
        preset("quick").override({"loop.keep": "hardest", "loop.eta": 0.5,
                                  "agent.name": "random", "loop.random_feedback": False})
    cfg = preset("quick").override({"loop.keep": "hardest", "loop.eta": 0.5, "env.t0": 16})
    assert cfg.loop.keep == "hardest"
    assert preset("paper-clip").loop.keep == preset("quick").loop.keep == "random"
    with pytest.raises(ValueError, match="keep"):
        EpisodeCollector(build_vlm("clip-tiny", seed=0, progress=False),
                         np.random.default_rng(0), 0.5, 1.0, 4, feedback=False, keep="hardest")


def test_caption_pair_moved_captions_the_object_each_step_moved():
    """`caption_pair="moved"`: in a real episode every valid frame's caption relates the object
    its step moved (in either role); with "any" some captions leave it out."""
    from rls3.env import EnvConfig, Rls3Env

    vlm = build_vlm("clip-tiny", seed=0, progress=False)
    left_out = {}
    for pair in ("moved", "any"):
        col = EpisodeCollector(vlm, np.random.default_rng(0), 1.0, 1.0, 12, mode="sample",
                               caption_pair=pair)
        be = SimBackend(["kitchen"], shadows=False)
        env = Rls3Env(be, EnvConfig(t0=12, image_size=32), **col.env_hooks())
        try:
            env.reset(seed=4)
            rng = np.random.default_rng(5)
            moved, done = [], False
            while not done:
                _, r, term, trunc, info = env.step(rng.uniform(-1, 1, 3).astype(np.float32))
                done = term or trunc
                if info["valid"]:
                    moved.append(info["moved"])
                    assert info["frame"].moved == info["moved"]
                col.on_step(info, r, done)
        finally:
            env.close()
        assert col.episodes == 1 and len(col.generated) == len(moved) == 12
        about = [{s.description.primary, s.description.secondary} for s in col.generated]
        left_out[pair] = sum(m not in a for m, a in zip(moved, about, strict=True))
    assert left_out["moved"] == 0 and left_out["any"] > 0


def test_caption_pair_option_is_checked():
    with pytest.raises(ConfigError, match=r"loop.caption_pair.*'any', 'moved'"):
        preset("quick").override({"loop.caption_pair": "subject"})
    assert preset("quick").override({"loop.caption_pair": "moved"}).loop.caption_pair == "moved"
    assert preset("paper-clip").loop.caption_pair == preset("quick").loop.caption_pair == "any"
    with pytest.raises(ValueError, match="caption_pair"):
        EpisodeCollector(build_vlm("clip-tiny", seed=0, progress=False),
                         np.random.default_rng(0), 0.5, 1.0, 4, caption_pair="mover")
    col = EpisodeCollector(build_vlm("clip-tiny", seed=0, progress=False),
                           np.random.default_rng(0), 1.0, 1.0, 1, mode="sample",
                           caption_pair="moved")
    frame = _kitchen_frames(1)[0]   # built without a step: no moved object
    with pytest.raises(ValueError, match="needs the moved object"):
        col.score_step(frame)


def test_term_rarity_rewards_the_terms_the_counts_lack():
    from rls3.collector import term_rarity

    assert term_rarity(("above",), {}) == 0.0                       # nothing counted yet
    even = {t: 5 for t in ("above", "below", "behind", "in front", "left", "right")}
    assert term_rarity(("above", "left"), even) == pytest.approx(0.0)
    counts = {"left": 3, "right": 1}
    assert term_rarity(("above",), counts) == 1.0                   # never seen
    assert term_rarity(("left",), counts) == pytest.approx(1 - 6 * 3 / 4)
    assert term_rarity(("above", "left"), counts) == pytest.approx((1 + 1 - 4.5) / 2)


def test_term_balance_adds_each_frame_s_rarity_to_its_reward_and_counts_its_terms():
    """`term_balance` w: a valid frame's extrinsic reward is the hardness reward plus w times
    the rarity of its caption's terms against every frame captioned before it (counts carried
    in from earlier iterations); deferred scoring pays the same."""
    from rls3.collector import term_rarity

    frames = _kitchen_frames(5)
    vlm = build_vlm("clip-tiny", seed=0, progress=False)
    start = {"left": 10, "right": 10}
    runs = {}
    for w, batch in ((0.0, 1), (2.0, 1), (2.0, 2)):
        col = EpisodeCollector(vlm, np.random.default_rng(0), 1.0, 1.0, 5, mode="sample",
                               term_balance=w, term_counts=start, batch=batch)
        got = [col.score_step(f) for f in frames]
        if batch > 1:
            got = [r for _, r in col.flush()]
        runs[(w, batch)] = (got, col)
    base, plain = runs[(0.0, 1)]
    assert plain.term_counts == start and plain.term_bonus == []    # off: nothing counted
    for key in ((2.0, 1), (2.0, 2)):
        got, col = runs[key]
        counts, want = dict(start), []
        for s in col._pending[0]:
            want.append(term_rarity(s.description.terms, counts))
            for t in s.description.terms:
                counts[t] = counts.get(t, 0) + 1
        assert col.term_counts == counts and col.term_bonus == pytest.approx(want)
        np.testing.assert_allclose(got, np.add(base, 2.0 * np.asarray(want)), rtol=1e-4,
                                   atol=1e-5)
    assert start == {"left": 10, "right": 10}                    # the caller's dict untouched
    assert runs[(2.0, 1)][1].hardness_fields()["term_rarity_mean"] == pytest.approx(
        float(np.mean(runs[(2.0, 1)][1].term_bonus)))


def test_term_balance_option_is_checked():
    with pytest.raises(ConfigError, match="loop.term_balance"):
        preset("quick").override({"loop.term_balance": -1})
    with pytest.raises(ConfigError, match="loop.term_balance"):
        preset("quick").override({"loop.term_balance": float("nan")})
    with pytest.raises(ConfigError, match=r"loop.term_balance.*feedback is 'sample'"):
        preset("paper-clip").override({"loop.term_balance": 1.0})
    assert preset("quick").override({"loop.term_balance": 1.0}).loop.term_balance == 1.0
    assert preset("paper-clip").loop.term_balance == preset("quick").loop.term_balance == 0.0
    with pytest.raises(ValueError, match="term_balance"):
        EpisodeCollector(build_vlm("clip-tiny", seed=0, progress=False),
                         np.random.default_rng(0), 1.0, 1.0, 4, mode="episode",
                         term_balance=1.0)
