"""Text to speech: one backend per module, registered by name.

* ``kokoro`` (the default): Kokoro-82M on the CPU, with phoneme timings; user
  voices matched to a clip (weights/voices/, see tools/voice_match.py).
* ``edge-tts``: Microsoft Edge's online voices, streamed as they arrive, with
  word timings.
* ``cosyvoice``: CosyVoice 2 or 3 on a GPU, streamed as it is made; user voices
  cloned zero-shot from their clip.
* ``gpt-sovits``: a GPT-SoVITS ``api_v2.py`` server over HTTP, streamed; user
  voices cloned from their clip.
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
