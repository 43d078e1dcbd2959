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
