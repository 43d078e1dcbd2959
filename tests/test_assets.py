"""The committed asset set: catalog consistency, mesh frames and sizes, splits, surfaces, loader."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import trimesh
from PIL import Image

from rls3.assets import (
    AssetEntry,
    AssetError,
    Catalog,
    SurfaceSpec,
    asset_path,
    assets_dir,
    load_catalog,
    load_mesh,
)


@pytest.fixture(scope="module")
def catalog() -> Catalog:
    return load_catalog()


def test_catalog_types(catalog: Catalog) -> None:
    assert catalog.entries
    for e in catalog.entries:
        assert isinstance(e, AssetEntry)
        assert e.kind in ("object", "furniture", "texture")
        assert e.split in ("train", "test", "any")
        assert e.creator and e.license and e.source
        assert len(e.size) == 3
        for s in e.surfaces:
            assert isinstance(s, SurfaceSpec)


def test_every_file_exists(catalog: Catalog) -> None:
    for e in catalog.entries:
        assert asset_path(e).is_file(), f"{e.id}: {asset_path(e)} missing"


@pytest.mark.parametrize("kind", ["object", "furniture"])
def test_meshes_z_up_and_sized(catalog: Catalog, kind: str) -> None:
    for e in catalog.of_kind(kind):
        scene = load_mesh(e)
        assert isinstance(scene, trimesh.Scene)
        lo, hi = scene.bounds
        assert abs(lo[2]) < 2e-3, f"{e.id}: min z {lo[2]}"
        assert abs(lo[0] + hi[0]) < 2e-3 and abs(lo[1] + hi[1]) < 2e-3, f"{e.id}: not centred"
        np.testing.assert_allclose(hi - lo, e.size, atol=3e-3, err_msg=e.id)
        n_tris = sum(len(g.faces) for g in scene.geometry.values())
        assert n_tris == e.triangles, e.id
        assert n_tris <= (6000 if kind == "object" else 25000), e.id


def test_objects_are_household_sized(catalog: Catalog) -> None:
    objects = catalog.objects
    assert len(objects) >= 9
    names = [e.display_name for e in objects]
    assert len(set(names)) == len(names), names
    for need in ("blender", "plate", "small pot", "yellow bowl", "small pan", "bottle", "mug",
                 "cup", "vase"):
        assert need in names
    for e in objects:
        assert e.display_name == e.id.replace("_", " ")
        assert 0.015 < max(e.size) < 0.5, (e.id, e.size)


def test_furniture_splits_disjoint(catalog: Catalog) -> None:
    train = {e.id for e in catalog.of_kind("furniture") if e.split == "train"}
    test = {e.id for e in catalog.of_kind("furniture") if e.split == "test"}
    assert len(train) >= 10 and len(test) >= 6
    assert not train & test
    sources = {e.split: set() for e in catalog.furniture}
    for e in catalog.furniture:
        sources[e.split].add(e.source)
    assert not sources.get("train", set()) & sources.get("test", set())


def test_furniture_surfaces(catalog: Catalog) -> None:
    for e in catalog.furniture:
        assert e.surfaces, f"{e.id} has no support surface"
        for s in e.surfaces:
            assert s.area >= 0.04 - 1e-9, (e.id, s)
            assert 0 < s.z <= e.size[2] + 1e-6, (e.id, s)
            for i in range(2):
                assert abs(s.center[i]) + s.size[i] / 2 <= e.size[i] / 2 + 1e-6, (e.id, s)
    assert len(catalog.get("bookcase").surfaces) >= 3
    assert len(catalog.get("kitchen_table").surfaces) == 1
    table = catalog.get("kitchen_table").surfaces[0]
    assert table.z == pytest.approx(catalog.get("kitchen_table").size[2], abs=0.01)


def test_textures_split(catalog: Catalog) -> None:
    tex = catalog.textures
    for use in ("floor", "wall"):
        assert any(t.use == use and t.split == "train" for t in tex)
        assert any(t.use == use and t.split == "test" for t in tex)
    for t in tex:
        with Image.open(asset_path(t)) as img:
            assert max(img.size) <= 512


def test_credits_cover_every_asset(catalog: Catalog) -> None:
    credits = (assets_dir() / "CREDITS.md").read_text(encoding="utf-8")
    for e in catalog.entries:
        assert f"`{e.id}`" in credits, e.id
    assert "creativecommons.org/licenses/by/3.0" in credits
    assert "MIT License" in credits


def test_assets_size_budget() -> None:
    total = sum(p.stat().st_size for p in assets_dir().rglob("*") if p.is_file())
    assert total <= 20e6


def _copy_catalog(tmp_path: Path) -> Path:
    root = tmp_path / "assets"
    root.mkdir()
    shutil.copy(assets_dir() / "catalog.yaml", root / "catalog.yaml")
    return root


def test_missing_file_is_named(catalog: Catalog, tmp_path: Path, monkeypatch) -> None:
    root = _copy_catalog(tmp_path)
    monkeypatch.setenv("RLS3_ASSETS", str(root))
    entry = load_catalog().get("mug")
    with pytest.raises(AssetError, match="mug.glb"):
        load_mesh(entry)


def test_corrupt_file_is_named(catalog: Catalog, tmp_path: Path, monkeypatch) -> None:
    root = _copy_catalog(tmp_path)
    (root / "objects").mkdir()
    (root / "objects" / "mug.glb").write_bytes(b"glTF not really a mesh")
    monkeypatch.setenv("RLS3_ASSETS", str(root))
    cat = load_catalog()
    assert cat.root == root.resolve()
    with pytest.raises(AssetError, match="mug.glb"):
        load_mesh(cat.get("mug"))


def test_missing_catalog_is_named(tmp_path: Path) -> None:
    with pytest.raises(AssetError, match="catalog.yaml"):
        load_catalog(tmp_path)


def test_unknown_id_and_kind(catalog: Catalog) -> None:
    with pytest.raises(KeyError, match="no_such_asset"):
        catalog.get("no_such_asset")
    with pytest.raises(ValueError, match="kind"):
        catalog.of_kind("planet")
