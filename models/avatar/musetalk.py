"""The avatar backend ``musetalk``: MuseTalk 1.5 on a GPU.

Not built yet (a later issue). The name is registered so that a config can
choose it and start-up says plainly what it will need, instead of an unknown
backend name.
"""

from __future__ import annotations

from pathlib import Path

from core.config import AvatarConfig
from models.backends import backend
from models.base import AvatarModel, BackendUnavailable


@backend("avatar", "musetalk")
class MuseTalkAvatarModel(AvatarModel):
    """Refuses to build: there is no MuseTalk renderer yet."""

    @classmethod
    def from_config(cls, config: AvatarConfig, weights_dir: Path) -> MuseTalkAvatarModel:
        raise BackendUnavailable(
            "avatar.backend 'musetalk' is not built yet; when it is, it will need a GPU, "
            "`pip install -e .[gpu]` and the MuseTalk 1.5 weights under weights/musetalk/ "
            "(see weights/README.md). Use avatar.backend 'photo' (the CPU renderer)"
        )
