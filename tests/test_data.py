"""Datasets on disk: round trip, validation by file name, `datasets` imagefolder, fixed sets."""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from conftest import tiny_cli_config

from rls3.data import (INFO_FILE, METADATA_FILE, DatasetError, complexity_counts, ensure_fixed_set,
                       fixed_set_dir, generate_samples, read_dataset, read_info, term_counts,
                       validate_dataset, write_dataset)
from rls3.vlm.synthetic import make_samples


@pytest.fixture()
def samples():
    return make_samples(5, seed=1, size=24)


def test_round_trip(tmp_path, samples):
    folder = write_dataset(tmp_path / "ds", samples, info={"split": "val"})
    assert (folder / METADATA_FILE).is_file() and read_info(folder)["n"] == 5
    back = read_dataset(folder)
    assert len(back) == 5
    for a, b in zip(samples, back, strict=True):
        assert np.array_equal(a.image, b.image)
        assert a.metadata() == b.metadata()
    assert validate_dataset(folder) == []
    rec = json.loads((folder / METADATA_FILE).read_text().splitlines()[0])
    for key in ("file_name", "caption", "negatives", "question", "terms", "complexity", "state",
                "scene"):
        assert key in rec
    assert sum(term_counts(samples).values()) >= 5
    assert sum(complexity_counts(samples).values()) == 5


def test_write_is_atomic_and_refuses_overwrite(tmp_path, samples):
    folder = write_dataset(tmp_path / "ds", samples)
    with pytest.raises(FileExistsError):
        write_dataset(folder, samples[:2])
    write_dataset(folder, samples[:2], overwrite=True)
    assert len(read_dataset(folder)) == 2
    bad = list(samples[:2]) + [samples[0].__class__(np.zeros((4, 4)), samples[0].state,
                                                    samples[0].description)]
    with pytest.raises(ValueError, match="uint8"):
        write_dataset(tmp_path / "other", bad)
    assert not (tmp_path / "other").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["ds"]  # no temporary folders left


def test_corrupt_and_missing_files_are_named(tmp_path, samples):
    folder = write_dataset(tmp_path / "ds", samples)
    (folder / "00001.png").write_bytes((folder / "00001.png").read_bytes()[:40])  # truncated
    (folder / "00003.png").unlink()
    lines = (folder / METADATA_FILE).read_text().splitlines()
    rec = json.loads(lines[4])
    del rec["caption"]
    lines[4] = json.dumps(rec)
    lines.append("{not json")
    (folder / METADATA_FILE).write_text("\n".join(lines) + "\n")
    with pytest.raises(DatasetError) as e:
        read_dataset(folder)
    msg = str(e.value)
    assert "00001.png: corrupt image" in msg
    assert "00003.png: image file missing" in msg
    assert "00004.png: bad metadata" in msg and "caption" in msg
    assert f"{METADATA_FILE} line 6: not valid JSON" in msg
    assert len(e.value.problems) >= 4
    assert validate_dataset(folder) == e.value.problems


def test_malformed_state_is_named(tmp_path, samples):
    """A record whose `state` is not a mapping is reported by name, not as a traceback."""
    folder = write_dataset(tmp_path / "ds", samples)
    lines = (folder / METADATA_FILE).read_text().splitlines()
    rec = json.loads(lines[2])
    rec["state"] = "kitchen"
    lines[2] = json.dumps(rec)
    (folder / METADATA_FILE).write_text("\n".join(lines) + "\n")
    with pytest.raises(DatasetError, match="00002.png: bad metadata"):
        read_dataset(folder)


def _png_claiming(width: int, height: int) -> bytes:
    """A small PNG file whose header claims a `width` x `height` image."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)   # 8-bit RGB
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b""))
            + chunk(b"IEND", b""))


def test_a_decompression_bomb_is_a_named_image(tmp_path, samples):
    """PNG headers claiming 20000 x 20000 (PIL: an error) or 12000 x 12000 pixels (PIL: only a
    warning, then a 430 MB decode): each named as too large, never decoded."""
    folder = write_dataset(tmp_path / "ds", samples)
    (folder / "00001.png").write_bytes(_png_claiming(20000, 20000))
    (folder / "00002.png").write_bytes(_png_claiming(12000, 12000))
    with pytest.raises(DatasetError) as e:
        read_dataset(folder)
    assert [p.split(":")[0] for p in e.value.problems] == ["00001.png", "00002.png"]
    assert all("image too large to load" in p for p in e.value.problems)
    assert validate_dataset(folder) == e.value.problems


def test_symbolic_links_out_of_the_folder_are_not_followed(tmp_path, samples):
    folder = write_dataset(tmp_path / "ds", samples)
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (folder / "00001.png").rename(outside / "secret.png")
    (folder / "00001.png").symlink_to(outside / "secret.png")
    (folder / "00003.png").unlink()
    (folder / "00003.png").symlink_to(folder / "00000.png")   # inside the folder: fine
    with pytest.raises(DatasetError) as e:
        read_dataset(folder)
    assert e.value.problems == [f"00001.png: a symbolic link leading out of the folder "
                                f"({METADATA_FILE} line 2)"]
    (folder / "00001.png").unlink()
    (folder / "00001.png").symlink_to("../elsewhere/secret.png")   # relative: the same
    assert len(validate_dataset(folder)) == 1
    (folder / "00001.png").unlink()
    (outside / "secret.png").rename(folder / "00001.png")
    assert len(read_dataset(folder)) == 5
    for name in (METADATA_FILE, INFO_FILE):
        (folder / name).rename(outside / name)
        (folder / name).symlink_to(outside / name)
        with pytest.raises(DatasetError, match=f"{name} is a symbolic link leading out"):
            read_dataset(folder)
        (folder / name).unlink()
        (outside / name).rename(folder / name)


def test_not_a_dataset(tmp_path):
    with pytest.raises(DatasetError, match="does not exist"):
        read_dataset(tmp_path / "nope")
    with pytest.raises(DatasetError, match="no metadata.jsonl"):
        read_dataset(tmp_path)
    (tmp_path / INFO_FILE).write_text(json.dumps({"format": "rls3-dataset", "version": 99}))
    (tmp_path / METADATA_FILE).write_text("")
    with pytest.raises(DatasetError, match="version 99"):
        read_dataset(tmp_path)


def test_datasets_imagefolder_reads_it(tmp_path, samples):
    datasets = pytest.importorskip("datasets")
    folder = write_dataset(tmp_path / "ds", samples, info={"split": "test"})
    ds = datasets.load_dataset("imagefolder", data_dir=str(folder), split="train",
                               cache_dir=str(tmp_path / "hf"))
    assert ds.num_rows == 5
    assert {"image", "caption", "negatives", "terms", "state"} <= set(ds.column_names)
    assert ds[0]["caption"] == samples[0].description.caption
    assert ds[0]["image"].size == (24, 24)


@pytest.fixture(scope="module")
def backends():
    from rls3.sim import SimBackend

    train, test = SimBackend(["kitchen", "bedroom"]), SimBackend(["test_kitchen"])
    yield train, test
    train.close()
    test.close()


def test_generate_is_seeded(backends):
    train, _ = backends
    a = generate_samples(train, 4, 32, seed=7)
    b = generate_samples(train, 4, 32, seed=7)
    c = generate_samples(train, 4, 32, seed=8)
    assert [s.metadata() for s in a] == [s.metadata() for s in b]
    assert [s.metadata() for s in a] != [s.metadata() for s in c]
    assert [s.state.scene_name for s in a] == ["kitchen", "bedroom", "kitchen", "bedroom"]
    assert all(s.image.shape == (32, 32, 3) for s in a)


def test_fixed_sets_are_made_once(tmp_path, backends):
    train, test = backends
    folder = fixed_set_dir(tmp_path, "val", "sim", train.scene_names, 3, 32, 0)
    ensure_fixed_set(folder, train, "val", 3, 32, 0, "sim")
    first = (folder / METADATA_FILE).stat().st_mtime_ns
    ensure_fixed_set(folder, train, "val", 3, 32, 0, "sim")  # reused, not rewritten
    assert (folder / METADATA_FILE).stat().st_mtime_ns == first
    assert read_info(folder)["scenes"] == ["kitchen", "bedroom"]
    with pytest.raises(DatasetError, match="different settings"):
        ensure_fixed_set(folder, train, "val", 3, 48, 0, "sim")
    tfolder = fixed_set_dir(tmp_path, "test", "sim", test.scene_names, 2, 32, 0)
    assert tfolder != folder
    ensure_fixed_set(tfolder, test, "test", 2, 32, 0, "sim")
    assert {s.state.scene_name for s in read_dataset(tfolder)} == {"test_kitchen"}
    (folder / "00000.png").write_bytes(b"junk")
    with pytest.raises(DatasetError, match="00000.png"):
        ensure_fixed_set(folder, train, "val", 3, 32, 0, "sim")


def _prepare_at_once(cfg, barrier, out) -> None:
    """Child process: wait for the others, prepare the fixed sets, report what it then reads."""
    from rls3.data import prepare_fixed_sets

    barrier.wait()
    try:
        sets = prepare_fixed_sets(cfg)
    except (OSError, ValueError) as e:
        out.put(f"{type(e).__name__}: {e}")
        return
    got = []
    for split, folder, _ in sets:
        h = hashlib.sha256()
        for s in read_dataset(folder):
            h.update(s.image.tobytes())
            h.update(json.dumps(s.metadata(), sort_keys=True).encode())
        got.append((split, str(folder), h.hexdigest()))
    out.put(got)


def test_runs_starting_together_on_an_empty_data_dir_share_the_fixed_sets(tmp_path):
    """Two processes generate the same missing fixed sets at once into one `data.dir`: both
    finish, with the same folders holding the same frames, and no temporary folder is left."""
    cfg = tiny_cli_config(tmp_path).resolved()
    ctx = multiprocessing.get_context("spawn")   # each its own GL context
    barrier, out = ctx.Barrier(2), ctx.Queue()
    procs = [ctx.Process(target=_prepare_at_once, args=(cfg, barrier, out)) for _ in range(2)]
    for p in procs:
        p.start()
    got = [out.get(timeout=300) for _ in procs]
    for p in procs:
        p.join(timeout=60)
    assert all(isinstance(g, list) for g in got), got
    assert got[0] == got[1] and [split for split, _, _ in got[0]] == ["val", "test"]
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == \
        sorted(Path(folder).name for _, folder, _ in got[0])
