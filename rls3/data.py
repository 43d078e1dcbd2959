"""Datasets on disk: a folder of PNG images plus `metadata.jsonl`, one record per image.

Each record is `{"file_name": "00012.png", **Sample.metadata()}` (caption, negatives, question,
answer, terms, complexity, primary/secondary object, scene and the full ground-truth state), the
layout Hugging Face `datasets.load_dataset("imagefolder", data_dir=folder)` reads. A `dataset.json`
beside it records how the set was made (split, size, image size, seed, scenes, backend).

Writing is atomic (a temporary folder renamed into place); reading validates every record and raises
`DatasetError` naming each missing, corrupt, oversized or malformed file, and each file that is a
symbolic link leading out of the folder (never followed). The fixed validation set (training
scenes) and test set (test scenes) are generated once per (backend, scenes, size, image size, seed)
and cached under `data.dir`; runs only read them. Runs started together on one `data.dir` may
generate the same set at once: the first folder in place is kept and checked, the others dropped.
"""

from __future__ import annotations

import json
import logging
import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

import rls3
from rls3.atomic import atomic_folder
from rls3.backends import BackendConfig, backend_identity, make_backend
from rls3.captions import describe
from rls3.config import Config
from rls3.progress import progress_bar
from rls3.sample import Sample
from rls3.scene import SceneBackend, SceneState
from rls3.seeding import fixed_set_seed

log = logging.getLogger(__name__)

METADATA_FILE = "metadata.jsonl"
INFO_FILE = "dataset.json"
DATASET_FORMAT = "rls3-dataset"
DATASET_VERSION = 1
SPLITS = ("val", "test")
_MAX_LISTED = 20
#: zlib level of the written PNGs (lossless at any level): 1 writes 3.5x faster than PIL's default
#: 6 (14 vs 48 ms per 224-px render) for 13% more bytes; a loop iteration saves every kept frame
PNG_LEVEL = 1


class DatasetError(ValueError):
    """A folder is not a valid dataset; `problems` lists every bad file or record by name."""

    def __init__(self, folder: str | Path, problems: Sequence[str]) -> None:
        self.folder = Path(folder)
        self.problems = list(problems)
        shown = "; ".join(self.problems[:_MAX_LISTED])
        more = f" (and {len(self.problems) - _MAX_LISTED} more)" if len(
            self.problems) > _MAX_LISTED else ""
        super().__init__(f"dataset {str(self.folder)!r} is invalid: {shown}{more}")


def make_sample(image: np.ndarray, state: SceneState, rng: np.random.Generator,
                subject: str | None = None) -> Sample:
    """Caption a rendered frame (the pair of objects is drawn from `rng`; with `subject`, among
    the pairs that object is part of)."""
    return Sample(np.asarray(image, dtype=np.uint8), state, describe(state, rng, subject=subject))


# ------------------------------------------------------------------------------------ writing
def write_dataset(folder: str | Path, samples: Sequence[Sample], info: dict[str, Any] | None = None,
                  overwrite: bool = False, keep_existing: bool = False) -> Path:
    """Write `samples` as PNGs + `metadata.jsonl` (+ `dataset.json` with `info`) into `folder`.

    The folder appears complete or not at all. An existing folder raises FileExistsError unless
    `overwrite` is set, or `keep_existing` (a shared cache that another process may be writing
    too): then a folder that exists, or appears before this one is in place, is kept and this
    write dropped; the caller checks what it got."""
    folder = Path(folder)
    if folder.exists() and not overwrite:
        if keep_existing:
            log.info("%s was written by another process first; keeping it", folder)
            return folder
        raise FileExistsError(f"dataset folder {str(folder)!r} already exists")
    with atomic_folder(folder, keep_existing=keep_existing and not overwrite) as tmp:
        width = max(5, len(str(max(len(samples) - 1, 0))))
        with open(tmp / METADATA_FILE, "w") as f:
            for i, s in enumerate(samples):
                name = f"{i:0{width}d}.png"
                img = np.asarray(s.image)
                if img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8:
                    raise ValueError(f"sample {i}: image must be (H, W, 3) uint8, got "
                                     f"{img.shape} {img.dtype}")
                Image.fromarray(img).save(tmp / name, format="PNG", compress_level=PNG_LEVEL)
                f.write(json.dumps({"file_name": name, **s.metadata()}) + "\n")
        meta = {"format": DATASET_FORMAT, "version": DATASET_VERSION,
                "rls3_version": rls3.__version__, "n": len(samples), **(info or {})}
        (tmp / INFO_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True))
    return folder


# ------------------------------------------------------------------------------------ reading
def read_info(folder: str | Path) -> dict[str, Any]:
    """The folder's `dataset.json` ({} when absent)."""
    f = Path(folder) / INFO_FILE
    if not f.is_file():
        return {}
    if not _inside(Path(folder), f):
        raise DatasetError(folder, [f"{INFO_FILE} is a symbolic link leading out of the folder"])
    try:
        info = json.loads(f.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DatasetError(folder, [f"{INFO_FILE} is not valid JSON ({e})"]) from e
    if not isinstance(info, dict):
        raise DatasetError(folder, [f"{INFO_FILE} must hold a JSON object"])
    return info


def read_dataset(folder: str | Path, progress: bool = False) -> list[Sample]:
    """Load and validate every record; raises `DatasetError` listing each bad file by name."""
    samples, problems = _scan(Path(folder), load=True, progress=progress)
    if problems:
        raise DatasetError(folder, problems)
    return samples


def validate_dataset(folder: str | Path) -> list[str]:
    """Every problem found (missing/corrupt images, malformed records), [] if the set is sound."""
    return _scan(Path(folder), load=False, progress=False)[1]


def _scan(folder: Path, load: bool, progress: bool) -> tuple[list[Sample], list[str]]:
    meta_path = folder / METADATA_FILE
    info = _check_folder(folder, meta_path)
    problems: list[str] = []
    samples: list[Sample] = []
    seen: set[str] = set()
    try:
        lines = meta_path.read_text().splitlines()
    except UnicodeDecodeError as e:
        raise DatasetError(folder, [f"{METADATA_FILE} is not UTF-8 text ({e})"]) from e
    records = [(i, ln) for i, ln in enumerate(lines, 1) if ln.strip()]
    for lineno, line in progress_bar(records, desc=f"read {folder.name}", unit="img",
                                     enabled=progress):
        where = f"{METADATA_FILE} line {lineno}"
        rec = _check_record(folder, line, where, seen, problems)
        if rec is None:
            continue
        sample = _record_sample(folder, rec, load, problems)
        if sample is not None and load:
            samples.append(sample)
    expected = info.get("n")
    if isinstance(expected, int) and expected != len(records):
        problems.append(f"{METADATA_FILE} has {len(records)} records but {INFO_FILE} says "
                        f"{expected}")
    if not records:
        problems.append(f"{METADATA_FILE} is empty")
    return samples, problems


def _check_folder(folder: Path, meta_path: Path) -> dict[str, Any]:
    """The folder's info (`read_info`), or a DatasetError when it is no readable dataset."""
    if not folder.is_dir():
        raise DatasetError(folder, ["folder does not exist"])
    if not meta_path.is_file():
        raise DatasetError(folder, [f"not a dataset folder: no {METADATA_FILE}"])
    if not _inside(folder, meta_path):
        raise DatasetError(folder, [f"{METADATA_FILE} is a symbolic link leading out of the "
                                    f"folder"])
    info = read_info(folder)
    if info and info.get("format") != DATASET_FORMAT:
        raise DatasetError(folder, [f"{INFO_FILE} has format {info.get('format')!r}, expected "
                                    f"{DATASET_FORMAT!r}"])
    if info and info.get("version") != DATASET_VERSION:
        raise DatasetError(folder, [f"{INFO_FILE} has version {info.get('version')!r}; this rls3 "
                                    f"reads version {DATASET_VERSION} (regenerate the set)"])
    return info


def _check_record(folder: Path, line: str, where: str, seen: set[str],
                  problems: list[str]) -> dict[str, Any] | None:
    """One metadata line's record once it names a new image file inside `folder`; else None,
    its problem appended to `problems`. Adds the name to `seen`."""
    try:
        rec = json.loads(line)
    except json.JSONDecodeError as e:
        problems.append(f"{where}: not valid JSON ({e.msg})")
        return None
    if not isinstance(rec, dict) or not isinstance(rec.get("file_name"), str):
        problems.append(f"{where}: record has no 'file_name'")
        return None
    name = rec["file_name"]
    if Path(name).is_absolute() or ".." in Path(name).parts:
        problems.append(f"{name}: file_name must be a path inside the folder ({where})")
        return None
    if name in seen:
        problems.append(f"{name}: listed twice ({where})")
        return None
    seen.add(name)
    path = folder / name
    if not path.is_file():
        problems.append(f"{name}: image file missing ({where})")
        return None
    if not _inside(folder, path):
        problems.append(f"{name}: a symbolic link leading out of the folder ({where})")
        return None
    return rec


def _record_sample(folder: Path, rec: dict[str, Any], load: bool,
                   problems: list[str]) -> Sample | None:
    """The checked record's sample (its image loaded when `load`, else a 1x1 stand-in after a
    check); None, its problem appended to `problems`, when the image or metadata is bad."""
    name = rec["file_name"]
    path = folder / name
    image: np.ndarray | None = None
    try:
        if load:
            image = _load_image(path)
        else:
            _check_image(path)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        problems.append(f"{name}: image too large to load ({e})")
        return None
    except (OSError, SyntaxError, ValueError) as e:
        problems.append(f"{name}: corrupt image ({e})")
        return None
    meta = {k: v for k, v in rec.items() if k != "file_name"}
    try:
        sample = Sample.from_metadata(image if image is not None else
                                      np.zeros((1, 1, 3), np.uint8), meta)
    except ValueError as e:
        problems.append(f"{name}: bad metadata ({e})")
        return None
    if meta.get("complexity") is not None and meta["complexity"] != \
            sample.description.complexity:
        problems.append(f"{name}: complexity {meta['complexity']!r} does not match its "
                        f"terms {list(sample.description.terms)}")
        return None
    return sample


def _inside(folder: Path, path: Path) -> bool:
    """Whether `path`, its symbolic links followed, stays inside `folder`."""
    return path.resolve().is_relative_to(folder.resolve())


def _check_image(path: Path) -> None:
    with warnings.catch_warnings():  # PIL only warns below twice its pixel limit: refuse those
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        with Image.open(path) as im:
            im.verify()
        with Image.open(path) as im:  # verify() misses truncated pixel data; decode it too
            im.load()


def _load_image(path: Path) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        with Image.open(path) as im:
            im.load()
            rgb = im if im.mode == "RGB" else im.convert("RGB")
            return np.asarray(rgb, dtype=np.uint8).copy()


# ------------------------------------------------------------------------------------ generating
def generate_samples(backend: SceneBackend, n: int, image_size: int, seed: int,
                     progress: bool = False, desc: str = "generate") -> list[Sample]:
    """`n` random valid layouts cycling through the backend's scenes (scene k % n_scenes), each
    rendered at `image_size` and captioned; reproducible for a given seed."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    rng = np.random.default_rng(seed)
    n_scenes = len(backend.scene_names)
    out = []
    for k in progress_bar(range(n), desc=desc, unit="img", enabled=progress):
        state = backend.load_scene(k % n_scenes, seed=int(rng.integers(2**31 - 1)))
        image = backend.render(image_size, image_size)
        out.append(make_sample(image, state.rendered_at(image_size, image_size), rng))
    return out


#: fixed set -> the backend split its scenes come from (validation: training scenes)
FIXED_SET_SCENES = {"val": "train", "test": "test"}


def prepare_fixed_sets(cfg: Config, splits: Sequence[str] = SPLITS, *,
                       backend_config: BackendConfig | None = None, force: bool = False,
                       progress: bool = False) -> list[tuple[str, Path, bool]]:
    """Make sure `cfg`'s fixed sets (`data.val_size` frames of the training scenes,
    `data.test_size` of the test scenes) are in their cache folders, generating the missing ones;
    returns (split, folder, whether it was already there) per split. The one entry for `rls3 run`
    and `rls3 generate`; `backend_config` defaults to `cfg.backend_config()`."""
    bcfg = backend_config if backend_config is not None else cfg.backend_config()
    key = backend_identity(cfg.backend)
    sizes = {"val": cfg.data.val_size, "test": cfg.data.test_size}
    out = []
    for split in splits:
        backend = make_backend(bcfg, FIXED_SET_SCENES[split])
        try:
            folder = fixed_set_dir(cfg.data.dir, split, key, backend.scene_names, sizes[split],
                                   cfg.env.image_size, cfg.data.seed)
            existed = folder.exists() and not force
            ensure_fixed_set(folder, backend, split, sizes[split], cfg.env.image_size,
                             cfg.data.seed, key, force=force, progress=progress)
        finally:
            backend.close()
        out.append((split, folder, existed))
    return out


def fixed_set_dir(root: str | Path, split: str, backend: str, scenes: Iterable[str], n: int,
                  image_size: int, seed: int) -> Path:
    """Cache folder of a fixed set:
    `{root}/{backend}-{split}-n{n}-{size}px-seed{seed}-{hash of the scene names}`."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    import hashlib

    h = hashlib.sha256(",".join(scenes).encode()).hexdigest()[:8]
    return Path(root) / f"{backend}-{split}-n{n}-{image_size}px-seed{seed}-{h}"


def ensure_fixed_set(folder: Path, backend: SceneBackend, split: str, n: int, image_size: int,
                     seed: int, backend_name: str, force: bool = False,
                     progress: bool = False) -> Path:
    """Generate the fixed `split` set into `folder` unless a valid one is already there.

    An existing folder whose `dataset.json` disagrees with the request, or that fails validation,
    raises `DatasetError` (it is never silently overwritten; pass `force` to regenerate)."""
    want = {"split": split, "n": n, "image_size": image_size, "seed": seed,
            "backend": backend_name, "scenes": list(backend.scene_names)}
    if folder.exists() and not force:
        _check_fixed_set(folder, want)
        log.info("using the fixed %s set %s (%d samples)", split, folder, n)
        return folder
    data_seed = fixed_set_seed(seed, split)
    log.info("generating the fixed %s set: %d frames from %s at %d px", split, n,
             ", ".join(backend.scene_names), image_size)
    samples = generate_samples(backend, n, image_size, data_seed, progress=progress,
                               desc=f"{split} set")
    # another run on the same data.dir may write this set at the same time: the first one in
    # place is kept, and checked like any set found there
    write_dataset(folder, samples, info=want, overwrite=force, keep_existing=not force)
    if not force:
        _check_fixed_set(folder, want)
    return folder


def _check_fixed_set(folder: Path, want: dict[str, Any]) -> None:
    """DatasetError unless the set in `folder` was made with the settings `want` and is sound."""
    info = read_info(folder)
    diff = {k: (info.get(k), v) for k, v in want.items() if info.get(k) != v}
    if diff:
        raise DatasetError(folder, [f"exists but was made with different settings "
                                    f"{ {k: a for k, (a, _) in diff.items()} }, wanted "
                                    f"{ {k: b for k, (_, b) in diff.items()} }"])
    problems = validate_dataset(folder)
    if problems:
        raise DatasetError(folder, problems + ["regenerate it with `rls3 generate --force`"])


def term_counts(samples: Iterable[Sample]) -> dict[str, int]:
    """How many samples carry each spatial term."""
    out: dict[str, int] = {}
    for s in samples:
        for t in dict.fromkeys(s.description.terms):
            out[t] = out.get(t, 0) + 1
    return dict(sorted(out.items()))


def complexity_counts(samples: Iterable[Sample]) -> dict[str, int]:
    """How many samples have 1, 2 or 3 terms (keys as strings, JSON-ready)."""
    out: dict[str, int] = {}
    for s in samples:
        key = str(s.description.complexity)
        out[key] = out.get(key, 0) + 1
    return dict(sorted(out.items()))
