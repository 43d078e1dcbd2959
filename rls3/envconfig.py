"""`EnvConfig`, the env's episode and action settings: a record of its own, below the run
configuration (`rls3.config`) and the env (`rls3.env`, which re-exports it), so the schema needs
neither gymnasium nor the env to describe an env."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from rls3.scene import DEFAULT_IMAGE_SIZE

OBSERVATIONS: tuple[str, ...] = ("paper", "relative")
#: what an action's x and y mean (`EnvConfig.action`): a displacement (the paper) or a place
ACTIONS: tuple[str, ...] = ("move", "place")


@dataclass(frozen=True)
class EnvConfig:
    """Episode and action settings (defaults: the paper's T0 = 200)."""

    t0: int = 200
    max_steps: int = 0  # hard cap on steps per episode; 0 means 10 * t0
    image_size: int = DEFAULT_IMAGE_SIZE
    max_step_xy: float = 0.4  # metres moved per unit action along x and y
    max_step_z: float = 0.6  # metres per unit action along z (reach a shelf in one move)
    scene_every: int = 0  # valid frames per scene before cycling inside an episode; 0 = t0 // 5
    swap_prob: float = 0.25  # chance that the next object to move is first swapped with the pool
    render: bool = True
    observation: str = "paper"  # "paper" (32 absolute values) or "relative" (see RELATIVE_LAYOUT)
    #: "move" (the paper): x and y displace the object by up to max_step_xy; "place" (a
    #: departure): x and y say where on its surface it goes, -1..1 spanning the centres it may
    #: take there. z moves it by up to max_step_z either way (onto what lies below the target).
    action: str = "move"
    #: scene worker processes the loop collects with (`rls3.workers`); `Rls3Env` ignores it
    workers: int = 1

    def __post_init__(self) -> None:
        _check(self.t0 >= 1, "t0", self.t0, "an integer >= 1")
        _check(self.max_steps == 0 or self.max_steps >= self.t0, "max_steps", self.max_steps,
               "0 (auto) or >= t0")
        _check(self.image_size >= 8, "image_size", self.image_size, "an integer >= 8")
        _check(self.max_step_xy > 0 and self.max_step_z > 0, "max_step_xy/max_step_z",
               (self.max_step_xy, self.max_step_z), "positive metres")
        _check(self.scene_every >= 0, "scene_every", self.scene_every, ">= 0")
        _check(0.0 <= self.swap_prob <= 1.0, "swap_prob", self.swap_prob, "in [0, 1]")
        _check(isinstance(self.workers, int) and not isinstance(self.workers, bool)
               and self.workers >= 1, "workers", self.workers,
               "an integer >= 1 (1: collect in this process; N > 1: N worker processes)")
        _check(self.observation in OBSERVATIONS, "observation", self.observation,
               f"one of {list(OBSERVATIONS)}")
        _check(self.action in ACTIONS, "action", self.action, f"one of {list(ACTIONS)}")

    @property
    def step_cap(self) -> int:
        return self.max_steps or 10 * self.t0

    @property
    def frames_per_scene(self) -> int:
        return self.scene_every or max(1, self.t0 // 5)


def _check(ok: bool, name: str, value: Any, allowed: str) -> None:
    if not ok:
        raise ValueError(f"invalid {name}={value!r}: must be {allowed}")
