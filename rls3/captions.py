"""Angle-based spatial captions, hard negatives and the PaliGemma question (pure functions).

Geometry (issue 3): world frame right-handed, z up. A (primary) is the reference, B (secondary) is
described relative to it, d = centre(B) - centre(A). f is the camera forward projected on the
horizontal plane and normalised, r = f x z is the camera's right.

    theta = degrees(atan2(d.r, d.f))          0 means B is farther from the camera than A
    phi   = degrees(atan2(d_z, hypot(d_x, d_y)))

Boundaries are applied to these floats exactly as written in `terms_from_angles` (horizontal regions
are half-open, closed at their lower |theta| end; vertical bands are closed at their upper |phi|
end). A caption has one to three terms, always in the order vertical, depth, lateral.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType

import numpy as np

from rls3.scene import ObjectPose, SceneState

#: A 3-vector given as any sequence of three numbers or a numpy array.
Vector = Sequence[float] | np.ndarray

#: The six canonical terms, in canonical order (vertical, depth, lateral).
TERMS: tuple[str, ...] = ("above", "below", "behind", "in front", "left", "right")

#: Each term's opposite (above<->below, behind<->in front, left<->right).
OPPOSITE: Mapping[str, str] = MappingProxyType({
    "above": "below", "below": "above",
    "behind": "in front", "in front": "behind",
    "left": "right", "right": "left",
})

#: Axis of each term: 0 vertical, 1 depth, 2 lateral (the caption order).
AXIS: Mapping[str, int] = MappingProxyType({
    "above": 0, "below": 0, "behind": 1, "in front": 1, "left": 2, "right": 2,
})

#: How each term is phrased in a caption.
PHRASES: Mapping[str, str] = MappingProxyType({
    "above": "above", "below": "below", "behind": "behind", "in front": "in front of",
    "left": "to the left of", "right": "to the right of",
})

#: |theta| boundaries in degrees between the eight 45-degree horizontal regions.
HORIZONTAL_BOUNDARIES: tuple[float, float, float, float] = (22.5, 67.5, 112.5, 157.5)
#: |phi| boundaries in degrees: horizontal only / vertical + horizontal / vertical only.
VERTICAL_BOUNDARIES: tuple[float, float] = (20.0, 75.0)

#: A camera forward whose horizontal part is shorter than this fraction of its length is vertical.
_DEGENERATE_FORWARD = 1e-9


@dataclass(frozen=True)
class Description:
    """What a sample says: B (secondary) relative to A (primary), its terms, text and negatives."""

    primary: str
    secondary: str
    terms: tuple[str, ...]
    caption: str
    spatial_negative: str
    order_negative: str
    question: str

    @property
    def answer(self) -> str:
        """The PaliGemma target: the positive caption."""
        return self.caption

    @property
    def negatives(self) -> tuple[str, str]:
        """NegCLIP hard negatives: (spatial_swap, order_swap)."""
        return (self.spatial_negative, self.order_negative)

    @property
    def complexity(self) -> int:
        """Number of spatial terms (1-3)."""
        return len(self.terms)


def _vec3(v: Vector, what: str) -> np.ndarray:
    """`v` as a finite float array of shape (3,), or ValueError naming `what`."""
    try:
        a = np.asarray(v, dtype=float)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{what} must be 3 finite numbers, got {v!r}") from e
    if a.shape != (3,) or not np.all(np.isfinite(a)):
        raise ValueError(f"{what} must be 3 finite numbers, got {v!r}")
    return a


def camera_axes(camera_forward: Vector) -> tuple[np.ndarray, np.ndarray]:
    """(f, r): the horizontal unit forward and right (r = f x z) of a camera looking along
    `camera_forward`; ValueError if it is zero or (numerically) vertical."""
    fwd = _vec3(camera_forward, "camera_forward")
    n = float(np.linalg.norm(fwd))
    h = math.hypot(float(fwd[0]), float(fwd[1]))
    if n == 0.0 or h <= _DEGENERATE_FORWARD * n:
        raise ValueError(f"camera_forward {tuple(fwd.tolist())} is zero or vertical: left/right "
                         "and behind/in front are undefined; the camera must not look straight "
                         "up/down")
    f = np.array([fwd[0] / h, fwd[1] / h, 0.0])
    r = np.array([f[1], -f[0], 0.0])  # f x z for f horizontal
    return f, r


def angles(primary_xyz: Vector, secondary_xyz: Vector,
           camera_forward: Vector) -> tuple[float, float]:
    """(theta, phi) in degrees of B (secondary) about A (primary), as defined in the module doc;
    ValueError if B coincides with A or the camera looks straight up/down."""
    a = _vec3(primary_xyz, "primary_xyz")
    b = _vec3(secondary_xyz, "secondary_xyz")
    f, r = camera_axes(camera_forward)
    d = b - a
    if not np.any(d):
        raise ValueError(f"secondary object at {tuple(b.tolist())} coincides with the primary "
                         "object (zero distance): its direction is undefined")
    theta = math.degrees(math.atan2(float(d @ r), float(d @ f)))
    phi = math.degrees(math.atan2(float(d[2]), math.hypot(float(d[0]), float(d[1]))))
    return theta, phi


def terms_from_angles(theta: float, phi: float) -> tuple[str, ...]:
    """The canonical terms for angles theta in [-180, 180] and phi in [-90, 90] (degrees), using
    the issue's boundaries exactly: e.g. |theta| = 22.5 is already 'behind + lateral'."""
    if not (math.isfinite(theta) and -180.0 <= theta <= 180.0):
        raise ValueError(f"theta must be in [-180, 180] degrees, got {theta!r}")
    if not (math.isfinite(phi) and -90.0 <= phi <= 90.0):
        raise ValueError(f"phi must be in [-90, 90] degrees, got {phi!r}")
    vertical = "above" if phi > 0 else "below"
    v_low, v_high = VERTICAL_BOUNDARIES
    if abs(phi) > v_high:
        return (vertical,)
    lateral = "right" if theta > 0 else "left"
    b1, b2, b3, b4 = HORIZONTAL_BOUNDARIES
    t = abs(theta)
    if t < b1:
        horizontal: tuple[str, ...] = ("behind",)
    elif t < b2:
        horizontal = ("behind", lateral)
    elif t < b3:
        horizontal = (lateral,)
    elif t < b4:
        horizontal = ("in front", lateral)
    else:
        horizontal = ("in front",)
    if abs(phi) <= v_low:
        return horizontal
    return (vertical, *horizontal)


def spatial_terms(primary_xyz: Vector, secondary_xyz: Vector,
                  camera_forward: Vector) -> tuple[str, ...]:
    """The one to three terms (vertical, depth, lateral order) that place B (secondary) relative
    to A (primary) as seen by a camera looking along `camera_forward`."""
    return terms_from_angles(*angles(primary_xyz, secondary_xyz, camera_forward))


def _check_terms(terms: Sequence[str]) -> tuple[str, ...]:
    """`terms` validated (1-3 known terms, at most one per axis) and put in canonical order."""
    if isinstance(terms, str):
        raise ValueError(f"terms must be a sequence of terms, not the string {terms!r}")
    ts = tuple(terms)
    for t in ts:
        if t not in AXIS:
            raise ValueError(f"unknown spatial term {t!r}; allowed: {TERMS}")
    axes = [AXIS[t] for t in ts]
    if not 1 <= len(ts) <= 3 or len(set(axes)) != len(axes):
        raise ValueError(f"terms must be 1-3 terms with at most one per axis "
                         f"(vertical, depth, lateral), got {ts!r}")
    return tuple(sorted(ts, key=AXIS.__getitem__))


def _join(phrases: Sequence[str]) -> str:
    """'p1', 'p1 and p2' or 'p1, p2 and p3'."""
    if len(phrases) == 1:
        return phrases[0]
    return ", ".join(phrases[:-1]) + " and " + phrases[-1]


def caption(secondary_name: str, primary_name: str, terms: Sequence[str]) -> str:
    """'The {B} is {phrases} the {A}.', e.g. 'The small pot is above, behind and to the left of
    the yellow bowl.'; terms are rendered in canonical order whatever order they come in."""
    ts = _check_terms(terms)
    return f"The {secondary_name} is {_join([PHRASES[t] for t in ts])} the {primary_name}."


def spatial_swap(secondary_name: str, primary_name: str, terms: Sequence[str],
                 rng: np.random.Generator) -> str:
    """Hard negative: the caption with one term (drawn by `rng` among the canonically ordered
    terms) replaced by its opposite."""
    if not isinstance(rng, np.random.Generator):
        raise TypeError(f"rng must be a numpy.random.Generator, got {type(rng).__name__}")
    ts = list(_check_terms(terms))
    i = int(rng.integers(len(ts)))
    ts[i] = OPPOSITE[ts[i]]
    return caption(secondary_name, primary_name, ts)


def order_swap(secondary_name: str, primary_name: str, terms: Sequence[str]) -> str:
    """Hard negative: the caption with the two object names exchanged, terms unchanged."""
    return caption(primary_name, secondary_name, terms)


def question(secondary_name: str, primary_name: str) -> str:
    """The PaliGemma prompt whose answer is the positive caption."""
    return f"What is the position of the {secondary_name} relative to the {primary_name}?"


def _names(text: str, terms: Sequence[str]) -> tuple[str, str]:
    """(B name, A name) of a caption `caption(B, A, terms)`; ValueError if `text` is not one."""
    mid = f" is {_join([PHRASES[t] for t in _check_terms(terms)])} the "
    head, sep, tail = text.partition(mid)
    if not (sep and head.startswith("The ") and tail.endswith(".") and len(head) > 4
            and len(tail) > 1):
        raise ValueError(f"{text!r} is not a caption with terms {tuple(terms)!r}")
    return head[4:], tail[:-1]


def mirror_terms(terms: Sequence[str]) -> tuple[str, ...]:
    """The terms of the left-right mirrored scene (left <-> right, the rest unchanged)."""
    return tuple(OPPOSITE[t] if AXIS[t] == 2 else t for t in _check_terms(terms))


def mirror(d: Description) -> Description:
    """The description of the horizontally flipped image: every caption of `d` (positive, both
    hard negatives) with left and right exchanged, so a flipped image and its mirrored
    description are a valid training pair (flip augmentation). ValueError if `d`'s texts were
    not made by `caption`/`spatial_swap`/`order_swap` from its terms."""
    b, a = _names(d.caption, d.terms)
    terms = mirror_terms(d.terms)
    spatial = d.spatial_negative
    if spatial:
        for i in range(len(d.terms)):   # which term the spatial swap flipped
            swapped = list(d.terms)
            swapped[i] = OPPOSITE[swapped[i]]
            if caption(b, a, swapped) == spatial:
                spatial = caption(b, a, mirror_terms(swapped))
                break
        else:
            raise ValueError(f"{spatial!r} is not a spatial swap of {d.caption!r}")
    order = d.order_negative
    if order:
        if order != order_swap(b, a, d.terms):
            raise ValueError(f"{order!r} is not the order swap of {d.caption!r}")
        order = order_swap(b, a, terms)
    return Description(primary=d.primary, secondary=d.secondary, terms=terms,
                       caption=caption(b, a, terms), spatial_negative=spatial,
                       order_negative=order, question=d.question)


def display_name(identifier: str, names: Mapping[str, str] | None = None) -> str:
    """How an object identifier reads in text: `names[identifier]` if given, else the identifier
    with underscores as spaces ('small_pot' -> 'small pot')."""
    if names is not None and identifier in names:
        return names[identifier]
    return identifier.replace("_", " ")


def describe_pair(primary: ObjectPose, secondary: ObjectPose, camera_forward: Vector,
                  rng: np.random.Generator, names: Mapping[str, str] | None = None
                  ) -> Description:
    """Describe `secondary` relative to `primary` as seen along `camera_forward`; `rng` draws the
    spatial hard negative's flipped term."""
    terms = spatial_terms(primary.position, secondary.position, camera_forward)
    an, bn = display_name(primary.name, names), display_name(secondary.name, names)
    return Description(primary=primary.name, secondary=secondary.name, terms=terms,
                       caption=caption(bn, an, terms),
                       spatial_negative=spatial_swap(bn, an, terms, rng),
                       order_negative=order_swap(bn, an, terms),
                       question=question(bn, an))


def describe(state: SceneState, rng: np.random.Generator,
             names: Mapping[str, str] | None = None, subject: str | None = None) -> Description:
    """Pick a primary A and a distinct secondary B among the active objects with `rng` and describe
    B relative to A; ordered pairs are tried in a random order until one does not coincide.
    `subject` (an active object's name) limits the pairs to those it is part of, in either role."""
    if not isinstance(rng, np.random.Generator):
        raise TypeError(f"rng must be a numpy.random.Generator, got {type(rng).__name__}")
    objs = state.objects
    if len(objs) < 2:
        raise ValueError(f"describe needs at least two active objects, "
                         f"got {[o.name for o in objs]}")
    forward = state.camera.forward
    camera_axes(forward)  # a vertical camera is a scene error, not a reason to retry pairs
    pairs = [(i, j) for i in range(len(objs)) for j in range(len(objs)) if i != j]
    if subject is not None:
        active = [o.name for o in objs]
        if subject not in active:
            raise ValueError(f"subject {subject!r} is not an active object of scene "
                             f"{state.scene_name!r} (active: {active})")
        k = active.index(subject)
        pairs = [p for p in pairs if k in p]
    for k in rng.permutation(len(pairs)):
        a, b = objs[pairs[int(k)][0]], objs[pairs[int(k)][1]]
        if np.array_equal(np.asarray(a.position, float), np.asarray(b.position, float)):
            continue
        return describe_pair(a, b, forward, rng, names)
    raise ValueError(f"every pair of active objects coincides in scene {state.scene_name!r}: "
                     f"{[(o.name, o.position) for o in objs]}")
