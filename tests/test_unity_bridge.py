"""Unity bridge without Unity: the test peer plays Unity's part of the real ML-Agents protocol.

The peer is a gRPC client built from mlagents_envs' generated stubs; `UnityBackend` runs on the real
`UnityEnvironment` server. Peers driven by the embedded simulator run as stand-in player
processes (launched through mlagents' own launcher, like a Unity build); error-path tests use the
geometry-free `ToyBackend`, in a thread where the test must control the peer.
"""

from __future__ import annotations

import socket
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env as gym_check_env
from stable_baselines3.common.env_checker import check_env as sb3_check_env

from rls3.bridges import (
    MetadataError,
    PeerFaults,
    TestPeer,
    UnityBackend,
    UnityBridgeError,
    UnityDisconnectedError,
    UnityLaunchError,
    UnityProtocolError,
    UnityRemoteError,
    UnityTimeoutError,
    connect_test_peer,
    free_port,
    make_unity_backend,
    unity_backend_factory,
)
from mlagents_envs.environment import UnityEnvironment  # noqa: E402  (after rls3.bridges)
from rls3.bridges.messages import ACTION_SIZE, CHANNEL_ID, FORMAT, Command, Metadata, Op
from rls3.bridges.sidechannel import pack, unpack
from rls3.bridges.testpeer import ToyBackend, parse_testpeer_build, write_player_script
from rls3.env import EnvConfig, Rls3Env
from rls3.scene import Feasibility, Reason, SceneBackend
from rls3.sim import SimBackend

SCENES = ["kitchen", "bedroom"]
SIZE = 32


@pytest.fixture(scope="module")
def sim():
    b = SimBackend(SCENES)
    yield b
    b.close()


@pytest.fixture(scope="module")
def bridge():
    """UnityBackend over a stand-in player process that embeds SimBackend(SCENES)."""
    b = connect_test_peer(SCENES, image_size=SIZE, timeout_s=60)
    yield b
    b.close()


def toy_peer(faults: PeerFaults | None = None, backend=ToyBackend, timeout_s: float = 10.0):
    port = free_port()
    peer = TestPeer(backend, port, image_size=SIZE, faults=faults).start()
    b = UnityBackend(None, base_port=port, timeout_s=timeout_s, connect_timeout_s=20,
                     on_close=peer.stop)
    return b, peer


def same_image(a: np.ndarray, b: np.ndarray) -> bool:
    """Equal up to a few z-fighting pixels. SimBackend alone differs that much between two
    processes (pyrender draws equidistant nodes in Python set order, i.e. by object id), and the
    peer is another process; within one process its renders are exactly repeatable."""
    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    return bool((a != b).any(axis=-1).mean() <= 0.01)


def f32(*v: float) -> tuple[float, float, float]:
    """Displacements that float32 (Unity's precision) carries exactly."""
    return tuple(float(np.float32(x)) for x in v)  # type: ignore[return-value]


# -- the message format ----------------------------------------------------------------------------
def test_command_round_trip():
    for cmd in [Command(Op.LOAD, 1, index=4, seed=2**31 - 1, render=True),
                Command(Op.LOAD, 2**24 - 1, index=0, seed=None),
                Command(Op.MOVE, 7, slot=2, displacement=f32(0.1, -0.25, 0.5), render=True),
                Command(Op.SWAP, 9, slot=1, index=8), Command(Op.RENDER, 3), Command(Op.NOOP, 0)]:
        a = cmd.to_action()
        assert a.shape == (ACTION_SIZE,) and a.dtype == np.float32
        assert Command.from_action(a) == cmd
    with pytest.raises(ValueError, match="seed"):
        Command(Op.LOAD, 1, seed=2**31).to_action()
    bad = Command(Op.MOVE, 1).to_action()
    bad[0] = 9
    with pytest.raises(ValueError, match="op"):
        Command.from_action(bad)
    bad = Command(Op.MOVE, 1).to_action()
    bad[2] = 1.5
    with pytest.raises(ValueError, match="slot"):
        Command.from_action(bad)
    with pytest.raises(ValueError, match="10 entries"):
        Command.from_action(np.zeros(4))


def test_metadata_round_trip_and_validation():
    b = ToyBackend()
    state = b.load_scene(0, seed=1)
    m = Metadata(5, "move", Feasibility.fail(Reason.OVERLAP, "hits mug – ünïcode"), True,
                 b.scene_names, b.object_pool, state)
    assert Metadata.from_bytes(m.to_bytes()) == m
    assert Metadata.from_bytes(Metadata(0, "reset", Feasibility.ok(), False, ("a",), ("x", "y", "z"))
                               .to_bytes()).state is None
    d = m.to_dict()
    cases = [(b"\xffnot json", "not UTF-8 JSON"), (b"[1, 2]", "JSON object"),
             ({**d, "format": "v0"}, "format"), ({k: v for k, v in d.items() if k != "seq"}, "seq"),
             ({**d, "op": "jump"}, "op"), ({**d, "feasibility": {"valid": True, "reason": "overlap"}},
                                          "inconsistent"),
             ({**d, "feasibility": {"valid": False, "reason": "levitating"}}, "reason"),
             ({**d, "scenes": []}, "scenes"), ({**d, "state": {"scene_index": 0}}, "state"),
             ({**d, "state": {**d["state"], "scene_index": 1}}, "names scene")]
    import json
    for payload, match in cases:
        data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        with pytest.raises(MetadataError, match=match):
            Metadata.from_bytes(data)


def test_side_channel_framing():
    msgs = [(CHANNEL_ID, b'{"a": 1}'), (CHANNEL_ID, b"")]
    assert unpack(pack(msgs)) == msgs
    with pytest.raises(UnityProtocolError, match="claims"):
        unpack(pack(msgs[:1])[:-3])
    with pytest.raises(UnityProtocolError, match="truncated"):
        unpack(pack(msgs)[:-3])
    # the layout ML-Agents' SideChannelManager expects: .NET GUID bytes, int32 length, payload
    raw = pack([(CHANNEL_ID, b"xy")])
    assert raw[:16] == CHANNEL_ID.bytes_le and raw[16:20] == (2).to_bytes(4, "little")


# -- equivalence with the embedded backend ---------------------------------------------------------
def test_real_mlagents_environment_and_catalog(bridge, sim):
    assert isinstance(bridge, SceneBackend)
    assert isinstance(bridge._env, UnityEnvironment)
    assert bridge.scene_names == sim.scene_names
    assert bridge.object_pool == sim.object_pool
    assert bridge.image_shape == (SIZE, SIZE)


def test_operations_match_sim(bridge, sim):
    rng = np.random.default_rng(0)
    for index, seed in [(0, 7), (1, 3), (0, 123456789)]:
        assert bridge.load_scene(index, seed=seed) == sim.load_scene(index, seed=seed)
        assert same_image(bridge.render(SIZE, SIZE), sim.render(SIZE, SIZE))
        for k in range(8):
            d = f32(*rng.uniform(-0.4, 0.4, 3))
            assert bridge.move_object(k % 3, d) == sim.move_object(k % 3, d)
            assert bridge.state() == sim.state()
            assert same_image(bridge.render(SIZE, SIZE), sim.render(SIZE, SIZE))
        idle = [n for n in sim.object_pool if n not in {o.name for o in sim.state().objects}]
        for name in idle[:3]:
            assert bridge.swap_object(k % 3, name) == sim.swap_object(k % 3, name)
            assert bridge.state() == sim.state()
        assert same_image(bridge.render(SIZE, SIZE), sim.render(SIZE, SIZE))
    big = bridge.render(48, 40)
    assert big.shape == (40, 48, 3) and big.dtype == np.uint8


def rollout(backend, steps=30, t0=5):
    env = Rls3Env(backend, EnvConfig(t0=t0, image_size=SIZE, swap_prob=0.3))
    obs, _ = env.reset(seed=11)
    rng = np.random.default_rng(0)
    out, images, infos = [obs], [], []
    for _ in range(steps):
        obs, r, term, trunc, info = env.step(rng.uniform(-1, 1, 3).astype(np.float32))
        out.append(obs)
        infos.append((r, info["valid"], info["reason"], info["moved"], info["scene"], term, trunc))
        if info["frame"] is not None:
            images.append(info["frame"].image)
        if term or trunc:
            obs, _ = env.reset()
            out.append(obs)
    return np.array(out), images, infos


def test_env_rollout_same_samples_as_sim(bridge, sim):
    o1, i1, f1 = rollout(bridge)
    o2, i2, f2 = rollout(sim)
    assert f1 == f2
    np.testing.assert_allclose(o1, o2, atol=1e-5)  # displacements cross as float32
    assert len(i1) == len(i2) > 0
    assert all(same_image(a, b) for a, b in zip(i1, i2, strict=True))


def test_env_checkers_pass(bridge):
    env = Rls3Env(bridge, EnvConfig(t0=4, image_size=SIZE))
    gym_check_env(env, skip_render_check=True)
    sb3_check_env(env, warn=True)


def test_tiny_episode_loop(bridge):
    seen = []
    env = Rls3Env(bridge, EnvConfig(t0=3, image_size=SIZE), feedback=lambda fr: seen.append(fr) or 2.0)
    for episode in range(2):
        env.reset(seed=episode)
        while True:
            _, r, term, trunc, info = env.step(env.action_space.sample() * 0.3)
            if info["frame"] is not None:
                img = info["frame"].image
                assert img.shape == (SIZE, SIZE, 3) and img.dtype == np.uint8 and img.std() > 5
            if term or trunc:
                break
    assert [len(f) for f in seen] == [3, 3]
    assert r == pytest.approx(3.0)


# -- protocol details and argument checks (toy peer in a thread) -----------------------------------
def test_handshake_and_bad_arguments():
    b, peer = toy_peer()
    try:
        assert peer.python_seed == 0 and b._behavior == "Rls3Arranger?team=0"
        assert b.scene_names == ToyBackend.SCENES and b.image_shape == (SIZE, SIZE)
        with pytest.raises(RuntimeError, match="no scene loaded"):
            b.render(SIZE, SIZE)
        b.load_scene(0, seed=1)
        assert b.last_reward == 0.0
        for call, match in [(lambda: b.load_scene(5), "out of range"),
                            (lambda: b.load_scene(0, seed=-1), "seed"),
                            (lambda: b.move_object(3, (0, 0, 0)), "slot"),
                            (lambda: b.move_object(0, (np.nan, 0, 0)), "finite"),
                            (lambda: b.swap_object(0, "piano"), "unknown object"),
                            (lambda: b.swap_object(0, b.state().objects[1].name), "already active")]:
            with pytest.raises(ValueError, match=match):
                call()
        assert b.move_object(0, (9.0, 0, 0)).reason is Reason.OUT_OF_BOUNDS and b.last_reward == -1.0
        assert b.move_object(0, (0.01, 0, 0)).valid and b.last_reward == 1.0
    finally:
        b.close()
    assert peer.error is None
    with pytest.raises(UnityBridgeError, match="closed"):
        b.move_object(0, (0, 0, 0))


def test_build_that_speaks_another_protocol_is_refused():
    port = free_port()
    peer = TestPeer(ToyBackend, port, image_size=SIZE, behavior_name="SomethingElse").start()
    with pytest.raises(UnityLaunchError, match="does not speak.*Rls3Arranger"):
        UnityBackend(None, base_port=port, connect_timeout_s=20)
    peer.stop()
    port = free_port()
    peer = TestPeer(ToyBackend, port, image_size=SIZE).start()
    with pytest.raises(UnityLaunchError, match=f"asked for 64x64 images, the build renders {SIZE}x{SIZE}"):
        UnityBackend(None, base_port=port, connect_timeout_s=20, image_size=64)
    peer.stop()


def test_remote_error_keeps_connection():
    class Faulty(ToyBackend):
        def swap_object(self, slot, name):
            raise RuntimeError("prefab missing")

    b, _ = toy_peer(backend=Faulty)
    try:
        b.load_scene(0, seed=2)
        idle = [n for n in b.object_pool if n not in {o.name for o in b.state().objects}]
        with pytest.raises(UnityRemoteError, match="prefab missing"):
            b.swap_object(0, idle[0])
        assert b.move_object(0, (0.0, 0.0, 0.0)).valid  # still connected
    finally:
        b.close()


def test_ping_changes_nothing():
    b, _ = toy_peer()
    try:
        b.load_scene(0, seed=3)
        state, image = b.state(), b.render(SIZE, SIZE)
        b.ping()
        assert b.state() == state and np.array_equal(b.render(SIZE, SIZE), image)
    finally:
        b.close()
    with pytest.raises(UnityBridgeError, match="closed"):
        b.ping()


# -- failures: clear errors, never a hang ----------------------------------------------------------
def test_peer_drops_connection_mid_episode():
    b, peer = toy_peer(timeout_s=30)
    port = b.port
    env = Rls3Env(b, EnvConfig(t0=50, image_size=SIZE))
    env.reset(seed=0)
    for _ in range(3):
        env.step(env.action_space.sample())
    peer.drop_connection()  # Unity crashes while Python holds its pending call
    # the server learns of it asynchronously (within milliseconds on loopback)
    assert b._env._communicator.unity_to_external.disconnected.wait(5)
    t = time.monotonic()
    with pytest.raises(UnityDisconnectedError, match="dropped the connection"):
        for _ in range(5):
            env.step(env.action_space.sample())
    assert time.monotonic() - t < 5, "took the timeout path instead of noticing the disconnect"
    with pytest.raises(UnityBridgeError, match="unusable after an earlier error"):
        b.state()
    b.close()
    # the port is free again: a resumed run can reconnect at once
    peer2 = TestPeer(ToyBackend, port, image_size=SIZE).start()
    b2 = UnityBackend(None, base_port=port, timeout_s=10, connect_timeout_s=20, on_close=peer2.stop)
    try:
        assert b2.load_scene(1, seed=0).scene_name == "toy_office"
    finally:
        b2.close()


def test_player_process_crash_mid_episode():
    b = connect_test_peer(backend="toy", image_size=SIZE, timeout_s=30,
                          faults=PeerFaults(crash_after=3))
    try:
        b.load_scene(0, seed=0)
        b.move_object(0, (0.01, 0, 0))
        b.render(SIZE, SIZE)  # fresh after the move: no command
        t = time.monotonic()
        with pytest.raises(UnityDisconnectedError, match="exited.*return code 3"):
            b.move_object(1, (0.01, 0, 0))
        assert time.monotonic() - t < 5
    finally:
        b.close()


def test_frozen_unity_times_out():
    b, peer = toy_peer(PeerFaults(hang_after=2), timeout_s=1.0)
    try:
        b.load_scene(0, seed=0)
        t = time.monotonic()
        with pytest.raises(UnityTimeoutError, match=r"within 1 s.*operation move"):
            b.move_object(0, (0.01, 0, 0))
        assert time.monotonic() - t < 4
    finally:
        b.close()
        peer.stop()


@pytest.mark.parametrize("kind, error, match", [
    ("not_json", MetadataError, "not UTF-8 JSON"),
    ("missing_field", MetadataError, "lacks field"),
    ("wrong_format", MetadataError, "different bridge versions"),
    ("bad_reason", MetadataError, "levitating"),
    ("bad_state", MetadataError, "unknown surface"),
    ("no_message", MetadataError, "no metadata message"),
    ("bad_framing", UnityProtocolError, "side channel"),
    ("wrong_seq", UnityProtocolError, "out of step"),
])
def test_malformed_metadata_is_a_clear_error(kind, error, match):
    b, _ = toy_peer(PeerFaults(malformed_after=2, malformed=kind))
    try:
        b.load_scene(0, seed=0)
        with pytest.raises(error, match=match):
            b.move_object(0, (0.01, 0, 0))
        with pytest.raises(UnityBridgeError, match="unusable"):
            b.move_object(0, (0.01, 0, 0))
    finally:
        b.close()


def test_launch_failures_are_clear(tmp_path: Path):
    with pytest.raises(UnityLaunchError, match="does not match any environments"):
        UnityBackend(str(tmp_path / "no_such_player"), base_port=free_port(), connect_timeout_s=5)
    dead = tmp_path / "dead_player"
    dead.write_text("#!/bin/sh\nexit 7\n")
    dead.chmod(0o755)
    t = time.monotonic()
    with pytest.raises(UnityLaunchError, match="return code 7"):
        UnityBackend(str(dead), base_port=free_port(), connect_timeout_s=20, launch_retries=1,
                     retry_delay_s=0.1)
    assert time.monotonic() - t < 10
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        with pytest.raises(UnityLaunchError, match=f"port {s.getsockname()[1]} .* in use"):
            UnityBackend(None, base_port=s.getsockname()[1], connect_timeout_s=1)
    t = time.monotonic()
    with pytest.raises(UnityLaunchError, match="press Play"):
        make_unity_backend(editor=True, base_port=free_port(), connect_timeout_s=0.5)
    assert time.monotonic() - t < 5


def test_make_unity_backend_entry_point():
    with pytest.raises(ValueError, match="exactly one"):
        make_unity_backend()
    with pytest.raises(ValueError, match="exactly one"):
        make_unity_backend("player.x86_64", editor=True)
    assert parse_testpeer_build("testpeer:kitchen,bedroom") == {"scenes": ["kitchen", "bedroom"]}
    assert parse_testpeer_build("testpeer::toy") == {"scenes": "train", "backend": "toy"}
    assert parse_testpeer_build("/opt/builds/rls3.x86_64") is None
    b = make_unity_backend("testpeer::toy", worker_id=1, base_port=free_port() - 1, timeout_s=10,
                           image_size=SIZE)
    try:
        assert b.port == b.base_port + 1 and b.image_shape == (SIZE, SIZE)
        assert b.load_scene(0, seed=5) == ToyBackend().load_scene(0, seed=5)
    finally:
        b.close()


def test_scene_selection_and_config_factory():
    build = "testpeer:toy_room,test_toy_room:toy"
    with make_unity_backend(build, image_size=SIZE, scenes="test") as b:
        assert b.scene_names == ("test_toy_room",)
        s = b.load_scene(0, seed=1)
        assert (s.scene_index, s.scene_name) == (0, "test_toy_room")
        with pytest.raises(ValueError, match="out of range"):
            b.load_scene(1)
    cfg = SimpleNamespace(train_scenes="train", test_scenes="test", objects=None, shadows=False,
                          options={"build": build, "image_size": SIZE, "timeout_s": 10})
    with unity_backend_factory(cfg, "train") as b:
        assert b.scene_names == ("toy_room",) and b.load_scene(0, seed=1).scene_index == 0
    with pytest.raises(UnityLaunchError, match="not in the build"):
        make_unity_backend(build, image_size=SIZE, scenes=["kitchen"])
    with pytest.raises(ValueError, match="differ from the build's pool"):
        make_unity_backend(build, image_size=SIZE, objects=["mug", "cup", "vase"])
    with pytest.raises(ValueError, match="unknown unity backend option"):
        unity_backend_factory(SimpleNamespace(**{**vars(cfg), "options": {"exe": "x"}}), "train")


def test_player_script_is_a_player(tmp_path: Path):
    path = write_player_script(tmp_path, backend="toy", faults=PeerFaults(hang_after=9))
    text = Path(path).read_text()
    assert text.startswith("#!") and "hang_after=9" in text
    assert Path(path).stat().st_mode & 0o111
    assert FORMAT == "rls3-bridge/1"
