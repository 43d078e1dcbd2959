"""Tests for rls3.captions: angle regions, boundaries, caption text, hard negatives, describe()."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from rls3.captions import (
    AXIS,
    OPPOSITE,
    TERMS,
    Description,
    angles,
    caption,
    describe,
    display_name,
    mirror,
    mirror_terms,
    order_swap,
    question,
    spatial_swap,
    spatial_terms,
    terms_from_angles,
)
from rls3.scene import Camera, ObjectPose, SceneState, Surface

H_BOUNDS = (22.5, 67.5, 112.5, 157.5)
V_BOUNDS = (20.0, 75.0)
MARGIN = 1e-6  # degrees kept away from a boundary in property tests (rounding is ~1e-12)

coord = st.floats(-5.0, 5.0, allow_nan=False, allow_infinity=False)
point = st.tuples(coord, coord, coord)
yaw = st.floats(-math.pi, math.pi)
pitch = st.floats(math.radians(-85), math.radians(85))


def forward_of(yaw_: float, pitch_: float) -> np.ndarray:
    return np.array([math.cos(pitch_) * math.cos(yaw_), math.cos(pitch_) * math.sin(yaw_),
                     math.sin(pitch_)])


def rot_z(alpha: float) -> np.ndarray:
    c, s = math.cos(alpha), math.sin(alpha)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def clear_of_boundaries(a, b, fwd) -> bool:
    """True if B is well away from A and theta/phi are not within MARGIN of any boundary."""
    if np.linalg.norm(np.subtract(b, a)) < 1e-3:
        return False
    theta, phi = angles(a, b, fwd)
    return (all(abs(abs(theta) - x) > MARGIN for x in H_BOUNDS)
            and all(abs(abs(phi) - x) > MARGIN for x in V_BOUNDS))


# --- properties -----------------------------------------------------------------------------------

@settings(max_examples=300, deadline=None)
@given(point, point, yaw, pitch, st.floats(-math.pi, math.pi))
def test_rotation_with_camera_about_z_changes_nothing(a, b, yw, pt, alpha):
    fwd = forward_of(yw, pt)
    assume(clear_of_boundaries(a, b, fwd))
    r = rot_z(alpha)
    assert spatial_terms(r @ np.array(a), r @ np.array(b), r @ fwd) == spatial_terms(a, b, fwd)


@settings(max_examples=300, deadline=None)
@given(point, point, yaw, pitch, point)
def test_translation_changes_nothing(a, b, yw, pt, shift):
    fwd = forward_of(yw, pt)
    a2, b2 = np.add(a, shift), np.add(b, shift)
    assume(clear_of_boundaries(a, b, fwd) and clear_of_boundaries(a2, b2, fwd))
    assert spatial_terms(a2, b2, fwd) == spatial_terms(a, b, fwd)


@settings(max_examples=300, deadline=None)
@given(point, point, yaw, pitch)
def test_mirror_swaps_left_and_right(a, b, yw, pt):
    fwd = forward_of(yw, pt)
    assume(clear_of_boundaries(a, b, fwd))
    m = np.diag([1.0, -1.0, 1.0])  # reflect the whole world, camera included, through y = 0
    mirrored = spatial_terms(m @ np.array(a), m @ np.array(b), m @ fwd)
    swap = {"left": "right", "right": "left"}
    assert mirrored == tuple(swap.get(t, t) for t in spatial_terms(a, b, fwd))


@settings(max_examples=300, deadline=None)
@given(point, point, yaw, pitch)
def test_swapping_a_and_b_gives_opposite_terms(a, b, yw, pt):
    fwd = forward_of(yw, pt)
    assume(clear_of_boundaries(a, b, fwd))
    assert spatial_terms(b, a, fwd) == tuple(OPPOSITE[t] for t in spatial_terms(a, b, fwd))


@settings(max_examples=500, deadline=None)
@given(point, point, yaw, pitch)
def test_one_to_three_terms_in_canonical_order_one_per_axis(a, b, yw, pt):
    assume(a != b)
    terms = spatial_terms(a, b, forward_of(yw, pt))
    assert 1 <= len(terms) <= 3
    assert all(t in TERMS for t in terms)
    assert list(terms) == sorted(terms, key=TERMS.index)
    axes = [TERMS.index(t) // 2 for t in terms]
    assert len(set(axes)) == len(axes)


@settings(max_examples=300, deadline=None)
@given(st.floats(-180, 180), st.floats(-90, 90))
def test_term_count_follows_the_angles(theta, phi):
    terms = terms_from_angles(theta, phi)
    horizontal = 1 if (abs(theta) < 22.5 or 67.5 <= abs(theta) < 112.5 or abs(theta) >= 157.5) else 2
    expected = 1 if abs(phi) > 75 else horizontal + (1 if abs(phi) > 20 else 0)
    assert len(terms) == expected


# --- orientation conventions ----------------------------------------------------------------------

@pytest.mark.parametrize("d, expected", [
    ((1.0, 0.0, 0.0), ("behind",)),         # farther from a camera looking along +x
    ((-1.0, 0.0, 0.0), ("in front",)),
    ((0.0, -1.0, 0.0), ("right",)),         # r = f x z = -y
    ((0.0, 1.0, 0.0), ("left",)),
    ((0.0, 0.0, 1.0), ("above",)),
    ((0.0, 0.0, -1.0), ("below",)),
    ((1.0, 1.0, 0.0), ("behind", "left")),
    ((-1.0, -1.0, 0.0), ("in front", "right")),
    ((1.0, -1.0, -0.8), ("below", "behind", "right")),
])
def test_axis_conventions(d, expected):
    a = np.array([0.3, -0.2, 0.9])
    assert spatial_terms(a, a + np.array(d), (1.0, 0.0, -0.4)) == expected


def test_camera_pitch_does_not_matter_only_its_heading():
    a, b = (0.0, 0.0, 0.0), (1.0, 2.0, 0.5)
    ref = spatial_terms(a, b, forward_of(0.7, 0.0))
    for p in (-1.4, -0.6, 0.3, 1.2):
        assert spatial_terms(a, b, forward_of(0.7, p)) == ref


# --- exact boundaries -----------------------------------------------------------------------------

def below_(x: float) -> float:
    return math.nextafter(x, -math.inf)


def above_(x: float) -> float:
    return math.nextafter(x, math.inf)


@pytest.mark.parametrize("theta, expected", [
    (0.0, ("behind",)),
    (below_(22.5), ("behind",)), (22.5, ("behind", "right")),
    (-below_(22.5), ("behind",)), (-22.5, ("behind", "left")),
    (below_(67.5), ("behind", "right")), (67.5, ("right",)),
    (-below_(67.5), ("behind", "left")), (-67.5, ("left",)),
    (90.0, ("right",)), (-90.0, ("left",)),
    (below_(112.5), ("right",)), (112.5, ("in front", "right")),
    (-below_(112.5), ("left",)), (-112.5, ("in front", "left")),
    (below_(157.5), ("in front", "right")), (157.5, ("in front",)),
    (-below_(157.5), ("in front", "left")), (-157.5, ("in front",)),
    (180.0, ("in front",)), (-180.0, ("in front",)),
])
def test_horizontal_boundaries_exact(theta, expected):
    assert terms_from_angles(theta, 0.0) == expected


@pytest.mark.parametrize("phi, expected", [
    (20.0, ("behind", "left")), (above_(20.0), ("above", "behind", "left")),
    (-20.0, ("behind", "left")), (-above_(20.0), ("below", "behind", "left")),
    (75.0, ("above", "behind", "left")), (above_(75.0), ("above",)),
    (-75.0, ("below", "behind", "left")), (-above_(75.0), ("below",)),
    (90.0, ("above",)), (-90.0, ("below",)), (0.0, ("behind", "left")),
])
def test_vertical_boundaries_exact(phi, expected):
    assert terms_from_angles(-45.0, phi) == expected


FWD = forward_of(math.radians(30.0), math.radians(-35.0))  # a tilted, rotated camera
F = np.array([math.cos(math.radians(30.0)), math.sin(math.radians(30.0)), 0.0])
R = np.array([F[1], -F[0], 0.0])
Z = np.array([0.0, 0.0, 1.0])
EPS = 1e-6  # degrees


def offset(theta_deg: float, phi_deg: float, dist: float = 0.8) -> np.ndarray:
    t, p = math.radians(theta_deg), math.radians(phi_deg)
    return dist * (math.cos(p) * (math.cos(t) * F + math.sin(t) * R) + math.sin(p) * Z)


@pytest.mark.parametrize("theta, inside, outside", [
    (22.5, ("behind",), ("behind", "right")),
    (67.5, ("behind", "right"), ("right",)),
    (112.5, ("right",), ("in front", "right")),
    (157.5, ("in front", "right"), ("in front",)),
    (-22.5, ("behind",), ("behind", "left")),
    (-67.5, ("behind", "left"), ("left",)),
    (-112.5, ("left",), ("in front", "left")),
    (-157.5, ("in front", "left"), ("in front",)),
])
def test_horizontal_boundaries_from_coordinates(theta, inside, outside):
    a = np.array([1.0, -2.0, 0.75])
    step = math.copysign(EPS, theta)
    assert spatial_terms(a, a + offset(theta - step, 0.0), FWD) == inside
    assert spatial_terms(a, a + offset(theta + step, 0.0), FWD) == outside


@pytest.mark.parametrize("phi, inside, outside", [
    (20.0, ("in front", "left"), ("above", "in front", "left")),
    (75.0, ("above", "in front", "left"), ("above",)),
    (-20.0, ("in front", "left"), ("below", "in front", "left")),
    (-75.0, ("below", "in front", "left"), ("below",)),
])
def test_vertical_boundaries_from_coordinates(phi, inside, outside):
    a = np.array([0.2, 0.4, 1.0])
    step = math.copysign(EPS, phi)
    assert spatial_terms(a, a + offset(-135.0, phi - step), FWD) == inside
    assert spatial_terms(a, a + offset(-135.0, phi + step), FWD) == outside


def test_angles_match_the_construction():
    theta, phi = angles((0, 0, 0), offset(-101.0, 33.0), FWD)
    assert theta == pytest.approx(-101.0, abs=1e-9)
    assert phi == pytest.approx(33.0, abs=1e-9)


def test_straight_above_needs_no_heading():
    assert spatial_terms((0, 0, 0), (0, 0, 0.3), FWD) == ("above",)
    assert spatial_terms((0, 0, 0), (0, 0, -0.3), FWD) == ("below",)


# --- errors --------------------------------------------------------------------------------------

def test_zero_distance_raises():
    with pytest.raises(ValueError, match="coincides"):
        spatial_terms((0.1, 0.2, 0.3), (0.1, 0.2, 0.3), (1.0, 0.0, 0.0))


@pytest.mark.parametrize("fwd", [(0.0, 0.0, -1.0), (0.0, 0.0, 2.0), (0.0, 0.0, 0.0),
                                 tuple(Camera((0, 0, 2), (0.0, -math.pi / 2, 0.3)).forward)])
def test_vertical_or_zero_camera_forward_raises(fwd):
    with pytest.raises(ValueError, match="vertical"):
        spatial_terms((0, 0, 0), (1, 0, 0), fwd)


@pytest.mark.parametrize("bad", [(1.0, 2.0), (1.0, math.nan, 0.0), "abc", (1, 2, 3, 4)])
def test_malformed_vectors_raise(bad):
    with pytest.raises(ValueError, match="3 finite numbers"):
        spatial_terms(bad, (1, 0, 0), (1, 0, 0))


@pytest.mark.parametrize("theta, phi", [(181.0, 0.0), (0.0, 91.0), (math.nan, 0.0)])
def test_terms_from_angles_rejects_out_of_range(theta, phi):
    with pytest.raises(ValueError):
        terms_from_angles(theta, phi)


# --- caption text ---------------------------------------------------------------------------------

def test_paper_example_word_for_word_from_coordinates():
    camera = Camera.looking_at((-1.2, 0.0, 1.6), (0.3, 0.0, 0.9))
    yellow_bowl = (0.30, 0.05, 0.93)
    small_pot = (0.55, 0.30, 1.15)  # farther from the camera, to its left (+y), higher
    terms = spatial_terms(yellow_bowl, small_pot, camera.forward)
    assert terms == ("above", "behind", "left")
    assert (caption("small pot", "yellow bowl", terms)
            == "The small pot is above, behind and to the left of the yellow bowl.")


@pytest.mark.parametrize("terms, text", [
    (("above",), "The mug is above the plate."),
    (("below",), "The mug is below the plate."),
    (("behind",), "The mug is behind the plate."),
    (("in front",), "The mug is in front of the plate."),
    (("left",), "The mug is to the left of the plate."),
    (("right",), "The mug is to the right of the plate."),
    (("below", "right"), "The mug is below and to the right of the plate."),
    (("in front", "left"), "The mug is in front of and to the left of the plate."),
    (("below", "in front", "right"), "The mug is below, in front of and to the right of the plate."),
    (("right", "above"), "The mug is above and to the right of the plate."),  # reordered
])
def test_caption_phrasing(terms, text):
    assert caption("mug", "plate", terms) == text


@pytest.mark.parametrize("terms", [(), ("up",), ("above", "below"), ("left", "right", "above"),
                                   ("above", "behind", "left", "left"), "above"])
def test_caption_rejects_bad_terms(terms):
    with pytest.raises(ValueError):
        caption("mug", "plate", terms)


def test_order_swap_and_question():
    terms = ("above", "behind", "left")
    assert (order_swap("small pot", "yellow bowl", terms)
            == "The yellow bowl is above, behind and to the left of the small pot.")
    assert (question("small pot", "yellow bowl")
            == "What is the position of the small pot relative to the yellow bowl?")


def test_spatial_swap_flips_exactly_one_term_chosen_by_the_rng():
    terms = ("above", "behind", "left")
    options = {
        "The small pot is below, behind and to the left of the yellow bowl.",
        "The small pot is above, in front of and to the left of the yellow bowl.",
        "The small pot is above, behind and to the right of the yellow bowl.",
    }
    seen = {spatial_swap("small pot", "yellow bowl", terms, np.random.default_rng(s))
            for s in range(40)}
    assert seen == options
    for s in range(5):
        assert (spatial_swap("small pot", "yellow bowl", terms, np.random.default_rng(s))
                == spatial_swap("small pot", "yellow bowl", terms, np.random.default_rng(s)))


def test_spatial_swap_single_term_is_its_opposite():
    rng = np.random.default_rng(0)
    for t in TERMS:
        assert spatial_swap("mug", "plate", (t,), rng) == caption("mug", "plate", (OPPOSITE[t],))


def test_spatial_swap_requires_a_generator():
    with pytest.raises(TypeError):
        spatial_swap("mug", "plate", ("above",), 3)  # type: ignore[arg-type]


def test_opposite_is_an_involution_over_the_terms():
    assert set(OPPOSITE) == set(TERMS)
    assert all(OPPOSITE[OPPOSITE[t]] == t and OPPOSITE[t] != t for t in TERMS)
    assert TERMS == ("above", "below", "behind", "in front", "left", "right")


# --- describe() -----------------------------------------------------------------------------------

def make_state(positions: dict[str, tuple[float, float, float]],
               camera: Camera | None = None) -> SceneState:
    objs = tuple(ObjectPose(n, p, (0.0, 0.0, 0.0), "counter") for n, p in positions.items())
    return SceneState(0, "kitchen_a", objs, (Surface("counter", (0.5, 0.0, 0.9), (1.2, 0.8, 0.05)),),
                      camera or Camera.looking_at((-1.2, 0.0, 1.6), (0.3, 0.0, 0.9)))


STATE = make_state({"small_pot": (0.55, 0.30, 1.15), "yellow_bowl": (0.30, 0.05, 0.93),
                    "wine_bottle": (0.20, -0.35, 1.05)})


def test_describe_is_deterministic_for_a_seed():
    for seed in range(10):
        d1 = describe(STATE, np.random.default_rng(seed))
        d2 = describe(STATE, np.random.default_rng(seed))
        assert d1 == d2


def test_describe_is_consistent_and_covers_all_pairs():
    pairs = set()
    for seed in range(60):
        d = describe(STATE, np.random.default_rng(seed))
        assert isinstance(d, Description)
        assert d.primary != d.secondary
        pairs.add((d.primary, d.secondary))
        a, b = STATE.object(d.primary), STATE.object(d.secondary)
        assert d.terms == spatial_terms(a.position, b.position, STATE.camera.forward)
        an, bn = d.primary.replace("_", " "), d.secondary.replace("_", " ")
        assert d.caption == caption(bn, an, d.terms) == d.answer
        assert d.order_negative == caption(an, bn, d.terms)
        assert d.spatial_negative != d.caption
        assert d.question == f"What is the position of the {bn} relative to the {an}?"
        assert d.complexity == len(d.terms)
        assert d.negatives == (d.spatial_negative, d.order_negative)
    assert len(pairs) == 6


def test_describe_with_a_subject_keeps_to_its_pairs_in_both_roles():
    """`subject` (loop.caption_pair: moved): only the 4 ordered pairs the object is part of."""
    pairs = set()
    for seed in range(60):
        d = describe(STATE, np.random.default_rng(seed), subject="wine_bottle")
        assert "wine_bottle" in (d.primary, d.secondary)
        a, b = STATE.object(d.primary), STATE.object(d.secondary)
        assert d.terms == spatial_terms(a.position, b.position, STATE.camera.forward)
        pairs.add((d.primary, d.secondary))
    assert len(pairs) == 4
    state = make_state({"mug": (0.1, 0.1, 1.0), "cup": (0.1, 0.1, 1.0), "vase": (0.4, 0.0, 1.0)})
    for seed in range(10):   # the coinciding pair is skipped, the other one taken
        d = describe(state, np.random.default_rng(seed), subject="mug")
        assert {d.primary, d.secondary} == {"mug", "vase"}
    with pytest.raises(ValueError, match=r"'teapot' is not an active object.*kitchen_a"):
        describe(STATE, np.random.default_rng(0), subject="teapot")


def test_describe_reproduces_the_paper_example():
    for seed in range(50):
        d = describe(STATE, np.random.default_rng(seed))
        if (d.primary, d.secondary) == ("yellow_bowl", "small_pot"):
            assert d.caption == "The small pot is above, behind and to the left of the yellow bowl."
            assert d.question == "What is the position of the small pot relative to the yellow bowl?"
            assert d.order_negative == ("The yellow bowl is above, behind and to the left of the "
                                        "small pot.")
            return
    pytest.fail("no seed in 0..49 picked (yellow_bowl, small_pot)")


def test_describe_uses_display_name_overrides():
    names = {"small_pot": "lidded pot", "yellow_bowl": "bowl"}
    d = describe(make_state({"small_pot": (0.55, 0.30, 1.15), "yellow_bowl": (0.30, 0.05, 0.93)}),
                 np.random.default_rng(1), names)
    assert {d.primary, d.secondary} == {"small_pot", "yellow_bowl"}  # records keep identifiers
    shown = {"small_pot": "lidded pot", "yellow_bowl": "bowl"}
    assert d.caption == caption(shown[d.secondary], shown[d.primary], d.terms)
    assert "_" not in d.caption and "_" not in d.question
    assert display_name("wine_bottle") == "wine bottle"
    assert display_name("wine_bottle", names) == "wine bottle"
    assert display_name("yellow_bowl", names) == "bowl"


def test_describe_retries_coinciding_pairs():
    state = make_state({"mug": (0.1, 0.1, 1.0), "cup": (0.1, 0.1, 1.0), "vase": (0.4, 0.0, 1.0)})
    for seed in range(30):
        d = describe(state, np.random.default_rng(seed))
        assert "vase" in (d.primary, d.secondary)


def test_describe_raises_if_every_pair_coincides():
    state = make_state({"mug": (0.1, 0.1, 1.0), "cup": (0.1, 0.1, 1.0), "vase": (0.1, 0.1, 1.0)})
    with pytest.raises(ValueError, match="every pair"):
        describe(state, np.random.default_rng(0))


def test_describe_rejects_too_few_objects_and_a_vertical_camera():
    with pytest.raises(ValueError, match="at least two"):
        describe(make_state({"mug": (0.1, 0.1, 1.0)}), np.random.default_rng(0))
    down = Camera((0.0, 0.0, 3.0), (0.0, -math.pi / 2, 0.0))
    with pytest.raises(ValueError, match="vertical"):
        describe(make_state({"mug": (0.1, 0.1, 1.0), "cup": (0.3, 0.1, 1.0)}, down),
                 np.random.default_rng(0))


def mirrored_state(state: SceneState) -> SceneState:
    """`state` reflected through the camera's vertical plane y = 0 (the camera stays put)."""
    objs = tuple(ObjectPose(o.name, (o.position[0], -o.position[1], o.position[2]), o.rotation,
                            o.surface) for o in state.objects)
    return SceneState(state.scene_index, state.scene_name, objs, state.surfaces, state.camera)


def test_mirror_matches_describing_the_mirrored_scene():
    """Flip augmentation is exact: mirroring a description equals describing the mirrored scene
    (same rng, so the same pair and the same swapped term)."""
    flipped = mirrored_state(STATE)
    seen = set()
    for seed in range(40):
        d = describe(STATE, np.random.default_rng(seed))
        assert mirror(d) == describe(flipped, np.random.default_rng(seed))
        assert mirror(mirror(d)) == d
        seen.add(d.terms)
    assert any("left" in t or "right" in t for t in seen)


@given(st.lists(st.sampled_from(range(3)), min_size=1, max_size=3, unique=True),
       st.data())
def test_mirror_swaps_only_left_and_right(axes, data):
    terms = tuple(data.draw(st.sampled_from([t for t in TERMS if AXIS[t] == a])) for a in axes)
    d = Description("cup", "mug", tuple(sorted(terms, key=AXIS.__getitem__)),
                    caption("mug", "cup", terms),
                    spatial_swap("mug", "cup", terms, np.random.default_rng(len(terms))),
                    order_swap("mug", "cup", terms), question("mug", "cup"))
    m = mirror(d)
    swap = {"left": "right", "right": "left"}
    assert m.terms == mirror_terms(d.terms) == tuple(swap.get(t, t) for t in d.terms)
    assert m.caption == caption("mug", "cup", m.terms)
    assert m.order_negative == order_swap("mug", "cup", m.terms)
    assert m.question == d.question and m.spatial_negative != m.caption
    # the spatial negative still differs from the caption in exactly one term
    assert sum(a != b for a, b in zip(m.caption.split(), m.spatial_negative.split(), strict=False)) >= 1


def test_mirror_rejects_texts_it_did_not_make():
    d = describe(STATE, np.random.default_rng(0))
    with pytest.raises(ValueError, match="not a caption"):
        mirror(Description(d.primary, d.secondary, d.terms, "A mug, somewhere.",
                           d.spatial_negative, d.order_negative, d.question))
    with pytest.raises(ValueError, match="not a spatial swap"):
        mirror(Description(d.primary, d.secondary, d.terms, d.caption, d.order_negative,
                           d.order_negative, d.question))
    with pytest.raises(ValueError, match="not the order swap"):
        mirror(Description(d.primary, d.secondary, d.terms, d.caption, d.spatial_negative,
                           d.spatial_negative, d.question))
    bare = Description(d.primary, d.secondary, d.terms, d.caption, "", "", d.question)
    assert mirror(bare).spatial_negative == "" and mirror(bare).order_negative == ""
