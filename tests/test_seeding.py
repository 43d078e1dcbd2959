"""rls3.seeding: every random stream of a run comes from the run seed through one named stream."""

from __future__ import annotations

import numpy as np
import pytest

from rls3.seeding import (STREAMS, child_seed, episode_seed, fixed_set_seed, seed_sequence,
                          stream_rng)


def test_streams_are_reproducible_and_independent():
    a = stream_rng(7, "samples").random(4)
    assert np.array_equal(a, stream_rng(7, "samples").random(4))
    assert not np.array_equal(a, stream_rng(8, "samples").random(4))
    assert not np.array_equal(a, stream_rng(7, "replay").random(4))
    assert len(set(STREAMS.values())) == len(STREAMS)  # no two streams share a salt


def test_child_seeds_fit_31_bits_and_follow_their_keys():
    seeds = [episode_seed(3, i) for i in range(1, 50)]
    assert all(0 <= s < 2**31 for s in seeds) and len(set(seeds)) == len(seeds)
    assert episode_seed(3, 5) == child_seed(3, "episodes", 5) != child_seed(4, "episodes", 5)


def test_derivations_keep_the_numbers_runs_and_cached_sets_were_made_with():
    # the entropy layouts the streams had before they were gathered here: a change would shift
    # every run's numbers and silently invalidate the cached fixed sets
    assert episode_seed(0, 2) == int(np.random.SeedSequence([0, 2, 0x1715]).generate_state(1)[0]
                                      & 0x7FFFFFFF)
    assert fixed_set_seed(0, "val") == int(np.random.SeedSequence([0, 0]).generate_state(1)[0])
    assert fixed_set_seed(0, "test") == int(np.random.SeedSequence([0, 1]).generate_state(1)[0])
    want = np.random.default_rng(np.random.SeedSequence([5, 0xC0FFEE])).integers(1 << 30, size=3)
    assert np.array_equal(stream_rng(5, "samples").integers(1 << 30, size=3), want)


def test_unknown_stream_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown random stream 'sample'.*samples"):
        seed_sequence(0, "sample")
