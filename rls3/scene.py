"""The scene seam: the `SceneBackend` Protocol and the typed records every backend returns.

World frame: right-handed, z up, metres, angles in radians. The embedded pybullet/pyrender simulator
(`rls3.sim`) and the Unity bridge (`rls3.bridges`) both implement `SceneBackend`; nothing above this
seam (env, captions, VLMs, loop) knows which one it talks to.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from enum import Enum
from typing import Any, Protocol, cast, runtime_checkable

import numpy as np

Vec3 = tuple[float, float, float]

#: Image size in pixels (square) wherever none is given: the paper's, and the VLMs' input size.
DEFAULT_IMAGE_SIZE = 224


class Reason(str, Enum):
    """Why a proposed layout is (in)feasible."""

    OK = "ok"
    OFF_SURFACE = "off_surface"
    OUT_OF_BOUNDS = "out_of_bounds"
    OVERLAP = "overlap"
    NOT_VISIBLE = "not_visible"


@dataclass(frozen=True)
class Feasibility:
    """Result of a move or swap: whether the new layout is valid and, if not, why."""

    valid: bool
    reason: Reason = Reason.OK
    detail: str = ""

    @classmethod
    def ok(cls) -> Feasibility:
        return cls(True, Reason.OK)

    @classmethod
    def fail(cls, reason: Reason, detail: str = "") -> Feasibility:
        return cls(False, reason, detail)


@dataclass(frozen=True)
class ObjectPose:
    """One active object: its name, centre position, Euler xyz rotation, supporting surface and,
    when the backend reports it, the size (x, y, z) of its world-axis-aligned bounding box."""

    name: str
    position: Vec3
    rotation: Vec3
    surface: str
    size: Vec3 | None = None

    def to_dict(self) -> dict[str, Any]:
        d = {"name": self.name, "position": list(self.position),
             "rotation": list(self.rotation), "surface": self.surface}
        if self.size is not None:
            d["size"] = list(self.size)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ObjectPose:
        size = d.get("size")
        return cls(str(d["name"]), _vec3(d["position"], "position"), _vec3(d["rotation"], "rotation"),
                   str(d["surface"]), None if size is None else _vec3(size, "size"))


@dataclass(frozen=True)
class Surface:
    """A designated support surface: `center` is the centre of its top face, `size` its extent
    (x, y) and slab thickness (z), axis-aligned in the world frame."""

    name: str
    center: Vec3
    size: Vec3

    @property
    def top(self) -> float:
        return self.center[2]

    def contains_xy(self, x: float, y: float, margin: float = 0.0) -> bool:
        """True if (x, y) lies on the top face, at least `margin` metres inside its edges."""
        hx, hy = self.size[0] / 2 - margin, self.size[1] / 2 - margin
        return abs(x - self.center[0]) <= hx and abs(y - self.center[1]) <= hy

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "center": list(self.center), "size": list(self.size)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Surface:
        return cls(str(d["name"]), _vec3(d["center"], "center"), _vec3(d["size"], "size"))


@dataclass(frozen=True)
class Camera:
    """Pinhole camera. `rotation` is (roll, pitch, yaw): the camera looks along +x turned by yaw
    about z and pitched by pitch (negative looks down); `fov_y` is the vertical field of view in
    degrees and `width`/`height` the size of the image it took (`SceneState.rendered_at`), which
    `intrinsics` and `project` refer to."""

    position: Vec3
    rotation: Vec3
    fov_y: float = 60.0
    width: int = DEFAULT_IMAGE_SIZE
    height: int = DEFAULT_IMAGE_SIZE

    @property
    def forward(self) -> np.ndarray:
        """Unit viewing direction in the world frame."""
        _, pitch, yaw = self.rotation
        return np.array([math.cos(pitch) * math.cos(yaw), math.cos(pitch) * math.sin(yaw),
                         math.sin(pitch)])

    @property
    def intrinsics(self) -> np.ndarray:
        """3x3 pinhole matrix K for `width` x `height` pixels (square pixels)."""
        fy = 0.5 * self.height / math.tan(math.radians(self.fov_y) / 2)
        return np.array([[fy, 0.0, self.width / 2], [0.0, fy, self.height / 2], [0.0, 0.0, 1.0]])

    def project(self, points: np.ndarray | Sequence[Vec3]) -> np.ndarray:
        """Pixel coordinates (u right, v down; (N, 2)) of world points in front of the camera,
        through `intrinsics`: where an object's centre appears in the image."""
        p = np.atleast_2d(np.asarray(points, dtype=np.float64)) - np.asarray(self.position)
        f = self.forward
        right = np.cross(f, (0.0, 0.0, 1.0))
        right /= np.linalg.norm(right)
        down = -np.cross(right, f)
        cam = np.stack([p @ right, p @ down, p @ f], axis=1)  # x right, y down, z along the view
        if np.any(cam[:, 2] <= 0):
            raise ValueError("cannot project a point behind the camera")
        uvw = cam @ self.intrinsics.T
        return uvw[:, :2] / uvw[:, 2:]

    @classmethod
    def looking_at(cls, position: Vec3, target: Vec3, fov_y: float = 60.0,
                   width: int = DEFAULT_IMAGE_SIZE, height: int = DEFAULT_IMAGE_SIZE) -> Camera:
        d = np.asarray(target, float) - np.asarray(position, float)
        n = float(np.linalg.norm(d))
        if n < 1e-9:
            raise ValueError(f"camera target {target} coincides with its position {position}")
        yaw = math.atan2(d[1], d[0])
        pitch = math.asin(float(np.clip(d[2] / n, -1.0, 1.0)))
        return cls(cast(Vec3, tuple(map(float, position))), (0.0, pitch, yaw), fov_y, width, height)

    def to_dict(self) -> dict[str, Any]:
        return {"position": list(self.position), "rotation": list(self.rotation),
                "fov_y": self.fov_y, "width": self.width, "height": self.height}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Camera:
        return cls(_vec3(d["position"], "position"), _vec3(d["rotation"], "rotation"),
                   float(d.get("fov_y", 60.0)), int(d.get("width", DEFAULT_IMAGE_SIZE)),
                   int(d.get("height", DEFAULT_IMAGE_SIZE)))


@dataclass(frozen=True)
class SceneState:
    """Ground truth of the current layout: scene, the three active objects, surfaces and camera."""

    scene_index: int
    scene_name: str
    objects: tuple[ObjectPose, ...]
    surfaces: tuple[Surface, ...]
    camera: Camera
    bounds: tuple[Vec3, Vec3] = field(default=((-5.0, -5.0, 0.0), (5.0, 5.0, 3.0)))

    def object(self, name: str) -> ObjectPose:
        for o in self.objects:
            if o.name == name:
                return o
        raise KeyError(f"object {name!r} is not active; active: {[o.name for o in self.objects]}")

    def surface(self, name: str) -> Surface:
        for s in self.surfaces:
            if s.name == name:
                return s
        raise KeyError(f"surface {name!r} not in scene {self.scene_name!r}; "
                       f"surfaces: {[s.name for s in self.surfaces]}")

    def __deepcopy__(self, memo: dict[int, Any]) -> SceneState:
        """Itself: a state is frozen and holds only numbers, strings and tuples. SB3's
        DummyVecEnv deep-copies every step's info, which holds the step's frame and its state
        (0.4 ms a valid step before this; benchmarks/results/pretrain_deepcopy.json)."""
        return self

    def rendered_at(self, width: int, height: int) -> SceneState:
        """This state with the camera sized to the image rendered from it (what a frame's
        ground truth records)."""
        return replace(self, camera=replace(self.camera, width=int(width), height=int(height)))

    def to_dict(self) -> dict[str, Any]:
        return {"scene_index": self.scene_index, "scene_name": self.scene_name,
                "objects": [o.to_dict() for o in self.objects],
                "surfaces": [s.to_dict() for s in self.surfaces],
                "camera": self.camera.to_dict(),
                "bounds": [list(self.bounds[0]), list(self.bounds[1])]}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SceneState:
        try:
            b = d.get("bounds", [[-5, -5, 0], [5, 5, 3]])
            return cls(int(d["scene_index"]), str(d["scene_name"]),
                       tuple(ObjectPose.from_dict(o) for o in d["objects"]),
                       tuple(Surface.from_dict(s) for s in d["surfaces"]),
                       Camera.from_dict(d["camera"]),
                       (_vec3(b[0], "bounds"), _vec3(b[1], "bounds")))
        except (KeyError, TypeError, IndexError) as e:
            raise ValueError(f"malformed scene state record: {e!r}") from e


@runtime_checkable
class SceneBackend(Protocol):
    """What the env needs from a simulator: load scenes, move/swap objects, check, render."""

    @property
    def scene_names(self) -> tuple[str, ...]:
        """Names of the scenes this backend cycles through, in index order."""
        ...

    @property
    def object_pool(self) -> tuple[str, ...]:
        """Names of all objects that can become active (the paper's pool of nine)."""
        ...

    def load_scene(self, index: int, seed: int | None = None) -> SceneState:
        """Load scene `index` and place three pool objects at random valid spots (seeded)."""
        ...

    def move_object(self, slot: int, displacement: Vec3) -> Feasibility:
        """Move active object `slot` (0-2) by `displacement` metres; it lands on the surface
        under it. The move is kept only if feasible, otherwise the layout is left unchanged."""
        ...

    def swap_object(self, slot: int, name: str) -> Feasibility:
        """Replace active object `slot` by pool object `name` at the same spot (kept only if
        feasible)."""
        ...

    def state(self) -> SceneState:
        """The current ground truth."""
        ...

    def render(self, width: int, height: int) -> np.ndarray:
        """An RGB uint8 image (height, width, 3) from the scene camera."""
        ...

    def close(self) -> None:
        """Release simulator and renderer resources."""
        ...


def _vec3(v: Any, what: str) -> Vec3:
    try:
        t = tuple(float(x) for x in v)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{what} must be 3 numbers, got {v!r}") from e
    if len(t) != 3:
        raise ValueError(f"{what} must be 3 numbers, got {v!r}")
    return t
