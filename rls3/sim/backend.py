"""The embedded `SceneBackend`: pybullet for landing/overlap/visibility checks, pyrender for images.

Each scene is built once, on first use, into its own pybullet client and pyrender scene, so cycling
scenes inside an episode costs nothing after the first pass. Object positions are kept as the bottom
centre internally and reported as bounding-box centres in `SceneState` (what captions compare).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import cast

import numpy as np
import trimesh
from PIL import Image

from rls3.assets import AssetEntry, Catalog, asset_path, load_catalog, load_mesh
from rls3.scene import Camera, Feasibility, ObjectPose, Reason, SceneState, Surface, Vec3
from rls3.sim.physics import PENETRATION_TOL, Body, PhysicsWorld
from rls3.sim.render import Renderer, camera_pose, pose_matrix, pyrender, scene_meshes, textured_quad
from rls3.sim.world import SceneSpec, list_scenes, resolve_scene

log = logging.getLogger(__name__)

DEFAULT_POOL = ("blender", "plate", "small_pot", "yellow_bowl", "small_pan", "bottle", "mug", "cup",
                "vase")
SNAP = 0.05  # an object may be dropped onto a surface up to this far below its target height
SURFACE_TOL = 0.015  # landing height must match a designated surface top within this
PLACE_TRIES = 400


@dataclass
class _Slot:
    name: str
    base: np.ndarray  # bottom centre, world frame
    yaw: float
    surface: str


@dataclass
class _World:
    """Everything built for one scene."""

    spec: SceneSpec
    physics: PhysicsWorld
    scene: pyrender.Scene
    surfaces: tuple[Surface, ...]
    bodies: dict[str, Body]
    nodes: dict[str, pyrender.Node]
    camera_node: pyrender.Node
    camera: Camera
    view: _View
    slots: list[_Slot] = field(default_factory=list)
    shown: dict[str, tuple[np.ndarray, float]] = field(default_factory=dict)  # in `scene` now


@dataclass(frozen=True)
class _View:
    """The camera's fixed frame for the visibility test, worked out once per scene (it was
    rebuilt for every candidate spot)."""

    position: np.ndarray
    forward: np.ndarray
    right: np.ndarray
    up: np.ndarray
    tan_half_fov: float

    @classmethod
    def of(cls, cam: Camera) -> _View:
        pose = camera_pose(cam)  # columns: right, up, -forward
        return cls(np.asarray(cam.position), -pose[:3, 2], pose[:3, 0], pose[:3, 1],
                   math.tan(math.radians(cam.fov_y) / 2))


def resolve_scenes(scenes: Sequence[str] | str) -> list[SceneSpec]:
    """The scene specs a backend over `scenes` (a split name, one scene or a list) cycles
    through; ValueError naming an unknown scene."""
    names = list_scenes(scenes) if isinstance(scenes, str) and scenes in ("train", "test") \
        else ([scenes] if isinstance(scenes, str) else list(scenes))
    if not names:
        raise ValueError("no scenes given")
    return [resolve_scene(n) for n in names]


def resolve_pool(objects: Sequence[str] | None, catalog: Catalog) -> dict[str, AssetEntry]:
    """The object pool (None: `DEFAULT_POOL`) with each object's catalog entry, in pool order;
    ValueError for fewer than 3, unknown or repeated objects."""
    known = {e.id: e for e in catalog.entries if e.kind == "object"}
    pool = list(objects) if objects is not None else [o for o in DEFAULT_POOL if o in known]
    if len(pool) < 3:
        raise ValueError(f"need at least 3 objects in the pool, got {pool}")
    for o in pool:
        if o not in known:
            raise ValueError(f"unknown object {o!r}; known objects: {sorted(known)}")
    if len(set(pool)) != len(pool):
        raise ValueError(f"object pool has duplicates: {pool}")
    return {o: known[o] for o in pool}


class SimBackend:
    """pybullet + pyrender implementation of `rls3.scene.SceneBackend` over `sim/scenes/*.yaml`."""

    def __init__(self, scenes: Sequence[str] | str = "train", objects: Sequence[str] | None = None,
                 shadows: bool = True, catalog: Catalog | None = None) -> None:
        self.catalog = catalog or load_catalog()
        self._specs = resolve_scenes(scenes)
        self._object_entries = resolve_pool(objects, self.catalog)
        self._pool = tuple(self._object_entries)
        self._meshes: dict[str, list[tuple[pyrender.Mesh, np.ndarray]]] = {}
        self._trimesh: dict[str, trimesh.Trimesh] = {}
        self._worlds: dict[int, _World] = {}
        self._renderer = Renderer(shadows=shadows)
        self._index = -1

    # -- SceneBackend -------------------------------------------------------------------------
    @property
    def scene_names(self) -> tuple[str, ...]:
        return tuple(s.name for s in self._specs)

    @property
    def object_pool(self) -> tuple[str, ...]:
        return self._pool

    def load_scene(self, index: int, seed: int | None = None) -> SceneState:
        if not 0 <= index < len(self._specs):
            raise ValueError(f"scene index {index} out of range 0..{len(self._specs) - 1} "
                             f"({', '.join(self.scene_names)})")
        self._index = index
        w = self._world()
        rng = np.random.default_rng(seed)
        for slot in w.slots:
            self._deactivate(w, slot.name)
        w.slots = []
        chosen = rng.choice(len(self._pool), size=3, replace=False)
        for k in chosen:
            name = self._pool[int(k)]
            if not self._place_randomly(w, name, rng):
                raise RuntimeError(f"scene {w.spec.name!r}: found no valid spot for {name!r} in "
                                   f"{PLACE_TRIES} tries; check its designated surfaces")
        return self.state()

    def move_object(self, slot: int, displacement: Vec3) -> Feasibility:
        w = self._world()
        self._check_slot(slot)
        d = np.asarray(displacement, dtype=float)
        if d.shape != (3,) or not np.all(np.isfinite(d)):
            raise ValueError(f"displacement must be 3 finite numbers, got {displacement!r}")
        s = w.slots[slot]
        return self._try_place(w, slot, s.name, s.base + d, s.yaw)

    def swap_object(self, slot: int, name: str) -> Feasibility:
        w = self._world()
        self._check_slot(slot)
        if name not in self._pool:
            raise ValueError(f"unknown object {name!r}; pool: {list(self._pool)}")
        if any(s.name == name for s in w.slots):
            raise ValueError(f"object {name!r} is already active")
        old = w.slots[slot]
        w.physics.park(w.bodies[old.name], self._pool.index(old.name))  # out of the ray tests
        res = self._try_place(w, slot, name, old.base.copy(), old.yaw, swap_from=old)
        if res.valid:
            self._deactivate(w, old.name)
        else:
            self._deactivate(w, name)
            w.physics.set_pose(w.bodies[old.name], old.base, old.yaw)
        return res

    def state(self) -> SceneState:
        w = self._world()
        objs = []
        for s in w.slots:
            ext = w.bodies[s.name].extents
            centre = cast(Vec3, tuple(map(float, s.base + (0, 0, ext[2] / 2))))
            objs.append(ObjectPose(s.name, centre,
                                   (0.0, 0.0, float(s.yaw)), s.surface, _aabb_size(ext, s.yaw)))
        sx, sy, sz = w.spec.room
        return SceneState(self._index, w.spec.name, tuple(objs), w.surfaces, self._camera(w),
                          ((-sx / 2, -sy / 2, 0.0), (sx / 2, sy / 2, sz)))

    def render(self, width: int, height: int) -> np.ndarray:
        if width <= 0 or height <= 0:
            raise ValueError(f"image size must be positive, got {width}x{height}")
        w = self._world()
        self._show(w)
        w.camera_node.camera.aspectRatio = width / height
        return self._renderer.render(w.scene, width, height)

    def close(self) -> None:
        self._renderer.close()
        for w in self._worlds.values():
            w.physics.close()
        self._worlds.clear()

    # -- helpers -------------------------------------------------------------------------------
    def object_extents(self, name: str) -> np.ndarray:
        """Bounding-box size (x, y, z) of pool object `name` in metres."""
        return self._object_mesh(name).extents.copy()

    def _check_slot(self, slot: int) -> None:
        if slot not in (0, 1, 2):
            raise ValueError(f"slot must be 0, 1 or 2, got {slot!r}")

    def _world(self) -> _World:
        if self._index < 0:
            raise RuntimeError("no scene loaded: call load_scene() first")
        if self._index not in self._worlds:
            self._worlds[self._index] = self._build(self._specs[self._index])
        return self._worlds[self._index]

    def _camera(self, w: _World) -> Camera:
        return w.camera

    def _try_place(self, w: _World, slot: int, name: str, target: np.ndarray, yaw: float,
                   swap_from: _Slot | None = None) -> Feasibility:
        """Drop `name` at `target` (bottom centre); keep it if feasible, else restore."""
        prev = swap_from or w.slots[slot]
        body = w.bodies[name]
        res, base, surface = self._feasible(w, slot, body, target, yaw)
        if res.valid:
            w.slots[slot] = _Slot(name, base, yaw, surface)
        else:
            if swap_from is None:
                w.physics.set_pose(body, prev.base, prev.yaw)
        return res

    def _feasible(self, w: _World, slot: int, body: Body, target: np.ndarray, yaw: float
                  ) -> tuple[Feasibility, np.ndarray, str]:
        sx, sy, sz = w.spec.room
        hx, hy = _aabb_half(body.extents, yaw)
        x, y, z = map(float, target)
        none = np.zeros(3)
        if abs(x) > sx / 2 - hx or abs(y) > sy / 2 - hy or not 0.0 <= z <= sz - body.extents[2]:
            return Feasibility.fail(Reason.OUT_OF_BOUNDS, f"target {target.round(3).tolist()} "
                                    f"outside room {w.spec.room}"), none, ""
        probes = np.array([(0, 0), (hx, hy), (-hx, hy), (hx, -hy), (-hx, -hy)]) * 0.9
        top = w.physics.support_height(x, y, probes, z + SNAP)
        if top is None:
            return Feasibility.fail(Reason.OFF_SURFACE, "nothing under the object"), none, ""
        surface = next((s for s in w.surfaces if abs(s.top - top) <= SURFACE_TOL
                        and abs(x - s.center[0]) <= s.size[0] / 2 - hx
                        and abs(y - s.center[1]) <= s.size[1] / 2 - hy), None)
        if surface is None:
            return Feasibility.fail(Reason.OFF_SURFACE, f"lands at z={top:.3f} on no designated "
                                    "surface"), none, ""
        base = np.array([x, y, surface.top])
        w.physics.set_pose(body, base, yaw)
        others = w.physics.static + [w.bodies[s.name].uid for i, s in enumerate(w.slots)
                                     if i != slot and s.name in w.bodies]
        others = [u for u in others if u != body.uid]
        depth, _ = w.physics.penetration(body, others)
        if depth > PENETRATION_TOL:
            return Feasibility.fail(Reason.OVERLAP, f"penetrates {depth * 100:.1f} cm"), none, ""
        if not self._visible(w, body, base):
            return Feasibility.fail(Reason.NOT_VISIBLE, "outside the frame or occluded"), none, ""
        return Feasibility.ok(), base, surface.name

    def _visible(self, w: _World, body: Body, base: np.ndarray) -> bool:
        v = w.view
        centre = base + (0, 0, body.extents[2] / 2)
        rel = centre - v.position
        depth = rel @ v.forward
        if depth <= 0.05:
            return False
        t = v.tan_half_fov
        margin = 0.92  # keep the centre a little inside the frame (aspect 1 images)
        if abs(rel @ v.right) / depth > t * margin or abs(rel @ v.up) / depth > t * margin:
            return False
        return w.physics.first_hit(v.position, centre) == body.uid

    def _place_randomly(self, w: _World, name: str, rng: np.random.Generator) -> bool:
        body = w.bodies[name]
        areas = np.array([s.size[0] * s.size[1] for s in w.surfaces])
        w.slots.append(_Slot(name, np.array([0.0, 0.0, -50.0]), 0.0, ""))
        slot = len(w.slots) - 1
        for _ in range(PLACE_TRIES):
            s = w.surfaces[int(rng.choice(len(w.surfaces), p=areas / areas.sum()))]
            yaw = float(rng.uniform(-math.pi, math.pi))
            hx, hy = _aabb_half(body.extents, yaw)
            ux, uy = s.size[0] / 2 - hx, s.size[1] / 2 - hy
            if ux <= 0 or uy <= 0:
                continue
            target = np.array([s.center[0] + rng.uniform(-ux, ux), s.center[1] + rng.uniform(-uy, uy),
                               s.top])
            res, base, surf = self._feasible(w, slot, body, target, yaw)
            if res.valid:
                w.slots[slot] = _Slot(name, base, yaw, surf)
                return True
        return False

    def _deactivate(self, w: _World, name: str) -> None:
        w.physics.park(w.bodies[name], self._pool.index(name))

    def _show(self, w: _World) -> None:
        """Bring the pyrender scene to the active slots, only when an image is asked for: steps
        that render nothing (pre-training, invalid moves) leave the scene graph alone."""
        want = {s.name: (s.base, s.yaw) for s in w.slots}
        for name in [n for n in w.shown if n not in want]:
            w.scene.remove_node(w.nodes[name])
            del w.shown[name]
        for name, (base, yaw) in want.items():
            shown = w.shown.get(name)
            if shown is not None and shown[1] == yaw and np.array_equal(shown[0], base):
                continue
            if shown is None:
                w.nodes[name].matrix = pose_matrix(base, yaw)
                w.scene.add_node(w.nodes[name])
            else:
                w.scene.set_pose(w.nodes[name], pose_matrix(base, yaw))
            w.shown[name] = (base.copy(), yaw)

    # -- building ------------------------------------------------------------------------------
    def _entry(self, asset_id: str, kind: str) -> AssetEntry:
        for e in self.catalog.entries:
            if e.id == asset_id and e.kind == kind:
                return e
        known = sorted(e.id for e in self.catalog.entries if e.kind == kind)
        raise ValueError(f"unknown {kind} asset {asset_id!r}; known: {known}")

    def _asset_meshes(self, entry: AssetEntry) -> list[tuple[pyrender.Mesh, np.ndarray]]:
        if entry.id not in self._meshes:
            self._meshes[entry.id] = scene_meshes(load_mesh(entry))
        return self._meshes[entry.id]

    def _object_mesh(self, name: str) -> trimesh.Trimesh:
        if name not in self._trimesh:
            self._trimesh[name] = _as_mesh(load_mesh(self._object_entries[name]))
        return self._trimesh[name]

    def _texture(self, asset_id: str) -> tuple[Image.Image | None, float]:
        """The texture image and the metres one repeat covers (no texture: None, 1)."""
        if not asset_id:
            return None, 1.0
        entry = self._entry(asset_id, "texture")
        return Image.open(asset_path(entry)).convert("RGB"), float(entry.size[0]) or 1.0

    def _build(self, spec: SceneSpec) -> _World:
        log.info("building scene %s", spec.name)
        phys = PhysicsWorld()
        scene = pyrender.Scene(ambient_light=np.full(3, spec.ambient), bg_color=(0, 0, 0))
        sx, sy, sz = spec.room
        (floor_tex, floor_tile), (wall_tex, wall_tile) = self._texture(spec.floor), self._texture(spec.wall)
        floor = trimesh.creation.box((sx, sy, 0.1))
        phys.add_static_mesh(floor, np.array([0, 0, -0.05]), 0.0)
        scene.add(textured_quad((sx, sy), floor_tex, floor_tile, (0.6, 0.5, 0.4)), name="floor")
        for k, (pos, rot, size) in enumerate(_walls(sx, sy, sz)):
            m = np.eye(4)
            m[:3, :3], m[:3, 3] = rot, pos
            scene.add(textured_quad(size, wall_tex, wall_tile, (0.85, 0.85, 0.8)), pose=m,
                      name=f"wall/{k}")
        surfaces: list[Surface] = []
        for f in spec.furniture:
            entry = self._entry(f.asset, "furniture")
            yaw = math.radians(f.yaw)
            pos = np.asarray(f.position, dtype=float)
            phys.add_static_mesh(_as_mesh(load_mesh(entry)), pos, yaw)
            for k, (mesh, local) in enumerate(self._asset_meshes(entry)):
                scene.add(mesh, pose=pose_matrix(pos, yaw) @ local, name=f"{f.id}/{k:03d}")
            picks = range(len(entry.surfaces)) if f.surfaces is None else f.surfaces
            for k in picks:
                if not 0 <= k < len(entry.surfaces):
                    raise ValueError(f"scene {spec.name!r}: furniture {f.id!r} has no surface {k} "
                                     f"(it has {len(entry.surfaces)})")
                ss = entry.surfaces[k]
                c, s_ = math.cos(yaw), math.sin(yaw)
                cx, cy = ss.center
                center = (pos[0] + c * cx - s_ * cy, pos[1] + s_ * cx + c * cy, pos[2] + ss.z)
                size = ss.size if round(f.yaw / 90) % 2 == 0 else (ss.size[1], ss.size[0])
                surfaces.append(Surface(f"{f.id}/{k}", tuple(map(float, center)),  # type: ignore[arg-type]
                                        (float(size[0]), float(size[1]), 0.02)))
        if not surfaces:
            raise ValueError(f"scene {spec.name!r} designates no surfaces")
        bodies, nodes = {}, {}
        for name in self._pool:
            bodies[name] = phys.add_object(self._object_mesh(name))
            phys.park(bodies[name], self._pool.index(name))
            node = pyrender.Node(name=name, matrix=np.eye(4))
            for k, (mesh, local) in enumerate(self._asset_meshes(self._object_entries[name])):
                node.children.append(pyrender.Node(name=f"{name}/{k:03d}", mesh=mesh, matrix=local))
            nodes[name] = node
        d = np.asarray(spec.light_direction, dtype=float)
        d /= np.linalg.norm(d)
        light_pose = camera_pose(Camera((0.0, 0.0, 0.0), (0.0, math.asin(d[2]), math.atan2(d[1], d[0]))))
        scene.add(pyrender.DirectionalLight(color=np.ones(3), intensity=spec.light_intensity),
                  pose=light_pose)
        lamp = np.eye(4)
        lamp[:3, 3] = (0, 0, sz - 0.3)
        scene.add(pyrender.PointLight(color=np.ones(3), intensity=spec.light_intensity * 2), pose=lamp)
        cam = self._camera_for(spec)
        cam_node = scene.add(pyrender.PerspectiveCamera(yfov=math.radians(cam.fov_y), znear=0.05,
                                                        zfar=50.0), pose=camera_pose(cam))
        return _World(spec, phys, scene, tuple(surfaces), bodies, nodes, cam_node, cam,
                      _View.of(cam))

    def _camera_for(self, spec: SceneSpec) -> Camera:
        c = spec.camera
        return Camera.looking_at(c.position, c.look_at, c.fov_y)


def _as_mesh(tscene: trimesh.Scene | trimesh.Trimesh) -> trimesh.Trimesh:
    """All geometry of a trimesh scene as one mesh in the asset frame."""
    if isinstance(tscene, trimesh.Trimesh):
        return tscene
    # a whole scene concatenates to one Trimesh; the stubs type both calls as Geometry lists
    return cast(trimesh.Trimesh, tscene.to_geometry() if hasattr(tscene, "to_geometry")
                else tscene.dump(concatenate=True))


def _aabb_half(extents: np.ndarray, yaw: float) -> tuple[float, float]:
    """Half sizes (x, y) of the world-aligned box around a footprint turned by `yaw`."""
    c, s = abs(math.cos(yaw)), abs(math.sin(yaw))
    return (c * extents[0] + s * extents[1]) / 2, (s * extents[0] + c * extents[1]) / 2


def _aabb_size(extents: np.ndarray, yaw: float) -> tuple[float, float, float]:
    """Size (x, y, z) of the world-aligned bounding box of an object turned by `yaw`."""
    hx, hy = _aabb_half(extents, yaw)
    return (float(2 * hx), float(2 * hy), float(extents[2]))


def _walls(sx: float, sy: float, sz: float) -> list[tuple[np.ndarray, np.ndarray, tuple[float, float]]]:
    """Pose (position, rotation) and size of the four inward-facing walls of a room."""
    out = []
    for pos, normal, width in (((0, sy / 2, sz / 2), (0, -1, 0), sx), ((0, -sy / 2, sz / 2), (0, 1, 0), sx),
                               ((sx / 2, 0, sz / 2), (-1, 0, 0), sy), ((-sx / 2, 0, sz / 2), (1, 0, 0), sy)):
        n = np.asarray(normal, dtype=float)
        up = np.array([0.0, 0.0, 1.0])
        x_axis = np.cross(up, n)
        rot = np.stack([x_axis, up, n], axis=1)
        out.append((np.asarray(pos, dtype=float), rot, (width, sz)))
    return out
