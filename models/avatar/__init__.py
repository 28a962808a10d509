"""The avatar stage: one backend per module, registered by name.

* ``photo`` (the default, models/avatar/model.py): CPU renderers of photo and
  video avatars, their assets and the mouth track.
* ``musetalk`` (models/avatar/musetalk.py): MuseTalk 1.5 on a GPU
  (run here only on tiny random networks on the CPU; docs/backends.md).
"""

from __future__ import annotations

from pathlib import Path

from core.config import AvatarConfig
from models.backends import backend_class
from models.base import AvatarModel


def load_avatar(config: AvatarConfig, weights_dir: str | Path) -> AvatarModel:
    """Build the avatar backend named by ``config.backend`` (ConfigError for a
    name nobody registered, BackendUnavailable if it cannot run here)."""
    cls = backend_class("avatar", config.backend)
    return cls.from_config(config, Path(weights_dir))
