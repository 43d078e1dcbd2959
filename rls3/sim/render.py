"""Offscreen pyrender (EGL) rendering of a scene: textured room, furniture, objects, lights."""

from __future__ import annotations

import contextlib
import functools
import os
import sys
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import trimesh
from PIL import Image

os.environ.setdefault("PYOPENGL_PLATFORM", "egl")
if not hasattr(np, "infty"):  # pyrender 0.1.45 still uses np.infty, removed in numpy 2
    np.infty = np.inf  # type: ignore[attr-defined]
import pyrender  # noqa: E402

import pyrender.renderer as _pyrender_renderer  # noqa: E402
from OpenGL import GL  # noqa: E402
from pyrender.constants import RenderFlags  # noqa: E402

from rls3.scene import Camera  # noqa: E402

# pyrender hard-codes 4x MSAA for its framebuffer; on a software (llvmpipe) GL that doubles the cost
# of a frame for a barely visible gain at 224 px, so samples come from $RLS3_MSAA (default 0).
_MSAA = int(os.environ.get("RLS3_MSAA", "0"))
_storage = _pyrender_renderer.glRenderbufferStorageMultisample
_pyrender_renderer.glRenderbufferStorageMultisample = (
    lambda target, samples, fmt, w, h: _storage(target, _MSAA, fmt, w, h))


def _stable_sorted_mesh_nodes(self: _pyrender_renderer.Renderer, scene: pyrender.Scene) -> list:
    """pyrender's far-to-near draw order, with ties broken by node name instead of set order, so
    coplanar surfaces resolve identically in every process (same seed → same pixels)."""
    cam = scene.get_pose(scene.main_camera_node)[:3, 3]
    nodes = sorted(scene.mesh_nodes, key=lambda n: n.name or "")
    nodes.sort(key=lambda n: -np.linalg.norm(scene.get_pose(n)[:3, 3] - cam))
    return [n for n in nodes if not n.mesh.is_transparent] + \
        [n for n in nodes if n.mesh.is_transparent]


_pyrender_renderer.Renderer._sorted_mesh_nodes = _stable_sorted_mesh_nodes


# pyrender recomputes per primitive what is fixed for a frame (light matrices with an inverse, the
# light budget with a GL query, the shader program's defines, node poses) and looks up a uniform's
# location on every set. The wrappers below memoise those for one `Renderer.render` call and skip
# a uniform set (and its lookup) when the program already holds that exact value; the colour is
# read back without pyrender's depth image. The same GL state reaches every draw, so the pixels
# are the same (tests/test_sim.py), in less Python per frame.
_PYRENDER = {"render": _pyrender_renderer.Renderer.render,
             "light_matrices": _pyrender_renderer.Renderer._get_light_cam_matrices,
             "max_lights": _pyrender_renderer.Renderer._compute_max_n_lights,
             "program": _pyrender_renderer.Renderer._get_primitive_program,
             "get_pose": pyrender.Scene.get_pose,
             "read": _pyrender_renderer.Renderer._read_main_framebuffer,
             "set_uniform": pyrender.shader_program.ShaderProgram.set_uniform}


def _memo(owner: object, key: tuple, compute: Callable[[], Any]) -> Any:
    """`compute()` once per key while `owner` is inside a render call (always, outside one)."""
    memo = owner.__dict__.get("_rls3_frame")
    if memo is None:
        return compute()
    if key not in memo:
        memo[key] = compute()
    return memo[key]


def _render_memoised(self: Any, scene: pyrender.Scene, flags: int, seg_node_map: Any = None
                     ) -> Any:
    self._rls3_frame, scene._rls3_frame = {}, {}
    try:
        return _PYRENDER["render"](self, scene, flags, seg_node_map)
    finally:
        self._rls3_frame = scene._rls3_frame = None


def _light_matrices(self: Any, scene: pyrender.Scene, light_node: pyrender.Node, flags: int
                    ) -> Any:
    return _memo(self, ("light", id(light_node), flags),
                 lambda: _PYRENDER["light_matrices"](self, scene, light_node, flags))


def _max_lights(self: Any, flags: int) -> Any:
    return _memo(self, ("max_lights", flags), lambda: _PYRENDER["max_lights"](self, flags))


def _program(self: Any, primitive: Any, flags: int, program_flags: int) -> Any:
    return _memo(self, ("program", id(primitive), flags, program_flags),
                 lambda: _PYRENDER["program"](self, primitive, flags, program_flags))


def _get_pose(self: pyrender.Scene, node: pyrender.Node) -> np.ndarray:
    return _memo(self, ("pose", id(node)), lambda: _PYRENDER["get_pose"](self, node))


def _read_color(self: Any, scene: pyrender.Scene, flags: int) -> Any:
    """pyrender's framebuffer read without the depth image rls3 never uses (no depth blit, no
    float read-back): the same colour pixels, and None for the depth."""
    if flags & (RenderFlags.DEPTH_ONLY | RenderFlags.RGBA) or sys.platform == "darwin":
        return _PYRENDER["read"](self, scene, flags)
    width, height = self._main_fb_dims[0], self._main_fb_dims[1]
    GL.glBindFramebuffer(GL.GL_READ_FRAMEBUFFER, self._main_fb_ms)
    GL.glBindFramebuffer(GL.GL_DRAW_FRAMEBUFFER, self._main_fb)
    GL.glBlitFramebuffer(0, 0, width, height, 0, 0, width, height, GL.GL_COLOR_BUFFER_BIT,
                         GL.GL_LINEAR)
    GL.glBindFramebuffer(GL.GL_READ_FRAMEBUFFER, self._main_fb)
    buf = GL.glReadPixels(0, 0, width, height, GL.GL_RGB, GL.GL_UNSIGNED_BYTE)
    color = np.frombuffer(buf, dtype=np.uint8).reshape((height, width, 3))
    return np.flip(color, axis=0), None


def _set_uniform_once(self: Any, name: str, value: Any, unsigned: bool = False) -> None:
    """pyrender's `set_uniform`, skipped (lookup and call) when this program was last given
    exactly this value: uniforms are per-program GL state, so the program already holds it."""
    cache = self.__dict__.get("_rls3_uniforms")
    if cache is None or cache[0] != self._program_id:
        cache = self._rls3_uniforms = (self._program_id, {})
    if isinstance(value, np.ndarray):
        key: tuple = (value.dtype.str, value.shape, value.tobytes(), unsigned)
    else:
        key = (type(value), value, unsigned)
    if cache[1].get(name) == key:
        return
    _PYRENDER["set_uniform"](self, name, value, unsigned)
    cache[1][name] = key


def _install(lean: bool) -> None:
    """pyrender with the memoised per-frame work (`lean`) or as shipped; switching drops every
    program's uniform record, since the other path does not keep it."""
    r, sp = _pyrender_renderer.Renderer, pyrender.shader_program.ShaderProgram
    r.render = _render_memoised if lean else _PYRENDER["render"]
    r._get_light_cam_matrices = _light_matrices if lean else _PYRENDER["light_matrices"]
    r._compute_max_n_lights = _max_lights if lean else _PYRENDER["max_lights"]
    r._get_primitive_program = _program if lean else _PYRENDER["program"]
    r._read_main_framebuffer = _read_color if lean else _PYRENDER["read"]
    pyrender.Scene.get_pose = _get_pose if lean else _PYRENDER["get_pose"]
    sp.set_uniform = _set_uniform_once if lean else _PYRENDER["set_uniform"]
    for program in _programs():
        program.__dict__.pop("_rls3_uniforms", None)


def _programs() -> list[Any]:
    """The shader programs of the process's context (none before it exists)."""
    if not _CONTEXT:
        return []
    return list(_CONTEXT[0]._renderer._program_cache._program_cache.values())


@contextlib.contextmanager
def shipped_pyrender() -> Iterator[None]:
    """Render with pyrender's own per-frame work inside the block (benchmarks and tests compare
    the two paths)."""
    _install(False)
    try:
        yield
    finally:
        _install(True)


def pose_matrix(position: np.ndarray, yaw: float) -> np.ndarray:
    """4x4 world transform: rotation `yaw` about z, then translation."""
    c, s = np.cos(yaw), np.sin(yaw)
    m = np.eye(4)
    m[:3, :3] = [[c, -s, 0], [s, c, 0], [0, 0, 1]]
    m[:3, 3] = position
    return m


def camera_pose(camera: Camera) -> np.ndarray:
    """pyrender camera pose (looks along its -z, +y up) for a z-up world camera."""
    f = camera.forward
    right = np.cross(f, (0.0, 0.0, 1.0))
    if np.linalg.norm(right) < 1e-6:
        raise ValueError("camera looks straight up or down; its yaw is undefined")
    right /= np.linalg.norm(right)
    up = np.cross(right, f)
    m = np.eye(4)
    m[:3, 0], m[:3, 1], m[:3, 2] = right, up, -f
    m[:3, 3] = camera.position
    return m


def scene_meshes(tscene: trimesh.Scene) -> list[tuple[pyrender.Mesh, np.ndarray]]:
    """pyrender meshes of a trimesh scene with their local transforms (materials kept)."""
    out = []
    for node in tscene.graph.nodes_geometry:
        transform, geom = tscene.graph[node]
        out.append((pyrender.Mesh.from_trimesh(tscene.geometry[geom], smooth=False), transform))
    return out


def textured_quad(size: tuple[float, float], texture: Image.Image | None, tile: float,
                  color: tuple[float, float, float]) -> pyrender.Mesh:
    """A flat rectangle in its local xy plane (normal +z) with a repeated texture or a colour."""
    sx, sy = size
    v = np.array([[-sx / 2, -sy / 2, 0], [sx / 2, -sy / 2, 0], [sx / 2, sy / 2, 0],
                  [-sx / 2, sy / 2, 0]])
    f = np.array([[0, 1, 2], [0, 2, 3]])
    uv = np.array([[0, 0], [sx / tile, 0], [sx / tile, sy / tile], [0, sy / tile]])
    mesh = trimesh.Trimesh(v, f, process=False)
    if texture is not None:
        mat = trimesh.visual.material.PBRMaterial(baseColorTexture=texture, roughnessFactor=0.9,
                                                  metallicFactor=0.0)
        mesh.visual = trimesh.visual.TextureVisuals(uv=uv, material=mat)
    else:
        mat = None
    m = pyrender.Mesh.from_trimesh(mesh, smooth=False)
    if texture is None:
        m.primitives[0].material = pyrender.MetallicRoughnessMaterial(
            baseColorFactor=(*color, 1.0), roughnessFactor=0.9, metallicFactor=0.0)
    return m


# One offscreen GL context per process: pyrender binds meshes to a context and deleting a context
# terminates the shared EGL display under every other one, so all backends of a process share it.
_CONTEXT: list[pyrender.OffscreenRenderer] = []


def _offscreen(width: int, height: int) -> pyrender.OffscreenRenderer:
    if not _CONTEXT:
        _CONTEXT.append(pyrender.OffscreenRenderer(width, height))
    r = _CONTEXT[0]
    if (r.viewport_width, r.viewport_height) != (width, height):
        r.viewport_width, r.viewport_height = width, height
    return r


@functools.cache
def max_image_size() -> int:
    """The largest image side the process's GL context can render: the smaller of its
    GL_MAX_RENDERBUFFER_SIZE and GL_MAX_VIEWPORT_DIMS (asked once; creates the context)."""
    from OpenGL import GL

    r = _CONTEXT[0] if _CONTEXT else _offscreen(64, 64)
    r._platform.make_current()  # pyrender keeps its context current only while it renders
    buffer = int(GL.glGetIntegerv(GL.GL_MAX_RENDERBUFFER_SIZE))
    viewport = int(np.min(GL.glGetIntegerv(GL.GL_MAX_VIEWPORT_DIMS)))
    return min(buffer, viewport)


class Renderer:
    """Renders pyrender scenes through the process's shared offscreen context."""

    def __init__(self, shadows: bool = True) -> None:
        self.shadows = shadows

    def render(self, scene: pyrender.Scene, width: int, height: int) -> np.ndarray:
        if width <= 0 or height <= 0:
            raise ValueError(f"image size must be positive, got {width}x{height}")
        flags = pyrender.RenderFlags.SHADOWS_DIRECTIONAL if self.shadows else pyrender.RenderFlags.NONE
        color, _ = _offscreen(width, height).render(scene, flags=flags)
        return np.ascontiguousarray(color[..., :3])

    def close(self) -> None:
        """Nothing to free per backend: the context lives as long as the process."""


_install(True)
