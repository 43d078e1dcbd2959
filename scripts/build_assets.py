#!/usr/bin/env python
"""Build rls3's 3D assets from Debian's ``sweethome3d-furniture`` models and robosuite's textures.

For every chosen model the script reads the OBJ + MTL + textures from the ``.sh3f`` catalog (a zip),
applies the catalog's ``modelRotation``, rotates Y-up to Z-up (+90 degrees about X), scales the
bounding box to the catalog width (x) / depth (y) / height (z) in metres (times an optional
per-asset factor where the catalog size is unrealistic), puts the origin at the bottom centre,
decimates heavy meshes, turns textured parts without UVs into flat colour, downsizes textures and
writes one self-contained binary glTF per asset.  Furniture also gets its designated support
surfaces, computed from upward-facing triangles.  Finally it writes ``assets/catalog.yaml`` and
``assets/CREDITS.md``.

Models keep SweetHome3D's convention that the front faces the viewer: after conversion the front
of every asset faces -y.

Usage (from the repository root, with the project venv; needs ``pip install -e .[assets]``)::

    python scripts/build_assets.py                       # apt-get download + dpkg -x into a temp dir
    python scripts/build_assets.py --furniture-dir /tmp/sh3d/x/usr/share/sweethome3d/furniture

Textures come from robosuite's MIT-licensed wheel (``pip download --no-deps robosuite==1.5.2``),
or from ``--robosuite-textures DIR`` (a folder holding its ``models/assets/textures/*.png``).
"""

from __future__ import annotations

import argparse
import gzip
import html
import io
import logging
import re
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import trimesh
import yaml
from PIL import Image
from scipy import ndimage

LOG = logging.getLogger("build_assets")

REPO = Path(__file__).resolve().parents[1]
PACKAGE = "sweethome3d-furniture"
ROBOSUITE_VERSION = "1.5.2"

LICENSES = {
    "BlendSwap-CC-0": ("CC0 1.0 (public domain dedication, via Blend Swap)",
                       "https://creativecommons.org/publicdomain/zero/1.0/"),
    "BlendSwap-CC-BY": ("CC-BY 3.0", "https://creativecommons.org/licenses/by/3.0/"),
    "Scopia": ("CC-BY 3.0", "https://creativecommons.org/licenses/by/3.0/"),
    "KatorLegaz": ("CC-BY 3.0 US", "https://creativecommons.org/licenses/by/3.0/us/"),
}
# Attribution the catalog-level LICENSE.TXT files ask for, besides the model's own author.
CATALOG_ATTRIBUTION = {
    "BlendSwap-CC-0": "Converted to OBJ by Emmanuel Puybaret / eTeks (www.sweethome3d.com); "
                      "attribution appreciated but not required.",
    "BlendSwap-CC-BY": "Cleaned and converted to OBJ by Emmanuel Puybaret / eTeks "
                       "(www.sweethome3d.com).",
    "Scopia": "(C) Emmanuel PUYBARET / eTeks <info@eteks.com> and Scopia Visual Interfaces "
              "Systems, s.l. (http://www.scopia.es).",
    "KatorLegaz": "(C) Copyright 2003-2008 Andrew Kator & Jennifer Legaz.",
}


@dataclass(frozen=True)
class ModelSpec:
    """One asset to build from a SweetHome3D catalog entry."""

    id: str
    kind: str  # "object" | "furniture"
    catalog: str  # sh3f file stem
    sh3d_id: str  # last part of the catalog id, e.g. "kitchenblender"
    split: str = "any"
    display_name: str | None = None
    scale: float = 1.0  # multiplies the catalog size (for unrealistic catalog sizes)
    recolor: tuple[float, float, float] | None = None
    max_triangles: int | None = None
    min_surface_z: float = 0.05  # ignore support planes below this height (the floor)
    surface_tol: float = 0.02  # height spread of one support plane (soft cushions need more)
    surface_normal: float = 0.95  # min z of a support triangle's unit normal
    note: str = ""


OBJECTS: list[ModelSpec] = [
    ModelSpec("blender", "object", "BlendSwap-CC-BY", "kitchenblender"),
    ModelSpec("plate", "object", "KatorLegaz", "bread-plate"),
    ModelSpec("small_pot", "object", "Scopia", "pottery", scale=1.25,
              note="lidded ceramic pot, enlarged from 11 to 14 cm"),
    ModelSpec("yellow_bowl", "object", "Scopia", "bowl", scale=0.375,
              recolor=(0.96, 0.80, 0.10), note="catalog size 40 cm is a salad basin; 15 cm"),
    ModelSpec("small_pan", "object", "BlendSwap-CC-BY", "largePan", scale=0.6,
              note="the catalog's large lidded pan, scaled down to a 20 cm saucepan"),
    ModelSpec("bottle", "object", "Scopia", "wine_bottle"),
    ModelSpec("mug", "object", "KatorLegaz", "coffee-mug"),
    ModelSpec("cup", "object", "Scopia", "cup"),
    ModelSpec("vase", "object", "Scopia", "vase2", scale=0.6,
              note="30 cm floor vase scaled to an 18 cm table vase"),
    ModelSpec("toaster", "object", "Scopia", "toaster"),
    ModelSpec("desk_lamp", "object", "BlendSwap-CC-0", "desklamp"),
    ModelSpec("teapot", "object", "Scopia", "teapot"),
]

FURNITURE: list[ModelSpec] = [
    # training scenes
    ModelSpec("lower_cabinet", "furniture", "BlendSwap-CC-0", "lowerCabinet", "train"),
    ModelSpec("kitchen_sink", "furniture", "BlendSwap-CC-BY", "kitchenSink", "train",
              note="the counter rim is narrow: its support surfaces are the two basins"),
    ModelSpec("kitchen_counter", "furniture", "BlendSwap-CC-BY", "kitchenLowerCabinet", "train"),
    ModelSpec("kitchen_table", "furniture", "Scopia", "white_kitchen_table", "train"),
    ModelSpec("tv_stand", "furniture", "BlendSwap-CC-BY", "tvStand", "train"),
    ModelSpec("coffee_table", "furniture", "BlendSwap-CC-BY", "coffeeTable", "train"),
    ModelSpec("bookcase", "furniture", "BlendSwap-CC-BY", "bookcase", "train"),
    ModelSpec("bedside_table", "furniture", "BlendSwap-CC-0", "bedsideTable2", "train"),
    ModelSpec("dresser", "furniture", "BlendSwap-CC-BY", "dresserWithDrawers", "train"),
    ModelSpec("desk", "furniture", "BlendSwap-CC-BY", "simpleDesk", "train"),
    ModelSpec("cube_shelves", "furniture", "BlendSwap-CC-0", "shelves", "train"),
    ModelSpec("upper_cabinet", "furniture", "BlendSwap-CC-0", "upperCabinet", "train",
              note="kitchen wall cabinet; mount it on a wall or stand it on a counter"),
    ModelSpec("bed", "furniture", "BlendSwap-CC-0", "bed1", "train"),
    ModelSpec("sofa", "furniture", "BlendSwap-CC-0", "sofa2", "train", surface_tol=0.06,
              surface_normal=0.85, note="seat cushions are soft and uneven"),
    ModelSpec("chair", "furniture", "Scopia", "white_kitchen_chair", "train"),
    # test scenes only
    ModelSpec("kitchen_island", "furniture", "BlendSwap-CC-BY", "kitchenIsland", "test"),
    ModelSpec("round_table", "furniture", "Scopia", "round-table", "test"),
    ModelSpec("chest", "furniture", "BlendSwap-CC-BY", "chest", "test"),
    ModelSpec("kids_shelves", "furniture", "Scopia", "kids_shelves", "test"),
    ModelSpec("vertical_shelves", "furniture", "BlendSwap-CC-0", "verticalShelves", "test"),
    ModelSpec("utility_shelving", "furniture", "KatorLegaz", "utility-shelving", "test"),
    ModelSpec("iron_coffee_table", "furniture", "Scopia", "table_wood_and_iron", "test"),
    ModelSpec("tubular_chair", "furniture", "Scopia", "tubular_chair", "test"),
]

# (id, robosuite file, use, split, tile size in metres)
TEXTURES: list[tuple[str, str, str, str, float]] = [
    ("floor_light_wood", "light-wood.png", "floor", "train", 1.0),
    ("floor_wood_tiles", "wood-tiles.png", "floor", "train", 1.0),
    ("floor_gray_tile", "light-gray-floor-tile.png", "floor", "train", 1.0),
    ("floor_dark_wood", "dark-wood.png", "floor", "test", 1.0),
    ("floor_varnished_panels", "wood-varnished-panels.png", "floor", "test", 1.0),
    ("wall_white_plaster", "white-plaster.png", "wall", "train", 1.5),
    ("wall_cream_plaster", "cream-plaster.png", "wall", "train", 1.5),
    ("wall_light_gray_plaster", "light-gray-plaster.png", "wall", "train", 1.5),
    ("wall_white_bricks", "white-bricks.png", "wall", "test", 1.5),
    ("wall_yellow_plaster", "yellow-plaster.png", "wall", "test", 1.5),
]

OBJECT_MAX_TRIS = 5000
FURNITURE_MAX_TRIS = 20000
OBJECT_TEX_PX = 256
FURNITURE_TEX_PX = 512
WALL_TEX_PX = 512
MIN_ALPHA = 0.35  # transparent plastics/glass stay visible to the camera

# support-surface extraction
SURF_CELL = 0.01
SURF_MIN_AREA = 0.04
SURF_HEADROOM = 0.15
SURF_INSET = 0.02
SURF_MIN_SIDE = 0.12


# ----------------------------------------------------------------------------------------------
# sources
# ----------------------------------------------------------------------------------------------
def fetch_package(work: Path) -> tuple[Path, str]:
    """apt-get download the package into ``work`` and extract it; return (furniture dir, version)."""
    subprocess.run(["apt-get", "download", PACKAGE], cwd=work, check=True)
    debs = sorted(work.glob(f"{PACKAGE}_*.deb"))
    if not debs:
        raise FileNotFoundError(f"apt-get download produced no {PACKAGE}_*.deb in {work}")
    version = subprocess.run(["dpkg-deb", "-f", str(debs[-1]), "Version"], check=True,
                             capture_output=True, text=True).stdout.strip()
    root = work / "x"
    subprocess.run(["dpkg", "-x", str(debs[-1]), str(root)], check=True)
    return root / "usr/share/sweethome3d/furniture", version


def resolve_furniture_dir(path: Path) -> Path:
    for cand in (path, path / "usr/share/sweethome3d/furniture"):
        if list(cand.glob("*.sh3f")):
            return cand
    raise FileNotFoundError(f"no *.sh3f files under {path} (or its usr/share/sweethome3d/furniture)")


def guess_version(furniture_dir: Path) -> str:
    for parent in furniture_dir.parents:
        log = parent / "doc" / PACKAGE / "changelog.Debian.gz"
        if log.exists():
            first = gzip.open(log, "rt", encoding="utf-8").readline()
            m = re.search(r"\(([^)]+)\)", first)
            if m:
                return m.group(1)
    return "unknown"


def fetch_robosuite_textures(work: Path) -> Path:
    subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--quiet",
                    f"robosuite=={ROBOSUITE_VERSION}", "-d", str(work)], check=True)
    wheel = next(work.glob("robosuite-*.whl"))
    out = work / "robosuite_wheel"
    with zipfile.ZipFile(wheel) as z:
        for name in z.namelist():
            if name.startswith("robosuite/models/assets/textures/") or ".dist-info/licenses/" in name \
                    or name.endswith(".dist-info/LICENSE"):
                z.extract(name, out)
    return out / "robosuite/models/assets/textures"


def read_properties(data: bytes) -> dict[str, str]:
    """Minimal Java .properties reader (ISO-8859-1, \\uXXXX escapes, continuation lines)."""
    text = data.decode("latin-1")
    props: dict[str, str] = {}
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i].strip()
        i += 1
        if not line or line[0] in "#!":
            continue
        while line.endswith("\\") and i < len(lines):
            line = line[:-1] + lines[i].strip()
            i += 1
        key, _, value = line.partition("=")
        value = re.sub(r"\\u([0-9a-fA-F]{4})", lambda m: chr(int(m.group(1), 16)), value)
        props[key.strip()] = value.strip()
    return props


@dataclass
class CatalogEntry:
    catalog: str
    number: int
    props: dict[str, str]

    def get(self, key: str, default: str = "") -> str:
        return self.props.get(f"{key}#{self.number}", default)

    @property
    def full_id(self) -> str:
        return self.get("id")

    @property
    def size_cm(self) -> np.ndarray:
        return np.array([float(self.get("width")), float(self.get("depth")),
                         float(self.get("height"))])

    @property
    def rotation(self) -> np.ndarray:
        raw = self.get("modelRotation")
        if not raw:
            return np.eye(3)
        return np.array([float(v) for v in raw.split()]).reshape(3, 3)


class Sh3fCatalog:
    def __init__(self, path: Path):
        self.path = path
        self.name = path.stem
        self.zip = zipfile.ZipFile(path)
        self.props = read_properties(self.zip.read("PluginFurnitureCatalog.properties"))

    def entry(self, sh3d_id: str) -> CatalogEntry:
        for key, value in self.props.items():
            if key.startswith("id#") and value.split("#")[-1] == sh3d_id:
                return CatalogEntry(self.name, int(key[3:]), self.props)
        raise KeyError(f"{sh3d_id!r} not in {self.path.name}")

    def extract_model_dir(self, entry: CatalogEntry, dest: Path) -> Path:
        model = entry.get("model").lstrip("/")
        folder = model.rsplit("/", 1)[0] + "/"
        for name in self.zip.namelist():
            if name.startswith(folder) and not name.endswith("/"):
                self.zip.extract(name, dest)
        return dest / model

    def license_info(self, entry: CatalogEntry) -> dict[str, str]:
        """Title / author / URL from the model folder's Blend Swap licence file, if any."""
        folder = entry.get("model").lstrip("/").rsplit("/", 1)[0] + "/"
        info: dict[str, str] = {}
        for name in self.zip.namelist():
            low = name.lower()
            if not name.startswith(folder) or "license" not in low:
                continue
            text = self.zip.read(name).decode("utf-8", errors="replace")
            info["license_file"] = name.rsplit("/", 1)[1]
            if low.endswith(".txt"):
                m = re.search(r'downloading "(.+?)" by (.+)', text)
                if m:
                    info["title"], info["author"] = m.group(1).strip(), m.group(2).strip()
                m = re.search(r"Downloaded from (\S+)", text)
                if m:
                    info["url"] = m.group(1)
            else:
                m = re.search(r"<title>\s*(.+?)\s+by\s+(.+?)\s+-\s+\d+\s+-", text, re.S)
                if m:
                    info["title"] = html.unescape(m.group(1).strip())
                    info["author"] = html.unescape(m.group(2).strip())
                m = re.search(r"https?://(?:www\.)?blendswap\.com/blends?/[^\s\"'<>]+", text)
                if m:
                    info["url"] = m.group(0)
        return info


# ----------------------------------------------------------------------------------------------
# mesh conversion
# ----------------------------------------------------------------------------------------------
def parse_mtl(path: Path) -> dict[str, dict[str, Any]]:
    mats: dict[str, dict[str, Any]] = {}
    cur: dict[str, Any] | None = None
    if not path.exists():
        return mats
    for raw in path.read_text(encoding="latin-1").splitlines():
        parts = raw.strip().split()
        if not parts:
            continue
        if parts[0] == "newmtl":
            cur = mats.setdefault(" ".join(parts[1:]), {})
        elif cur is not None and parts[0] in ("Kd", "Ks") and len(parts) >= 4:
            cur[parts[0]] = [float(v) for v in parts[1:4]]
        elif cur is not None and parts[0] in ("d", "Ns") and len(parts) >= 2:
            cur[parts[0]] = float(parts[1])
        elif cur is not None and parts[0] == "Tr" and len(parts) >= 2:
            cur["d"] = 1.0 - float(parts[1])
    return mats


def mtl_files(obj: Path) -> list[Path]:
    out = []
    for line in obj.read_text(encoding="latin-1", errors="replace").splitlines():
        if line.startswith("mtllib"):
            out.append(obj.parent / line.split(None, 1)[1].strip())
    return out


def shrink_image(img: Image.Image, max_px: int) -> Image.Image:
    """Downsize to <= max_px; return a JPEG-backed image (or PNG if it has real alpha)."""
    has_alpha = img.mode in ("RGBA", "LA", "P") and np.asarray(img.convert("RGBA"))[..., 3].min() < 250
    img = img.convert("RGBA" if has_alpha else "RGB")
    if max(img.size) > max_px:
        img.thumbnail((max_px, max_px), Image.LANCZOS)
    buf = io.BytesIO()
    if has_alpha:
        img.save(buf, format="PNG", optimize=True)
    else:
        img.save(buf, format="JPEG", quality=85)
    buf.seek(0)
    out = Image.open(buf)
    out.load()
    return out


def decimate(mesh: trimesh.Trimesh, target: int) -> trimesh.Trimesh:
    """Quadric decimation with fast-simplification; UVs follow the surviving vertices."""
    import fast_simplification

    verts = np.asarray(mesh.vertices, dtype=np.float64)
    faces = np.asarray(mesh.faces, dtype=np.int32)
    reduction = 1.0 - target / len(faces)
    uv = getattr(mesh.visual, "uv", None)
    if uv is None or len(uv) != len(verts):
        v2, f2 = fast_simplification.simplify(verts, faces, target_reduction=reduction)
        return trimesh.Trimesh(v2, f2, process=False)
    _, _, collapses = fast_simplification.simplify(verts, faces, target_reduction=reduction,
                                                   return_collapses=True)
    v2, f2, mapping = fast_simplification.replay_simplification(verts, faces, collapses)
    # for each new vertex, the UV of the nearest original vertex that collapsed into it
    dist = np.linalg.norm(verts - v2[mapping], axis=1)
    order = np.lexsort((dist, mapping))
    first = np.unique(mapping[order], return_index=True)
    new_uv = np.zeros((len(v2), 2))
    new_uv[first[0]] = uv[order[first[1]]]
    out = trimesh.Trimesh(v2, f2, process=False)
    out.visual = trimesh.visual.TextureVisuals(uv=new_uv)
    return out


@dataclass
class Part:
    name: str
    mesh: trimesh.Trimesh  # geometry in final frame; visual set at the end
    uv: np.ndarray | None
    base_color: np.ndarray  # RGBA 0..1
    image: Image.Image | None
    roughness: float
    flat_from_texture: bool = False


@dataclass
class BuildResult:
    spec: ModelSpec
    entry: CatalogEntry
    size: list[float]
    triangles: int
    source_triangles: int
    changes: list[str] = field(default_factory=list)
    surfaces: list[dict[str, Any]] = field(default_factory=list)
    license_info: dict[str, str] = field(default_factory=dict)


def load_parts(obj: Path) -> list[Part]:
    mtl: dict[str, dict[str, Any]] = {}
    for m in mtl_files(obj):
        mtl.update(parse_mtl(m))
    scene = trimesh.load(obj, force="scene")
    parts: list[Part] = []
    for node in scene.graph.nodes_geometry:
        transform, geom_name = scene.graph[node]
        geom = scene.geometry[geom_name]
        if not isinstance(geom, trimesh.Trimesh) or len(geom.faces) == 0:
            continue
        mesh = geom.copy()
        mesh.apply_transform(transform)
        visual = mesh.visual
        material = getattr(visual, "material", None)
        mat_name = getattr(material, "name", None) or geom_name
        info = mtl.get(mat_name, {})
        kd = np.array(info.get("Kd", [0.8, 0.8, 0.8]), dtype=float)
        alpha = float(info.get("d", 1.0))
        image = getattr(material, "image", None)
        uv = getattr(visual, "uv", None)
        if uv is not None and len(uv) != len(mesh.vertices):
            uv = None
        flat = False
        if image is not None and uv is None:
            # texture referenced but no UVs: flat colour = the texture's mean colour
            kd = np.asarray(image.convert("RGB").resize((16, 16)), dtype=float).reshape(-1, 3).mean(0) / 255
            image, flat = None, True
        elif image is not None:
            kd = np.ones(3)  # SweetHome3D shows textures unmodulated
        ns = float(info.get("Ns", 50.0))
        roughness = float(np.clip(1.0 - np.sqrt(min(ns, 500.0) / 500.0), 0.25, 0.9))
        alpha = max(alpha, MIN_ALPHA) if alpha < 0.99 else 1.0
        parts.append(Part(mat_name, mesh, uv, np.append(np.clip(kd, 0, 1), alpha), image,
                          roughness, flat))
    if not parts:
        raise ValueError(f"{obj}: no triangles loaded")
    return parts


def _orient_and_scale(parts: list[Part], entry: Any, spec: ModelSpec, changes: list[str]
                      ) -> None:
    """Steps 1-2 of `convert`: catalog rotation, Y-up to Z-up, scale to the catalog box with
    the origin at the bottom centre (in place; the notes go to `changes`)."""
    # 1. orientation: catalog modelRotation, then Y-up -> Z-up (+90 deg about X)
    rot_x = np.array([[1, 0, 0], [0, 0, -1], [0, 1, 0]], dtype=float)
    linear = rot_x @ entry.rotation
    # 2. non-uniform scale to the catalog box (times spec.scale), origin at bottom centre
    target = entry.size_cm / 100.0 * spec.scale
    pts = np.vstack([p.mesh.vertices for p in parts]) @ linear.T
    lo, hi = pts.min(0), pts.max(0)
    scale = target / np.maximum(hi - lo, 1e-9)
    offset = -np.array([(lo[0] + hi[0]) / 2 * scale[0], (lo[1] + hi[1]) / 2 * scale[1],
                        lo[2] * scale[2]])
    full = np.eye(4)
    full[:3, :3] = np.diag(scale) @ linear
    full[:3, 3] = offset
    normal_mat = np.linalg.inv(full[:3, :3]).T
    for p in parts:
        normals = p.mesh.vertex_normals.copy() if "vertex_normals" in p.mesh._cache else None
        new_v = trimesh.transform_points(p.mesh.vertices, full)
        m = trimesh.Trimesh(new_v, p.mesh.faces.copy(), process=False)
        if np.linalg.det(full[:3, :3]) < 0:
            m.invert()
        if normals is not None and len(normals) == len(new_v):
            n = normals @ normal_mat.T
            n /= np.maximum(np.linalg.norm(n, axis=1, keepdims=True), 1e-12)
            m.vertex_normals = n
        p.mesh = m
    rot_note = "applied catalog modelRotation, " if entry.get("modelRotation") else ""
    changes.append(f"{rot_note}rotated Y-up to Z-up (+90 deg about X), front facing -y")
    changes.append("scaled to {:.1f} x {:.1f} x {:.1f} cm{}, origin at bottom centre".format(
        *(target * 100), f" (catalog size x {spec.scale:g})" if spec.scale != 1 else ""))


def _decimate_parts(parts: list[Part], spec: ModelSpec, source_tris: int,
                    changes: list[str]) -> int:
    """Step 3 of `convert`: decimate the parts to the kind's triangle budget (in place); the
    triangles left."""
    # 3. decimation
    max_tris = spec.max_triangles or (OBJECT_MAX_TRIS if spec.kind == "object" else FURNITURE_MAX_TRIS)
    if source_tris > max_tris:
        ratio = max_tris / source_tris
        for p in parts:
            n = len(p.mesh.faces)
            want = max(int(n * ratio), min(n, 60))
            if want < n * 0.95 and n > 100:
                if p.uv is not None:
                    p.mesh.visual = trimesh.visual.TextureVisuals(uv=p.uv)
                dec = decimate(p.mesh, want)
                p.uv = getattr(dec.visual, "uv", None) if p.uv is not None else None
                p.mesh = trimesh.Trimesh(dec.vertices, dec.faces, process=False)
    tris = sum(len(p.mesh.faces) for p in parts)
    if tris < source_tris:
        changes.append(f"decimated from {source_tris} to {tris} triangles (fast-simplification)")
    return tris


def _materials(parts: list[Part], spec: ModelSpec, changes: list[str]) -> None:
    """Step 4 of `convert`: flat colours, recolouring and texture re-encoding (in place)."""
    # 4. materials
    if any(p.flat_from_texture for p in parts):
        changes.append("parts referencing a texture without UVs made flat colour")
    if spec.recolor is not None:
        for p in parts:
            p.base_color = np.append(spec.recolor, p.base_color[3])
            p.image, p.uv = None, None
        changes.append("recoloured yellow (textures removed)")
    max_px = OBJECT_TEX_PX if spec.kind == "object" else FURNITURE_TEX_PX
    resized: dict[int, Image.Image] = {}
    any_resized = False
    for p in parts:
        if p.image is None:
            continue
        key = id(p.image)
        if key not in resized:
            any_resized |= max(p.image.size) > max_px
            resized[key] = shrink_image(p.image, max_px)
        p.image = resized[key]
    if resized:
        downsized = f" and downsized to <= {max_px} px" if any_resized else ""
        changes.append(f"textures re-encoded{downsized}")


def convert(spec: ModelSpec, cat: Sh3fCatalog, work: Path, out_path: Path) -> BuildResult:
    entry = cat.entry(spec.sh3d_id)
    obj = cat.extract_model_dir(entry, work / spec.id)
    parts = load_parts(obj)
    source_tris = sum(len(p.mesh.faces) for p in parts)
    changes: list[str] = []

    _orient_and_scale(parts, entry, spec, changes)
    tris = _decimate_parts(parts, spec, source_tris, changes)
    _materials(parts, spec, changes)

    scene = trimesh.Scene()
    for i, p in enumerate(parts):
        mat = trimesh.visual.material.PBRMaterial(
            name=p.name,
            baseColorFactor=(np.clip(p.base_color, 0, 1) * 255).round().astype(np.uint8),
            baseColorTexture=p.image,
            metallicFactor=0.0,
            roughnessFactor=p.roughness,
            alphaMode="BLEND" if p.base_color[3] < 0.99 else "OPAQUE",
            doubleSided=True,
        )
        p.mesh.visual = trimesh.visual.TextureVisuals(uv=p.uv if p.image is not None else None,
                                                      material=mat)
        scene.add_geometry(p.mesh, geom_name=f"{spec.id}_{i:02d}_{re.sub(r'[^A-Za-z0-9_]', '_', p.name)}")
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_bytes(scene.export(file_type="glb", include_normals=True))

    combined = trimesh.util.concatenate([trimesh.Trimesh(p.mesh.vertices, p.mesh.faces, process=False)
                                         for p in parts])
    size = (combined.bounds[1] - combined.bounds[0]).round(4).tolist()
    result = BuildResult(spec, entry, size, tris, source_tris, changes,
                         license_info=cat.license_info(entry))
    if spec.kind == "furniture":
        result.surfaces = find_surfaces(combined, min_z=spec.min_surface_z, tol=spec.surface_tol,
                                        min_normal=spec.surface_normal)
    return result


# ----------------------------------------------------------------------------------------------
# support surfaces
# ----------------------------------------------------------------------------------------------
def _max_rectangle(mask: np.ndarray) -> tuple[int, int, int, int, int]:
    """Largest all-True axis-aligned rectangle: (area, r0, c0, r1, c1), r1/c1 exclusive."""
    best = (0, 0, 0, 0, 0)
    heights = np.zeros(mask.shape[1], dtype=int)
    for r in range(mask.shape[0]):
        heights = np.where(mask[r], heights + 1, 0)
        stack: list[int] = []
        for c in range(mask.shape[1] + 1):
            h = heights[c] if c < mask.shape[1] else 0
            while stack and heights[stack[-1]] >= h:
                top = stack.pop()
                left = stack[-1] + 1 if stack else 0
                area = heights[top] * (c - left)
                if area > best[0]:
                    best = (area, r - heights[top] + 1, left, r + 1, c)
            stack.append(c)
    return best


def _rasterize(tris: np.ndarray, x0: float, y0: float, shape: tuple[int, int]) -> np.ndarray:
    """Cells (ix, iy) whose centres fall inside the xy projection of any triangle."""
    grid = np.zeros(shape, dtype=bool)
    for t in tris[:, :, :2]:
        lo = np.floor((t.min(0) - [x0, y0]) / SURF_CELL).astype(int)
        hi = np.ceil((t.max(0) - [x0, y0]) / SURF_CELL).astype(int)
        lo = np.clip(lo, 0, np.array(shape) - 1)
        hi = np.clip(hi, 0, np.array(shape))
        if (hi <= lo).any():
            continue
        xs = x0 + (np.arange(lo[0], hi[0]) + 0.5) * SURF_CELL
        ys = y0 + (np.arange(lo[1], hi[1]) + 0.5) * SURF_CELL
        px, py = np.meshgrid(xs, ys, indexing="ij")
        a, b, c = t
        d = (b[1] - c[1]) * (a[0] - c[0]) + (c[0] - b[0]) * (a[1] - c[1])
        if abs(d) < 1e-14:
            continue
        l1 = ((b[1] - c[1]) * (px - c[0]) + (c[0] - b[0]) * (py - c[1])) / d
        l2 = ((c[1] - a[1]) * (px - c[0]) + (a[0] - c[0]) * (py - c[1])) / d
        inside = (l1 >= -1e-9) & (l2 >= -1e-9) & (1 - l1 - l2 >= -1e-9)
        grid[lo[0]:hi[0], lo[1]:hi[1]] |= inside
    return grid


def find_surfaces(mesh: trimesh.Trimesh, min_z: float = 0.05, tol: float = 0.02,
                  min_normal: float = 0.95) -> list[dict[str, Any]]:
    """Horizontal support rectangles: upward faces clustered by height, clear headroom above,
    reachable from above or from the front (-y), inset SURF_INSET, area >= SURF_MIN_AREA."""
    normals, areas = mesh.face_normals, mesh.area_faces
    tri = mesh.triangles
    up = np.where((normals[:, 2] > min_normal) & (areas > 0))[0]
    if len(up) == 0:
        return []
    zc = tri[up, :, 2].mean(1)
    order = np.argsort(zc)
    up, zc = up[order], zc[order]
    clusters: list[np.ndarray] = []
    start = 0
    for i in range(1, len(up) + 1):
        if i == len(up) or zc[i] - zc[i - 1] > tol / 4 or zc[i] - zc[start] > tol:
            clusters.append(up[start:i])
            start = i
    (x0, y0, _), (x1, y1, _) = mesh.bounds
    x0, y0 = x0 - SURF_CELL, y0 - SURF_CELL
    shape = (int(np.ceil((x1 - x0) / SURF_CELL)) + 2, int(np.ceil((y1 - y0) / SURF_CELL)) + 2)
    n_samples = int(np.clip(mesh.area / 0.003 ** 2, 100_000, 1_500_000))
    pts, _ = trimesh.sample.sample_surface(mesh, n_samples, seed=0)
    pts = np.vstack([pts, mesh.vertices])
    ix = np.clip(((pts[:, 0] - x0) / SURF_CELL).astype(int), 0, shape[0] - 1)
    iy = np.clip(((pts[:, 1] - y0) / SURF_CELL).astype(int), 0, shape[1] - 1)
    ycell = y0 + (np.arange(shape[1]) + 0.5) * SURF_CELL
    inset = int(round(SURF_INSET / SURF_CELL))
    surfaces: list[dict[str, Any]] = []
    for cl in clusters:
        if areas[cl].sum() < SURF_MIN_AREA:
            continue
        h = float(np.average(tri[cl, :, 2].mean(1), weights=areas[cl]))
        if h < min_z:
            continue
        top = float(tri[cl, :, 2].max())
        support = _rasterize(tri[cl], x0, y0, shape)
        # small holes (a drain, a gap between cushions) do not stop an object standing there
        holes, n_holes = ndimage.label(ndimage.binary_fill_holes(support) & ~support)
        if n_holes:
            sizes = ndimage.sum_labels(np.ones(shape), holes, index=np.arange(1, n_holes + 1))
            small = np.flatnonzero(sizes * SURF_CELL ** 2 <= 0.01) + 1
            support |= np.isin(holes, small)
        pz = pts[:, 2]
        slab = (pz > top + 0.005) & (pz < top + SURF_HEADROOM)
        blocked = np.zeros(shape, dtype=bool)
        blocked[ix[slab], iy[slab]] = True
        above = pz > top + 0.005
        covered = np.zeros(shape, dtype=bool)
        covered[ix[above], iy[above]] = True
        band = (pz > top + 0.04) & (pz < top + 0.12)
        front_min = np.full(shape[0], np.inf)
        np.minimum.at(front_min, ix[band], pts[band, 1])
        front_open = ycell[None, :] < front_min[:, None]
        free = support & ~blocked & (~covered | front_open)
        free = ndimage.binary_erosion(free, structure=np.ones((2 * inset + 1, 2 * inset + 1)),
                                      border_value=0)
        labels, n = ndimage.label(free)
        for lab in range(1, n + 1):
            comp = labels == lab
            if comp.sum() * SURF_CELL ** 2 < SURF_MIN_AREA:
                continue
            sl = ndimage.find_objects(comp.astype(int))[0]
            area, r0, c0, r1, c1 = _max_rectangle(comp[sl])
            sx, sy = (r1 - r0) * SURF_CELL, (c1 - c0) * SURF_CELL
            if area * SURF_CELL ** 2 < SURF_MIN_AREA or min(sx, sy) < SURF_MIN_SIDE:
                continue
            cx = x0 + (sl[0].start + (r0 + r1) / 2) * SURF_CELL
            cy = y0 + (sl[1].start + (c0 + c1) / 2) * SURF_CELL
            surfaces.append({"z": round(float(top), 4),
                             "center": [round(float(cx), 4), round(float(cy), 4)],
                             "size": [round(float(sx), 4), round(float(sy), 4)]})
    return _dedupe(surfaces)


def _dedupe(surfaces: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Uneven planes (a mattress) give near-equal heights: keep the larger of overlapping rects."""
    def box(s: dict[str, Any]) -> np.ndarray:
        c, h = np.array(s["center"]), np.array(s["size"]) / 2
        return np.concatenate([c - h, c + h])

    kept: list[dict[str, Any]] = []
    for s in sorted(surfaces, key=lambda s: -s["size"][0] * s["size"][1]):
        b = box(s)
        clash = False
        for k in kept:
            kb = box(k)
            inter = np.prod(np.clip(np.minimum(b[2:], kb[2:]) - np.maximum(b[:2], kb[:2]), 0, None))
            if abs(k["z"] - s["z"]) < 0.05 and inter > 0.3 * s["size"][0] * s["size"][1]:
                clash = True
                break
        if not clash:
            kept.append(s)
    kept.sort(key=lambda s: (s["z"], s["center"][0], s["center"][1]))
    return kept


# ----------------------------------------------------------------------------------------------
# textures, catalog, credits
# ----------------------------------------------------------------------------------------------
def build_textures(src: Path, out_dir: Path) -> list[dict[str, Any]]:
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    for tid, fname, use, split, tile in TEXTURES:
        img = Image.open(src / fname).convert("RGB")
        orig = img.size
        img.thumbnail((WALL_TEX_PX, WALL_TEX_PX), Image.LANCZOS)
        dest = out_dir / f"{tid}.jpg"
        img.save(dest, format="JPEG", quality=85)
        rows.append({"id": tid, "file": f"textures/{tid}.jpg", "use": use, "split": split,
                     "tile": tile, "source_file": fname, "orig": orig, "px": img.size})
    return rows


def credit_author(r: BuildResult) -> str:
    creator = r.entry.get("creator")
    author = r.license_info.get("author")
    if author and author.lower() not in creator.lower() and author.lower() != "anonymous":
        return f"{creator} (Blend Swap user {author})"
    return creator


def write_catalog(results: list[BuildResult], textures: list[dict[str, Any]], version: str,
                  assets: Path) -> None:
    entries: list[dict[str, Any]] = []
    for r in results:
        s = r.spec
        lic_name, _ = LICENSES[s.catalog]
        e: dict[str, Any] = {
            "id": s.id,
            "kind": s.kind,
            "file": f"{'objects' if s.kind == 'object' else 'furniture'}/{s.id}.glb",
            "size": [round(float(v), 4) for v in r.size],
            "split": s.split,
            "display_name": s.display_name or s.id.replace("_", " "),
            "triangles": r.triangles,
            "source": f"Debian {PACKAGE} {version}, {s.catalog}.sh3f, "
                      f"{r.entry.full_id} ({r.entry.get('name')})",
            "creator": credit_author(r),
            "license": lic_name,
        }
        if s.kind == "furniture":
            e["surfaces"] = r.surfaces
        entries.append(e)
    for t in textures:
        entries.append({
            "id": t["id"], "kind": "texture", "file": t["file"],
            "size": [float(t["tile"]), float(t["tile"]), 0.0], "split": t["split"], "use": t["use"],
            "triangles": 0,
            "source": f"robosuite {ROBOSUITE_VERSION} (PyPI wheel), "
                      f"robosuite/models/assets/textures/{t['source_file']}",
            "creator": "Stanford Vision and Learning Lab and UT Robot Perception and Learning Lab "
                       "(robosuite authors)",
            "license": "MIT",
        })
    header = (
        "# rls3 asset catalog -- generated by scripts/build_assets.py; do not edit by hand.\n"
        "# Meshes: binary glTF, metres, z up, origin at the bottom centre, front facing -y.\n"
        "# size: [x, y, z] extent of the exported mesh (textures: metres covered by one repeat).\n"
        "# surfaces (furniture): support rectangles in the asset frame -- z: height of the plane,\n"
        "#   center: [x, y], size: [sx, sy]; inset 2 cm, >= 15 cm clear headroom.\n"
        "# split: train / test (furniture and textures kept apart between scene sets) / any.\n"
    )
    body = yaml.safe_dump({"version": 1, "assets": entries}, sort_keys=False,
                          default_flow_style=None, width=100, allow_unicode=True)
    (assets / "catalog.yaml").write_text(header + body, encoding="utf-8")


def write_credits(results: list[BuildResult], textures: list[dict[str, Any]], version: str,
                  assets: Path) -> None:
    lines = [
        "# Credits and licences for rls3's assets",
        "",
        "All meshes under `objects/` and `furniture/` are converted from the 3D models of the Debian "
        f"package `{PACKAGE}` version {version} (SweetHome3D additional furniture libraries, "
        "http://www.sweethome3d.com/importModels.jsp; Debian copyright file: "
        f"/usr/share/doc/{PACKAGE}/copyright) by `scripts/build_assets.py`. The models are "
        "used under the licence of their catalog:",
        "",
        "- `BlendSwap-CC-0.sh3f`: models from Blend Swap released under CC0 1.0 "
        "(https://creativecommons.org/publicdomain/zero/1.0/), cleaned and converted to OBJ by "
        "Emmanuel Puybaret / eTeks; attribution to the model author, Blend Swap and Emmanuel "
        "Puybaret is appreciated but not mandatory, and is given below.",
        "- `BlendSwap-CC-BY.sh3f`: models from Blend Swap under Creative Commons Attribution 3.0 "
        "(https://creativecommons.org/licenses/by/3.0/), cleaned and converted to OBJ by "
        "Emmanuel Puybaret / eTeks. Each model's author must be credited (below).",
        "- `Scopia.sh3f`: Creative Commons Attribution 3.0 Unported "
        "(https://creativecommons.org/licenses/by/3.0/); attribution: Emmanuel PUYBARET / eTeks "
        "<info@eteks.com> and Scopia Visual Interfaces Systems, s.l. (http://www.scopia.es). "
        "(C) 2014-2020 Emmanuel PUYBARET / eTeks and Scopia Visual Interfaces Systems, s.l.",
        "- `KatorLegaz.sh3f`: Creative Commons Attribution 3.0 United States "
        "(https://creativecommons.org/licenses/by/3.0/us/); (C) Copyright 2003-2008 Andrew Kator & "
        "Jennifer Legaz.",
        "",
        "The converted files are adaptations of these works and are distributed under the same "
        "licences (CC0 models remain CC0). None of the authors endorses this project. Common "
        "changes to every model: converted from OBJ/MTL to a single binary glTF (materials "
        "converted to glTF PBR, textures embedded), rotated from Y-up to Z-up, scaled to metres, "
        "origin moved to the bottom centre.",
        "",
    ]
    for kind, title in (("object", "Household objects"), ("furniture", "Furniture")):
        lines += [f"## {title}", ""]
        for r in results:
            if r.spec.kind != kind:
                continue
            lic_name, lic_url = LICENSES[r.spec.catalog]
            li = r.license_info
            lines.append(f"### `{r.spec.id}` ({r.spec.split})")
            lines.append("")
            lines.append(f"- Model: \"{r.entry.get('name')}\" (catalog id `{r.entry.full_id}`)"
                         + (f"; original Blend Swap title \"{li['title']}\"" if li.get("title") else ""))
            lines.append(f"- Author: {credit_author(r)}")
            lines.append(f"- Licence: {lic_name} -- {lic_url}")
            src = f"- Source: Debian `{PACKAGE}` {version}, `{r.spec.catalog}.sh3f`, " \
                  f"`{r.entry.get('model').lstrip('/')}`"
            if li.get("url"):
                src += f"; originally from {li['url']}"
            if li.get("license_file"):
                src += f" (licence file in the package: `{li['license_file']}`)"
            lines.append(src)
            lines.append(f"- Attribution: {CATALOG_ATTRIBUTION[r.spec.catalog]}")
            lines.append("- Changes: " + "; ".join(r.changes)
                         + (f". Note: {r.spec.note}" if r.spec.note else "") + ".")
            lines.append("")
    lines += [
        "## Textures",
        "",
        f"Floor and wall textures under `textures/` come from robosuite {ROBOSUITE_VERSION} "
        "(https://github.com/ARISE-Initiative/robosuite, PyPI wheel, "
        "`robosuite/models/assets/textures/`), MIT License, Copyright (c) 2022 Stanford Vision and "
        "Learning Lab and UT Robot Perception and Learning Lab. Changes: converted from PNG to "
        "JPEG (quality 85) and downsized to at most 512 px.",
        "",
        "| id | use | split | robosuite file | size |",
        "|---|---|---|---|---|",
    ]
    for t in textures:
        lines.append(f"| `{t['id']}` | {t['use']} | {t['split']} | `{t['source_file']}` | "
                     f"{t['orig'][0]}x{t['orig'][1]} -> {t['px'][0]}x{t['px'][1]} |")
    lines += [
        "",
        "The MIT License text (robosuite):",
        "",
        "```",
        "MIT License",
        "",
        "Copyright (c) 2022 Stanford Vision and Learning Lab and UT Robot Perception and Learning Lab",
        "",
        "Permission is hereby granted, free of charge, to any person obtaining a copy",
        "of this software and associated documentation files (the \"Software\"), to deal",
        "in the Software without restriction, including without limitation the rights",
        "to use, copy, modify, merge, publish, distribute, sublicense, and/or sell",
        "copies of the Software, and to permit persons to whom the Software is",
        "furnished to do so, subject to the following conditions:",
        "",
        "The above copyright notice and this permission notice shall be included in all",
        "copies or substantial portions of the Software.",
        "",
        "THE SOFTWARE IS PROVIDED \"AS IS\", WITHOUT WARRANTY OF ANY KIND, EXPRESS OR",
        "IMPLIED, INCLUDING BUT NOT LIMITED TO THE WARRANTIES OF MERCHANTABILITY,",
        "FITNESS FOR A PARTICULAR PURPOSE AND NONINFRINGEMENT. IN NO EVENT SHALL THE",
        "AUTHORS OR COPYRIGHT HOLDERS BE LIABLE FOR ANY CLAIM, DAMAGES OR OTHER",
        "LIABILITY, WHETHER IN AN ACTION OF CONTRACT, TORT OR OTHERWISE, ARISING FROM,",
        "OUT OF OR IN CONNECTION WITH THE SOFTWARE OR THE USE OR OTHER DEALINGS IN THE",
        "SOFTWARE.",
        "```",
        "",
    ]
    (assets / "CREDITS.md").write_text("\n".join(lines), encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--furniture-dir", type=Path,
                    help="already-extracted package (folder with *.sh3f, or the dpkg -x root)")
    ap.add_argument("--package-version", help="override the Debian package version recorded")
    ap.add_argument("--robosuite-textures", type=Path,
                    help="folder with robosuite's texture PNGs (default: pip download the wheel)")
    ap.add_argument("--out", type=Path, default=REPO / "assets", help="assets folder to (re)write")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("trimesh").setLevel(logging.WARNING)

    with tempfile.TemporaryDirectory(prefix="rls3_assets_") as tmp:
        work = Path(tmp)
        if args.furniture_dir:
            fdir = resolve_furniture_dir(args.furniture_dir)
            version = args.package_version or guess_version(fdir)
        else:
            fdir, version = fetch_package(work)
            version = args.package_version or version
        tex_src = args.robosuite_textures or fetch_robosuite_textures(work)
        catalogs = {p.stem: Sh3fCatalog(p) for p in fdir.glob("*.sh3f")}
        LOG.info("package %s %s from %s", PACKAGE, version, fdir)

        out: Path = args.out
        results: list[BuildResult] = []
        for spec in OBJECTS + FURNITURE:
            sub = "objects" if spec.kind == "object" else "furniture"
            res = convert(spec, catalogs[spec.catalog], work / "models", out / sub / f"{spec.id}.glb")
            LOG.info("%-18s %-9s %-5s %6d -> %5d tris  size %s  surfaces %d", spec.id, spec.kind,
                     spec.split, res.source_triangles, res.triangles,
                     [round(v, 3) for v in res.size], len(res.surfaces))
            results.append(res)
        textures = build_textures(tex_src, out / "textures")
        write_catalog(results, textures, version, out)
        write_credits(results, textures, version, out)
    total = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    LOG.info("assets total %.2f MB", total / 1e6)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
