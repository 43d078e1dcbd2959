"""A test peer that plays Unity's part of the bridge at the protocol level, without Unity.

`TestPeer` is a gRPC *client* built from mlagents_envs' own generated stubs
(`UnityToExternalProtoStub`): it connects to the real `UnityEnvironment` server, performs the
handshake exactly as ML-Agents' C# `RpcCommunicator` does (initialization output, then an empty
acknowledgement whose reply is Python's first input; brain parameters travel with the first agent
info), and answers every command of `rls3.bridges.messages` with a PNG visual observation, the
vector echo and the JSON metadata side channel. An embedded `SceneBackend` does the work
(`SimBackend` normally, `ToyBackend` for fast protocol tests), so `UnityBackend` over the peer
returns what that backend returns by itself.

It runs in a thread (`TestPeer.start`) or as a stand-in *player executable*: `write_player_script`
writes an executable that accepts a Unity player's command line (``--mlagents-port N -batchmode
-nographics -logFile F --rls3-image-size N``), so `UnityBackend(build_path=script)` launches it
through mlagents' own launcher. Use the player form with `SimBackend`: pyrender's GL context is
per process, and a Unity player is its own process too. `PeerFaults` injects crashes, hangs and
malformed metadata.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import logging
import os
import sys
import tempfile
import threading
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import grpc
import numpy as np
from PIL import Image

with warnings.catch_warnings():  # mlagents_envs' generated protobuf code and its distutils import
    warnings.simplefilter("ignore", DeprecationWarning)
    from mlagents_envs.communicator_objects.agent_info_pb2 import AgentInfoProto
    from mlagents_envs.communicator_objects.brain_parameters_pb2 import (
        ActionSpecProto,
        BrainParametersProto,
    )
    from mlagents_envs.communicator_objects.capabilities_pb2 import UnityRLCapabilitiesProto
    from mlagents_envs.communicator_objects.command_pb2 import QUIT, RESET
    from mlagents_envs.communicator_objects.observation_pb2 import PNG
    from mlagents_envs.communicator_objects.unity_message_pb2 import UnityMessageProto
    from mlagents_envs.communicator_objects.unity_to_external_pb2_grpc import (
        UnityToExternalProtoStub,
    )

from rls3.bridges.messages import (
    ACTION_SIZE,
    BEHAVIOR_NAME,
    CHANNEL_ID,
    Command,
    Metadata,
    Op,
)
from rls3.bridges.sidechannel import pack, unpack
from rls3.bridges.spec import parse_peer_scenes, parse_testpeer_build  # noqa: F401  (re-exported)
from rls3.scene import (DEFAULT_IMAGE_SIZE, Camera, Feasibility, ObjectPose, Reason, SceneBackend,
                        SceneState, Surface, Vec3)

log = logging.getLogger(__name__)

COMMUNICATION_VERSION = "1.5.0"  # what ML-Agents 2.x / com.unity.ml-agents sends
PACKAGE_VERSION = "2.0.1"
DIM_NONE, DIM_TRANSLATIONAL = 1, 2  # DimensionPropertyProto values, as C# sends them
MALFORMED_KINDS = ("not_json", "missing_field", "wrong_format", "bad_reason", "bad_state",
                   "no_message", "bad_framing", "wrong_seq")


@dataclass(frozen=True)
class PeerFaults:
    """Misbehaviour to inject, counted in commands received after the handshake (1 = first).

    crash_after: on receiving command N, drop the connection without answering (a player
        process exits with code 3, like a crash while working).
    hang_after: on receiving command N, stop answering but keep the connection (a frozen Unity).
    malformed_after: answer command N with a broken metadata message of kind `malformed`.
    """

    crash_after: int | None = None
    hang_after: int | None = None
    malformed_after: int | None = None
    malformed: str = "not_json"

    def __post_init__(self) -> None:
        if self.malformed not in MALFORMED_KINDS:
            raise ValueError(f"unknown malformed kind {self.malformed!r}; one of {MALFORMED_KINDS}")

    @classmethod
    def parse(cls, text: str) -> PeerFaults:
        """From ``"crash_after=5"``, ``"hang_after=2"``, ``"malformed_after=3:not_json"``."""
        f = cls()
        for part in filter(None, (p.strip() for p in text.split(","))):
            key, _, val = part.partition("=")
            if key == "malformed_after":
                n, _, kind = val.partition(":")
                f = replace(f, malformed_after=int(n), malformed=kind or "not_json")
            elif key in ("crash_after", "hang_after"):
                f = replace(f, crash_after=int(val)) if key == "crash_after" else \
                    replace(f, hang_after=int(val))
            else:
                raise ValueError(f"unknown fault {key!r}; use crash_after, hang_after, malformed_after")
        return f

    def to_text(self) -> str:
        parts = [f"{k}={getattr(self, k)}" for k in ("crash_after", "hang_after")
                 if getattr(self, k) is not None]
        if self.malformed_after is not None:
            parts.append(f"malformed_after={self.malformed_after}:{self.malformed}")
        return ",".join(parts)


class TestPeer:
    """Plays a Unity player with one `Rls3Arranger` agent, driven by an embedded SceneBackend.

    `backend` is a SceneBackend or a zero-argument factory (called in the peer's own thread).
    """

    __test__ = False  # not a pytest test class

    def __init__(self, backend: SceneBackend | Callable[[], SceneBackend], port: int, *,
                 host: str = "127.0.0.1", image_size: int = DEFAULT_IMAGE_SIZE,
                 behavior_name: str = BEHAVIOR_NAME, faults: PeerFaults | None = None,
                 connect_timeout_s: float = 60.0, exit_on_crash: bool = False) -> None:
        if image_size < 8:
            raise ValueError(f"image_size must be >= 8, got {image_size}")
        self._backend_arg = backend
        self.backend: SceneBackend | None = None
        self.target = f"{host}:{port}"
        self.image_size = image_size
        self.behavior = f"{behavior_name}?team=0"
        self.faults = faults or PeerFaults()
        self.connect_timeout_s = connect_timeout_s
        self.exit_on_crash = exit_on_crash
        self.commands = 0
        self.error: BaseException | None = None
        self.python_seed: int | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._channel: grpc.Channel | None = None
        self._loaded = False
        self._blank = b""
        self._brain_sent = False

    # -- lifecycle ---------------------------------------------------------------------------------
    def start(self) -> TestPeer:
        """Run the peer in a daemon thread; returns self."""
        self._thread = threading.Thread(target=self._run_safely, name="rls3-test-peer", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Cancel any pending call, close the connection and wait for the thread."""
        self._stop.set()
        if self._channel is not None:
            self._channel.close()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout)

    def drop_connection(self) -> None:
        """Close the connection while Python holds the pending call: what a crashed player does."""
        self.stop()

    def _run_safely(self) -> None:
        try:
            self.run()
        except BaseException as e:  # reported to the test through .error
            log.exception("test peer failed")
            self.error = e

    def run(self) -> int:
        """Connect, handshake and answer until Python closes the environment; returns an exit code."""
        if self._stop.is_set():
            return 0
        arg = self._backend_arg
        owned = callable(arg)  # a factory (class or function), not an instance
        backend: SceneBackend = arg() if callable(arg) else arg
        self.backend = backend
        self._blank = _png(np.zeros((self.image_size, self.image_size, 3), np.uint8), level=9)
        # the player usually starts before Python's server listens: retry the connection quickly
        self._channel = grpc.insecure_channel(self.target, options=[
            ("grpc.initial_reconnect_backoff_ms", 50), ("grpc.min_reconnect_backoff_ms", 50),
            ("grpc.max_reconnect_backoff_ms", 500)])
        stub = UnityToExternalProtoStub(self._channel)
        try:
            return self._serve(stub)
        finally:
            self._channel.close()
            if owned:
                backend.close()

    def _serve(self, stub: UnityToExternalProtoStub) -> int:
        if not self._handshake(stub):
            return 2
        ack = UnityMessageProto()
        ack.header.status = 200
        reply = self._exchange(stub, ack)  # its reply is Python's first input
        while reply is not None and reply.header.status == 200:
            rl_in = reply.unity_input.rl_input
            for channel, payload in unpack(rl_in.side_channel):
                log.debug("side channel %s from Python: %d bytes", channel, len(payload))
            if rl_in.command == QUIT:
                break
            if rl_in.command == RESET:
                answer = self._answer("reset", 0, Feasibility.ok(), False, 0.0)
            else:
                step = self._step(rl_in)
                if isinstance(step, int):
                    return step
                answer = step
            reply = self._exchange(stub, answer)
        log.info("Python closed the environment after %d commands", self.commands)
        return 0

    def _handshake(self, stub: UnityToExternalProtoStub) -> bool:
        """Send the initialization output; whether Python answered with a compatible version
        (its seed then in `python_seed`)."""
        init = UnityMessageProto()
        init.header.status = 200
        out = init.unity_output.rl_initialization_output
        out.name = "rls3-test-peer"
        out.communication_version = COMMUNICATION_VERSION
        out.package_version = PACKAGE_VERSION
        out.capabilities.CopyFrom(_capabilities())
        try:
            reply = stub.Exchange(init, wait_for_ready=True, timeout=self.connect_timeout_s)
        except grpc.RpcError as e:
            log.error("could not reach the Python side at %s: %s", self.target, e)
            return False
        py = reply.unity_input.rl_initialization_input
        if py.communication_version.split(".")[0] != COMMUNICATION_VERSION.split(".")[0]:
            log.error("Python speaks communication version %s", py.communication_version)
            return False
        self.python_seed = py.seed
        return True

    def _step(self, rl_in: Any) -> UnityMessageProto | int:
        """The answer to one step input, or the exit code when an injected fault ends the
        session."""
        actions = rl_in.agent_actions[self.behavior].value if \
            self.behavior in rl_in.agent_actions else []
        if not actions:
            log.debug("step without an action for %s: nothing to do", self.behavior)
            return self._answer("noop", 0, Feasibility.ok(), False, 0.0)
        self.commands += 1
        if self.faults.crash_after == self.commands:
            log.warning("fault: crashing on command %d", self.commands)
            if self.exit_on_crash:
                os._exit(3)
            return 3
        if self.faults.hang_after == self.commands:
            log.warning("fault: hanging on command %d", self.commands)
            self._stop.wait()
            return 0
        try:
            cmd = Command.from_action(list(actions[0].continuous_actions))
        except ValueError as e:  # reported like any failed command
            return self._answer("noop", 0, Feasibility.ok(), False, 0.0,
                                f"bad command: {e}")
        return self._execute(cmd)

    def _exchange(self, stub: UnityToExternalProtoStub, msg: UnityMessageProto) -> UnityMessageProto | None:
        """One blocking call, like C#'s Exchange (no deadline: Python may train for minutes
        between steps); `stop()` cancels it by closing the channel. None when it ended unanswered."""
        if self._stop.is_set():
            return None
        try:
            return stub.Exchange(msg)
        except grpc.RpcError as e:
            log.info("exchange ended: %s", e.code() if hasattr(e, "code") else e)
            return None
        except ValueError as e:  # the channel was closed under the call
            log.info("exchange ended: %s", e)
            return None

    # -- the agent -------------------------------------------------------------------------------
    def _execute(self, cmd: Command) -> UnityMessageProto:
        b = self.backend
        assert b is not None
        feas, reward, rendered, error, image = Feasibility.ok(), 0.0, False, None, None
        try:
            if cmd.op is Op.LOAD:
                b.load_scene(cmd.index, cmd.seed)
                self._loaded = True
            elif cmd.op is Op.MOVE:
                feas = b.move_object(cmd.slot, cmd.displacement)
                reward = 1.0 if feas.valid else -1.0
            elif cmd.op is Op.SWAP:
                pool = b.object_pool
                if not 0 <= cmd.index < len(pool):
                    raise ValueError(f"pool index {cmd.index} out of range 0..{len(pool) - 1}")
                feas = b.swap_object(cmd.slot, pool[cmd.index])
                reward = 1.0 if feas.valid else -1.0
            if cmd.op is Op.RENDER or (cmd.render and feas.valid and cmd.op in (Op.LOAD, Op.MOVE, Op.SWAP)):
                image = _png(b.render(self.image_size, self.image_size))
                rendered = True
        except (ValueError, RuntimeError, KeyError, IndexError) as e:
            feas, reward, rendered, error = Feasibility.ok(), 0.0, False, f"{type(e).__name__}: {e}"
        return self._answer(cmd.op.label, cmd.seq, feas, rendered, reward, error, image)

    def _answer(self, op: str, seq: int, feas: Feasibility, rendered: bool, reward: float,
                error: str | None = None, image: bytes | None = None) -> UnityMessageProto:
        b = self.backend
        assert b is not None
        state = b.state() if self._loaded else None
        meta = Metadata(seq, op, feas, rendered, tuple(b.scene_names), tuple(b.object_pool), state,
                        error)
        side = pack([(CHANNEL_ID, meta.to_bytes())])
        echo = [float(seq), float(-1 if op == "reset" else int(Op[op.upper()])),
                1.0 if feas.valid else 0.0]
        if self.faults.malformed_after is not None and self.faults.malformed_after == self.commands \
                and op != "reset":
            side, echo = _malformed(self.faults.malformed, meta, echo)
        msg = UnityMessageProto()
        msg.header.status = 200
        info = msg.unity_output.rl_output.agentInfos[self.behavior].value.add()
        _fill_info(info, reward, image if image is not None else self._blank, self.image_size, echo)
        msg.unity_output.rl_output.side_channel = side
        if not self._brain_sent:  # C# sends brain parameters with the behaviour's first agent info
            bp = msg.unity_output.rl_initialization_output.brain_parameters.add()
            bp.CopyFrom(BrainParametersProto(brain_name=self.behavior, is_training=True,
                                             action_spec=ActionSpecProto(num_continuous_actions=ACTION_SIZE)))
            self._brain_sent = True
        return msg


def _capabilities() -> UnityRLCapabilitiesProto:
    return UnityRLCapabilitiesProto(baseRLCapabilities=True, concatenatedPngObservations=True,
                                    compressedChannelMapping=True, hybridActions=True,
                                    trainingAnalytics=True, variableLengthObservation=True,
                                    multiAgentGroups=True)


def _fill_info(info: AgentInfoProto, reward: float, png: bytes, size: int, echo: list[float]) -> None:
    info.reward = reward
    info.done = False
    info.id = 0
    vis = info.observations.add()
    vis.shape.extend([3, size, size])
    vis.compression_type = PNG
    vis.compressed_data = png
    vis.dimension_properties.extend([DIM_NONE, DIM_TRANSLATIONAL, DIM_TRANSLATIONAL])
    vis.name = "Rls3Camera"
    vec = info.observations.add()
    vec.shape.append(len(echo))
    vec.float_data.data.extend(echo)
    vec.dimension_properties.append(DIM_NONE)
    vec.name = "VectorSensor_size3"


def _png(img: np.ndarray, level: int = 0) -> bytes:
    """PNG bytes; level 0 (stored) is the fastest round trip on a loopback connection."""
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(img, dtype=np.uint8)).save(buf, "PNG", compress_level=level)
    return buf.getvalue()


def _malformed(kind: str, meta: Metadata, echo: list[float]) -> tuple[bytes, list[float]]:
    d = meta.to_dict()
    if kind == "not_json":
        payload = b"\xff\xfe{this is not json"
    elif kind == "missing_field":
        del d["feasibility"]
        payload = _json(d)
    elif kind == "wrong_format":
        d["format"] = "rls3-bridge/0"
        payload = _json(d)
    elif kind == "bad_reason":
        d["feasibility"] = {"valid": False, "reason": "levitating", "detail": ""}
        payload = _json(d)
    elif kind == "bad_state":
        if d["state"] is not None:
            d["state"]["objects"][0]["surface"] = "nowhere/9"
        else:
            d["state"] = {"scene_index": 0}
        payload = _json(d)
    elif kind == "wrong_seq":
        d["seq"] = (d["seq"] + 7) % 1000
        payload = _json(d)
    elif kind == "no_message":
        return b"", echo
    elif kind == "bad_framing":
        good = pack([(CHANNEL_ID, meta.to_bytes())])
        return good[:16] + (len(good) * 4).to_bytes(4, "little") + good[20:], echo
    else:  # pragma: no cover - PeerFaults validates the kind
        raise ValueError(kind)
    return pack([(CHANNEL_ID, payload)]), echo


def _json(d: dict[str, Any]) -> bytes:
    import json

    return json.dumps(d).encode("utf-8")


# -- a geometry-free backend for fast protocol tests -----------------------------------------------
class ToyBackend:
    """A tiny deterministic `SceneBackend` without physics or GL: one table, square objects seen
    from above. For protocol tests and for timing the bridge itself; not for data."""

    SCENES = ("toy_kitchen", "toy_office")
    POOL = ("mug", "plate", "bottle", "bowl", "vase")
    HALF = 0.08  # objects are 16 cm squares
    TABLE = Surface("table/0", (0.0, 0.0, 0.75), (1.6, 0.8, 0.04))

    def __init__(self, scenes: Sequence[str] | None = None) -> None:
        self._scenes = tuple(scenes) if scenes else self.SCENES
        self._index = -1
        self._objects: list[list[Any]] = []  # [name, x, y]

    @property
    def scene_names(self) -> tuple[str, ...]:
        return self._scenes

    @property
    def object_pool(self) -> tuple[str, ...]:
        return self.POOL

    def load_scene(self, index: int, seed: int | None = None) -> SceneState:
        if not 0 <= index < len(self._scenes):
            raise ValueError(f"scene index {index} out of range 0..{len(self._scenes) - 1}")
        rng = np.random.default_rng(seed)
        self._index = index
        names = [self.POOL[int(k)] for k in rng.choice(len(self.POOL), 3, replace=False)]
        xs = [-0.5, 0.0, 0.5]
        self._objects = [[n, xs[i] + float(rng.uniform(-0.1, 0.1)), float(rng.uniform(-0.2, 0.2))]
                         for i, n in enumerate(names)]
        return self.state()

    def move_object(self, slot: int, displacement: Vec3) -> Feasibility:
        self._need()
        o = self._objects[slot]
        return self._place(slot, o[0], o[1] + float(displacement[0]), o[2] + float(displacement[1]),
                           float(displacement[2]))

    def swap_object(self, slot: int, name: str) -> Feasibility:
        self._need()
        if name not in self.POOL or any(o[0] == name for o in self._objects):
            raise ValueError(f"cannot swap in {name!r}")
        o = self._objects[slot]
        return self._place(slot, name, o[1], o[2], 0.0)

    def _place(self, slot: int, name: str, x: float, y: float, dz: float) -> Feasibility:
        if abs(x) > 2.0 or abs(y) > 2.0 or abs(dz) > 1.0:
            return Feasibility.fail(Reason.OUT_OF_BOUNDS, "outside the toy room")
        if not self.TABLE.contains_xy(x, y, self.HALF):
            return Feasibility.fail(Reason.OFF_SURFACE, "off the table")
        for i, o in enumerate(self._objects):
            if i != slot and abs(o[1] - x) < 2 * self.HALF and abs(o[2] - y) < 2 * self.HALF:
                return Feasibility.fail(Reason.OVERLAP, f"overlaps {o[0]}")
        self._objects[slot] = [name, x, y]
        return Feasibility.ok()

    def state(self) -> SceneState:
        self._need()
        top = self.TABLE.top + self.HALF
        objs = tuple(ObjectPose(n, (x, y, top), (0.0, 0.0, 0.0), self.TABLE.name)
                     for n, x, y in self._objects)
        cam = Camera.looking_at((0.0, -1.5, 1.8), (0.0, 0.0, 0.75))
        return SceneState(self._index, self._scenes[self._index], objs, (self.TABLE,), cam,
                          ((-2.0, -2.0, 0.0), (2.0, 2.0, 2.5)))

    def render(self, width: int, height: int) -> np.ndarray:
        self._need()
        img = np.zeros((height, width, 3), np.uint8)
        img[:] = (40 + 60 * self._index, 40, 60)
        for n, x, y in self._objects:
            c = np.array([(hash_name(n) >> s) & 255 for s in (0, 8, 16)], np.uint8)
            cx, cy = int((x + 1.0) / 2.0 * width), int((1.0 - (y + 0.5)) * height)
            r = max(1, int(self.HALF / 2.0 * width))
            img[max(0, cy - r):cy + r, max(0, cx - r):cx + r] = c
        return img

    def close(self) -> None:
        pass

    def _need(self) -> None:
        if self._index < 0:
            raise RuntimeError("no scene loaded: call load_scene() first")


def hash_name(name: str) -> int:
    """A stable (not per-process salted) hash for colours."""
    h = 2166136261
    for ch in name.encode():
        h = ((h ^ ch) * 16777619) & 0xFFFFFFFF
    return h


# -- the stand-in player --------------------------------------------------------------------------
def make_scene_backend(kind: str = "sim", scenes: str | Sequence[str] = "train",
                       objects: Sequence[str] | None = None, shadows: bool = True) -> SceneBackend:
    """The backend a peer embeds: ``"sim"`` (SimBackend over `scenes`) or ``"toy"``."""
    if kind == "toy":
        return ToyBackend(None if isinstance(scenes, str) and scenes in ("train", "test")
                          else ([scenes] if isinstance(scenes, str) else scenes))
    if kind != "sim":
        raise ValueError(f"unknown peer backend {kind!r}; use 'sim' or 'toy'")
    from rls3.sim import SimBackend

    return SimBackend(scenes, objects=objects, shadows=shadows)


def main(argv: Sequence[str] | None = None) -> int:
    """Command line of the stand-in player (accepts what mlagents passes to a Unity player)."""
    p = argparse.ArgumentParser(prog="rls3-test-peer", description=__doc__.split("\n")[0])
    p.add_argument("--mlagents-port", type=int, required=True)
    p.add_argument("-nographics", action="store_true")
    p.add_argument("-batchmode", action="store_true")
    p.add_argument("-logFile", default=None)
    p.add_argument("--rls3-image-size", type=int, default=DEFAULT_IMAGE_SIZE)
    p.add_argument("--rls3-peer-backend", default="sim", choices=("sim", "toy"))
    p.add_argument("--rls3-peer-scenes", default="train")
    p.add_argument("--rls3-peer-objects", default="")
    p.add_argument("--rls3-peer-no-shadows", action="store_true")
    p.add_argument("--rls3-peer-fault", default="")
    p.add_argument("--rls3-peer-host", default="127.0.0.1")
    a, unknown = p.parse_known_args(argv)
    logging.basicConfig(filename=a.logFile, level=logging.INFO,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    if unknown:
        log.info("ignoring player arguments %s", unknown)
    objects = [o for o in a.rls3_peer_objects.split(",") if o] or None
    peer = TestPeer(lambda: make_scene_backend(a.rls3_peer_backend,
                                               parse_peer_scenes(a.rls3_peer_scenes),
                                               objects, not a.rls3_peer_no_shadows),
                    a.mlagents_port, host=a.rls3_peer_host, image_size=a.rls3_image_size,
                    faults=PeerFaults.parse(a.rls3_peer_fault), exit_on_crash=True)
    return peer.run()


def write_player_script(directory: str | os.PathLike[str] | None = None, *, backend: str = "sim",
                        scenes: str | Sequence[str] = "train", objects: Sequence[str] | None = None,
                        shadows: bool = True, faults: PeerFaults | None = None) -> str:
    """Write an executable that behaves like a Unity player of this bridge (the test peer with
    these settings baked in) and return its path: pass it as ``--unity-build``. Without
    `directory` it goes to a per-user temp folder named by its content, so repeated calls reuse it."""
    scene_text = scenes if isinstance(scenes, str) else ",".join(scenes)
    args = ["--rls3-peer-backend", backend, "--rls3-peer-scenes", scene_text]
    if objects:
        args += ["--rls3-peer-objects", ",".join(objects)]
    if not shadows:
        args.append("--rls3-peer-no-shadows")
    if faults is not None and faults.to_text():
        args += ["--rls3-peer-fault", faults.to_text()]
    root = str(Path(__file__).resolve().parents[2])
    text = (f"#!{sys.executable}\n"
            "import os, sys\n"
            "os.environ.setdefault('GRPC_VERBOSITY', 'ERROR')\n"
            f"sys.path.insert(0, {root!r})\n"
            "from rls3.bridges.testpeer import main\n"
            f"raise SystemExit(main({args!r} + sys.argv[1:]))\n")
    if directory is None:
        digest = hashlib.sha1(text.encode()).hexdigest()[:12]
        directory = Path(tempfile.gettempdir()) / f"rls3_peer_{os.getuid()}" / digest
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    path = d / "rls3_test_player"
    if not path.exists() or path.read_text() != text:
        tmp = d / f".rls3_test_player.{os.getpid()}.{threading.get_ident()}"
        tmp.write_text(text)
        tmp.chmod(0o755)
        os.replace(tmp, path)  # atomic: concurrent writers never expose a half-written script
    return str(path)


if __name__ == "__main__":
    raise SystemExit(main())

