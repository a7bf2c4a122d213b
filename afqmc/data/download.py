"""A corpus' download: its zip fetched when a split file is missing, each file checked against its sha256."""

from __future__ import annotations

import hashlib
import logging
import shutil
import tempfile
import urllib.error
import urllib.request
import zipfile
from pathlib import Path

from afqmc.errors import DataError
from afqmc.files import atomic_write

log = logging.getLogger(__name__)


def ensure_downloaded(cfg, split: str | None = None) -> None:
    """Fetch the corpus zip when the split's file (any split's, with split=None) is missing, and take
    every missing split file from it, checking each file's sha256."""
    root = Path(cfg.root)
    missing = [name for name in cfg.splits.values() if name and not (root / name).is_file()]
    if not missing or not cfg.download or (split is not None and cfg.splits[split] not in missing):
        return
    url = cfg.download.url
    log.info("%s missing in %s; downloading %s", ", ".join(missing), root, url)
    with tempfile.TemporaryDirectory() as tmp:
        archive = Path(tmp) / "data.zip"
        try:
            with urllib.request.urlopen(url, timeout=30) as response, open(archive, "wb") as f:
                shutil.copyfileobj(response, f)
        except (urllib.error.URLError, OSError) as e:
            raise DataError(
                f"could not download {url} ({e}). Put {', '.join(missing)} in {root.resolve()} "
                f"or pass dataset.root=DIR (a directory holding {', '.join(n for n in cfg.splits.values() if n)})"
            ) from None
        _extract_checked(archive, missing, root, cfg.download.sha256 or {}, url)


def _extract_checked(archive: Path, names: list[str], root: Path, sha256: dict, url: str) -> None:
    try:
        zf = zipfile.ZipFile(archive)
    except zipfile.BadZipFile:
        raise DataError(f"{url} is not a zip archive") from None
    with zf:
        members = {Path(m).name: m for m in zf.namelist() if not m.endswith("/")}
        for name in names:
            if name not in members:
                raise DataError(f"{url} has no {name} (it has: {', '.join(sorted(members))})")
            data = zf.read(members[name])
            digest = hashlib.sha256(data).hexdigest()
            if name in sha256 and digest != sha256[name]:
                raise DataError(f"{url}: {name} has sha256 {digest}, expected {sha256[name]}; not written")
            with atomic_write(root / name) as tmp:  # a complete file or none
                tmp.write_bytes(data)
