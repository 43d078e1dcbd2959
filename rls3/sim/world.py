"""Declarative scene files (top-level `sim/scenes/*.yaml`): parsing and validation.

A scene file names a room (size, floor and wall textures), the furniture placed in it (catalog asset,
position, yaw in multiples of 90 degrees, which of the asset's support surfaces are designated), the
camera and the lights. Everything is checked on load so a bad file fails with the field it got wrong.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import yaml

import rls3

SPLITS = ("train", "test")


@dataclass(frozen=True)
class FurnitureSpec:
    """One piece of furniture: catalog `asset`, floor `position` (x, y, z), yaw in degrees
    (a multiple of 90 so surfaces stay axis-aligned) and the indices of its designated surfaces
    (None: all of the asset's surfaces; empty: decoration only)."""

    id: str
    asset: str
    position: tuple[float, float, float]
    yaw: float = 0.0
    surfaces: tuple[int, ...] | None = None


@dataclass(frozen=True)
class CameraSpec:
    position: tuple[float, float, float]
    look_at: tuple[float, float, float]
    fov_y: float = 60.0


@dataclass(frozen=True)
class SceneSpec:
    """A parsed, validated scene file."""

    name: str
    split: str
    room: tuple[float, float, float]
    floor: str
    wall: str
    furniture: tuple[FurnitureSpec, ...]
    camera: CameraSpec
    light_direction: tuple[float, float, float] = (-0.4, 0.3, -1.0)
    light_intensity: float = 3.0
    ambient: float = 0.35
    path: Path | None = None


def scenes_dir() -> Path:
    """Folder of scene files: `$RLS3_SCENES`, else the repository's `sim/scenes`."""
    env = os.environ.get("RLS3_SCENES")
    if env:
        return Path(env)
    repo = Path(rls3.__file__).resolve().parents[1] / "sim" / "scenes"
    if repo.is_dir():  # a source checkout or an editable install
        return repo
    return Path(rls3.__file__).resolve().parent / "_scenes"  # installed wheel


def list_scenes(split: str | None = None) -> tuple[str, ...]:
    """Names of the available scenes (optionally of one split), sorted for a stable index."""
    if split is not None and split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
    d = scenes_dir()
    if not d.is_dir():
        raise FileNotFoundError(f"scene folder {d} does not exist (set RLS3_SCENES?)")
    specs = [load_scene_spec(p) for p in sorted(d.glob("*.yaml"))]
    return tuple(s.name for s in sorted(specs, key=lambda s: (SPLITS.index(s.split), s.name))
                 if split is None or s.split == split)


def resolve_scene(name_or_path: str | Path) -> SceneSpec:
    """Load a scene by name (a file in `scenes_dir()`) or by path."""
    p = Path(name_or_path)
    if p.suffix in (".yaml", ".yml") and p.exists():
        return load_scene_spec(p)
    cand = scenes_dir() / f"{name_or_path}.yaml"
    if not cand.exists():
        known = ", ".join(list_scenes())
        raise ValueError(f"unknown scene {str(name_or_path)!r}; known scenes: {known}")
    return load_scene_spec(cand)


def load_scene_spec(path: str | Path) -> SceneSpec:
    """Parse and validate one scene file; errors name the file and the bad field."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as e:
        raise ValueError(f"cannot read scene file {path}: {e}") from e
    try:
        return _parse(raw, path)
    except (KeyError, TypeError, ValueError) as e:
        raise ValueError(f"malformed scene file {path}: {e}") from e


def _parse(raw: Any, path: Path) -> SceneSpec:
    if not isinstance(raw, dict):
        raise TypeError("top level must be a mapping")
    for key in ("name", "split", "room", "furniture", "camera"):
        if key not in raw:
            raise KeyError(f"missing field {key!r}")
    split = str(raw["split"])
    if split not in SPLITS:
        raise ValueError(f"split {split!r} not in {SPLITS}")
    room = raw["room"]
    size = _floats(room["size"], 3, "room.size")
    if min(size) <= 0:
        raise ValueError(f"room.size must be positive, got {size}")
    furniture = []
    seen: set[str] = set()
    for i, f in enumerate(raw["furniture"]):
        fid = str(f.get("id", f"{f['asset']}_{i}"))
        if fid in seen:
            raise ValueError(f"duplicate furniture id {fid!r}")
        seen.add(fid)
        yaw = float(f.get("yaw", 0.0))
        if abs(yaw / 90.0 - round(yaw / 90.0)) > 1e-6:
            raise ValueError(f"furniture {fid!r}: yaw {yaw} is not a multiple of 90 degrees")
        pos = _floats(f["position"], None, f"furniture {fid!r} position")
        if len(pos) == 2:
            pos = (*pos, 0.0)
        if len(pos) != 3:
            raise ValueError(f"furniture {fid!r}: position must have 2 or 3 numbers")
        surf = f.get("surfaces")
        surfaces = None if surf is None or surf == "all" else tuple(int(s) for s in surf)
        furniture.append(FurnitureSpec(fid, str(f["asset"]), pos, yaw, surfaces))
    cam = raw["camera"]
    camera = CameraSpec(_floats3(cam["position"], "camera.position"),
                        _floats3(cam["look_at"], "camera.look_at"), float(cam.get("fov_y", 60.0)))
    if not 10.0 <= camera.fov_y <= 120.0:
        raise ValueError(f"camera.fov_y {camera.fov_y} outside [10, 120] degrees")
    light = raw.get("light", {})
    return SceneSpec(
        name=str(raw["name"]), split=split, room=size,  # type: ignore[arg-type]
        floor=str(room.get("floor", "")), wall=str(room.get("wall", "")),
        furniture=tuple(furniture), camera=camera,
        light_direction=_floats3(light.get("direction", (-0.4, 0.3, -1.0)), "light.direction"),
        light_intensity=float(light.get("intensity", 3.0)), ambient=float(light.get("ambient", 0.35)),
        path=path)


def _floats(v: Any, n: int | None, what: str) -> tuple[float, ...]:
    try:
        t = tuple(float(x) for x in v)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{what} must be a list of numbers, got {v!r}") from e
    if n is not None and len(t) != n:
        raise ValueError(f"{what} must have {n} numbers, got {v!r}")
    return t


def _floats3(v: Any, what: str) -> tuple[float, float, float]:
    """`_floats(v, 3, what)`, typed as the 3-vector its length check guarantees."""
    return cast("tuple[float, float, float]", _floats(v, 3, what))
