"""Synthetic 2-D spatial samples (coloured shapes on a textured background) for adapter tests,
benchmarks and quick probes. Not the simulator: no physics, no depth (only left/right/above/below).

Terms come from the drawn positions (image plane: x right, y down); the texts (caption, hard
negatives, question) come from `rls3.captions`.
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image, ImageDraw

from rls3 import captions
from rls3.captions import Description
from rls3.sample import Sample
from rls3.scene import Camera, ObjectPose, SceneState

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40), "green": (40, 180, 60), "blue": (40, 80, 220),
    "yellow": (235, 215, 40), "purple": (150, 60, 190), "orange": (245, 140, 30)}
SHAPES = ("square", "circle", "triangle")


def describe(a: str, b: str, terms: tuple[str, ...], rng: np.random.Generator) -> Description:
    """Description of B relative to A, with NegCLIP negatives and the PaliGemma question."""
    return Description(primary=a, secondary=b, terms=terms,
                       caption=captions.caption(b, a, terms),
                       spatial_negative=captions.spatial_swap(b, a, terms, rng),
                       order_negative=captions.order_swap(b, a, terms),
                       question=captions.question(b, a))


def _draw(draw: ImageDraw.ImageDraw, shape: str, cx: float, cy: float, r: float,
          colour: tuple[int, int, int]) -> None:
    box = (cx - r, cy - r, cx + r, cy + r)
    if shape == "square":
        draw.rectangle(box, fill=colour)
    elif shape == "circle":
        draw.ellipse(box, fill=colour)
    else:
        draw.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=colour)


def object_names(n: int | None = None) -> list[str]:
    """The first `n` (default all 18) object names, colours and shapes interleaved."""
    colours = list(COLOURS)
    names = [f"{colours[i % 6]} {SHAPES[(i // 6 + i) % 3]}" for i in range(18)]
    if n is not None and not 2 <= n <= 18:
        raise ValueError(f"n_objects must be in 2..18, got {n}")
    return names[:n]


def make_sample(rng: np.random.Generator, size: int = 160, max_terms: int = 2,
                n_objects: int | None = None) -> Sample:
    """One image with two distinct coloured shapes, captioned with 1..max_terms terms."""
    names = object_names(n_objects)
    ia, ib = rng.choice(len(names), size=2, replace=False)
    a, b = names[ia], names[ib]
    horizontal = rng.choice(["left", "right"])
    vertical = rng.choice(["above", "below"])
    k = int(rng.integers(1, max_terms + 1))
    terms: tuple[str, ...]
    if k == 1:
        terms = (str(horizontal),) if rng.random() < 0.5 else (str(vertical),)
    else:
        terms = (str(vertical), str(horizontal))
    r = size * rng.uniform(0.08, 0.13)
    lo, hi = r + 2, size - r - 2
    gap = 2.2 * r
    while True:  # rejection sampling: positions that make exactly `terms` true and clear
        (ax, ay), (bx, by) = rng.uniform(lo, hi, size=(2, 2))
        dx, dy = bx - ax, by - ay                     # image y grows downwards
        if math.hypot(dx, dy) < gap:
            continue
        ok_h = (dx < -gap / 2) if horizontal == "left" else (dx > gap / 2)
        ok_v = (dy < -gap / 2) if vertical == "above" else (dy > gap / 2)
        if "left" in terms or "right" in terms:
            if not ok_h or (len(terms) == 1 and abs(dy) > abs(dx) / 3):
                continue
        if "above" in terms or "below" in terms:
            if not ok_v or (len(terms) == 1 and abs(dx) > abs(dy) / 3):
                continue
        break
    base = rng.integers(90, 200, size=3)
    noise = rng.integers(-25, 26, size=(size // 8, size // 8, 3))
    bg = np.clip(base + noise, 0, 255).astype(np.uint8)
    img = Image.fromarray(bg).resize((size, size), Image.Resampling.BILINEAR)
    draw = ImageDraw.Draw(img)
    for name, x, y in ((a, ax, ay), (b, bx, by)):
        colour, shape = name.split(" ")
        _draw(draw, shape, x, y, r, COLOURS[colour])
    objects = tuple(ObjectPose(n, (float(x) / size, float(y) / size, 0.0), (0.0, 0.0, 0.0),
                               "table") for n, x, y in ((a, ax, ay), (b, bx, by)))
    state = SceneState(0, "synthetic-2d", objects, (),
                       Camera.looking_at((0.5, 0.5, 2.0), (0.5, 0.5, 0.0), width=size,
                                         height=size))
    return Sample(np.asarray(img, dtype=np.uint8), state, describe(a, b, terms, rng))


def make_samples(n: int, seed: int = 0, size: int = 160, max_terms: int = 2,
                 n_objects: int | None = None) -> list[Sample]:
    """`n` synthetic samples, reproducible from `seed`, over the first `n_objects` objects."""
    rng = np.random.default_rng(seed)
    return [make_sample(rng, size, max_terms, n_objects) for _ in range(n)]
