"""The asset catalog: household objects, furniture (with designated support surfaces) and textures.

Assets live in the repository's ``assets/`` folder (``Path(rls3.__file__).resolve().parents[1] /
"assets"``), or wherever the ``RLS3_ASSETS`` environment variable points.  ``assets/catalog.yaml``
is written by ``scripts/build_assets.py``; meshes are binary glTF in metres, z up, origin at the
bottom centre, front facing -y.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

import rls3

KINDS = ("object", "furniture", "texture")
SPLITS = ("train", "test", "any")
ENV_VAR = "RLS3_ASSETS"


class AssetError(RuntimeError):
    """An asset file or catalog entry is missing or unreadable."""


@dataclass(frozen=True)
class SurfaceSpec:
    """A horizontal support rectangle in the asset's local frame (metres)."""

    z: float
    center: tuple[float, float]
    size: tuple[float, float]

    @property
    def area(self) -> float:
        return self.size[0] * self.size[1]


@dataclass(frozen=True)
class AssetEntry:
    """One catalog entry (see ``assets/catalog.yaml``)."""

    id: str
    kind: str
    file: str
    size: tuple[float, float, float]
    split: str
    triangles: int
    source: str
    creator: str
    license: str
    display_name: str = ""
    surfaces: tuple[SurfaceSpec, ...] = ()
    use: str = ""  # textures: "floor" | "wall"


@dataclass(frozen=True)
class Catalog:
    """All assets, with lookups by id, kind and split."""

    root: Path
    entries: tuple[AssetEntry, ...]

    def get(self, asset_id: str) -> AssetEntry:
        for e in self.entries:
            if e.id == asset_id:
                return e
        raise KeyError(f"unknown asset id {asset_id!r}; known: {sorted(e.id for e in self.entries)}")

    def of_kind(self, kind: str, split: str | None = None) -> list[AssetEntry]:
        """Entries of ``kind``; with ``split``, those in that split or in ``any``."""
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
        if split is not None and split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        return [e for e in self.entries
                if e.kind == kind and (split is None or e.split in (split, "any"))]

    @property
    def objects(self) -> list[AssetEntry]:
        return self.of_kind("object")

    @property
    def furniture(self) -> list[AssetEntry]:
        return self.of_kind("furniture")

    @property
    def textures(self) -> list[AssetEntry]:
        return self.of_kind("texture")


def assets_dir() -> Path:
    """The assets folder: ``$RLS3_ASSETS`` if set, else the repository's ``assets/``."""
    env = os.environ.get(ENV_VAR)
    if env:
        return Path(env).expanduser().resolve()
    repo = Path(rls3.__file__).resolve().parents[1] / "assets"
    if repo.is_dir():  # a source checkout or an editable install
        return repo
    return Path(rls3.__file__).resolve().parent / "_assets"  # installed wheel


def _entry(raw: dict[str, Any], where: Path) -> AssetEntry:
    try:
        kind, split = raw["kind"], raw["split"]
        if kind not in KINDS:
            raise ValueError(f"kind {kind!r} not in {KINDS}")
        if split not in SPLITS:
            raise ValueError(f"split {split!r} not in {SPLITS}")
        surfaces = tuple(
            SurfaceSpec(float(s["z"]), (float(s["center"][0]), float(s["center"][1])),
                        (float(s["size"][0]), float(s["size"][1])))
            for s in raw.get("surfaces") or ())
        return AssetEntry(
            id=str(raw["id"]), kind=kind, file=str(raw["file"]),
            size=tuple(float(v) for v in raw["size"]),  # type: ignore[arg-type]
            split=split, triangles=int(raw["triangles"]), source=str(raw["source"]),
            creator=str(raw["creator"]), license=str(raw["license"]),
            display_name=str(raw.get("display_name", "")), surfaces=surfaces,
            use=str(raw.get("use", "")))
    except (KeyError, TypeError, ValueError, IndexError) as exc:
        raise AssetError(f"{where}: bad entry {raw.get('id', raw)!r}: {exc}") from exc


def load_catalog(root: Path | str | None = None) -> Catalog:
    """Read ``catalog.yaml`` from ``root`` (default: :func:`assets_dir`)."""
    base = Path(root) if root is not None else assets_dir()
    path = base / "catalog.yaml"
    if not path.is_file():
        raise AssetError(f"asset catalog not found: {path} (set {ENV_VAR} or run "
                         "scripts/build_assets.py)")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise AssetError(f"{path}: not valid YAML: {exc}") from exc
    if not isinstance(data, dict) or not isinstance(data.get("assets"), list):
        raise AssetError(f"{path}: expected a mapping with an 'assets' list")
    entries = tuple(_entry(raw, path) for raw in data["assets"])
    ids = [e.id for e in entries]
    dupes = sorted({i for i in ids if ids.count(i) > 1})
    if dupes:
        raise AssetError(f"{path}: duplicate asset ids {dupes}")
    return Catalog(root=base, entries=entries)


def asset_path(entry: AssetEntry, root: Path | str | None = None) -> Path:
    """Absolute path of an entry's file."""
    base = Path(root) if root is not None else assets_dir()
    return base / entry.file


def load_mesh(entry: AssetEntry, root: Path | str | None = None) -> Any:
    """Load a mesh asset as a ``trimesh.Scene``; raise :class:`AssetError` naming the file if it
    is missing or corrupt."""
    import trimesh  # heavy import, only needed here

    if entry.kind == "texture":
        raise AssetError(f"{entry.id!r} is a texture ({entry.file}), not a mesh")
    path = asset_path(entry, root)
    if not path.is_file():
        raise AssetError(f"asset file missing for {entry.id!r}: {path}")
    try:
        scene = trimesh.load(path, force="scene")
    except Exception as exc:  # trimesh raises many types on bad bytes
        raise AssetError(f"cannot load asset {entry.id!r} from {path}: {exc}") from exc
    if not isinstance(scene, trimesh.Scene) or len(scene.geometry) == 0:
        raise AssetError(f"asset {entry.id!r}: {path} holds no geometry")
    return scene
