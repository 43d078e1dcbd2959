"""pybullet (DIRECT) world of one scene: static furniture meshes, movable objects, checks.

Furniture uses its exact triangle mesh (concave, static) so shelves keep their gaps; objects use the
convex hull of their real mesh. Landing is a downward ray cast under the object's footprint, overlap a
penetration test between collision shapes, visibility a ray from the camera to the object centre.
"""

from __future__ import annotations

import ctypes
import os
import sys
from dataclasses import dataclass
from types import ModuleType

import numpy as np
import trimesh


def _import_pybullet() -> ModuleType:
    """pybullet prints its build time (C level, on stderr) when imported; import it with file
    descriptors 1 and 2 pointed at /dev/null so `rls3 -q` and logs stay clean (an import error
    still surfaces: it is raised after the descriptors are restored)."""
    try:
        sys.stdout.flush()
        sys.stderr.flush()
        saved = [os.dup(1), os.dup(2)]
        null = os.open(os.devnull, os.O_WRONLY)
    except (OSError, ValueError):      # no usable descriptors: nothing to keep clean
        import pybullet
        return pybullet
    try:
        os.dup2(null, 1)
        os.dup2(null, 2)
        import pybullet
        ctypes.CDLL(None).fflush(None)   # the banner leaves C's buffers while they point nowhere
    finally:
        for fd, copy in ((1, saved[0]), (2, saved[1])):
            os.dup2(copy, fd)
            os.close(copy)
        os.close(null)
    return pybullet


p = _import_pybullet()

PENETRATION_TOL = 0.004  # metres of interpenetration tolerated (numerical contact slack)
LIFT = 0.002  # objects are placed this far above their support to avoid resting contact


@dataclass
class Body:
    """A pybullet body and its local-frame bounding box (origin at bottom centre)."""

    uid: int
    extents: np.ndarray  # (x, y, z) size in metres


class PhysicsWorld:
    """One pybullet DIRECT client holding one scene."""

    def __init__(self) -> None:
        self.client = p.connect(p.DIRECT)
        p.setGravity(0, 0, -9.81, physicsClientId=self.client)
        self.static: list[int] = []

    def close(self) -> None:
        if self.client >= 0 and p.isConnected(self.client):
            p.disconnect(self.client)
        self.client = -1

    def add_static_mesh(self, mesh: trimesh.Trimesh, position: np.ndarray, yaw: float) -> int:
        """A fixed concave body from a triangle mesh (furniture, floor)."""
        shape = p.createCollisionShape(
            p.GEOM_MESH, vertices=mesh.vertices.tolist(), indices=mesh.faces.reshape(-1).tolist(),
            flags=p.GEOM_FORCE_CONCAVE_TRIMESH, physicsClientId=self.client)
        uid = p.createMultiBody(0, shape, basePosition=position.tolist(),
                                baseOrientation=p.getQuaternionFromEuler((0, 0, yaw)),
                                physicsClientId=self.client)
        self.static.append(uid)
        return uid

    def add_object(self, mesh: trimesh.Trimesh) -> Body:
        """A movable object with the convex hull of its mesh as collision shape, parked far away."""
        hull = mesh.convex_hull
        shape = p.createCollisionShape(p.GEOM_MESH, vertices=hull.vertices.tolist(),
                                       physicsClientId=self.client)
        uid = p.createMultiBody(0, shape, basePosition=(0, 0, -50.0), physicsClientId=self.client)
        return Body(uid, mesh.extents.copy())

    def set_pose(self, body: Body, base: np.ndarray, yaw: float) -> None:
        p.resetBasePositionAndOrientation(body.uid, (base + (0, 0, LIFT)).tolist(),
                                          p.getQuaternionFromEuler((0, 0, yaw)),
                                          physicsClientId=self.client)

    def park(self, body: Body, k: int) -> None:
        """Move an inactive object out of the way (below the floor, spaced apart)."""
        p.resetBasePositionAndOrientation(body.uid, (3.0 * k, 0, -50.0), (0, 0, 0, 1),
                                          physicsClientId=self.client)

    def support_height(self, x: float, y: float, footprint: np.ndarray, z_from: float) -> float | None:
        """Height of the highest static surface under the footprint, cast down from `z_from`.

        `footprint` holds (dx, dy) offsets of the probe points around (x, y). None if nothing is hit.
        """
        starts = [(x + dx, y + dy, z_from) for dx, dy in footprint]
        ends = [(sx, sy, -1.0) for sx, sy, _ in starts]
        hits = p.rayTestBatch(starts, ends, physicsClientId=self.client)
        zs = [h[3][2] for h in hits if h[0] in self.static]
        return max(zs) if zs else None

    def penetration(self, body: Body, others: list[int]) -> tuple[float, int]:
        """Deepest interpenetration (metres, >= 0) of `body` with `others` and the body hit."""
        deepest, who = 0.0, -1
        for uid in others:
            for c in p.getClosestPoints(body.uid, uid, distance=0.0, physicsClientId=self.client):
                if -c[8] > deepest:
                    deepest, who = -c[8], uid
        return deepest, who

    def first_hit(self, start: np.ndarray, end: np.ndarray) -> int:
        """Body uid first hit by the segment start→end (-1 if none)."""
        return int(p.rayTest(start.tolist(), end.tolist(), physicsClientId=self.client)[0][0])
