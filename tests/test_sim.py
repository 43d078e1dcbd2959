"""The embedded simulator: scenes load and render, placement rules, determinism, bad input."""

from __future__ import annotations

import copy
import dataclasses

import numpy as np
import pytest

from rls3.scene import Reason, SceneBackend
from rls3.sim import SimBackend, list_scenes, load_scene_spec
from rls3.sim.backend import SNAP


@pytest.fixture(scope="module")
def backend():
    b = SimBackend(list_scenes())
    yield b
    b.close()


def base_of(state, slot, backend):
    o = state.objects[slot]
    return np.array(o.position) - (0, 0, backend.object_extents(o.name)[2] / 2)


def test_five_train_three_test_scenes():
    assert len(list_scenes("train")) == 5
    assert len(list_scenes("test")) == 3
    assert not set(list_scenes("train")) & set(list_scenes("test"))


def test_protocol(backend):
    assert isinstance(backend, SceneBackend)
    assert len(backend.object_pool) >= 9


def test_states_are_immutable_so_deepcopy_may_return_them(backend):
    """`SceneState.__deepcopy__` returns the state itself (SB3 deep-copies every step's info);
    that is only sound while a state holds nothing mutable. Walks real states of every scene."""
    def walk(v, path):
        assert not isinstance(v, (list, dict, set, np.ndarray)), f"{path} is a mutable {type(v)}"
        if dataclasses.is_dataclass(v):
            assert type(v).__dataclass_params__.frozen, f"{path}: {type(v).__name__} not frozen"
            for f in dataclasses.fields(v):
                walk(getattr(v, f.name), f"{path}.{f.name}")
        elif isinstance(v, tuple):
            for i, x in enumerate(v):
                walk(x, f"{path}[{i}]")
        else:
            assert isinstance(v, (int, float, str, type(None), np.floating, np.integer)), path
    for i in range(len(backend.scene_names)):
        s = backend.load_scene(i, seed=i)
        walk(s, "state")
        walk(s.rendered_at(64, 48), "state")
        walk(type(s).from_dict(s.to_dict()), "state")   # as a Unity player's states are read
        assert copy.deepcopy(s) is s
        assert copy.deepcopy({"frame": [s]})["frame"][0] is s


def test_every_scene_loads_and_renders(backend):
    for i, name in enumerate(backend.scene_names):
        state = backend.load_scene(i, seed=1)
        assert state.scene_name == name and len(state.objects) == 3
        assert len({o.name for o in state.objects}) == 3
        tops = {round(s.top, 2) for s in state.surfaces}
        assert len(tops) >= 2, f"{name}: needs surfaces at two heights for vertical relations"
        for o in state.objects:
            surf = state.surface(o.surface)
            h = backend.object_extents(o.name)[2]
            assert abs(o.position[2] - h / 2 - surf.top) < 0.01, f"{o.name} floats or sinks"
        img = backend.render(96, 72)
        assert img.shape == (72, 96, 3) and img.dtype == np.uint8
        assert img.std() > 10 and len(np.unique(img.reshape(-1, 3), axis=0)) > 200


def test_deterministic_states_and_images():
    a, b = SimBackend(["kitchen"]), SimBackend(["kitchen"])
    try:
        sa, sb = a.load_scene(0, seed=7), b.load_scene(0, seed=7)
        assert sa == sb
        for d in [(0.1, 0.0, 0.0), (0.0, -0.2, 0.0), (0.3, 0.3, 0.5)]:
            assert a.move_object(1, d) == b.move_object(1, d)
        assert a.state() == b.state()
        assert np.array_equal(a.render(64, 64), b.render(64, 64))
        assert a.load_scene(0, seed=8) != sa
    finally:
        a.close()
        b.close()


def test_overlap_is_invalid_and_layout_unchanged(backend):
    backend.load_scene(0, seed=3)
    for seed in range(20):
        state = backend.load_scene(0, seed=seed)
        a, b = state.objects[0], state.objects[1]
        if a.surface == b.surface:
            break
    else:
        pytest.skip("no seed put two objects on one surface")
    d = np.array(b.position) - np.array(a.position)
    d[2] = 0.0
    res = backend.move_object(0, tuple(d))
    assert not res.valid and res.reason == Reason.OVERLAP
    assert backend.state() == state


def test_off_surface_is_invalid(backend):
    state = backend.load_scene(0, seed=4)
    lo, hi = state.bounds
    # the middle of the floor, far from any furniture surface top: it lands on the floor
    target = np.array([0.0, 0.0, 0.0])
    floor_spots = [np.array([x, y, 0.0]) for x in np.linspace(lo[0] + 0.5, hi[0] - 0.5, 7)
                   for y in np.linspace(lo[1] + 0.5, hi[1] - 0.5, 7)]
    for target in floor_spots:
        if not any(s.contains_xy(target[0], target[1]) for s in state.surfaces):
            break
    res = backend.move_object(0, tuple(target - base_of(state, 0, backend)))
    assert not res.valid and res.reason in (Reason.OFF_SURFACE, Reason.OUT_OF_BOUNDS)
    assert backend.state() == state
    res = backend.move_object(0, (100.0, 0.0, 0.0))
    assert not res.valid and res.reason == Reason.OUT_OF_BOUNDS


def test_move_to_other_height_changes_height(backend):
    for i in range(len(backend.scene_names)):
        state = backend.load_scene(i, seed=5)
        o = state.objects[0]
        here = state.surface(o.surface)
        for s in sorted(state.surfaces, key=lambda s: -s.size[0] * s.size[1]):
            if abs(s.top - here.top) < 0.1:
                continue
            base = base_of(state, 0, backend)
            for fx, fy in [(0, 0), (0.25, 0), (-0.25, 0), (0, 0.25), (0, -0.25)]:
                target = np.array([s.center[0] + fx * s.size[0], s.center[1] + fy * s.size[1],
                                   s.top + SNAP / 2])
                res = backend.move_object(0, tuple(target - base))
                if res.valid:
                    new = backend.state().objects[0]
                    assert new.surface == s.name
                    assert abs(new.position[2] - o.position[2] - (s.top - here.top)) < 0.01
                    return
    pytest.fail("no move onto a surface at another height succeeded in any scene")


def test_swap_keeps_spot_or_reports(backend):
    state = backend.load_scene(1, seed=2)
    idle = [n for n in backend.object_pool if n not in {o.name for o in state.objects}]
    res = backend.swap_object(2, idle[0])
    after = backend.state()
    if res.valid:
        assert after.objects[2].name == idle[0]
        assert np.allclose(after.objects[2].position[:2], state.objects[2].position[:2])
    else:
        assert after == state
    with pytest.raises(ValueError, match="already active"):
        backend.swap_object(0, after.objects[1].name)


def test_bad_input(backend, tmp_path):
    with pytest.raises(ValueError, match="unknown scene 'attic'"):
        SimBackend(["attic"])
    with pytest.raises(ValueError, match="unknown object 'sofa_cushion'"):
        SimBackend(["kitchen"], objects=["mug", "cup", "sofa_cushion"])
    backend.load_scene(0, seed=0)
    with pytest.raises(ValueError, match="finite"):
        backend.move_object(0, (float("nan"), 0.0, 0.0))
    with pytest.raises(ValueError, match="slot"):
        backend.move_object(3, (0.0, 0.0, 0.0))
    with pytest.raises(ValueError, match="image size"):
        backend.render(0, 64)
    with pytest.raises(ValueError, match="out of range"):
        backend.load_scene(99)
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nsplit: train\nroom: {size: [4, 4]}\nfurniture: []\ncamera: {}\n")
    with pytest.raises(ValueError, match=r"bad\.yaml.*room\.size"):
        load_scene_spec(bad)
    bad.write_text("name: [unclosed\n")
    with pytest.raises(ValueError, match="bad.yaml"):
        load_scene_spec(bad)


def test_image_shows_the_reported_layout_however_it_was_reached():
    """The scene graph is brought to the active objects only when an image is asked for: a
    backend that renders after every step and one that renders only at the end show the same
    pixels, and an object swapped out and back leaves no trace of the one in between."""
    a, b = SimBackend(["office"]), SimBackend(["office"])
    try:
        a.load_scene(0, seed=4)
        b.load_scene(0, seed=4)
        first = a.render(64, 64)
        moves = [(0.1, 0.0, 0.0), (0.0, -0.15, 0.0), (0.4, 0.4, 0.6), (-0.05, 0.05, 0.0)]
        for k, d in enumerate(moves):
            assert a.move_object(k % 3, d) == b.move_object(k % 3, d)
            a.render(64, 64)
        moved = a.render(64, 64)
        assert np.array_equal(moved, b.render(64, 64))
        assert not np.array_equal(moved, first)      # the layout moved, so did the image
        before = b.state()
        idle = [n for n in b.object_pool if n not in {o.name for o in before.objects}]
        swapped = next(n for n in idle if b.swap_object(0, n).valid)
        with_new = b.render(64, 64)
        assert b.swap_object(0, before.objects[0].name).valid  # back to the same spot
        assert b.state() == before
        assert np.array_equal(b.render(64, 64), moved), swapped
        assert not np.array_equal(with_new, moved)
    finally:
        a.close()
        b.close()


def test_memoised_render_passes_give_pyrender_s_own_pixels(backend):
    """rls3.sim.render memoises pyrender's per-frame work and skips repeated uniform sets: every
    scene, after moves and with shadows on and off, renders the same pixels as pyrender as
    shipped, switching paths back and forth (a stale uniform record would show here)."""
    import pyrender

    from rls3.sim.render import _get_pose, shipped_pyrender

    assert pyrender.Scene.get_pose is _get_pose
    shadows = backend._renderer.shadows
    try:
        for i in range(len(backend.scene_names)):
            backend._renderer.shadows = i % 3 != 2
            for step, d in enumerate([(0.0, 0.0, 0.0), (0.05, -0.05, 0.0), (0.0, 0.1, 0.0)]):
                if step == 0:
                    backend.load_scene(i, seed=11)
                else:
                    backend.move_object(step, d)
                lean = backend.render(96, 72)
                with shipped_pyrender():
                    assert pyrender.Scene.get_pose is not _get_pose
                    shipped = backend.render(96, 72)
                assert np.array_equal(lean, shipped), (backend.scene_names[i], step)
                assert np.array_equal(backend.render(96, 72), shipped)
    finally:
        backend._renderer.shadows = shadows


@pytest.mark.slow
def test_images_identical_across_processes():
    """Draw order must not depend on object addresses, which differ between processes."""
    import subprocess
    import sys

    code = ("import hashlib; from rls3.sim import SimBackend; b = SimBackend('train'); "
            "h = hashlib.sha256()\n"
            "for i in range(5):\n    b.load_scene(i, seed=3); h.update(b.render(64, 64).tobytes())\n"
            "print(h.hexdigest())")
    outs = {subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                           env={**__import__("os").environ, "PYTHONHASHSEED": str(k)}).stdout.split()[-1]
            for k in (1, 2)}
    assert len(outs) == 1


def test_frame_camera_intrinsics_agree_with_the_renderer(backend):
    """A frame's recorded camera (sized to its image) projects world points where pyrender's
    camera does, at a non-square size too."""
    import math

    import pyrender

    from rls3.sim.render import camera_pose

    state = backend.load_scene(2, seed=5).rendered_at(96, 64)
    cam = state.camera
    assert (cam.width, cam.height) == (96, 64)
    points = np.array([o.position for o in state.objects])
    uv = cam.project(points)
    proj = pyrender.PerspectiveCamera(yfov=math.radians(cam.fov_y), aspectRatio=96 / 64)
    clip = (proj.get_projection_matrix(96, 64) @ np.linalg.inv(camera_pose(cam))
            @ np.c_[points, np.ones(len(points))].T).T
    ndc = clip[:, :2] / clip[:, 3:]
    want = np.stack([(ndc[:, 0] + 1) / 2 * 96, (1 - ndc[:, 1]) / 2 * 64], axis=1)
    np.testing.assert_allclose(uv, want, atol=1e-6)
    np.testing.assert_allclose(cam.project(cam.position + 2.0 * cam.forward), [[48.0, 32.0]])
    with pytest.raises(ValueError, match="behind the camera"):
        cam.project(cam.position - cam.forward)
