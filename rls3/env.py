"""`Rls3Env`: the paper's data-generation MDP as a gymnasium env over any `SceneBackend`.

Two observations (`EnvConfig.observation`):

* ``paper`` (32 floats, as in the paper): pool index of the object to move, scene index, size (3)
  and top-centre (3) of the surface it stands on, position (3) and Euler rotation (3) of the three
  active objects (the one to move first), camera position (3) and rotation (3).
* ``relative`` (a departure: what a policy needs to predict feasibility, see `RELATIVE_LAYOUT`):
  the moved object's offset from its surface's centre over the half-range it may use there, the
  action interval that keeps it on that surface, its half-extents, the neighbours' offsets in
  action units with same-surface flags and combined half-extents, the camera's heading, and
  one-hot codes of the moved object and the scene. Every value lies in [-1, 1].

Each step moves one of the three active objects by the action (a displacement scaled from [-1, 1];
with `EnvConfig.action` "place" the action's x and y instead say where on its surface it goes);
the reward is +1 for a feasible layout and -1 otherwise, and every valid step is rendered into a
`Frame`. An episode ends once it has produced `t0` valid frames (or after `max_steps`); on that
completing step an optional feedback callable receives the episode's frames and its return value
(the loop's beta * J2) is added to the reward. With a `step_feedback` callable instead (the
loop's per-sample feedback), every valid step's frame is scored on that step and its return value
added to that step's reward, so an off-policy learner stores it with the transition.

`info` reports per step whether the layout is valid, why not, whether a valid frame shows a
layout different from the episode's previous frame (`distinct`) and how far the moved object
moved (`move`, metres; 0 for an invalid step).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, cast

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from rls3 import ENV_ID
from rls3.envconfig import (  # noqa: F401  (re-exported: the env's settings)
    ACTIONS,
    OBSERVATIONS,
    EnvConfig,
)
from rls3.scene import SceneBackend, SceneState

OBS_SIZE = 32  # the paper observation
Feedback = Callable[[Sequence["Frame"]], float]
StepFeedback = Callable[["Frame"], float]
#: Two valid frames show the same layout when no object moved more than this (metres).
SAME_LAYOUT_TOL = 1e-3
#: Named blocks of the ``relative`` observation, in order (P = pool size, S = scene count).
RELATIVE_LAYOUT: tuple[tuple[str, str], ...] = (
    ("offset[2]", "moved object's x/y offset from its surface's centre over the half-range "
                  "its centre may use there (|v| <= 1 on the surface)"),
    ("room[2]", "that half-range in action units (max_step_xy), divided by 4"),
    ("interval[4]", "x low, x high, y low, y high of the action that keeps it on the surface"),
    ("extent[3]", "its axis-aligned half-extents in metres"),
    ("height[1]", "the surface's top over the room's height"),
    ("camera[2]", "cos and sin of the camera's heading"),
    ("neighbours[2x6]", "per other object: dx, dy over max_step_xy, dz over max_step_z, "
                        "same-surface flag, summed x and y half-extents over max_step_xy"),
    ("object[P]", "one-hot pool index of the moved object"),
    ("scene[S]", "one-hot scene index"),
)


@dataclass(frozen=True)
class Frame:
    """One valid step: the rendered RGB image, the ground truth it shows and the object the step
    moved (None where no step moved one)."""

    image: np.ndarray
    state: SceneState
    step: int
    moved: str | None = None


class Rls3Env(gym.Env):
    """Move one object per step; +1 valid / -1 invalid; render every valid layout."""

    # render_fps is nominal (one frame per step), for gymnasium's video wrappers
    metadata = {"render_modes": ["rgb_array"], "render_fps": 4}

    def __init__(self, backend: SceneBackend, config: EnvConfig | None = None,
                 feedback: Feedback | None = None, render_mode: str | None = None,
                 step_feedback: StepFeedback | None = None) -> None:
        super().__init__()
        if render_mode not in (None, "rgb_array"):
            raise ValueError(f"render_mode must be None or 'rgb_array', got {render_mode!r}")
        if feedback is not None and step_feedback is not None:
            raise ValueError("give feedback (per episode) or step_feedback (per sample), not both")
        self.backend = backend
        self.config = config or EnvConfig()
        self.feedback = feedback
        self.step_feedback = step_feedback
        self.render_mode = render_mode
        self._pool = tuple(backend.object_pool)
        self._n_scenes = len(backend.scene_names)
        self.action_space = spaces.Box(-1.0, 1.0, shape=(3,), dtype=np.float32)
        if self.config.observation == "relative":
            n = relative_size(len(self._pool), self._n_scenes)
            self.observation_space = spaces.Box(-1.0, 1.0, shape=(n,), dtype=np.float32)
        else:
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
        before = self._state.objects[self._moving]
        moved = before.name
        d = self._placement(a) if self.config.action == "place" else a * self._scale
        feas = self.backend.move_object(self._moving, (float(d[0]), float(d[1]), float(d[2])))
        reward = 1.0 if feas.valid else -1.0
        frame = None
        distinct, move = False, 0.0
        self._state = self.backend.state()
        if feas.valid:
            size = self.config.image_size
            image = self.backend.render(size, size) if self.config.render \
                else np.zeros((1, 1, 3), np.uint8)
            frame = Frame(image, self._state.rendered_at(size, size), self._steps, moved)
            distinct = not self._frames or not same_layout(self._frames[-1].state, self._state)
            after = self._state.objects[self._moving]
            move = float(np.linalg.norm(np.subtract(after.position, before.position)))
            self._frames.append(frame)
            self._last_image = image
        terminated = len(self._frames) >= self.config.t0
        truncated = not terminated and self._steps >= self.config.step_cap
        extrinsic = 0.0
        if frame is not None and self.step_feedback is not None:
            extrinsic = finite_reward(self.step_feedback(frame))
        if terminated and self.feedback is not None:
            extrinsic = finite_reward(self.feedback(tuple(self._frames)))
        reward += extrinsic
        info = {"valid": feas.valid, "reason": feas.reason.value, "moved": moved,
                "n_valid": len(self._frames), "frame": frame, "extrinsic": extrinsic,
                "scene": self._state.scene_name, "distinct": distinct, "move": move}
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
            assert self._state is not None   # loaded by reset() before any step
            active = {o.name for o in self._state.objects}
            idle = [n for n in self._pool if n not in active]
            if idle:
                name = idle[int(self.np_random.integers(len(idle)))]
                if self.backend.swap_object(self._moving, name).valid:
                    self._state = self.backend.state()

    def _placement(self, a: np.ndarray) -> np.ndarray:
        """The displacement that puts the moving object at `a`'s place on its surface (x, y in
        [-1, 1] span the centres it may take there, as the relative observation's offset does),
        raised or lowered by a[2] * max_step_z."""
        assert self._state is not None
        d, half = self._surface_offset(self._state)
        xy = a[:2] * half - d
        return np.array([xy[0], xy[1], a[2] * self.config.max_step_z])

    def _surface_offset(self, s: SceneState) -> tuple[np.ndarray, np.ndarray]:
        """The moving object's x/y offset from its surface's centre, and the half-range its
        centre may take there (the units of the relative observation and the place action)."""
        m = s.objects[self._moving]
        surf = s.surface(m.surface)
        h = self._half_extents(s, self._moving)
        half = np.maximum(np.array(surf.size[:2]) / 2 - h[:2], 1e-6)
        return np.array(m.position[:2]) - np.array(surf.center[:2]), half

    def _obs(self) -> np.ndarray:
        s = self._state
        assert s is not None
        if self.config.observation == "relative":
            return self._relative_obs(s)
        moved = s.objects[self._moving]
        surf = s.surface(moved.surface)
        v = [float(self._pool.index(moved.name)), float(s.scene_index), *surf.size, *surf.center]
        for k in range(3):  # the moved object first, then the others in slot order
            o = s.objects[(self._moving + k) % 3]
            v += [*o.position, *(_wrap(r) for r in o.rotation)]
        v += [*s.camera.position, *(_wrap(r) for r in s.camera.rotation)]
        obs = np.asarray(v, dtype=np.float32)
        box = cast(spaces.Box, self.observation_space)   # __init__ always builds a Box
        return np.clip(obs, box.low, box.high)


    @staticmethod
    def _half_extents(s: SceneState, k: int) -> np.ndarray:
        """Half-extents (x, y, z) of active object `k`'s world-aligned bounding box; from a
        backend that does not report sizes, its half-height (centre above its surface) stands in
        for all three."""
        o = s.objects[k]
        if o.size is None:
            hz = max(o.position[2] - s.surface(o.surface).top, 0.0)
            return np.array([hz, hz, hz])
        return np.asarray(o.size, dtype=np.float64) / 2

    def _relative_obs(self, s: SceneState) -> np.ndarray:
        """The ``relative`` observation (layout: `RELATIVE_LAYOUT`)."""
        sxy, sz = self.config.max_step_xy, self.config.max_step_z
        m = s.objects[self._moving]
        surf = s.surface(m.surface)
        h = self._half_extents(s, self._moving)
        d, half = self._surface_offset(s)
        lo, hi = (-half - d) / sxy, (half - d) / sxy
        room_h = max(s.bounds[1][2] - s.bounds[0][2], 1e-6)
        yaw = s.camera.rotation[2]
        v = [*(d / half), *(half / sxy / 4), lo[0], hi[0], lo[1], hi[1], *h,
             surf.top / room_h, math.cos(yaw), math.sin(yaw)]
        for k in (1, 2):
            j = (self._moving + k) % 3
            o = s.objects[j]
            ho = self._half_extents(s, j)
            dx, dy, dz = np.subtract(o.position, m.position)
            v += [dx / sxy, dy / sxy, dz / sz, float(o.surface == m.surface),
                  (h[0] + ho[0]) / sxy, (h[1] + ho[1]) / sxy]
        onehot = np.zeros(len(self._pool) + self._n_scenes)
        onehot[self._pool.index(m.name)] = 1.0
        onehot[len(self._pool) + s.scene_index % self._n_scenes] = 1.0
        obs = np.concatenate([np.asarray(v, dtype=np.float64), onehot]).astype(np.float32)
        return np.clip(obs, -1.0, 1.0)


def make_env(scenes: Sequence[str] | str | None = None, *, backend: SceneBackend | None = None,
             objects: Sequence[str] | None = None, render_mode: str | None = None,
             **config: Any) -> Rls3Env:
    """`gymnasium.make("rls3/ArrangeObjects-v0", ...)`'s entry point: an `Rls3Env` on `backend`
    (any `SceneBackend`; default the embedded simulator over `scenes`, default the train rooms,
    and `objects`), with `EnvConfig` fields (t0, image_size, observation, ...) by keyword."""
    known = set(EnvConfig.__dataclass_fields__)
    unknown = sorted(set(config) - known)
    if unknown:
        raise TypeError(f"{ENV_ID}: unknown keyword(s) {unknown}; allowed: scenes, backend, "
                        f"objects, render_mode and the EnvConfig fields {sorted(known)}")
    if backend is not None and (scenes is not None or objects is not None):
        raise ValueError(f"{ENV_ID}: give scenes/objects (embedded simulator) or a backend, "
                         f"not both")
    if backend is None:
        from rls3.sim import SimBackend  # pyrender/pybullet only when the simulator is used

        backend = SimBackend("train" if scenes is None else scenes, objects)
    return Rls3Env(backend, EnvConfig(**config), render_mode=render_mode)


def relative_size(pool: int, scenes: int) -> int:
    """Length of the ``relative`` observation for a pool of `pool` objects and `scenes` scenes."""
    return 2 + 2 + 4 + 3 + 1 + 2 + 2 * 6 + pool + scenes


def same_layout(a: SceneState, b: SceneState, tol: float = SAME_LAYOUT_TOL) -> bool:
    """True when two states show the same scene with the same objects within `tol` metres."""
    if a.scene_name != b.scene_name or len(a.objects) != len(b.objects):
        return False
    return all(p.name == q.name
               and max(abs(x - y) for x, y in zip(p.position, q.position, strict=True)) <= tol
               for p, q in zip(a.objects, b.objects, strict=True))


def finite_reward(x: float) -> float:
    """`x` as a float; ValueError when a feedback hook returned NaN or an infinity."""
    x = float(x)
    if not math.isfinite(x):
        raise ValueError(f"feedback returned a non-finite reward {x!r}")
    return x


def _wrap(angle: float) -> float:
    return (angle + math.pi) % (2 * math.pi) - math.pi

