"""rls3.rngstate: a checkpoint's generator states round-trip as data (JSON + safetensors), and
anything else in their place is a named error (issue 25, item 1)."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch
from conftest import plant_payload

from rls3.rngstate import RNG_FILE, RNG_TENSORS_FILE, RngStateError, RngStates
from rls3.vlm import build_vlm


@pytest.fixture(scope="module")
def vlm():
    return build_vlm("clip-tiny", progress=False)


def _draws(loop_rng: np.random.Generator, vlm) -> list:
    """One number from every stream a checkpoint restores."""
    g = torch.Generator()
    g.set_state(vlm.rng_state())
    return [random.random(), float(np.random.random()), float(torch.rand(1)),
            float(loop_rng.random()), int(torch.randint(0, 2**31, (1,), generator=g))]


def test_states_round_trip_through_files(vlm, tmp_path):
    loop_rng = np.random.default_rng(5)
    for _ in range(3):
        random.random(), np.random.normal(), loop_rng.random()  # a cached gaussian too
    vlm.set_rng_state(torch.Generator().manual_seed(11).get_state())
    RngStates.capture(loop_rng, vlm).write(tmp_path)
    first = _draws(loop_rng, vlm)
    other_rng = np.random.default_rng(99)
    random.seed(1), np.random.seed(1), torch.manual_seed(1)
    vlm.set_rng_state(torch.Generator().manual_seed(3).get_state())
    RngStates.read(tmp_path).restore(other_rng, vlm)
    assert _draws(other_rng, vlm) == first
    json.loads((tmp_path / RNG_FILE).read_text())   # plain JSON, no pickled objects


def test_bad_state_files_are_named_errors_and_never_unpickled(vlm, tmp_path):
    RngStates.capture(np.random.default_rng(0), vlm).write(tmp_path)
    good = (tmp_path / RNG_FILE).read_text()
    marker = tmp_path / "marker"
    for name in (RNG_FILE, RNG_TENSORS_FILE):
        saved = (tmp_path / name).read_bytes()
        plant_payload(tmp_path / name, marker)
        with pytest.raises(RngStateError, match=name):
            RngStates.read(tmp_path)
        (tmp_path / name).write_bytes(saved)
    assert not marker.exists()
    doc = json.loads(good)
    for key, bad in (("python", [3, [1, 2], None]), ("numpy", ["PCG64", [], 0, 0, 0.0]),
                     ("loop", {"bit_generator": "PCG64", "state": "x"})):
        (tmp_path / RNG_FILE).write_text(json.dumps({**doc, key: bad}))
        with pytest.raises(RngStateError, match=f"malformed RNG state.*{key}"):
            RngStates.read(tmp_path)
