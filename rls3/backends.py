"""Scene backends as data, as `rls3.vlm` has its VLMs: a `BackendSpec` per backend says how to
build it and what to check, fill in and offer for it; `make_backend` builds one from a run's
`BackendConfig`.

The built-in specs register themselves from their own packages (`rls3.sim.spec`,
`rls3.bridges.spec`, imported on the first look-up), and neither loads its engine (pybullet,
mlagents_envs) before a backend is checked or built. A new backend is one
``register_backend(BackendSpec(...))`` in one file.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from rls3.configerror import ConfigError, require

if TYPE_CHECKING:
    from rls3.scene import SceneBackend

#: modules that register the built-in backends' specs, imported on the first look-up
BUILTIN_SPECS: tuple[str, ...] = ("rls3.sim.spec", "rls3.bridges.spec")
SPLITS: tuple[str, ...] = ("train", "test")


@dataclass(frozen=True)
class BackendConfig:
    """Which scene backend to use and which scenes it serves for training and testing.

    `train_scenes` / `test_scenes` are a split name ("train", "test") or a list of scene names;
    `options` are passed to the backend's factory (e.g. a Unity executable path).
    """

    name: str = "sim"
    train_scenes: str | tuple[str, ...] = "train"
    test_scenes: str | tuple[str, ...] = "test"
    objects: tuple[str, ...] | None = None
    shadows: bool = True
    options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        known = available_backends()
        require(self.name in known, "backend.name", self.name, f"one of {list(known)}")
        for key in ("train_scenes", "test_scenes"):
            v = getattr(self, key)
            require(isinstance(v, str) and bool(v) or isinstance(v, tuple) and len(v) > 0,
                    f"backend.{key}", v, "a split name or a non-empty list of scene names")
        require(self.objects is None or len(self.objects) >= 3, "backend.objects", self.objects,
                "null (the default pool) or a list of at least 3 object names")


#: factory(backend_config, split) -> the backend serving that split's scenes
BackendFactory = Callable[[BackendConfig, str], "SceneBackend"]


@dataclass(frozen=True)
class CliOption:
    """A flag ``--<backend>-<flag>`` of `rls3 run` / `rls3 generate` that sets
    ``backend.options[key]``: parsed with `type`, or a switch (present: True) when `type` is
    None."""

    flag: str
    key: str
    help: str
    type: Callable[[str], Any] | None = None
    metavar: str | None = None


@dataclass(frozen=True)
class BackendSpec:
    """A registered scene backend (`backend.name: <name>`, `rls3 run --backend <name>`).

    `factory(cfg, split)` builds it; `check(cfg)` (raising ConfigError) vets scene, object and
    option names before anything is built or written; `identity(cfg)` names what the scenes
    come from (a build file), so caches of another build are not reused; `workers_check(cfg,
    n)` (raising ConfigError) says whether it can serve `env.workers` = n > 1 processes, and
    `worker_config(cfg, w)` gives worker w's settings (None: the run's); `image_limit()` is the
    largest image side it renders here. A run fills three options when the backend names them:
    `image_option` with `env.image_size`, `log_option` with a folder in the run directory,
    `seed_option` with a seed from the run seed. `cli_options` become command-line flags
    (grouped under `title`)."""

    name: str
    factory: BackendFactory
    check: Callable[[BackendConfig], None] | None = None
    identity: Callable[[BackendConfig], str] | None = None
    workers_check: Callable[[BackendConfig, int], None] | None = None
    worker_config: Callable[[BackendConfig, int], BackendConfig] | None = None
    image_limit: Callable[[], int] | None = None
    image_option: str | None = None
    log_option: str | None = None
    seed_option: str | None = None
    title: str = ""
    cli_options: tuple[CliOption, ...] = ()

    def config_for_worker(self, cfg: BackendConfig, index: int) -> BackendConfig:
        """Scene worker `index`'s backend settings (the run's unless `worker_config` differs)."""
        return cfg if self.worker_config is None else self.worker_config(cfg, index)


_REGISTRY: dict[str, BackendSpec] = {}


def register_backend(spec: BackendSpec, *, overwrite: bool = False) -> BackendSpec:
    """Add a backend; re-registering a name needs `overwrite=True`."""
    if spec.name in _REGISTRY and not overwrite:
        raise ValueError(f"a backend named {spec.name!r} is already registered")
    _REGISTRY[spec.name] = spec
    return spec


def unregister_backend(name: str) -> None:
    """Remove a registered backend (tests that register one of their own)."""
    _REGISTRY.pop(name, None)


def backend_specs() -> tuple[BackendSpec, ...]:
    """Every registered backend, the built-in ones included, in name order."""
    for module in BUILTIN_SPECS:
        importlib.import_module(module)  # registers its spec on the first import
    return tuple(_REGISTRY[name] for name in sorted(_REGISTRY))


def available_backends() -> tuple[str, ...]:
    """Names `backend.name` accepts, sorted."""
    return tuple(spec.name for spec in backend_specs())


def get_backend_spec(name: str) -> BackendSpec:
    """The spec registered as `name` (ConfigError naming the known ones otherwise)."""
    specs = {spec.name: spec for spec in backend_specs()}
    if name not in specs:
        raise ConfigError(f"unknown backend {name!r}; allowed: {sorted(specs)}")
    return specs[name]


def make_backend(cfg: BackendConfig, split: str) -> SceneBackend:
    """Build the backend serving `split` ("train" or "test") scenes."""
    if split not in SPLITS:
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    return get_backend_spec(cfg.name).factory(cfg, split)


def backend_identity(cfg: BackendConfig) -> str:
    """The key caches use for a backend: its name, plus the identity of its scene source when it
    has one (e.g. ``unity-3f2a9c1e`` for a Unity build's path, size and modification time)."""
    fn = get_backend_spec(cfg.name).identity
    return cfg.name if fn is None else f"{cfg.name}-{fn(cfg)}"
