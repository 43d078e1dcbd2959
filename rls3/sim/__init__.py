"""The embedded simulator: pybullet physics and checks, pyrender images, declarative scene files."""

from rls3.sim.backend import DEFAULT_POOL, SimBackend
from rls3.sim.world import SceneSpec, list_scenes, load_scene_spec, resolve_scene

__all__ = ["DEFAULT_POOL", "SceneSpec", "SimBackend", "list_scenes", "load_scene_spec", "resolve_scene"]
