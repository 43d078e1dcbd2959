"""One training/evaluation sample: a rendered image, its ground truth and its description."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from rls3.captions import Description
from rls3.scene import SceneState


@dataclass(frozen=True)
class Sample:
    """An RGB image (H, W, 3 uint8) with the scene state it shows and the caption that states it."""

    image: np.ndarray
    state: SceneState
    description: Description

    def metadata(self) -> dict[str, Any]:
        """JSON-ready record (everything but the pixels)."""
        d = self.description
        return {"caption": d.caption, "negatives": list(d.negatives), "question": d.question,
                "answer": d.answer, "terms": list(d.terms), "complexity": d.complexity,
                "primary": d.primary, "secondary": d.secondary,
                "scene": self.state.scene_name, "state": self.state.to_dict()}

    @classmethod
    def from_metadata(cls, image: np.ndarray, meta: dict[str, Any]) -> Sample:
        """Inverse of `metadata`; raises ValueError naming the missing or malformed field."""
        try:
            neg = meta["negatives"]
            desc = Description(primary=str(meta["primary"]), secondary=str(meta["secondary"]),
                               terms=tuple(str(t) for t in meta["terms"]),
                               caption=str(meta["caption"]), spatial_negative=str(neg[0]),
                               order_negative=str(neg[1]), question=str(meta["question"]))
            state = SceneState.from_dict(meta["state"])
        except (KeyError, IndexError, TypeError, AttributeError) as e:
            raise ValueError(f"malformed sample metadata: missing or bad field {e!r}") from e
        return cls(np.asarray(image, dtype=np.uint8), state, desc)
