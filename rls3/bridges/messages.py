"""THE message format of the rls3 Unity bridge (version ``rls3-bridge/1``). This module is the one
documented place: the C# scripts in ``bridges/unity/`` and the test peer implement exactly this.

Transport
---------
ML-Agents (``mlagents-envs`` 1.1.0, communication API "1.5.0"). Python is the gRPC *server*
(``UnityEnvironment``), Unity the *client*: a player connects to ``base_port + worker_id``
(5005 + id by default, passed as ``--mlagents-port``), the Editor to 5004. The Unity scene holds one
agent of behaviour ``Rls3Arranger`` (Python sees ``Rls3Arranger?team=0``) that requests a decision
every Academy step, never ends its episode (``MaxStep = 0``) and is not driven by a heuristic.

Behaviour spec (sent by Unity with its first agent info)
--------------------------------------------------------
* actions: ``ACTION_SIZE`` = 10 continuous, no discrete branches: the *command* below.
* observations (any order; Python tells them apart by rank):
  - visual ``[3, H, W]``, PNG-compressed: the scene camera. ``H`` = ``W`` = the image size fixed by
    the build (player flag ``--rls3-image-size N``, default 224). ``UnityBackend.render(w, h)``
    resizes when asked for another size.
  - vector ``[3]``: ``[seq, op, valid]`` of the answer, a cheap in-band echo that Python checks
    against the metadata (stale or lost side-channel data is caught).

Command: Python -> Unity, the agent's continuous action vector (float32)
------------------------------------------------------------------------
=====  ==========  ==========================================================================
index  name        meaning
=====  ==========  ==========================================================================
0      op          0 NOOP, 1 LOAD, 2 MOVE, 3 SWAP, 4 RENDER (``Op``)
1      seq         command counter modulo 2**24, echoed in the answer
2      slot        active object 0, 1 or 2 (MOVE, SWAP)
3-5    dx, dy, dz  displacement in metres in the rls3 world frame (MOVE)
6      index       scene index (LOAD) or object-pool index of the incoming object (SWAP)
7      seed_hi     ``seed >> 16`` (LOAD; 0 <= seed < 2**31); -1: no seed, Unity draws one
8      seed_lo     ``seed & 0xFFFF``
9      render      1: render the camera into this answer's image if the command left a valid
                   layout (RENDER always renders); 0: no rendering, the image is a placeholder
=====  ==========  ==========================================================================

All entries but dx, dy, dz are small integers, exact in float32. Semantics follow
``rls3.scene.SceneBackend``: LOAD activates scene ``index`` and places three pool objects at
random valid spots (seeded); MOVE moves active object ``slot`` by (dx, dy, dz), it lands on the
surface under it and the move is kept only if the layout is feasible; SWAP replaces object ``slot``
by pool object ``index`` at the same spot (kept only if feasible); RENDER and NOOP change nothing.

Answer: Unity -> Python, the next decision step
-----------------------------------------------
* reward: +1 for a feasible MOVE/SWAP, -1 for an infeasible one, 0 otherwise;
* the visual observation: the camera image rendered for this answer when the metadata says
  ``"rendered": true``; otherwise a placeholder of the same shape (Unity sends a black image, the
  cheapest PNG to encode and decode) that Python ignores, keeping the last rendered image;
* the vector echo ``[seq, op, valid]`` (op -1 for the answer to an ML-Agents reset);
* exactly one metadata message on side channel ``CHANNEL_ID``: the side-channel framing of
  ML-Agents (16-byte channel UUID in .NET/``bytes_le`` order, little-endian int32 length, payload),
  payload = UTF-8 JSON (raw bytes; never ``WriteString``/``read_string``, which are ASCII-only)::

    {
      "format": "rls3-bridge/1",
      "seq": 17,                       # the command's seq (0 for the answer to an ML-Agents reset)
      "op": "move",                    # "reset" | "noop" | "load" | "move" | "swap" | "render"
      "feasibility": {"valid": true, "reason": "ok", "detail": ""},
      "rendered": true,                # the image in this step was rendered for this answer
      "error": null,                   # or a text: Unity could not carry the command out
      "scenes": ["kitchen", ...],      # scene names, index order
      "pool": ["blender", ...],        # object pool names, index order
      "state": null | SceneState       # null until the first LOAD
    }

  ``reason`` is one of ``rls3.scene.Reason`` (``ok``, ``off_surface``, ``out_of_bounds``,
  ``overlap``, ``not_visible``). ``state`` is ``rls3.scene.SceneState.to_dict()``::

    {"scene_index": 0, "scene_name": "kitchen",
     "objects": [{"name": "mug", "position": [x, y, z], "rotation": [rx, ry, rz],
                  "surface": "counter/0", "size": [sx, sy, sz]}, ... three ...],
     "surfaces": [{"name": "counter/0", "center": [x, y, z_top], "size": [sx, sy, thickness]}],
     "camera": {"position": [x, y, z], "rotation": [roll, pitch, yaw], "fov_y": 60.0,
                "width": 224, "height": 224},
     "bounds": [[xmin, ymin, zmin], [xmax, ymax, zmax]]}

  An object's ``size`` (its world-axis-aligned bounding box, optional: the ``relative``
  observation estimates it from the object's height without it) is the one field a player may
  leave out.

  Object positions are bounding-box centres; surfaces are axis-aligned, ``center`` is the centre
  of the top face; angles in radians, ``fov_y`` in degrees (vertical).

Frames
------
Everything crossing the bridge is in the rls3 world frame: right-handed, z up, metres, radians.
Unity is left-handed and y up; its scripts convert with ``(x, y, z)_rls3 = (x, z, y)_unity`` and
``yaw_rls3 = -radians(eulerAngles.y)``.
"""

from __future__ import annotations

import json
import math
import uuid
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any

import numpy as np

from rls3.bridges.errors import MetadataError
from rls3.scene import Feasibility, Reason, SceneState, Vec3

FORMAT = "rls3-bridge/1"
#: The metadata side channel (C#: ``new Guid("5907816c-7677-5986-8044-dd3eb0a39e4b")``).
CHANNEL_ID = uuid.UUID("5907816c-7677-5986-8044-dd3eb0a39e4b")
BEHAVIOR_NAME = "Rls3Arranger"
ACTION_SIZE = 10
VECTOR_OBS_SIZE = 3
SEQ_MOD = 2**24
SEED_LIMIT = 2**31


class Op(IntEnum):
    """Command codes (action index 0)."""

    NOOP = 0
    LOAD = 1
    MOVE = 2
    SWAP = 3
    RENDER = 4

    @property
    def label(self) -> str:
        return self.name.lower()


#: Metadata ``op`` labels: the commands plus "reset" (the answer to an ML-Agents reset).
OP_LABELS = ("reset",) + tuple(o.label for o in Op)


@dataclass(frozen=True)
class Command:
    """One SceneBackend operation as the agent's action vector."""

    op: Op
    seq: int
    slot: int = 0
    displacement: Vec3 = (0.0, 0.0, 0.0)
    index: int = 0
    seed: int | None = None
    render: bool = False

    def to_action(self) -> np.ndarray:
        """The float32 action vector of length ``ACTION_SIZE``."""
        if self.seed is not None and not 0 <= self.seed < SEED_LIMIT:
            raise ValueError(f"seed {self.seed} cannot cross the bridge: must be in [0, 2**31)")
        hi, lo = (-1, 0) if self.seed is None else (self.seed >> 16, self.seed & 0xFFFF)
        return np.array([int(self.op), self.seq % SEQ_MOD, self.slot, *self.displacement,
                         self.index, hi, lo, 1 if self.render else 0], dtype=np.float32)

    @classmethod
    def from_action(cls, action: Any) -> Command:
        """Decode an action vector; raises ValueError naming the bad entry."""
        a = np.asarray(action, dtype=np.float64).reshape(-1)
        if a.shape != (ACTION_SIZE,):
            raise ValueError(f"command must have {ACTION_SIZE} entries, got {a.shape[0]}")
        if not np.all(np.isfinite(a)):
            raise ValueError(f"command has non-finite entries: {a.tolist()}")

        def whole(i: int, name: str, lo: int, hi: int) -> int:
            v = a[i]
            if abs(v - round(v)) > 1e-3 or not lo <= round(v) <= hi:
                raise ValueError(f"command entry {i} ({name}) must be an integer in [{lo}, {hi}], "
                                 f"got {v}")
            return int(round(v))

        op = Op(whole(0, "op", 0, max(Op)))
        seed_hi = whole(7, "seed_hi", -1, (SEED_LIMIT >> 16) - 1)
        seed_lo = whole(8, "seed_lo", 0, 0xFFFF)
        return cls(op, whole(1, "seq", 0, SEQ_MOD - 1), whole(2, "slot", 0, 2),
                   (float(a[3]), float(a[4]), float(a[5])), whole(6, "index", 0, SEQ_MOD),
                   None if seed_hi < 0 else (seed_hi << 16) | seed_lo,
                   bool(whole(9, "render", 0, 1)))


@dataclass(frozen=True)
class Metadata:
    """The JSON side-channel message that accompanies every answer."""

    seq: int
    op: str
    feasibility: Feasibility
    rendered: bool
    scenes: tuple[str, ...]
    pool: tuple[str, ...]
    state: SceneState | None = None
    error: str | None = None
    format: str = field(default=FORMAT)

    def to_dict(self) -> dict[str, Any]:
        f = self.feasibility
        return {"format": self.format, "seq": self.seq, "op": self.op,
                "feasibility": {"valid": f.valid, "reason": f.reason.value, "detail": f.detail},
                "rendered": self.rendered, "error": self.error, "scenes": list(self.scenes),
                "pool": list(self.pool), "state": None if self.state is None else self.state.to_dict()}

    def to_bytes(self) -> bytes:
        return json.dumps(self.to_dict(), separators=(",", ":"), allow_nan=False).encode("utf-8")

    @classmethod
    def from_bytes(cls, data: bytes) -> Metadata:
        """Parse and validate a payload; raises `MetadataError` naming what is wrong."""
        try:
            d = json.loads(bytes(data).decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as e:
            raise MetadataError(f"metadata is not UTF-8 JSON ({e}); payload starts with "
                                f"{bytes(data[:60])!r}") from e
        return cls.from_dict(d)

    @classmethod
    def from_dict(cls, d: Any) -> Metadata:
        if not isinstance(d, dict):
            raise MetadataError(f"metadata must be a JSON object, got {type(d).__name__}")
        missing = [k for k in ("format", "seq", "op", "feasibility", "rendered", "scenes", "pool",
                               "state") if k not in d]
        if missing:
            raise MetadataError(f"metadata lacks field(s) {missing}; got {sorted(d)}")
        if d["format"] != FORMAT:
            raise MetadataError(f"metadata format {d['format']!r} is not {FORMAT!r}: the Unity "
                                "build and this Python package speak different bridge versions")
        seq = d["seq"]
        if not isinstance(seq, int) or isinstance(seq, bool) or not 0 <= seq < SEQ_MOD:
            raise MetadataError(f"metadata seq must be an integer in [0, 2**24), got {seq!r}")
        if d["op"] not in OP_LABELS:
            raise MetadataError(f"metadata op {d['op']!r} is not one of {OP_LABELS}")
        feas = _feasibility(d["feasibility"])
        if not isinstance(d["rendered"], bool):
            raise MetadataError(f"metadata rendered must be true/false, got {d['rendered']!r}")
        err = d.get("error")
        if err is not None and not isinstance(err, str):
            raise MetadataError(f"metadata error must be null or a string, got {err!r}")
        scenes, pool = _names(d["scenes"], "scenes"), _names(d["pool"], "pool")
        state = None
        if d["state"] is not None:
            if not isinstance(d["state"], dict):
                raise MetadataError(f"metadata state must be null or an object, got {d['state']!r}")
            try:
                state = SceneState.from_dict(d["state"])
            except ValueError as e:
                raise MetadataError(f"metadata state: {e}") from e
            _check_state(state, scenes, pool)
        return cls(seq, d["op"], feas, d["rendered"], scenes, pool, state, err)


def _feasibility(f: Any) -> Feasibility:
    if not isinstance(f, dict) or not isinstance(f.get("valid"), bool):
        raise MetadataError(f"metadata feasibility must be {{valid: bool, reason, detail}}, got {f!r}")
    try:
        reason = Reason(f.get("reason", "ok"))
    except ValueError as e:
        raise MetadataError(f"metadata feasibility reason {f.get('reason')!r} is not one of "
                            f"{[r.value for r in Reason]}") from e
    if f["valid"] != (reason is Reason.OK):
        raise MetadataError(f"metadata feasibility is inconsistent: valid={f['valid']} with "
                            f"reason {reason.value!r}")
    return Feasibility(f["valid"], reason, str(f.get("detail", "")))


def _names(v: Any, what: str) -> tuple[str, ...]:
    if not isinstance(v, list) or not v or not all(isinstance(x, str) and x for x in v):
        raise MetadataError(f"metadata {what} must be a non-empty list of names, got {v!r}")
    if len(set(v)) != len(v):
        raise MetadataError(f"metadata {what} has duplicates: {v}")
    return tuple(v)


def _check_state(s: SceneState, scenes: tuple[str, ...], pool: tuple[str, ...]) -> None:
    if not 0 <= s.scene_index < len(scenes) or scenes[s.scene_index] != s.scene_name:
        raise MetadataError(f"metadata state names scene {s.scene_index} {s.scene_name!r}, "
                            f"but the scenes are {list(scenes)}")
    names = [o.name for o in s.objects]
    if len(names) != 3 or len(set(names)) != 3 or any(n not in pool for n in names):
        raise MetadataError(f"metadata state must hold three distinct pool objects, got {names} "
                            f"(pool {list(pool)})")
    surfaces = {x.name for x in s.surfaces}
    for o in s.objects:
        if o.surface not in surfaces:
            raise MetadataError(f"metadata object {o.name!r} stands on unknown surface "
                                f"{o.surface!r}; surfaces: {sorted(surfaces)}")
    for v in [c for o in s.objects for c in (*o.position, *o.rotation)] + list(s.camera.position):
        if not math.isfinite(v):
            raise MetadataError(f"metadata state has a non-finite coordinate: {s.to_dict()}")
