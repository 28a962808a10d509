"""Text to speech: one backend per module, registered by name.

* ``kokoro`` (the default): Kokoro-82M on the CPU, with phoneme timings.
* ``edge-tts``: Microsoft Edge's online voices, streamed as they arrive.
* ``cosyvoice``: CosyVoice 2 on a GPU, streamed as it is made.
"""

from __future__ import annotations

from pathlib import Path

from core.config import TTSConfig
from models.backends import backend_class
from models.base import SpeechSynthesizer


def load_synthesizer(config: TTSConfig, weights_dir: str | Path) -> SpeechSynthesizer:
    """Build the TTS backend named by ``config.backend`` (ConfigError for a name
    nobody registered, BackendUnavailable if it cannot run here)."""
    cls = backend_class("tts", config.backend)
    return cls.from_config(config, Path(weights_dir))
