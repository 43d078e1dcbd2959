"""What the rest of rls3 knows of the Unity bridge without importing mlagents_envs: its ports,
the test peer's build syntax, its options and command-line flags, and its `BackendSpec`
(`backend.name: unity`, registered on import). mlagents_envs loads only when a Unity backend is
checked or built."""

from __future__ import annotations

import hashlib
import os
import socket
from dataclasses import replace
from typing import Any

from rls3.backends import BackendConfig, BackendSpec, CliOption, register_backend
from rls3.configerror import ConfigError, require
from rls3.scene import SceneBackend

#: ML-Agents' ports (`UnityEnvironment.DEFAULT_EDITOR_PORT` / `BASE_ENVIRONMENT_PORT`): the Editor
#: listens on EDITOR_PORT, a player on PLAYER_BASE_PORT + its worker id
EDITOR_PORT = 5004
PLAYER_BASE_PORT = 5005
#: a build path naming the test peer instead of a Unity player: ``testpeer[:SCENES[:toy]]``
TEST_PEER = "testpeer"
#: `BackendConfig.options` keys `unity_backend_factory` reads.
UNITY_OPTIONS = ("build", "editor", "worker_id", "base_port", "timeout_s", "connect_timeout_s",
                 "no_graphics", "image_size", "launch_retries", "log_folder", "seed")


def parse_peer_scenes(text: str) -> str | list[str]:
    """A test peer's scene argument: a split name or comma-separated scene names."""
    return text if text in ("train", "test") else [s for s in text.split(",") if s]


def parse_testpeer_build(build: str) -> dict[str, Any] | None:
    """``testpeer[:SCENES[:toy]]`` (e.g. ``testpeer:kitchen,bedroom``) -> player settings, or None
    for a real build path."""
    if build != TEST_PEER and not build.startswith(f"{TEST_PEER}:"):
        return None
    parts = build.split(":")
    out: dict[str, Any] = {"scenes": parse_peer_scenes(parts[1]) if len(parts) > 1 and parts[1]
                           else "train"}
    if len(parts) > 2:
        out["backend"] = parts[2]
    return out


def unity_backend(cfg: BackendConfig, split: str) -> SceneBackend:
    """A connected `UnityBackend` (lazy: mlagents-envs is an optional extra)."""
    from rls3.bridges.connect import unity_backend_factory

    return unity_backend_factory(cfg, split)


def check_unity(cfg: BackendConfig) -> None:
    """Option names of the Unity bridge (scene and object names are known only once a player
    answers), and that the Unity extra is installed."""
    try:
        import rls3.bridges.connect  # noqa: F401
    except ImportError as e:
        raise ConfigError(f"backend.name='unity' needs the Unity extra (mlagents-envs): {e}") \
            from e
    bad = sorted(set(cfg.options) - set(UNITY_OPTIONS))
    require(not bad, "backend.options", cfg.options,
            f"options of the unity backend (allowed: {list(UNITY_OPTIONS)}; unknown: {bad})")


def unity_identity(cfg: BackendConfig) -> str:
    """A Unity build's path, size and modification time (the Editor and the test peer: their
    name), hashed."""
    build = cfg.options.get("build")
    if cfg.options.get("editor") or not build:
        what = "editor"
    elif not os.path.exists(str(build)):
        what = str(build)      # the test peer's "testpeer[...]" or a path checked at launch
    else:
        st = os.stat(build)
        what = f"{os.path.abspath(build)}|{st.st_size}|{st.st_mtime_ns}"
    return hashlib.sha256(what.encode()).hexdigest()[:8]


def check_unity_workers(cfg: BackendConfig, n: int) -> None:
    """N scene workers need N Unity players, each on its own port: worker w takes worker id
    k + 1 + w (k: `backend.options.worker_id`, kept by the main process's player), i.e. port
    base_port + k + 1 + w. The Editor serves one; ports in use are named before anything starts
    (the test peer without a base port picks free ports itself)."""
    opts = cfg.options
    if opts.get("editor"):
        raise ConfigError(f"invalid env.workers={n}: the Unity Editor serves one scene (port "
                          f"{opts.get('base_port', EDITOR_PORT)}); scene workers need a player "
                          f"build (backend.options.build), or use env.workers=1")
    build = str(opts.get("build") or "")
    if opts.get("base_port") is None and parse_testpeer_build(build) is not None:
        return
    base_port = int(opts.get("base_port") or PLAYER_BASE_PORT)
    worker_id = int(opts.get("worker_id", 0))
    ports = [base_port + worker_id + 1 + w for w in range(n)]
    if ports[-1] > 65535:
        raise ConfigError(f"invalid env.workers={n}: worker ports {ports[0]}-{ports[-1]} run past "
                          f"65535; lower backend.options.base_port / worker_id or the workers")
    busy = []
    for port in ports:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                busy.append(port)
    if busy:
        raise ConfigError(f"invalid env.workers={n}: the workers' Unity players need ports "
                          f"{ports[0]}-{ports[-1]} (base port {base_port} + worker ids "
                          f"{worker_id + 1}-{worker_id + n}) but {busy} are in use; free them, "
                          f"choose another backend.options.base_port / worker_id, or use fewer "
                          f"workers")


def unity_worker_config(cfg: BackendConfig, index: int) -> BackendConfig:
    """Worker `index`'s settings: its own player, with worker id k + 1 + index (the main
    process's backend keeps `worker_id` k)."""
    options = dict(cfg.options)
    options["worker_id"] = int(options.get("worker_id", 0)) + 1 + index
    return replace(cfg, options=options)


CLI_OPTIONS = (
    CliOption("build", "build", f"Unity player executable ('{TEST_PEER}' runs the embedded "
              "simulator behind the real ML-Agents protocol)", str, "PATH"),
    CliOption("editor", "editor", f"connect to a running Unity Editor (press Play; port "
              f"{EDITOR_PORT})"),
    CliOption("worker-id", "worker_id", "ML-Agents worker id", int, "N"),
    CliOption("base-port", "base_port", "ML-Agents base port", int, "PORT"),
    CliOption("timeout", "timeout_s", "seconds to wait per exchange", float, "S"),
    CliOption("no-graphics", "no_graphics", "start the player with -nographics (renders no "
              "images)"),
)

UNITY_BACKEND = register_backend(BackendSpec(
    name="unity", factory=unity_backend, check=check_unity, identity=unity_identity,
    workers_check=check_unity_workers, worker_config=unity_worker_config,
    image_option="image_size", log_option="log_folder", seed_option="seed",
    title="Unity backend", cli_options=CLI_OPTIONS))
