"""Rls3Env: gymnasium and SB3 checkers, determinism, episode rules, feedback hooks, the relative
observation, distinct layouts, bad input."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env as gym_check_env
from stable_baselines3.common.env_checker import check_env as sb3_check_env

from rls3.env import OBS_SIZE, EnvConfig, Rls3Env, relative_size, same_layout
from rls3.sim import SimBackend


@pytest.fixture(scope="module")
def backend():
    b = SimBackend(["kitchen", "bedroom"])
    yield b
    b.close()


def make(backend, **kw):
    return Rls3Env(backend, EnvConfig(**{"t0": 4, "image_size": 32, **kw}))


@pytest.mark.parametrize("observation", ["paper", "relative"])
@pytest.mark.parametrize("hook", ["none", "episode", "sample"])
def test_checkers_pass(backend, observation, hook):
    hooks = {"none": {}, "episode": {"feedback": lambda frames: 2.0},
             "sample": {"step_feedback": lambda frame: 0.5}}[hook]
    env = Rls3Env(backend, EnvConfig(t0=4, image_size=32, observation=observation), **hooks)
    gym_check_env(env, skip_render_check=True)
    sb3_check_env(env, warn=True)
    n = OBS_SIZE if observation == "paper" else relative_size(len(backend.object_pool), 2)
    assert env.observation_space.shape == (n,)
    assert env.action_space.shape == (3,)


def test_gymnasium_make_builds_the_env_on_any_backend(backend):
    """`gymnasium.make("rls3/ArrangeObjects-v0", ...)` after `import rls3`: the embedded simulator
    over the named scenes by default, a given backend by keyword; checked through make."""
    import rls3

    env = gym.make(rls3.ENV_ID, scenes=["kitchen", "office"], t0=4, image_size=32,
                   observation="relative", render_mode="rgb_array")
    try:
        assert isinstance(env.unwrapped, Rls3Env)
        assert env.unwrapped.backend.scene_names == ("kitchen", "office")
        assert env.unwrapped.config.observation == "relative"
        gym_check_env(env.unwrapped)
        obs, _ = env.reset(seed=0)
        for _ in range(3):  # through gymnasium's wrappers (order enforcing, passive checker)
            obs, reward, *_ = env.step(env.action_space.sample())
            assert env.observation_space.contains(obs) and reward in (-1.0, 1.0)
        assert env.render().shape == (32, 32, 3)
    finally:
        env.close()
    on = gym.make(rls3.ENV_ID, backend=backend, t0=4, image_size=32).unwrapped
    assert on.backend is backend and on.config.t0 == 4
    with pytest.raises(TypeError, match=r"unknown keyword\(s\) \['t_0'\].*EnvConfig fields"):
        gym.make(rls3.ENV_ID, scenes=["kitchen"], t_0=4)
    with pytest.raises(ValueError, match="not both"):
        gym.make(rls3.ENV_ID, scenes=["kitchen"], backend=backend)
    with pytest.raises(ValueError, match="unknown scene"):
        gym.make(rls3.ENV_ID, scenes=["attic"])


def test_relative_observation_stays_in_its_box_and_tells_the_surface_interval(backend):
    """Fuzzed layouts (random and extreme actions, swaps, scene changes): every observation lies
    in the Box; the action interval it reports keeps the object on its surface."""
    env = make(backend, t0=400, observation="relative", swap_prob=0.5)
    obs, _ = env.reset(seed=4)
    rng = np.random.default_rng(5)
    inside = 0
    for i in range(400):
        assert env.observation_space.contains(obs), obs
        assert np.all(np.abs(obs) <= 1.0)
        lo_x, hi_x, lo_y, hi_y = obs[4:8]
        assert lo_x <= hi_x and lo_y <= hi_y
        if i % 4 == 0:  # the middle of the reported interval, no vertical move
            a = np.array([(lo_x + hi_x) / 2, (lo_y + hi_y) / 2, 0.0], np.float32)
            obs, _, term, trunc, info = env.step(a)
            inside += info["valid"] or info["reason"] in ("overlap", "not_visible")
        else:
            a = rng.choice([-1.0, 1.0], 3) if i % 7 == 0 else rng.uniform(-1, 1, 3)
            obs, _, term, trunc, info = env.step(a.astype(np.float32))
        if term or trunc:
            obs, _ = env.reset()
    assert inside == 100  # never off the surface or out of bounds inside the interval


def test_distinct_layouts_and_move_size(backend):
    env = make(backend, t0=50, swap_prob=0.0)
    env.reset(seed=6)
    _, _, _, _, info = env.step(np.zeros(3, np.float32))   # stays put: valid, first frame
    assert info["valid"] and info["distinct"] and info["move"] == 0.0
    _, _, _, _, info = env.step(np.array([0, 0, 0.05], np.float32))  # lifted 3 cm, lands again
    assert info["valid"] and not info["distinct"] and info["move"] < 1e-3
    rng = np.random.default_rng(1)
    for _ in range(50):
        _, _, _, _, info = env.step(rng.uniform(-0.3, 0.3, 3).astype(np.float32))
        if info["valid"] and info["move"] > 0.01:
            break
    assert info["distinct"] and info["move"] > 0.01
    f = env.frames
    assert same_layout(f[0].state, f[1].state) and not same_layout(f[1].state, f[-1].state)


def test_place_action_puts_the_object_where_it_says_on_its_surface(backend):
    """`action: place`: x and y in [-1, 1] are the moved object's place on its surface, in the
    units of the relative observation's offset; z still lifts or lowers it. It fails if the
    action were read as a displacement (a zero action would leave the object where it was)."""
    env = make(backend, t0=400, observation="relative", action="place", swap_prob=0.0,
               scene_every=400)
    obs, _ = env.reset(seed=3)
    rng = np.random.default_rng(8)
    placed = 0
    for _ in range(300):
        a = np.append(rng.uniform(-1, 1, 2), 0.0).astype(np.float32)
        k = env._moving
        before = env._state.objects[k]
        obs, _, term, trunc, info = env.step(a)
        if info["valid"]:
            assert env._state.objects[k].surface == before.surface
            # the relative observation of the same object now reports exactly that place
            env._moving = k
            assert np.allclose(env._obs()[:2], a[:2], atol=1e-5)
            placed += 1
        if term or trunc:
            obs, _ = env.reset()
    assert placed > 100
    env.reset(seed=3)
    for _ in range(20):                     # the centre of its surface, unless something is there
        k = env._moving
        start = env._state.objects[k].position
        _, _, _, _, info = env.step(np.zeros(3, np.float32))
        if info["valid"]:
            break
    centre = env._state.surface(env._state.objects[k].surface).center
    assert np.allclose(env._state.objects[k].position[:2], centre[:2])
    assert info["move"] > 1e-3 or np.allclose(start[:2], centre[:2])
    with pytest.raises(ValueError, match=r"action.*'move', 'place'"):
        EnvConfig(action="teleport")


def test_step_feedback_rewards_every_valid_step(backend):
    seen = []

    def score(frame):
        seen.append(frame.step)
        return 0.25 * frame.step

    env = Rls3Env(backend, EnvConfig(t0=3, image_size=16), step_feedback=score)
    env.reset(seed=0)
    while True:
        _, r, term, trunc, info = env.step(env.action_space.sample() * 0.2)
        if info["valid"]:
            assert r == pytest.approx(1.0 + 0.25 * info["frame"].step)
            assert info["extrinsic"] == pytest.approx(0.25 * info["frame"].step)
        else:
            assert r == -1.0 and info["extrinsic"] == 0.0
        if term or trunc:
            break
    assert len(seen) == 3
    with pytest.raises(ValueError, match="not both"):
        Rls3Env(backend, EnvConfig(t0=3), feedback=lambda f: 0.0, step_feedback=score)
    with pytest.raises(ValueError, match="observation"):
        EnvConfig(observation="pixels")


def test_determinism(backend):
    def rollout():
        env = make(backend, t0=6)
        obs, _ = env.reset(seed=11)
        rng = np.random.default_rng(0)
        out, imgs = [obs], []
        for _ in range(25):
            obs, r, term, trunc, info = env.step(rng.uniform(-1, 1, 3).astype(np.float32))
            out.append(obs)
            if info["frame"] is not None:
                imgs.append(info["frame"].image)
            if term or trunc:
                obs, _ = env.reset()
                out.append(obs)
        return np.array(out), imgs

    (o1, i1), (o2, i2) = rollout(), rollout()
    assert np.array_equal(o1, o2)
    assert len(i1) == len(i2) > 0 and all(np.array_equal(a, b) for a, b in zip(i1, i2, strict=True))


def test_episode_ends_with_t0_valid_frames_and_feedback(backend):
    calls = []

    def feedback(frames):
        calls.append(len(frames))
        return 7.5

    env = Rls3Env(backend, EnvConfig(t0=3, image_size=32), feedback=feedback)
    env.reset(seed=0)
    rewards, n = [], 0
    while True:
        obs, r, term, trunc, info = env.step(env.action_space.sample() * 0.2)
        assert env.observation_space.contains(obs)
        n += 1
        rewards.append(r)
        assert (info["frame"] is not None) == info["valid"]
        if info["frame"] is not None:  # the ground truth names the size of its image
            cam = info["frame"].state.camera
            assert (cam.width, cam.height) == (32, 32) == info["frame"].image.shape[1::-1]
        assert r in (1.0, -1.0) or term
        if term or trunc:
            break
    assert term and calls == [3]
    assert rewards[-1] == pytest.approx(1.0 + 7.5)
    assert sum(1 for x in rewards if x > 0) == 3


def test_step_cap_truncates(backend):
    """The step cap truncates (not terminates) an episode that never reached T0, on the cap's
    step exactly."""
    env = make(backend, t0=50, max_steps=60)
    env.reset(seed=1)
    ends = []
    for i in range(60):
        _, _, term, trunc, info = env.step(np.ones(3, dtype=np.float32))  # mostly out of bounds
        if term or trunc:
            ends.append((i + 1, term, trunc, info["n_valid"]))
            break
    assert len(ends) == 1
    steps, term, trunc, n_valid = ends[0]
    assert (steps, term, trunc) == (60, False, True) and n_valid < 50


def test_never_crashes_inside_action_space(backend):
    env = make(backend, t0=1000, swap_prob=0.5)
    env.reset(seed=2)
    corners = [np.array(c, dtype=np.float32) for c in
               [(1, 1, 1), (-1, -1, -1), (1, -1, 0), (0, 0, 0), (-1, 1, 1)]]
    rng = np.random.default_rng(3)
    for a in corners + [rng.uniform(-1, 1, 3).astype(np.float32) for _ in range(40)]:
        obs, r, *_ = env.step(a)
        assert env.observation_space.contains(obs) and r in (1.0, -1.0)


def test_bad_actions_and_config(backend):
    env = make(backend)
    env.reset(seed=0)
    with pytest.raises(ValueError, match="finite"):
        env.step(np.array([np.nan, 0, 0], dtype=np.float32))
    with pytest.raises(ValueError, match="outside the action space"):
        env.step(np.array([3.0, 0, 0], dtype=np.float32))
    # only shape (3,) real numbers: no silent reshape, no bool or complex (issue 13, item 9)
    for bad in (np.zeros((3, 1)), np.zeros((1, 3)), np.array([True, False, True]),
                np.array([0.1 + 0.2j, 0, 0]), np.zeros(4)):
        with pytest.raises(ValueError, match=r"shape \(3,\) of real numbers"):
            env.step(bad)
    env.step(np.array([0, 0, 0]))                    # integers are real numbers
    with pytest.raises(ValueError, match="t0"):
        EnvConfig(t0=-1)
    with pytest.raises(ValueError, match="image_size"):
        EnvConfig(image_size=0)
    assert isinstance(env, gym.Env)
