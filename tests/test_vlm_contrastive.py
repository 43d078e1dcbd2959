"""The contrastive math shared by the CLIP-type adapters (text table, NegCLIP loss, hard-negative
accuracy, per-term / per-complexity breakdown) on hand-computed cases."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import desc

from rls3.vlm.common import breakdown
from rls3.vlm.contrastive import contrastive_loss, hard_negative_correct, text_table


def lse(xs):
    return math.log(sum(math.exp(x) for x in xs))


def test_text_table_dedups_and_skips_missing_negatives():
    t = text_table([desc("a", "b", "c"), desc("d", "e", ""), desc("a", "a", "b")])
    assert t.texts == ("a", "b", "c", "d", "e")
    assert t.index.tolist() == [[0, 1, 2], [3, 4, -1], [0, -1, 1]]


def test_contrastive_loss_hand_computed():
    table = text_table([desc("a", "b", "c"), desc("d", "e", "")])
    img = torch.tensor([[1.0, 0.0], [0.0, 2.0]])      # cosine: norms do not matter
    txt = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.0, 1.0], [3.0, 0.0]])
    scale = 2.0
    got = contrastive_loss(img, txt, table.index, scale)
    s = scale
    i2t0 = lse([s, 0, -s, 0, s]) - s
    i2t1 = lse([0, s, 0, s, 0]) - s
    t2i0 = lse([s, 0]) - s
    t2i1 = lse([0, s]) - s
    want = [0.5 * (i2t0 + t2i0), 0.5 * (i2t1 + t2i1)]
    assert got.tolist() == pytest.approx(want, rel=1e-6)


def test_contrastive_loss_same_caption_is_not_a_negative():
    table = text_table([desc("a", "b", ""), desc("a", "b", "")])
    img = torch.tensor([[1.0, 0.0], [0.6, 0.8]])
    txt = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    got = contrastive_loss(img, txt, table.index, 1.0)
    # text->image: the other image shares the caption, so it leaves the denominator (term = 0)
    want = [0.5 * (lse([1.0, 0.0]) - 1.0), 0.5 * (lse([0.6, 0.8]) - 0.6)]
    assert got.tolist() == pytest.approx(want, rel=1e-6)


def test_hard_negative_accuracy_hand_computed():
    table = text_table([desc("a", "b", "c"), desc("d", "e", ""), desc("f", "g", "h")])
    img = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]])
    txt = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0],   # a b c: right
                        [0.0, 1.0], [1.0, 0.0],                # d e: right (order absent)
                        [1.0, 0.0], [0.5, 0.5], [1.0, 0.0]])   # f g h: tie with h -> wrong
    assert hard_negative_correct(img, txt, table.index).tolist() == [True, True, False]


def test_breakdown_per_term_and_complexity():
    ds = [desc("a", terms=("left",)), desc("b", terms=("above", "left")),
          desc("c", terms=("below",))]
    overall, per_term, per_cx = breakdown([1.0, 0.0, 1.0], ds)
    assert overall == pytest.approx(2 / 3)
    assert per_term == {"above": 0.0, "below": 1.0, "left": 0.5}
    assert per_cx == {1: 1.0, 2: 0.0}
