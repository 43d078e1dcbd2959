"""Fine-tuning replay (`loop.replay`): a bounded, seeded reservoir of earlier kept samples whose
state survives a checkpoint exactly; its config is validated."""

from __future__ import annotations

import numpy as np
import pytest

from rls3.config import ConfigError, preset
from rls3.replay import ReplayError, SampleReplay
from rls3.vlm.synthetic import make_samples


def _batches(n_iter: int, size: int) -> dict[int, list]:
    return {i: make_samples(size, seed=i, size=16) for i in range(1, n_iter + 1)}


def test_store_is_bounded_and_keeps_a_uniform_sample_of_history():
    kept_from = np.zeros(10)
    for seed in range(300):
        r = SampleReplay(capacity=20, fraction=1.0, seed=seed)
        for it in range(1, 11):
            r.add(it, [None] * 10)                  # identity is all the store needs
            assert len(r) == min(20, 10 * it)
        assert r.seen == 100
        for it, _ in r.refs:
            kept_from[it - 1] += 1
    # each of the 10 iterations should hold ~1/10 of the slots (reservoir sampling)
    share = kept_from / kept_from.sum()
    assert np.all(np.abs(share - 0.1) < 0.02), share


def test_draw_fraction_and_determinism():
    batches = _batches(3, 8)
    a, b = SampleReplay(16, 0.5, seed=1), SampleReplay(16, 0.5, seed=1)
    for r in (a, b):
        for it, batch in batches.items():
            r.add(it, batch)
    assert len(a) == 16
    da, db = a.draw(), b.draw()
    assert len(da) == 8 and [id(s) for s in da] == [id(s) for s in db]
    assert all(any(s is t for t in a.samples) for s in da)
    assert SampleReplay(16, 0.0, seed=1).draw() == []
    empty = SampleReplay(16, 1.0, seed=1)
    assert empty.draw() == []
    other = SampleReplay(16, 0.5, seed=2)
    for it, batch in batches.items():
        other.add(it, batch)
    assert [id(s) for s in other.draw()] != [id(s) for s in da]


def test_a_limit_bounds_each_draw_and_changes_nothing_until_it_binds():
    batches = _batches(4, 8)
    free, capped = SampleReplay(32, 1.0, seed=5), SampleReplay(32, 1.0, seed=5, limit=12)
    sizes = []
    for it, batch in batches.items():
        a, b = free.draw(), capped.draw()
        sizes.append(len(b))
        if len(a) <= 12:    # not binding: the same draw, the same RNG stream
            assert [id(s) for s in a] == [id(s) for s in b]
        free.add(it, batch)
        capped.add(it, batch)
    assert sizes == [0, 8, 12, 12]
    state = capped.state()
    with pytest.raises(ReplayError, match="limit=12"):
        SampleReplay(32, 1.0, seed=5).restore(state, lambda it: batches[it])
    with pytest.raises(ValueError, match="limit"):
        SampleReplay(4, 1.0, seed=0, limit=-1)


def test_state_round_trip_continues_identically():
    batches = _batches(4, 6)
    live = SampleReplay(10, 0.7, seed=3)
    for it in (1, 2):
        live.add(it, batches[it])
    state = live.state()
    loaded: list[int] = []

    def load(it):
        loaded.append(it)
        return batches[it]

    restored = SampleReplay(10, 0.7, seed=99)          # the seed is overwritten by the state
    restored.restore(state, load)
    assert sorted(loaded) == sorted(set(it for it, _ in live.refs))   # each batch read once
    assert restored.refs == live.refs and restored.seen == live.seen
    for it in (3, 4):
        assert [id(s) for s in restored.draw()] == [id(s) for s in live.draw()]
        restored.add(it, batches[it])
        live.add(it, batches[it])
    assert restored.refs == live.refs and restored.state() == live.state()


def test_bad_states_and_arguments_are_named():
    with pytest.raises(ValueError, match="capacity"):
        SampleReplay(-1, 0.5, seed=0)
    with pytest.raises(ValueError, match="fraction"):
        SampleReplay(4, 1.5, seed=0)
    r = SampleReplay(4, 1.0, seed=0)
    r.add(1, make_samples(3, seed=0, size=16))
    state = r.state()
    with pytest.raises(ReplayError, match="malformed"):
        SampleReplay(4, 1.0, seed=0).restore({"refs": "x"}, lambda it: [])
    with pytest.raises(ReplayError, match="capacity=4"):
        SampleReplay(8, 1.0, seed=0).restore(state, lambda it: [])
    with pytest.raises(ReplayError, match="missing"):
        SampleReplay(4, 1.0, seed=0).restore(state, lambda it: make_samples(1, seed=0, size=16))


@pytest.mark.parametrize("key,value,match", [
    ("loop.replay.capacity", -1, "loop.replay.capacity"),
    ("loop.replay.fraction", 1.5, "loop.replay.fraction"),
    ("loop.replay.fraction", -0.1, "loop.replay.fraction"),
    ("loop.replay.capacity", 2.5, "loop.replay.capacity"),
    ("loop.replay.size", 3, "unknown key 'loop.replay.size'"),
])
def test_bad_replay_config_is_refused(key, value, match):
    with pytest.raises(ConfigError, match=match):
        preset("quick").override({key: value})


def test_replay_needs_saved_batches_and_is_off_in_the_paper_presets():
    with pytest.raises(ConfigError, match="loop.save_batches"):
        preset("quick").override({"loop.save_batches": False})
    assert not preset("quick").override({"loop.replay.capacity": 0,
                                         "loop.save_batches": False}).loop.replay.enabled
    for name in ("paper-clip", "paper-paligemma"):
        assert preset(name).loop.replay.capacity == 0 and not preset(name).loop.replay.enabled
    q = preset("quick").override(["loop.replay.capacity=64", "loop.replay.fraction=0.25"])
    assert (q.loop.replay.capacity, q.loop.replay.fraction) == (64, 0.25)
