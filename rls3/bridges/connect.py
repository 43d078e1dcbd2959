"""Connected Unity backends: `make_unity_backend` (a player build, the Editor or the test peer),
`unity_backend_factory` (the `unity` backend spec's factory, from a `BackendConfig`) and
`connect_test_peer` (the test peer as a stand-in player, no Unity needed)."""

from __future__ import annotations

from collections.abc import Sequence

from rls3.backends import BackendConfig
from rls3.bridges.spec import EDITOR_PORT, TEST_PEER, UNITY_OPTIONS, parse_testpeer_build
from rls3.bridges.testpeer import PeerFaults, write_player_script
from rls3.bridges.unity import UnityBackend, free_port
from rls3.scene import DEFAULT_IMAGE_SIZE


def make_unity_backend(build_path: str | None = None, editor: bool = False, worker_id: int = 0,
                       base_port: int | None = None, timeout_s: float = 60.0,
                       no_graphics: bool = False, *, image_size: int | None = None,
                       scenes: str | Sequence[str] | None = None,
                       objects: Sequence[str] | None = None, shadows: bool = True,
                       connect_timeout_s: float | None = None, launch_retries: int = 2,
                       additional_args: Sequence[str] = (), log_folder: str | None = None,
                       seed: int = 0) -> UnityBackend:
    """A connected `UnityBackend` for ``rls3 run --backend unity``.

    Exactly one of `build_path` (a player executable, launched on ``base_port + worker_id``,
    default base 5005) or `editor` (wait for the Editor's Play button on port 5004, or on
    `base_port`) must be given. ``build_path="testpeer[:SCENES]"`` (e.g. ``testpeer:kitchen``)
    launches the protocol test peer over the embedded simulator as the player: the whole loop runs
    through the real bridge without Unity (CI). `image_size` asks the player for that camera size
    (``--rls3-image-size``; use the env's image size); `timeout_s` bounds every operation,
    `connect_timeout_s` the launch and handshake (default: 60 s for a player, 120 s for the Editor).
    `scenes` selects rooms of the build (None: all; "train"/"test": by the ``test_`` name prefix;
    or a list of names); with a bare ``testpeer`` build it is what the peer simulates, together
    with `objects` and `shadows`.
    """
    if (build_path is None) == (not editor):
        raise ValueError("give exactly one of build_path (a Unity player) or editor=True, got "
                         f"build_path={build_path!r}, editor={editor!r}")
    if editor:
        if worker_id != 0:
            raise ValueError(f"the Editor listens on one port: worker_id must be 0, got {worker_id}")
        return UnityBackend(None, base_port=base_port if base_port is not None else EDITOR_PORT,
                            timeout_s=timeout_s, connect_timeout_s=connect_timeout_s,
                            image_size=image_size, seed=seed, scenes=scenes, objects=objects)
    assert build_path is not None
    peer = parse_testpeer_build(build_path)
    if peer is not None:
        if build_path == TEST_PEER and scenes is not None:
            peer["scenes"] = scenes
        build_path = write_player_script(**peer, objects=objects, shadows=shadows)
        if base_port is None:  # CI may run several: take a free port rather than 5005
            base_port = free_port() - worker_id
    return UnityBackend(build_path, worker_id=worker_id, base_port=base_port, timeout_s=timeout_s,
                        connect_timeout_s=connect_timeout_s, no_graphics=no_graphics,
                        image_size=image_size, launch_retries=launch_retries,
                        additional_args=additional_args, log_folder=log_folder, seed=seed,
                        scenes=scenes, objects=objects)


def unity_backend_factory(cfg: BackendConfig, split: str) -> UnityBackend:
    """The `unity` backend spec's factory: the scenes of `split` from ``cfg.train_scenes`` /
    ``cfg.test_scenes``, ``cfg.objects``, ``cfg.shadows`` (test peer only) and the keys of
    `UNITY_OPTIONS` from ``cfg.options`` (``build`` or ``editor: true``)."""
    options = dict(cfg.options or {})
    unknown = sorted(set(options) - set(UNITY_OPTIONS))
    if unknown:
        raise ValueError(f"unknown unity backend option(s) {unknown}; "
                         f"allowed: {list(UNITY_OPTIONS)}")
    scenes = cfg.train_scenes if split == "train" else cfg.test_scenes
    objects = cfg.objects
    return make_unity_backend(
        options.get("build"), bool(options.get("editor", False)), int(options.get("worker_id", 0)),
        options.get("base_port"), float(options.get("timeout_s", 60.0)),
        bool(options.get("no_graphics", False)), image_size=options.get("image_size"),
        scenes=scenes if isinstance(scenes, str) else list(scenes),
        objects=list(objects) if objects is not None else None,
        shadows=bool(cfg.shadows),
        connect_timeout_s=options.get("connect_timeout_s"),
        launch_retries=int(options.get("launch_retries", 2)), log_folder=options.get("log_folder"),
        seed=int(options.get("seed", 0)))


def connect_test_peer(scenes: str | Sequence[str] = "train", *, backend: str = "sim",
                      objects: Sequence[str] | None = None, image_size: int = DEFAULT_IMAGE_SIZE,
                      shadows: bool = True, timeout_s: float = 60.0,
                      connect_timeout_s: float = 120.0, faults: PeerFaults | None = None,
                      base_port: int | None = None, worker_id: int = 0,
                      log_folder: str | None = None, launch_retries: int = 0) -> UnityBackend:
    """Launch the test peer as a stand-in Unity player (its own process, through mlagents'
    launcher) and return a connected `UnityBackend`; closing the backend ends the peer."""
    script = write_player_script(backend=backend, scenes=scenes, objects=objects, shadows=shadows,
                                 faults=faults)
    port = base_port if base_port is not None else free_port() - worker_id
    return UnityBackend(script, worker_id=worker_id, base_port=port, timeout_s=timeout_s,
                        connect_timeout_s=connect_timeout_s, image_size=image_size,
                        launch_retries=launch_retries, log_folder=log_folder)
