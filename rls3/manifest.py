"""Manifests for folders that later commands read back (checkpoints, the best VLM, the
pre-trained SAC cache): `manifest.json` lists every file's size and SHA-256, so a truncated or
altered file is named instead of silently loaded."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

MANIFEST_FILE = "manifest.json"


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def write_manifest(folder: Path) -> None:
    """Write `folder/manifest.json` covering every file below `folder` (but itself)."""
    files = {str(p.relative_to(folder)): {"size": p.stat().st_size, "sha256": sha256(p)}
             for p in sorted(folder.rglob("*")) if p.is_file() and p.name != MANIFEST_FILE}
    (folder / MANIFEST_FILE).write_text(json.dumps({"files": files}, indent=1))


def manifest_problems(folder: Path) -> list[str]:
    """What does not match `folder`'s manifest ("no manifest.json", "x missing", "x altered");
    empty when everything matches."""
    mf = folder / MANIFEST_FILE
    if not mf.is_file():
        return [f"no {MANIFEST_FILE}"]
    try:
        files = json.loads(mf.read_text())["files"]
        items = [(str(rel), int(meta["size"]), str(meta["sha256"])) for rel, meta in files.items()]
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, ValueError,
            AttributeError):
        return [f"bad {MANIFEST_FILE}"]
    bad = []
    for rel, size, digest in items:
        p = folder / rel
        if not p.is_file():
            bad.append(f"{rel} missing")
        elif p.stat().st_size != size or sha256(p) != digest:
            bad.append(f"{rel} altered")
    return bad
