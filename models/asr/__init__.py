"""Speech recognition: one backend per module, registered by name.

* ``whisper`` (``faster-whisper``, the default): Whisper through
  faster-whisper on the CPU; batch, so streams transcribe at their end.
* ``funasr`` (``funasr``): FunASR SenseVoiceSmall / Paraformer; the
  ``paraformer-zh-streaming`` model decodes 600 ms chunks as the user speaks.
"""

from __future__ import annotations

from pathlib import Path

from core.config import ASRConfig
from models.backends import backend_class
from models.base import SpeechRecognizer


def load_recognizer(config: ASRConfig, weights_dir: str | Path) -> SpeechRecognizer:
    """Build the ASR backend named by ``config.backend`` (ConfigError for a name
    nobody registered, BackendUnavailable if it cannot run here)."""
    cls = backend_class("asr", config.backend)
    return cls.from_config(config, Path(weights_dir))
