"""`UnityBackend`: the `SceneBackend` Protocol over a Unity ML-Agents build (or the Editor).

Each SceneBackend operation becomes one ML-Agents step: the command rides in the agent's
continuous action vector, the answer is the next decision step, whose visual observation is the
camera image and whose side-channel message carries the metadata JSON (state + feasibility). The
format is documented in one place, `rls3.bridges.messages`.

It runs on the real `mlagents_envs.environment.UnityEnvironment` with two small extensions:
the gRPC server listens on the loopback interface only (``host``), and a client that drops the
connection while Unity holds its pending call (what a crashed player does) is noticed at once
instead of after the timeout. Every wait is bounded: a dead or frozen Unity raises a
`UnityBridgeError` subclass, and the backend frees its port so the caller can reconnect and resume.
"""

from __future__ import annotations

import atexit
import logging
import os
import socket
import threading
import time
import warnings
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import replace
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc
import numpy as np
from PIL import Image

with warnings.catch_warnings():  # mlagents_envs' generated protobuf code and its distutils import
    warnings.simplefilter("ignore", DeprecationWarning)
    from mlagents_envs.base_env import ActionTuple, DecisionSteps
    from mlagents_envs.communicator_objects.unity_message_pb2 import UnityMessageProto
    from mlagents_envs.communicator_objects.unity_to_external_pb2_grpc import (
        add_UnityToExternalProtoServicer_to_server,
    )
    from mlagents_envs.environment import UnityEnvironment
    from mlagents_envs.exception import (
        UnityCommunicatorStoppedException,
        UnityEnvironmentException,
        UnityException,
        UnityTimeOutException,
        UnityWorkerInUseException,
    )
    from mlagents_envs.rpc_communicator import (
        RpcCommunicator,
        UnityToExternalServicerImplementation,
    )

from rls3.bridges.errors import (
    MetadataError,
    UnityBridgeError,
    UnityDisconnectedError,
    UnityLaunchError,
    UnityProtocolError,
    UnityRemoteError,
    UnityTimeoutError,
)
from rls3.bridges.messages import (
    ACTION_SIZE,
    BEHAVIOR_NAME,
    SEED_LIMIT,
    SEQ_MOD,
    VECTOR_OBS_SIZE,
    Command,
    Metadata,
    Op,
)
from rls3.bridges.sidechannel import MetadataChannel
from rls3.bridges.spec import EDITOR_PORT, PLAYER_BASE_PORT
from rls3.scene import Feasibility, SceneState, Vec3

log = logging.getLogger(__name__)

POLL_S = 0.05  # how often a wait checks for a dead player / dropped connection
MAX_IDLE_STEPS = 100  # steps without a decision (DecisionPeriod > 1) before giving up


# -- mlagents extensions ---------------------------------------------------------------------------
class _Mailbox:
    """A thread-safe FIFO that can be waited on and closed."""

    def __init__(self) -> None:
        self._items: deque[Any] = deque()
        self._cv = threading.Condition()
        self._closed = False

    def put(self, item: Any) -> None:
        with self._cv:
            self._items.append(item)
            self._cv.notify()

    def wait(self, timeout: float | None) -> bool:
        with self._cv:
            return self._cv.wait_for(lambda: self._items or self._closed, timeout) and bool(self._items)

    def get(self) -> Any:
        with self._cv:
            self._cv.wait_for(lambda: self._items or self._closed)
            if not self._items:
                raise EOFError("connection closed")
            return self._items.popleft()

    def close(self) -> None:
        with self._cv:
            self._closed = True
            self._cv.notify_all()


class _ThreadConnection:
    """One end of an in-process duplex channel with the `multiprocessing.Connection` methods
    mlagents' communicator uses (send, recv, poll, close). mlagents links its gRPC handler thread
    and the caller's thread with a `multiprocessing.Pipe`, which pickles every message through two
    system calls; both ends live in one process, so handing the object over is enough."""

    def __init__(self, inbox: _Mailbox, outbox: _Mailbox) -> None:
        self._inbox, self._outbox = inbox, outbox

    def send(self, obj: Any) -> None:
        self._outbox.put(obj)

    def recv(self) -> Any:
        return self._inbox.get()

    def poll(self, timeout: float | None = 0.0) -> bool:
        return self._inbox.wait(timeout)

    def close(self) -> None:
        self._inbox.close()
        self._outbox.close()


#: The largest message either side may send (gRPC's default is 4 MB; one PNG camera image of a
#: 1024-px build is already 1-3 MB).
MAX_MESSAGE = 256 * 2**20
SIZE_HINT = (f"(an answer over {MAX_MESSAGE // 2**20} MB, e.g. from a very large "
             f"--rls3-image-size, is refused by gRPC and ends the connection like this)")


class _Servicer(UnityToExternalServicerImplementation):
    """mlagents' servicer on an in-process channel; it also notices a client dropping its pending
    call (what a crashed player does) instead of leaving Python to wait for the timeout."""

    def __init__(self) -> None:  # no super().__init__(): it would open an unused Pipe
        a, b = _Mailbox(), _Mailbox()
        self.parent_conn, self.child_conn = _ThreadConnection(a, b), _ThreadConnection(b, a)
        self.disconnected = threading.Event()

    def Exchange(self, request: UnityMessageProto, context: grpc.ServicerContext) -> UnityMessageProto:
        answered = threading.Event()

        def on_done() -> None:
            if not answered.is_set():  # the call ended before Python answered it: client gone
                self.disconnected.set()

        context.add_callback(on_done)
        self.child_conn.send(request)
        try:
            reply = self.child_conn.recv()
        except (EOFError, OSError):  # Python side closed
            reply = UnityMessageProto()
            reply.header.status = 400
        answered.set()
        if not context.is_active():  # gone while we waited; the callback may still be on its way
            self.disconnected.set()
        return reply


class _Communicator(RpcCommunicator):
    """`RpcCommunicator` bound to `host` (loopback by default), with a fine-grained bounded wait."""

    def __init__(self, worker_id: int, base_port: int, timeout_wait: float, host: str) -> None:
        self.host = host
        super().__init__(worker_id, base_port, timeout_wait)

    def create_server(self) -> None:
        self.check_port(self.port)
        try:
            self.server = grpc.server(thread_pool=ThreadPoolExecutor(max_workers=4),
                                      options=(("grpc.so_reuseport", 0),
                                               ("grpc.max_receive_message_length", MAX_MESSAGE),
                                               ("grpc.max_send_message_length", MAX_MESSAGE)))
            self.unity_to_external = _Servicer()
            add_UnityToExternalProtoServicer_to_server(self.unity_to_external, self.server)
            self.server.add_insecure_port(f"{self.host}:{self.port}")
            self.server.start()
            self.is_open = True
        except RuntimeError as e:
            raise UnityWorkerInUseException(self.worker_id) from e

    def poll_for_timeout(self, poll_callback: Callable[[], None] | None = None) -> None:
        deadline = time.monotonic() + self.timeout_wait
        conn = self.unity_to_external.parent_conn
        while True:
            if conn.poll(min(POLL_S, max(0.0, deadline - time.monotonic()))):
                return
            if poll_callback is not None:
                poll_callback()
            if time.monotonic() >= deadline:
                raise UnityTimeOutException(f"no message from Unity within {self.timeout_wait:g} s")


class _BridgeEnvironment(UnityEnvironment):
    """`UnityEnvironment` on `_Communicator`; a dropped connection or a dead player raises
    `UnityDisconnectedError` during any wait; a failed start releases the port."""

    def __init__(self, host: str, **kwargs: Any) -> None:
        self._host = host
        try:
            with warnings.catch_warnings():  # mlagents compares versions with distutils
                warnings.simplefilter("ignore", DeprecationWarning)
                super().__init__(**kwargs)
        except BaseException:
            self._safe_close()
            raise

    def _get_communicator(
            self, worker_id: int, base_port: int, timeout_wait: float) -> RpcCommunicator:
        return _Communicator(worker_id, base_port, timeout_wait, self._host)

    def _poll_process(self) -> None:
        comm = getattr(self, "_communicator", None)
        if isinstance(comm, _Communicator) and comm.unity_to_external.disconnected.is_set():
            raise UnityDisconnectedError(f"Unity dropped the connection on port {self._port}")
        proc = self._process
        if proc is not None and proc.poll() is not None:
            raise UnityDisconnectedError(
                f"the Unity player exited: {self._returncode_to_env_message(proc.returncode)}")

    def _safe_close(self, timeout: float = 5.0) -> None:
        try:
            if getattr(self, "_communicator", None) is not None:
                self._close(timeout)
            elif (process := getattr(self, "_process", None)) is not None:
                process.kill()
        except (UnityException, OSError, ValueError) as e:
            log.debug("ignored while closing the Unity environment: %r", e)
        proc = getattr(self, "_process", None)
        if proc is not None:  # _close gave up before reaping it
            proc.kill()
            self._process = None
        atexit.unregister(self._close)


# -- the backend -------------------------------------------------------------------------------
class UnityBackend:
    """`rls3.scene.SceneBackend` over Unity ML-Agents.

    With `build_path` it launches that player (``--mlagents-port base_port + worker_id``, plus
    ``--rls3-image-size`` when `image_size` is given), retrying `launch_retries` times; without it,
    it waits `connect_timeout_s` for a client to connect to ``base_port + worker_id`` (the Editor
    on 5004 after pressing Play, or the test peer). `timeout_s` bounds every later operation.
    Displacements cross as float32 (Unity's own precision). `render(w, h)` returns the camera image
    of the build's fixed size, resized when another size is asked for.

    `scenes` picks the rooms this backend cycles through, out of the build's: None (all), a list of
    names, or a split: ``"test"`` = names starting with ``test_`` (the convention of
    ``sim/scenes``), ``"train"`` = the others. Scene indices are then local to that selection.
    `objects`, when given, must equal the build's pool (a build cannot swap its pool).
    """

    def __init__(self, build_path: str | None = None, *, worker_id: int = 0,
                 base_port: int | None = None, timeout_s: float = 60.0,
                 connect_timeout_s: float | None = None, no_graphics: bool = False,
                 image_size: int | None = None, launch_retries: int = 2, retry_delay_s: float = 2.0,
                 additional_args: Sequence[str] = (), log_folder: str | None = None,
                 host: str = "localhost", seed: int = 0, render_after_move: bool = True,
                 scenes: str | Sequence[str] | None = None, objects: Sequence[str] | None = None,
                 on_close: Callable[[], None] | None = None) -> None:
        if timeout_s <= 0:
            raise ValueError(f"timeout_s must be positive seconds, got {timeout_s!r}")
        if worker_id < 0:
            raise ValueError(f"worker_id must be >= 0, got {worker_id!r}")
        if build_path is None and worker_id != 0:
            raise ValueError("worker_id must be 0 without a build (Editor / external client); use "
                             "base_port to pick the port")
        if image_size is not None and image_size < 8:
            raise ValueError(f"image_size must be >= 8 pixels, got {image_size!r}")
        if launch_retries < 0:
            raise ValueError(f"launch_retries must be >= 0, got {launch_retries!r}")
        self.build_path = build_path
        self.worker_id = worker_id
        self.base_port = base_port if base_port is not None else (
            PLAYER_BASE_PORT if build_path else EDITOR_PORT)
        self.port = self.base_port + worker_id
        self.timeout_s = float(timeout_s)
        self.connect_timeout_s = float(connect_timeout_s if connect_timeout_s is not None
                                       else max(timeout_s, 120.0 if build_path is None else 60.0))
        self.render_after_move = render_after_move
        self._on_close = on_close
        self._channel = MetadataChannel()
        self._env: _BridgeEnvironment | None = None
        self._behavior = ""
        self._visual = self._vector = -1
        self._seq = 0
        self._scenes: tuple[str, ...] = ()  # the build's scenes, its index order
        self._select = scenes
        self._objects = None if objects is None else tuple(objects)
        self._local: tuple[int, ...] = ()  # build index of each selected scene
        self._pool: tuple[str, ...] = ()
        self._state: SceneState | None = None
        self._chw: np.ndarray | None = None
        self._rgb: np.ndarray | None = None
        self._fresh = False
        self._broken: UnityBridgeError | None = None
        self._closed = False
        self._warned_resize = False
        self.last_reward = 0.0
        if no_graphics:
            log.warning("no_graphics: a -nographics Unity player renders no camera images; use a "
                        "virtual display (xvfb-run) or a GPU for headless runs that need images")
        args = list(additional_args)
        if log_folder is not None:   # the player writes -logFile there; it must exist
            os.makedirs(log_folder, exist_ok=True)
        if image_size is not None:
            args += ["--rls3-image-size", str(int(image_size))]
        self._connect(dict(file_name=build_path, worker_id=worker_id, base_port=self.base_port,
                           seed=seed, no_graphics=no_graphics, timeout_wait=self.connect_timeout_s,
                           additional_args=args, side_channels=[self._channel],
                           log_folder=log_folder),
                      host, launch_retries if build_path else 0, retry_delay_s, image_size)

    # -- connection ----------------------------------------------------------------------------
    def _connect(self, kwargs: dict[str, Any], host: str, retries: int, delay: float,
                 image_size: int | None) -> None:
        what = f"Unity player {self.build_path!r}" if self.build_path else "a Unity client"
        for attempt in range(retries + 1):
            try:
                self._env = _BridgeEnvironment(host, **kwargs)
                self._handshake(image_size)
                self._env._communicator.timeout_wait = self.timeout_s
                log.info("connected to %s on port %d (behaviour %s, %d scenes, image %s)", what,
                         self.port, self._behavior, len(self._scenes), self.image_shape)
                return
            except UnityWorkerInUseException as e:
                err: UnityBridgeError = UnityLaunchError(
                    f"port {self.port} (base {self.base_port} + worker {self.worker_id}) is in use; "
                    "another environment or a leftover player holds it: pick another worker id / "
                    "base port")
                cause: BaseException = e
            except UnityTimeOutException as e:
                err = UnityLaunchError(
                    f"{what} did not complete the ML-Agents handshake on port {self.port} within "
                    f"{self.connect_timeout_s:g} s" + ("" if self.build_path else
                                                      " (Editor: press Play in the scene)"))
                cause = e
            except UnityDisconnectedError as e:
                err, cause = UnityLaunchError(f"{what} failed while connecting: {e}"), e
            except UnityEnvironmentException as e:  # bad path, no permission, version mismatch
                self._drop_env()
                raise UnityLaunchError(f"cannot start {what} on port {self.port}: {e}") from e
            except UnityBridgeError as e:  # protocol problems: retrying will not help
                self._drop_env()
                raise UnityLaunchError(f"{what} on port {self.port} does not speak the rls3 bridge "
                                       f"protocol: {e}") from e
            except UnityException as e:  # closed or malformed during the handshake
                self._drop_env()
                raise UnityLaunchError(f"{what} failed the handshake on port {self.port}: "
                                       f"{type(e).__name__}: {e}") from e
            except BaseException:
                self._drop_env()
                raise
            self._drop_env()
            if attempt < retries:
                log.warning("%s (attempt %d of %d); retrying in %g s", err, attempt + 1,
                            retries + 1, delay)
                time.sleep(delay)
        raise err from cause

    def _drop_env(self) -> None:
        if self._env is not None:
            self._env._safe_close()
            self._env = None

    def _handshake(self, image_size: int | None) -> None:
        env = self._env
        assert env is not None
        env.reset()
        for _ in range(MAX_IDLE_STEPS):
            if env.behavior_specs:
                break
            env.step()
        names = [n for n in env.behavior_specs if n.split("?")[0] == BEHAVIOR_NAME]
        if len(names) != 1:
            raise UnityProtocolError(f"expected one behaviour named {BEHAVIOR_NAME!r}, Unity has "
                                     f"{list(env.behavior_specs)}")
        self._behavior = names[0]
        spec = env.behavior_specs[self._behavior]
        a = spec.action_spec
        if a.continuous_size != ACTION_SIZE or a.discrete_size != 0:
            raise UnityProtocolError(f"behaviour {self._behavior} must have {ACTION_SIZE} "
                                     f"continuous and no discrete actions, has {a.continuous_size} "
                                     f"continuous and branches {a.discrete_branches}")
        shapes = [tuple(o.shape) for o in spec.observation_specs]
        vis = [i for i, s in enumerate(shapes) if len(s) == 3 and s[0] == 3]
        vec = [i for i, s in enumerate(shapes) if s == (VECTOR_OBS_SIZE,)]
        if len(vis) != 1 or len(vec) != 1:
            raise UnityProtocolError(f"behaviour {self._behavior} must observe one RGB camera "
                                     f"[3, H, W] and one vector [{VECTOR_OBS_SIZE}], has {shapes}")
        self._visual, self._vector = vis[0], vec[0]
        if image_size is not None and shapes[self._visual][1:] != (image_size, image_size):
            raise UnityProtocolError(f"asked for {image_size}x{image_size} images, the build "
                                     f"renders {shapes[self._visual][2]}x{shapes[self._visual][1]}")
        self._seq = 0
        self._process(None, *self._decision())
        self._local = self._selection()
        if self._state is not None:  # a build that was already running (the Editor)
            self._state = (replace(self._state, scene_index=self._local.index(self._state.scene_index))
                           if self._state.scene_index in self._local else None)
        if self._objects is not None and self._objects != self._pool:
            raise ValueError(f"objects {list(self._objects)} differ from the build's pool "
                             f"{list(self._pool)}; a Unity build places objects of its own pool")

    def _selection(self) -> tuple[int, ...]:
        sel, names = self._select, self._scenes
        if sel is None:
            return tuple(range(len(names)))
        if isinstance(sel, str) and sel in ("train", "test"):
            picked = [i for i, n in enumerate(names) if n.startswith("test_") == (sel == "test")]
            if not picked:
                raise UnityProtocolError(f"the build has no {sel} scenes (test scenes are named "
                                         f"test_*): {list(names)}")
            return tuple(picked)
        wanted = [sel] if isinstance(sel, str) else list(sel)
        missing = [n for n in wanted if n not in names]
        if missing or not wanted:
            raise UnityProtocolError(f"scenes {missing or wanted} are not in the build; it has "
                                     f"{list(names)}")
        return tuple(names.index(n) for n in wanted)

    # -- SceneBackend ------------------------------------------------------------------------------
    @property
    def scene_names(self) -> tuple[str, ...]:
        return tuple(self._scenes[i] for i in self._local)

    @property
    def object_pool(self) -> tuple[str, ...]:
        return self._pool

    @property
    def image_shape(self) -> tuple[int, int]:
        """(height, width) of the images the build renders."""
        if self._env is None or not self._behavior:
            return (0, 0)
        s = self._env.behavior_specs[self._behavior].observation_specs[self._visual].shape
        return (int(s[1]), int(s[2]))

    def load_scene(self, index: int, seed: int | None = None) -> SceneState:
        if not isinstance(index, (int, np.integer)) or not 0 <= index < len(self._local):
            raise ValueError(f"scene index {index!r} out of range 0..{len(self._local) - 1} "
                             f"({', '.join(self.scene_names)})")
        if seed is not None and (not isinstance(seed, (int, np.integer)) or not 0 <= seed < SEED_LIMIT):
            raise ValueError(f"seed must be None or an integer in [0, 2**31), got {seed!r}")
        self._run(Op.LOAD, index=self._local[int(index)], seed=None if seed is None else int(seed))
        return self.state()

    def move_object(self, slot: int, displacement: Vec3) -> Feasibility:
        self._check_slot(slot)
        d = np.asarray(displacement, dtype=float)
        if d.shape != (3,) or not np.all(np.isfinite(d)):
            raise ValueError(f"displacement must be 3 finite numbers, got {displacement!r}")
        return self._run(Op.MOVE, slot=slot, displacement=tuple(map(float, d)),
                         render=self.render_after_move).feasibility

    def swap_object(self, slot: int, name: str) -> Feasibility:
        self._check_slot(slot)
        if name not in self._pool:
            raise ValueError(f"unknown object {name!r}; pool: {list(self._pool)}")
        if any(o.name == name for o in self.state().objects):
            raise ValueError(f"object {name!r} is already active")
        return self._run(Op.SWAP, slot=slot, index=self._pool.index(name)).feasibility

    def state(self) -> SceneState:
        self._ensure_open()
        if self._state is None:
            raise RuntimeError("no scene loaded: call load_scene() first")
        return self._state

    def render(self, width: int, height: int) -> np.ndarray:
        if width <= 0 or height <= 0:
            raise ValueError(f"image size must be positive, got {width}x{height}")
        self.state()
        if not self._fresh:
            self._run(Op.RENDER)
        if self._rgb is None:
            assert self._chw is not None
            self._rgb = np.ascontiguousarray(
                (np.clip(self._chw, 0.0, 1.0).transpose(1, 2, 0) * 255.0).round().astype(np.uint8))
        if self._rgb.shape[:2] == (height, width):
            return self._rgb.copy()
        if not self._warned_resize:
            log.warning("the Unity build renders %dx%d images; resizing to %dx%d (set the build's "
                        "--rls3-image-size to avoid this)", self._rgb.shape[1], self._rgb.shape[0],
                        width, height)
            self._warned_resize = True
        return np.asarray(Image.fromarray(self._rgb).resize((width, height), Image.Resampling.BILINEAR))

    def ping(self) -> None:
        """One command round trip that changes nothing (NOOP: no physics, no rendering): a check
        that Unity still answers, and the bridge's fixed cost per command."""
        self._run(Op.NOOP)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._drop_env()
        if self._on_close is not None:
            self._on_close()

    def __enter__(self) -> UnityBackend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        if not getattr(self, "_closed", True):
            try:
                self.close()
            except Exception:  # noqa: BLE001 - interpreter shutdown: nothing left to report to
                pass

    # -- one operation -----------------------------------------------------------------------------
    def _check_slot(self, slot: int) -> None:
        if slot not in (0, 1, 2):
            raise ValueError(f"slot must be 0, 1 or 2, got {slot!r}")
        self.state()

    def _ensure_open(self) -> None:
        if self._broken is not None:
            raise UnityBridgeError(f"the Unity backend on port {self.port} is unusable after an "
                                   f"earlier error ({self._broken}); create a new one") from self._broken
        if self._closed or self._env is None:
            raise UnityBridgeError(f"the Unity backend on port {self.port} is closed")

    def _run(self, op: Op, **fields: Any) -> Metadata:
        self._ensure_open()
        self._seq = (self._seq + 1) % SEQ_MOD
        cmd = Command(op, self._seq, **fields)
        env = self._env
        assert env is not None
        try:
            env.set_actions(self._behavior, ActionTuple(continuous=cmd.to_action()[None, :]))
            env.step()
            msg = self._process(cmd, *self._decision())
        except UnityRemoteError:
            raise
        except UnityDisconnectedError as e:  # mid-exchange: maybe an answer gRPC refused
            raise self._fail(type(e)(f"{e} {SIZE_HINT}"), cmd) from e
        except UnityBridgeError as e:
            raise self._fail(e, cmd) from e
        except UnityTimeOutException as e:
            raise self._fail(UnityTimeoutError(
                f"Unity did not answer within {self.timeout_s:g} s; it may be frozen or have "
                "crashed"), cmd) from e
        except UnityCommunicatorStoppedException as e:
            raise self._fail(UnityDisconnectedError(f"Unity closed the connection ({e})"), cmd) from e
        except UnityException as e:  # side-channel framing, observation shapes, actions
            raise self._fail(UnityProtocolError(f"malformed answer from Unity: {e}"), cmd) from e
        except RuntimeError as e:  # mlagents: NaN/Inf in observations or rewards
            raise self._fail(UnityProtocolError(f"malformed answer from Unity: {e}"), cmd) from e
        except BaseException:  # e.g. KeyboardInterrupt mid-exchange: the protocol state is lost
            self._broken = UnityBridgeError(f"interrupted during {op.label} (seq {cmd.seq})")
            self._drop_env()
            raise
        return msg

    def _fail(self, err: UnityBridgeError, cmd: Command) -> UnityBridgeError:
        """Name the operation and port, free the port and mark the backend unusable."""
        err = type(err)(f"{err} [operation {cmd.op.label}, seq {cmd.seq}, port {self.port}]")
        self._broken = err
        self._drop_env()
        return err

    def _decision(self) -> tuple[DecisionSteps, list[bytes]]:
        env = self._env
        assert env is not None
        payloads: list[bytes] = []
        for _ in range(MAX_IDLE_STEPS):
            decision, _terminal = env.get_steps(self._behavior)
            payloads += self._channel.take()
            if len(decision) > 0:
                if len(decision) != 1:
                    raise UnityProtocolError(f"behaviour {self._behavior} must have one agent, "
                                             f"{len(decision)} asked for a decision")
                return decision, payloads
            env.step()  # DecisionPeriod > 1: the answer comes with the next decision
        raise UnityProtocolError(f"no decision from behaviour {self._behavior} in "
                                 f"{MAX_IDLE_STEPS} steps (DecisionRequester period must be 1)")

    def _process(self, cmd: Command | None, decision: DecisionSteps, payloads: list[bytes]) -> Metadata:
        expect_seq, expect_op = (0, "reset") if cmd is None else (cmd.seq, cmd.op.label)
        if not payloads:
            raise MetadataError(f"Unity sent no metadata message with its answer to {expect_op} "
                                f"(seq {expect_seq})")
        msg = Metadata.from_bytes(payloads[-1])
        if (msg.seq, msg.op) != (expect_seq, expect_op):
            raise UnityProtocolError(f"answer out of step: expected {expect_op} seq {expect_seq}, "
                                     f"got {msg.op} seq {msg.seq}")
        echo = np.asarray(decision.obs[self._vector][0], dtype=np.float64)
        valid = 1.0 if msg.feasibility.valid else 0.0
        if echo.tolist() != [float(msg.seq), float(_op_code(msg.op)), valid]:
            raise UnityProtocolError(f"vector observation {echo.tolist()} disagrees with the "
                                     f"metadata (seq {msg.seq}, op {msg.op}, valid {valid:g})")
        if self._scenes and (msg.scenes, msg.pool) != (self._scenes, self._pool):
            raise UnityProtocolError(f"Unity changed its scenes/pool mid-run: {msg.scenes} / {msg.pool}")
        self._scenes, self._pool = msg.scenes, msg.pool
        self.last_reward = float(decision.reward[0])
        if msg.error is not None:
            if msg.state is not None and self._localize(msg.state) != self._state:  # half done
                self._state, self._fresh = self._localize(msg.state), False
            raise UnityRemoteError(f"Unity could not carry out {expect_op} (seq {expect_seq}): "
                                   f"{msg.error}")
        if cmd is not None and cmd.op is not Op.RENDER and cmd.op is not Op.NOOP:
            if msg.state is None:
                raise MetadataError(f"metadata answering {expect_op} (seq {expect_seq}) has no state")
        if msg.state is not None:
            self._state = self._localize(msg.state)
        if msg.rendered:
            self._chw, self._rgb, self._fresh = decision.obs[self._visual][0], None, True
        elif cmd is not None and cmd.op in (Op.LOAD, Op.MOVE, Op.SWAP) and msg.feasibility.valid:
            self._fresh = False
        return msg


    def _localize(self, state: SceneState) -> SceneState:
        """The build's scene index -> this backend's (selected) index."""
        if not self._local:  # during the handshake
            return state
        if state.scene_index not in self._local:
            raise UnityProtocolError(f"Unity is in scene {state.scene_name!r}, which is not among "
                                     f"this backend's scenes {list(self.scene_names)}")
        return replace(state, scene_index=self._local.index(state.scene_index))


def _op_code(label: str) -> int:
    return -1 if label == "reset" else int(Op[label.upper()])


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free right now on `host` (for tests and the test peer)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])
