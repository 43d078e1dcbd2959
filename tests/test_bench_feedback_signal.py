"""benchmarks/bench_feedback_signal.py: every ordered pair's caption of a real frame, and the
cross-validated R^2 that tells a learnable reward from noise."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import bench_feedback_signal as fs  # noqa: E402

from rls3.captions import spatial_terms  # noqa: E402
from rls3.data import make_sample  # noqa: E402
from rls3.sim import SimBackend  # noqa: E402


def test_every_ordered_pair_is_captioned_with_its_own_terms():
    b = SimBackend(["kitchen"])
    try:
        state = b.load_scene(0, seed=3)
        frame = make_sample(np.zeros((8, 8, 3), np.uint8), state, np.random.default_rng(0))
    finally:
        b.close()
    pairs = fs._all_pairs(frame, np.random.default_rng(1))
    assert len(pairs) == 6
    assert len({(p.description.primary, p.description.secondary) for p in pairs}) == 6
    assert frame.description.caption in {p.description.caption for p in pairs}
    for p in pairs:
        d = p.description
        a, s = state.object(d.primary), state.object(d.secondary)
        assert d.terms == spatial_terms(a.position, s.position, state.camera.forward)
        assert p.image is frame.image and d.caption not in d.negatives
    f = fs._features(frame, sorted(o.name for o in state.objects), 1)
    assert len(f) == 3 * 3 + 3 * 3 + 3 * 3 + 1 and f[-1] == 1.0


@pytest.mark.parametrize("r2", [fs.ridge_r2, fs.mlp_r2])
@pytest.mark.parametrize("offset, scale", [(0.0, 1.0), (1.1, 0.01)])   # hardness near ln 3
def test_r2_finds_a_layout_signal_and_not_noise(r2, offset, scale):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 12))
    signal = x[:, 0] - 0.5 * x[:, 3] + 0.1 * rng.normal(size=300)
    assert r2(x, offset + scale * signal, np.random.default_rng(1)) > 0.8
    assert -0.1 < r2(x, offset + scale * rng.normal(size=300), np.random.default_rng(1)) < 0.05
