"""Writing files so that a reader, or a process killed at any point, finds the old version or the new
one, never half of one; and their sha256. Every file and directory a run writes goes through here.

Light on purpose (no torch): the run records and the config side use it too.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def _aside(path: Path, kind: str) -> Path:
    return path.with_name(f".{path.name}.{kind}")


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


@contextmanager
def atomic_write(path: Path) -> Iterator[Path]:
    """Yields a temp path beside `path` to write a file or a directory at; when the block ends without
    an error, it takes `path`'s place. A file is swapped in by one rename; a directory by two, the old
    copy renamed aside first, and recover() puts it back after a kill between the two."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _aside(path, "tmp")
    _remove(tmp)  # left by a process killed while writing
    try:
        yield tmp
    except BaseException as e:
        _remove(tmp)
        if isinstance(e, OSError) and not e.filename:  # a write's ENOSPC names no file: the one being written
            raise OSError(e.errno, e.strerror or str(e), str(path)) from e
        raise
    if tmp.is_dir() and path.exists():
        old = _aside(path, "old")
        _remove(old)  # left by a kill after a swap: path is whole, this is stale
        path.rename(old)
        tmp.rename(path)  # killed between these two renames: old is the whole previous copy
        _remove(old)
    else:
        tmp.replace(path)


def write_text(path: Path, text: str) -> None:
    with atomic_write(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json(path: Path, obj) -> None:
    write_text(path, json.dumps(obj, ensure_ascii=False, indent=2) + "\n")


def recover(path: Path) -> None:
    """Puts back the copy that a directory swap (atomic_write) had renamed aside when it was killed."""
    old = _aside(path, "old")
    if not path.exists() and old.is_dir():
        old.rename(path)


def sha256(*paths: Path) -> str:
    """The sha256 of a file's bytes (of several files', one after the other)."""
    digest = hashlib.sha256()
    for path in paths:
        with open(path, "rb") as f:
            while chunk := f.read(1 << 20):
                digest.update(chunk)
    return digest.hexdigest()
