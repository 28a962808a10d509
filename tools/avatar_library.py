"""The prepared avatars on disk, ``weights_dir/avatars/<name>/``: their names,
the errors said to the user, and listing, installing and removing them.

Layout of a prepared avatar (everything in pixels of the 512x512 crop)::

    meta.json      mode ("photo" | "video"), fps, size, crop box in the source,
                   and the face geometry models/avatar/assets.py reads (mouth,
                   eyes: the ``ASTRONAUT_META`` schema), derived from landmarks
                   and, if the avatar names one, its default ``voice``
    image.png      512x512 head-and-shoulders crop, the face ~40 % of the width
                   (for a video: its first frame)
    landmarks.npy  float32 FaceMesh landmarks: (478, 2) for a photo,
                   (N, 478, 2) for a video (one row per frame); the photo
                   renderer builds its mouth mesh on them. Photo avatars
                   without this file still load: the renderer runs FaceMesh
                   once (models/avatar/faces.py ``face_landmarks``)
    frames/        video only: the N cropped frames at 25 fps, 000000.jpg ...

Preparation (tools/avatar_prepare.py) builds in ``avatars/.tmp/`` and renames
the finished folder into place (``install``), so a failure or a crash never
leaves a half-written avatar.
"""

from __future__ import annotations

import json
import re
import shutil
import unicodedata
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,39}")  # whole name: fullmatch
DEFAULT_AVATAR = "astronaut"
SIZE = 512
FPS = 25
TMP_DIR = ".tmp"


class AvatarError(ValueError):
    """Bad input for an avatar (the API answers 4xx, the CLI prints it)."""

    status = 400


class AvatarNotFound(AvatarError):
    status = 404


class AvatarTooLarge(AvatarError):
    status = 413


@dataclass
class AvatarLimits:
    max_upload_mb: float = 50.0
    max_clip_seconds: float = 30.0
    min_face_px: int = 80

    @classmethod
    def from_config(cls, section: Any) -> AvatarLimits:
        return cls(
            max_upload_mb=float(section.max_upload_mb),
            max_clip_seconds=float(section.max_clip_seconds),
            min_face_px=int(section.min_face_px),
        )


@dataclass
class AvatarInfo:
    name: str
    mode: str
    path: Path
    frames: int = 1
    fps: int = FPS
    size: int = SIZE
    crop: list[int] = field(default_factory=list)
    seconds: float = 0.0  # preparation time
    voice: str | None = None  # the avatar's default voice (a TTS voice name), if it names one

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["path"] = str(self.path)
        d["ready"] = True
        return d


def check_name(name: str, what: str = "avatar") -> str:
    """The name, if it is a valid avatar name; AvatarError naming what is wrong
    otherwise (a trailing newline is not let through: ``fullmatch``). User
    voices follow the same rule (``what="voice"`` names them in the message)."""
    if not isinstance(name, str):
        raise AvatarError(f"bad {what} name {name!r}: not a string")
    control = next((c for c in name if unicodedata.category(c) == "Cc"), None)
    if control is not None:
        raise AvatarError(
            f"bad {what} name {name!r}: it contains a control character "
            f"(U+{ord(control):04X}); use 1-40 letters, digits, '-' or '_'"
        )
    if not NAME_RE.fullmatch(name):
        raise AvatarError(
            f"bad {what} name {name!r}: use 1-40 letters, digits, '-' or '_', "
            "starting with a letter or digit"
        )
    return name


def install(work: Path, target: Path) -> None:
    """Rename the finished folder into place (replacing an older one)."""
    old = None
    if target.exists():
        old = work.parent / f"old-{target.name}-{uuid.uuid4().hex[:8]}"
        target.rename(old)
    try:
        work.rename(target)
    except BaseException:
        if old is not None:
            old.rename(target)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def remove_folder(target: Path) -> None:
    """Remove a prepared folder at once for readers: renamed out of the way
    into the parent's ``TMP_DIR`` first, then deleted."""
    tmp_root = target.parent / TMP_DIR
    tmp_root.mkdir(exist_ok=True)
    trash = tmp_root / f"removed-{target.name}-{uuid.uuid4().hex[:8]}"
    target.rename(trash)
    shutil.rmtree(trash, ignore_errors=True)
    cleanup_tmp(tmp_root)


def cleanup_tmp(tmp_root: Path) -> None:
    try:
        tmp_root.rmdir()  # only when empty (another preparation may be running)
    except OSError:
        pass


# =================================================================== manage
def read_info(folder: Path) -> AvatarInfo | None:
    meta_path = folder / "meta.json"
    if not (folder / "image.png").is_file() or not NAME_RE.fullmatch(folder.name):
        return None
    try:
        meta = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
    except (OSError, ValueError):
        return None
    return AvatarInfo(
        name=folder.name,
        mode=str(meta.get("mode", "photo")),
        path=folder,
        frames=int(meta.get("frames", 1)),
        fps=int(meta.get("fps", FPS)),
        size=int(meta.get("size", SIZE)),
        crop=list(meta.get("crop", [])),
        voice=str(meta["voice"]) if meta.get("voice") else None,
    )


def list_avatars(avatars_dir: str | Path) -> list[AvatarInfo]:
    root = Path(avatars_dir)
    if not root.is_dir():
        return []
    infos = (read_info(p) for p in sorted(root.iterdir()) if p.is_dir())
    return [i for i in infos if i is not None]


def remove_avatar(name: str, avatars_dir: str | Path, default: str = DEFAULT_AVATAR) -> None:
    check_name(name)
    if name in (default, DEFAULT_AVATAR):
        raise AvatarError(f"{name!r} is the default avatar and cannot be removed")
    root = Path(avatars_dir)
    target = root / name
    if not target.is_dir():
        raise AvatarNotFound(f"no avatar {name!r}")
    remove_folder(target)

