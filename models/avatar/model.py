"""The avatar backend ``photo``: every avatar under ``weights_dir/avatars``
loaded once per process, and a renderer per session for the one asked for.

A prepared folder whose meta.json says ``"mode": "video"`` is a video avatar
(models/avatar/video.py); any other is a photo avatar (models/avatar/assets.py
and photo.py). The built-in astronaut is there even without a prepared folder.
"""

from __future__ import annotations

import logging
from pathlib import Path

from core.config import AvatarConfig, Config
from models.avatar.assets import (
    ASTRONAUT_META,
    AvatarAssets,
    astronaut_image,
    load_photo_avatar,
    read_image,
    read_meta,
)
from models.avatar.buffered import BufferedAvatarStream
from models.avatar.photo import PhotoAvatarStream
from models.avatar.video import VideoAvatarAssets, VideoAvatarStream
from models.backends import backend
from models.base import AvatarModel, BackendNeeds, PackageNeed, WeightNeed
from models.needs import VIDEOCHAT_WEIGHTS

log = logging.getLogger(__name__)

Assets = AvatarAssets | VideoAvatarAssets


@backend("avatar", "photo")
class PhotoAvatarModel(AvatarModel):
    """Loads every avatar once; ``new_stream`` is cheap."""

    @classmethod
    def needs(cls, config: Config) -> BackendNeeds:
        """What ``videochat doctor`` checks: the default avatar's picture."""
        name = config.avatar.default
        fetch = (
            VIDEOCHAT_WEIGHTS
            if name == "astronaut"
            else f"videochat avatar add {name} --photo FILE  (or --video FILE)"
        )
        return BackendNeeds(
            packages=(PackageNeed("cv2", "pip install -e ."),),
            weights=(WeightNeed(f"avatars/{name}/image.png", 1, fetch),),
        )

    @classmethod
    def from_config(cls, config: AvatarConfig, weights_dir: Path) -> PhotoAvatarModel:
        return cls(weights_dir, size=config.size, default=config.default)

    def __init__(self, weights_dir: Path, size: int = 512, default: str = "astronaut") -> None:
        self.size = size
        self.default = default
        self.weights_dir = Path(weights_dir)
        self._assets: dict[str, Assets] = {}
        self._stamps: dict[str, int] = {}  # image.png mtime of each loaded avatar
        self._builtin: AvatarAssets | None = None
        self.refresh()
        if default not in self._assets:
            raise KeyError(f"default avatar {default!r} not found; have {self.avatars()}")

    def _load(self, name: str, image_path: Path) -> Assets:
        image = read_image(image_path)
        folder = image_path.parent
        meta = read_meta(folder)
        if meta is not None and meta.get("mode") == "video":  # the clip's own frames
            return VideoAvatarAssets(name, folder, meta)
        return load_photo_avatar(name, image, folder, meta, self.size)

    def avatars(self) -> list[str]:
        return list(self._assets)

    def refresh(self) -> None:
        """(Re-)read weights_dir/avatars: avatars added or prepared again since
        are loaded, removed ones dropped, unchanged ones kept as they are (the
        avatar API calls this); running streams keep their assets."""
        loaded: dict[str, Assets] = {}
        stamps: dict[str, int] = {}
        folder = self.weights_dir / "avatars"
        for image_path in sorted(folder.glob("*/image.png")) if folder.is_dir() else []:
            name = image_path.parent.name
            stamps[name] = image_path.stat().st_mtime_ns
            if self._stamps.get(name) == stamps[name] and name in self._assets:
                loaded[name] = self._assets[name]
                continue
            try:
                loaded[name] = self._load(name, image_path)
            except Exception as exc:
                log.warning("avatar %r in %s skipped: %s", name, image_path.parent, exc)
        # The built-in astronaut first (unless a prepared one replaces it).
        builtin = loaded.pop("astronaut", None) or self._builtin_astronaut()
        self._assets = {"astronaut": builtin, **loaded}
        self._stamps = stamps

    def _builtin_astronaut(self) -> AvatarAssets:
        """The astronaut without a prepared folder: built once, when first needed."""
        if self._builtin is None:
            self._builtin = AvatarAssets("astronaut", astronaut_image(), ASTRONAUT_META, self.size)
        return self._builtin

    def assets(self, name: str) -> Assets:
        try:
            return self._assets[name]
        except KeyError:
            raise KeyError(f"unknown avatar {name!r}; available: {self.avatars()}") from None

    def new_stream(
        self, avatar: str | None = None, *, seed: int | None = None
    ) -> BufferedAvatarStream:
        assets = self.assets(avatar or self.default)
        if isinstance(assets, VideoAvatarAssets):
            return VideoAvatarStream(assets, seed=seed)
        return PhotoAvatarStream(assets, seed=seed)
