"""`Rls3Env`: the paper's data-generation MDP as a gymnasium env over any `SceneBackend`.

Observation (32 floats, as in the paper): pool index of the object to move, scene index, size (3)
and top-centre (3) of the surface it stands on, position (3) and Euler rotation (3) of the three
active objects (the one to move first), camera position (3) and rotation (3).

Each step moves one of the three active objects by the action (a displacement scaled from [-1, 1]);
the reward is +1 for a feasible layout and -1 otherwise, and every valid step is rendered into a
`Frame`. An episode ends once it has produced `t0` valid frames (or after `max_steps`); on that
completing step an optional feedback callable receives the episode's frames and its return value
(the loop's beta * J2) is added to the reward.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from rls3.scene import SceneBackend, SceneState

OBS_SIZE = 32
Feedback = Callable[[Sequence["Frame"]], float]


@dataclass(frozen=True)
class Frame:
    """One valid step: the rendered RGB image and the ground truth it shows."""

    image: np.ndarray
    state: SceneState
    step: int


@dataclass(frozen=True)
class EnvConfig:
    """Episode and action settings (defaults: the paper's T0 = 200)."""

    t0: int = 200
    max_steps: int = 0  # hard cap on steps per episode; 0 means 10 * t0
    image_size: int = 224
    max_step_xy: float = 0.4  # metres moved per unit action along x and y
    max_step_z: float = 0.6  # metres per unit action along z (reach a shelf in one move)
    scene_every: int = 0  # valid frames per scene before cycling inside an episode; 0 = t0 // 5
    swap_prob: float = 0.25  # chance that the next object to move is first swapped with the pool
    render: bool = True

    def __post_init__(self) -> None:
        _check(self.t0 >= 1, "t0", self.t0, "an integer >= 1")
        _check(self.max_steps == 0 or self.max_steps >= self.t0, "max_steps", self.max_steps,
               "0 (auto) or >= t0")
        _check(self.image_size >= 8, "image_size", self.image_size, "an integer >= 8")
        _check(self.max_step_xy > 0 and self.max_step_z > 0, "max_step_xy/max_step_z",
               (self.max_step_xy, self.max_step_z), "positive metres")
        _check(self.scene_every >= 0, "scene_every", self.scene_every, ">= 0")
        _check(0.0 <= self.swap_prob <= 1.0, "swap_prob", self.swap_prob, "in [0, 1]")

    @property
    def step_cap(self) -> int:
        return self.max_steps or 10 * self.t0

    @property
    def frames_per_scene(self) -> int:
        return self.scene_every or max(1, self.t0 // 5)


class Rls3Env(gym.Env):
    """Move one object per step; +1 valid / -1 invalid; render every valid layout."""

    metadata = {"render_modes": ["rgb_array"]}

    def __init__(self, backend: SceneBackend, config: EnvConfig | None = None,
                 feedback: Feedback | None = None, render_mode: str | None = None) -> None:
        super().__init__()
        if render_mode not in (None, "rgb_array"):
            raise ValueError(f"render_mode must be None or 'rgb_array', got {render_mode!r}")
        self.backend = backend
        self.config = config or EnvConfig()
        self.feedback = feedback
        self.render_mode = render_mode
        self._pool = tuple(backend.object_pool)
        self._n_scenes = len(backend.scene_names)
        self.action_space = spaces.Box(-1.0, 1.0, shape=(3,), dtype=np.float32)
        lo = np.full(OBS_SIZE, -20.0, dtype=np.float32)
        hi = np.full(OBS_SIZE, 20.0, dtype=np.float32)
        lo[0], hi[0] = 0.0, len(self._pool) - 1
        lo[1], hi[1] = 0.0, self._n_scenes - 1
        lo[2:5], hi[2:5] = 0.0, 20.0
        for k in range(3):  # object rotations and camera rotation are angles
            lo[11 + 6 * k:14 + 6 * k], hi[11 + 6 * k:14 + 6 * k] = -math.pi, math.pi
        lo[29:32], hi[29:32] = -math.pi, math.pi
        self.observation_space = spaces.Box(lo, hi, dtype=np.float32)
        self._scale = np.array([self.config.max_step_xy] * 2 + [self.config.max_step_z])
        self._episode = -1
        self._scene = 0
        self._moving = 0
        self._steps = 0
        self._frames: list[Frame] = []
        self._state: SceneState | None = None
        self._last_image: np.ndarray | None = None

    # -- gymnasium API ---------------------------------------------------------------------------
    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None
              ) -> tuple[np.ndarray, dict[str, Any]]:
        super().reset(seed=seed)
        if seed is not None:  # a new seed restarts the scene cycle, so reset(seed) is reproducible
            self._episode = -1
        self._episode += 1
        self._scene = self._episode % self._n_scenes
        self._state = self.backend.load_scene(self._scene, seed=self._draw_seed())
        self._steps = 0
        self._frames = []
        self._last_image = None
        self._moving = int(self.np_random.integers(3))
        return self._obs(), {"scene": self._state.scene_name}

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        if self._state is None:
            raise RuntimeError("call reset() before step()")
        raw = np.asarray(action)
        if raw.shape != (3,) or raw.dtype.kind not in "iuf":
            raise ValueError(f"action must be an array of shape (3,) of real numbers, got "
                             f"{action!r} (shape {raw.shape}, dtype {raw.dtype})")
        a = raw.astype(np.float64)
        if not np.all(np.isfinite(a)):
            raise ValueError(f"action must be 3 finite numbers, got {action!r}")
        if np.any(np.abs(a) > 1.0 + 1e-6):
            raise ValueError(f"action {a.tolist()} outside the action space [-1, 1]^3")
        self._steps += 1
        moved = self._state.objects[self._moving].name
        feas = self.backend.move_object(self._moving, tuple(a * self._scale))
        reward = 1.0 if feas.valid else -1.0
        frame = None
        self._state = self.backend.state()
        if feas.valid:
            image = self.backend.render(self.config.image_size, self.config.image_size) \
                if self.config.render else np.zeros((1, 1, 3), np.uint8)
            frame = Frame(image, self._state, self._steps)
            self._frames.append(frame)
            self._last_image = image
        terminated = len(self._frames) >= self.config.t0
        truncated = not terminated and self._steps >= self.config.step_cap
        extrinsic = 0.0
        if terminated and self.feedback is not None:
            extrinsic = float(self.feedback(tuple(self._frames)))
            if not math.isfinite(extrinsic):
                raise ValueError(f"feedback returned a non-finite reward {extrinsic!r}")
            reward += extrinsic
        info = {"valid": feas.valid, "reason": feas.reason.value, "moved": moved,
                "n_valid": len(self._frames), "frame": frame, "extrinsic": extrinsic,
                "scene": self._state.scene_name}
        if not (terminated or truncated):
            self._advance(feas.valid)
        return self._obs(), reward, terminated, truncated, info

    def render(self) -> np.ndarray | None:
        if self.render_mode != "rgb_array":
            return None
        if self._last_image is None:
            return self.backend.render(self.config.image_size, self.config.image_size)
        return self._last_image

    def close(self) -> None:
        self.backend.close()

    @property
    def episode(self) -> int:
        """Episodes started since the last seeded reset (-1 before the first); it picks the scene
        an episode starts in, so a resumed run restores it."""
        return self._episode

    @episode.setter
    def episode(self, n: int) -> None:
        self._episode = int(n)

    @property
    def frames(self) -> tuple[Frame, ...]:
        """The current episode's valid frames so far."""
        return tuple(self._frames)

    # -- internals -------------------------------------------------------------------------------
    def _draw_seed(self) -> int:
        return int(self.np_random.integers(2**31 - 1))

    def _advance(self, valid: bool) -> None:
        """Cycle the scene every `frames_per_scene` valid frames, pick and maybe swap the next object."""
        per = self.config.frames_per_scene
        if valid and self._n_scenes > 1 and len(self._frames) % per == 0:
            self._scene = (self._scene + 1) % self._n_scenes
            self._state = self.backend.load_scene(self._scene, seed=self._draw_seed())
        self._moving = int(self.np_random.integers(3))
        if self.np_random.random() < self.config.swap_prob:
            active = {o.name for o in self._state.objects}
            idle = [n for n in self._pool if n not in active]
            if idle:
                name = idle[int(self.np_random.integers(len(idle)))]
                if self.backend.swap_object(self._moving, name).valid:
                    self._state = self.backend.state()

    def _obs(self) -> np.ndarray:
        s = self._state
        assert s is not None
        moved = s.objects[self._moving]
        surf = s.surface(moved.surface)
        v = [float(self._pool.index(moved.name)), float(s.scene_index), *surf.size, *surf.center]
        for k in range(3):  # the moved object first, then the others in slot order
            o = s.objects[(self._moving + k) % 3]
            v += [*o.position, *(_wrap(r) for r in o.rotation)]
        v += [*s.camera.position, *(_wrap(r) for r in s.camera.rotation)]
        obs = np.asarray(v, dtype=np.float32)
        return np.clip(obs, self.observation_space.low, self.observation_space.high)


def _wrap(angle: float) -> float:
    return (angle + math.pi) % (2 * math.pi) - math.pi


def _check(ok: bool, name: str, value: Any, allowed: str) -> None:
    if not ok:
        raise ValueError(f"invalid {name}={value!r}: must be {allowed}")
