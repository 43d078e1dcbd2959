"""Angle-based spatial captions, hard negatives and the PaliGemma question (pure functions).

Implementation pending (issue 3); the `Description` record below is the contract other modules use.
"""

from __future__ import annotations

from dataclasses import dataclass


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
