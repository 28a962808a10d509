"""How a file under weights/ is known to be right: its pinned sha256, and a stamp.

Each verified file gets a stamp ``<file>.sha256`` (JSON: sha256, size, mtime)
so that later runs skip it after a ``stat`` instead of re-hashing gigabytes.
Files are written as ``<file>.partial`` and renamed into place only once
verified.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from tools.weights_progress import byte_bar

CHUNK = 4 << 20  # bytes per read while streaming/hashing
STAMP_SUFFIX = ".sha256"
PARTIAL_SUFFIX = ".partial"


class WeightsError(Exception):
    """A model could not be downloaded, assembled or verified. The message names
    the package(s) involved and what to do."""


def _stamp_path(path: Path) -> Path:
    return path.with_name(path.name + STAMP_SUFFIX)


def _read_stamp(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(_stamp_path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def write_stamp(path: Path, sha256: str, **extra: Any) -> None:
    st = path.stat()
    stamp = {"sha256": sha256, "size": st.st_size, "mtime_ns": st.st_mtime_ns, **extra}
    tmp = _stamp_path(path).with_name(_stamp_path(path).name + PARTIAL_SUFFIX)
    tmp.write_text(json.dumps(stamp, indent=1) + "\n", encoding="utf-8")
    os.replace(tmp, _stamp_path(path))


def stamp_ok(path: Path, **expected: Any) -> bool:
    """True when ``path`` exists and its stamp records ``expected`` plus the
    file's current size and mtime: the file was verified and not touched since."""
    stamp = _read_stamp(path)
    if stamp is None:
        return False
    try:
        st = path.stat()
    except OSError:
        return False
    if stamp.get("size") != st.st_size or stamp.get("mtime_ns") != st.st_mtime_ns:
        return False
    return all(stamp.get(k) == v for k, v in expected.items())


def remove_verified(path: Path) -> None:
    path.unlink(missing_ok=True)
    _stamp_path(path).unlink(missing_ok=True)


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh, byte_bar(path.stat().st_size, f"verify {path.name}") as bar:
        while chunk := fh.read(CHUNK):
            h.update(chunk)
            bar.update(len(chunk))
    return h.hexdigest()
