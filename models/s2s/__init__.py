"""Speech to speech: end-to-end models that take the place of ASR + LLM + TTS
(the ``SpeechToSpeech`` contract in models/base.py), one backend per module,
registered by name: ``glm-4-voice`` (glm4voice.py, with its token router,
model server, client, audio ends and checkpoint mapping beside it). The
config's ``s2s.backend`` is empty by default: the cascade.
"""

from __future__ import annotations

from pathlib import Path

from core.config import S2SConfig
from models.backends import backend_class
from models.base import SpeechToSpeech


def load_speech_to_speech(config: S2SConfig, weights_dir: str | Path) -> SpeechToSpeech | None:
    """The end-to-end model named by ``config.backend``, or None when it is off
    (ConfigError for a name nobody registered)."""
    if not config.backend:
        return None
    cls = backend_class("s2s", config.backend)
    return cls.from_config(config, Path(weights_dir))
