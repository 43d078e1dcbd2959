"""The embedded simulator: pybullet physics and checks, pyrender images, declarative scene files.

Importing the package is light (its `BackendSpec` in `rls3.sim.spec` is read by every config);
pybullet and pyrender load with the first use of `SimBackend` or `DEFAULT_POOL`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from rls3.sim.world import SceneSpec, list_scenes, load_scene_spec, resolve_scene

if TYPE_CHECKING:
    from rls3.sim.backend import DEFAULT_POOL, SimBackend

__all__ = ["DEFAULT_POOL", "SceneSpec", "SimBackend", "list_scenes", "load_scene_spec", "resolve_scene"]


def __getattr__(name: str) -> Any:
    if name in ("DEFAULT_POOL", "SimBackend"):
        from rls3.sim import backend

        return getattr(backend, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
