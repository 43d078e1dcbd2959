"""Writes that appear whole or not at all: a file or folder is built under a temporary sibling
name and renamed into place, so a crash or a full disk never leaves a half-written one."""

from __future__ import annotations

import errno
import logging
import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

log = logging.getLogger(__name__)


def temp_sibling(path: Path, tag: str = "tmp") -> Path:
    """A fresh hidden name beside `path` (``.{name}.{tag}-{8 hex}``)."""
    return path.parent / f".{path.name}.{tag}-{uuid.uuid4().hex[:8]}"


def _write_synced(path: Path, text: str) -> None:
    """Write `text` to `path` and fsync it (the temporary file of an atomic write)."""
    with open(path, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())


def atomic_write(path: Path, text: str) -> None:
    """Write `text` to `path` through a temporary file, fsync and a rename."""
    tmp = temp_sibling(path)
    try:
        _write_synced(tmp, text)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_create(path: Path, text: str) -> None:
    """Write `text` to `path` whole, only if `path` does not exist yet: FileExistsError when it
    does (another process made it first). A temporary file is hard-linked into place, which fails
    rather than replaces; on a file system without hard links an exclusive create is used."""
    tmp = temp_sibling(path)
    try:
        _write_synced(tmp, text)
        try:
            os.link(tmp, path)
        except OSError as e:
            if e.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV):
                raise
            with open(path, "x") as f:
                f.write(text)
    finally:
        tmp.unlink(missing_ok=True)


def replace_folder(tmp: Path, folder: Path) -> None:
    """Put the finished folder `tmp` in place of `folder` with renames only: a crash leaves
    either the old or the new folder."""
    if folder.exists():
        old = temp_sibling(folder, "old")
        os.replace(folder, old)
        os.replace(tmp, folder)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, folder)


@contextmanager
def atomic_folder(folder: Path, keep_existing: bool = False) -> Iterator[Path]:
    """Yield an empty temporary sibling of `folder` to fill; when the block ends without error it
    takes `folder`'s place, otherwise it is removed. With `keep_existing`, a `folder` that
    appeared meanwhile (another process wrote the same cache entry) is kept and ours dropped."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_sibling(folder)
    tmp.mkdir()
    try:
        yield tmp
        if keep_existing:
            try:
                os.rename(tmp, folder)
            except OSError:
                if not folder.is_dir():
                    raise
                log.info("%s was written by another process first; keeping it", folder)
        else:
            replace_folder(tmp, folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
