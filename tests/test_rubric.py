"""Tests for rls3.rubric: parsing free-text answers into terms and the S_PG score table."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rls3.captions import OPPOSITE, TERMS, caption, order_swap, spatial_swap
from rls3.rubric import parse_terms, score

# --- parse_terms ----------------------------------------------------------------------------------


@pytest.mark.parametrize("answer, expected", [
    ("The small pot is above, behind and to the left of the yellow bowl.",
     {"above", "behind", "left"}),
    ("above", {"above"}),
    ("It sits on top of the bowl.", {"above"}),
    ("on top", {"above"}),
    ("The lamp hangs over the table.", {"above"}),
    ("atop the shelf", {"above"}),
    ("higher than the mug", {"above"}),
    ("below", {"below"}),
    ("under the table", {"below"}),
    ("beneath the bowl", {"below"}),
    ("underneath it", {"below"}),
    ("lower than the cup", {"below"}),
    ("behind", {"behind"}),
    ("in back of the vase", {"behind"}),
    ("at the back of the counter", {"behind"}),
    ("farther from the camera than the mug", {"behind"}),
    ("in front of the toaster", {"in front"}),
    ("front", {"in front"}),
    ("at the front", {"in front"}),
    ("ahead of the cup", {"in front"}),
    ("closer to the camera", {"in front"}),
    ("to the left of the cup", {"left"}),
    ("to the left", {"left"}),
    ("on the left", {"left"}),
    ("left of the cup", {"left"}),
    ("the left-hand side", {"left"}),
    ("leftwards", {"left"}),
    ("to the right of the cup", {"right"}),
    ("on the right", {"right"}),
    ("right of it", {"right"}),
    ("In Front Of And To The RIGHT of the mug", {"in front", "right"}),
    ("BELOW; LEFT!", {"below", "left"}),
    ("below,behind,left", {"below", "behind", "left"}),
    ("in-front-of and left-of", {"in front", "left"}),
    ("back left", {"behind", "left"}),
    ("front right", {"in front", "right"}),
    ("upper right", {"right"}),
])
def test_parse_terms_synonyms_case_and_punctuation(answer, expected):
    assert parse_terms(answer) == expected


@pytest.mark.parametrize("answer", [
    "leftover soup", "The bowl is on the leftmost shelf", "bright light", "upright bottle",
    "copyright notice", "overlapping objects", "underground", "frontier", "background",
    "aboveground", "belowdecks", "next to the bowl", "beside the cup", "", "   ", "?!.,",
    "the objects overlap", "it is hovering", "fright", "lefty", "a cleft rock", "outright",
    "a lowercase word", "overt", "forefront", "setback",
])
def test_parse_terms_never_reads_terms_out_of_unrelated_words(answer):
    assert parse_terms(answer) == set()


@pytest.mark.parametrize("answer, expected", [
    ("right above the bowl", {"above"}),
    ("right behind it", {"behind"}),
    ("right in front of the mug", {"in front"}),
    ("right next to the cup", set()),
    ("to the right in front of the mug", {"right", "in front"}),
    ("to the right, in front of the mug", {"right", "in front"}),
    ("It is over to the left", {"left"}),
])
def test_parse_terms_intensifiers_are_not_directions(answer, expected):
    assert parse_terms(answer) == expected


def test_parse_terms_rejects_non_strings():
    with pytest.raises(TypeError):
        parse_terms(None)  # type: ignore[arg-type]


# --- score: every row of the table ----------------------------------------------------------------


@pytest.mark.parametrize("answer, truth, expected", [
    # 5: all truth terms stated (n = 1, 2, 3)
    ("above", ["above"], 5),
    ("It is in front of and to the left of the cup.", ["in front", "left"], 5),
    ("The small pot is above, behind and to the left of the yellow bowl.",
     ["above", "behind", "left"], 5),
    # 4: n = 3, c = 2
    ("It is above and behind the bowl.", ["above", "behind", "left"], 4),
    # 3: n = 2, c = 1
    ("It is above the bowl.", ["above", "left"], 3),
    # 2: n = 3, c = 1
    ("It is to the left of the bowl.", ["above", "behind", "left"], 2),
    # 1: none stated
    ("It is next to the bowl.", ["above"], 1),
    ("It is next to the bowl.", ["above", "left"], 1),
    ("It is next to the bowl.", ["above", "behind", "left"], 1),
    ("It is behind the bowl.", ["above"], 1),
])
def test_score_table_rows(answer, truth, expected):
    assert score(answer, truth) == expected


@pytest.mark.parametrize("answer, truth, expected", [
    # opposite penalty only
    ("It is below and to the left of the bowl.", ["above", "left"], 2),       # 3 - 1
    ("It is above, behind and to the right of it.", ["above", "behind", "left"], 3),  # 4 - 1
    ("Above and to the right.", ["above", "behind", "left"], 1),             # 2 - 1
    # extra-terms penalty only
    ("above, behind and to the left", ["above", "left"], 4),                  # 5 - 1
    ("above and to the left", ["above"], 4),                                  # 5 - 1
    ("above, behind and left", ["left"], 4),                                  # 5 - 1
    # both penalties (each applied at most once)
    ("above, below and to the left", ["above"], 3),                           # 5 - 1 - 1
    ("above, in front of, to the left and to the right", ["above", "behind", "left"], 2),  # 4-1-1
    # floor at 1
    ("below", ["above"], 1),                                                  # 1 - 1 -> 1
    ("below and to the left", ["above"], 1),                                  # 1 - 1 - 1 -> 1
    ("to the right, in front of and below", ["above", "behind"], 1),         # 1 - 1 - 1 -> 1
    ("to the right, above and in front of", ["above", "behind", "left"], 1),  # 2 - 1 -> 1
    ("right, above, below and in front", ["above", "behind", "left"], 1),     # 2 - 1 - 1 -> 1
])
def test_score_penalties_and_floor(answer, truth, expected):
    assert score(answer, truth) == expected


def test_score_accepts_any_iterable_of_truth_terms():
    assert score("above and left", ("above", "left")) == 5
    assert score("above and left", {"left", "above"}) == 5
    assert score("above and left", iter(["above", "left"])) == 5


@pytest.mark.parametrize("truth, needle", [
    (["above", "upward"], "upward"),
    (["in_front"], "in_front"),
    (["Left"], "Left"),
])
def test_score_rejects_unknown_truth_terms_by_name(truth, needle):
    with pytest.raises(ValueError, match=needle):
        score("above", truth)


@pytest.mark.parametrize("truth", [[], ["above", "below"], ["left", "right"], "above"])
def test_score_rejects_empty_contradictory_or_string_truth(truth):
    with pytest.raises(ValueError):
        score("above", truth)


# --- properties against the caption generator -----------------------------------------------------

vertical = st.sampled_from([None, "above", "below"])
depth = st.sampled_from([None, "behind", "in front"])
lateral = st.sampled_from([None, "left", "right"])
terms_st = st.tuples(vertical, depth, lateral).map(
    lambda t: tuple(x for x in t if x is not None)).filter(bool)
names = st.sampled_from(["small pot", "yellow bowl", "wine bottle", "coffee mug", "vase",
                         "toaster", "apples", "plastic cup", "desk lamp"])


@settings(max_examples=200, deadline=None)
@given(terms_st, names, names)
def test_positive_caption_round_trips_and_scores_5(terms, b, a):
    text = caption(b, a, terms)
    assert parse_terms(text) == set(terms)
    assert parse_terms(text.upper()) == set(terms)
    assert score(text, terms) == 5
    assert score(order_swap(b, a, terms), terms) == 5  # the rubric does not see object order


@settings(max_examples=200, deadline=None)
@given(terms_st, names, names, st.integers(0, 2**32 - 1))
def test_spatial_negative_scores_by_the_table(terms, b, a, seed):
    text = spatial_swap(b, a, terms, np.random.default_rng(seed))
    stated = parse_terms(text)
    assert len(stated & set(terms)) == len(terms) - 1
    assert len(stated - set(terms)) == 1 and OPPOSITE[(stated - set(terms)).pop()] in terms
    # n = 1: 1 - 1 -> 1; n = 2: 3 - 1; n = 3: 4 - 1
    assert score(text, terms) == {1: 1, 2: 2, 3: 3}[len(terms)]


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=80), terms_st)
def test_score_is_always_between_1_and_5(answer, truth):
    assert parse_terms(answer) <= set(TERMS)
    assert 1 <= score(answer, truth) <= 5
