"""Contact sheets: every scene (and optionally random valid layouts) in one labelled PNG."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw

from rls3.sim.backend import SimBackend
from rls3.sim.world import list_scenes, resolve_scene


def contact_sheet(scenes: Sequence[str] | None = None, layouts: int = 1, size: int = 256,
                  seed: int = 0, shadows: bool = True) -> Image.Image:
    """A grid with one row per scene and `layouts` random valid layouts per row, each labelled
    with the scene, its split and the three active objects."""
    names = list(scenes) if scenes is not None else list(list_scenes())
    if layouts < 1 or size < 32:
        raise ValueError(f"layouts must be >= 1 and size >= 32, got {layouts}, {size}")
    backend = SimBackend(names, shadows=shadows)
    rng = np.random.default_rng(seed)
    pad = 18
    sheet = Image.new("RGB", (layouts * size, len(names) * (size + pad)), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    try:
        for i, name in enumerate(names):
            split = resolve_scene(name).split
            for j in range(layouts):
                state = backend.load_scene(i, seed=int(rng.integers(2**31 - 1)))
                img = Image.fromarray(backend.render(size, size))
                y = i * (size + pad)
                sheet.paste(img, (j * size, y + pad))
                label = f"{name} ({split}): " + ", ".join(o.name for o in state.objects)
                draw.text((j * size + 3, y + 3), label[: size // 6], fill=(0, 0, 0))
    finally:
        backend.close()
    return sheet
