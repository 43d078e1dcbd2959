"""Every random stream of a run, derived from one seed in one place.

A run is seeded by `Config.seed` (the fixed validation and test sets by `data.seed`, so every run
shares them). Whatever draws random numbers takes its own named stream: a child seed or a
`numpy.random.Generator` from ``SeedSequence([seed, *keys, STREAMS[name]])``, so adding a consumer
never shifts another one's numbers. Consumers seeded with the run seed itself: the global
`random` / numpy / torch generators (`seed_globals`), SB3's SAC (it seeds its own generators),
the VLM adapters' shuffling generator and SAC pre-training (its cache key holds the seed).
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from types import MappingProxyType

import numpy as np

#: stream name -> the salt that ends its entropy. The values are the ones the streams were born
#: with: changing one changes a run's numbers (and, for the fixed sets, invalidates their cache).
STREAMS: Mapping[str, int] = MappingProxyType({
    # the env reset seed of iteration i (key: i); scene worker w adds w (SB3's VecEnv.seed rule)
    "episodes": 0x1715,
    # EpisodeCollector: captions' hard negatives and which round(eta * T0) frames are kept
    "samples": 0xC0FFEE,
    # RandomAgent's actions
    "random_agent": 0x52414E44,
    # SampleReplay's reservoir and draws (`loop.replay`)
    "replay": 0x2E91A7,
    # the scene server's own random draws (the Unity player's engine seed)
    "backend": 0x5CE4E,
    # the fixed sets, from `data.seed`; 32-bit seeds (see `fixed_set_seed`)
    "val_set": 0,
    "test_set": 1,
})


def seed_sequence(seed: int, stream: str, *keys: int) -> np.random.SeedSequence:
    """The `SeedSequence` of `stream` (a key of `STREAMS`) under `seed`, further split by `keys`
    (e.g. the iteration)."""
    try:
        salt = STREAMS[stream]
    except KeyError:
        raise ValueError(f"unknown random stream {stream!r}; known: {sorted(STREAMS)}") from None
    return np.random.SeedSequence([int(seed), *(int(k) for k in keys), salt])


def child_seed(seed: int, stream: str, *keys: int) -> int:
    """A seed in [0, 2**31) for `stream` (it fits a Unity message and any library's int32)."""
    return int(seed_sequence(seed, stream, *keys).generate_state(1)[0] & 0x7FFFFFFF)


def stream_rng(seed: int, stream: str, *keys: int) -> np.random.Generator:
    """A numpy Generator on `stream`'s own sequence."""
    return np.random.default_rng(seed_sequence(seed, stream, *keys))


def fixed_set_seed(data_seed: int, split: str) -> int:
    """The generation seed of fixed set `split` ("val" or "test"): 32 bits, as the cached sets
    were made with; val and test differ under one `data.seed`."""
    return int(seed_sequence(data_seed, f"{split}_set").generate_state(1)[0])


def episode_seed(seed: int, iteration: int) -> int:
    """The env reset seed of iteration `iteration` of a run seeded `seed`."""
    return child_seed(seed, "episodes", iteration)


def seed_globals(seed: int) -> None:
    """Seed Python's, numpy's and torch's global generators (the loop does this at the start and
    again before the first iteration, so setup work never shifts what follows)."""
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
