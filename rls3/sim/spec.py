"""The embedded simulator's `BackendSpec` (`backend.name: sim`), registered on import; pybullet
and pyrender load only when a `SimBackend` is built or its names are checked."""

from __future__ import annotations

import inspect

from rls3.backends import BackendConfig, BackendSpec, register_backend
from rls3.configerror import ConfigError, require
from rls3.scene import SceneBackend


def sim_backend(cfg: BackendConfig, split: str) -> SceneBackend:
    """A `SimBackend` over the scenes of `split`."""
    from rls3.sim.backend import SimBackend

    scenes = cfg.train_scenes if split == "train" else cfg.test_scenes
    return SimBackend(scenes if isinstance(scenes, str) else list(scenes),
                      objects=list(cfg.objects) if cfg.objects is not None else None,
                      shadows=cfg.shadows, **cfg.options)


def check_sim(cfg: BackendConfig) -> None:
    """Scene names, object names and options of the embedded simulator (the rules `SimBackend`
    applies, without building it)."""
    from rls3.assets import AssetError, load_catalog
    from rls3.sim.backend import SimBackend, resolve_pool, resolve_scenes

    allowed = [p for p in inspect.signature(SimBackend.__init__).parameters
               if p not in ("self", "scenes", "objects", "shadows", "catalog")]
    bad = sorted(set(cfg.options) - set(allowed))
    require(not bad, "backend.options", cfg.options,
            f"options the sim backend takes (allowed: {allowed or 'none'}; unknown: {bad})")
    for key in ("train_scenes", "test_scenes"):
        v = getattr(cfg, key)
        try:
            resolve_scenes(v)
        except ValueError as e:
            raise ConfigError(f"invalid backend.{key}={v!r}: {e}") from e
    if cfg.objects is not None:
        try:
            resolve_pool(cfg.objects, load_catalog())
        except (ValueError, AssetError) as e:
            raise ConfigError(f"invalid backend.objects={list(cfg.objects)!r}: {e}") from e


def sim_image_limit() -> int:
    """The embedded renderer's largest image side on this machine (its OpenGL limits)."""
    from rls3.sim.render import max_image_size

    return max_image_size()


SIM_BACKEND = register_backend(BackendSpec(
    name="sim", factory=sim_backend, check=check_sim, image_limit=sim_image_limit))
