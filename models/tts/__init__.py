"""Text to speech: one backend per module, registered by name.

* ``kokoro`` (the default): Kokoro-82M on the CPU, with phoneme timings; user
  voices matched to a clip (weights/voices/, see tools/voice_match.py).
* ``edge-tts``: Microsoft Edge's online voices, streamed as they arrive, with
  word timings.
* ``cosyvoice``: CosyVoice 2 or 3 on a GPU, streamed as it is made; user voices
  cloned zero-shot from their clip.
* ``gpt-sovits``: a GPT-SoVITS ``api_v2.py`` server over HTTP, streamed; user
  voices cloned from their clip.
* ``piper``: Piper's English voice ``joe``, about 12x cheaper than Kokoro on a
  slow CPU; offered beside the primary backend (``tts.more_backends``).

``load_voices`` is what the server uses: the primary backend and, when
``tts.more_backends`` names any, theirs behind one router
(models/tts/voices_router.py).
"""

from __future__ import annotations

import logging
from pathlib import Path

from core.config import TTSConfig
from models.backends import backend_class
from models.base import BackendUnavailable, SpeechSynthesizer

log = logging.getLogger(__name__)


def load_synthesizer(config: TTSConfig, weights_dir: str | Path) -> SpeechSynthesizer:
    """Build the TTS backend named by ``config.backend`` (ConfigError for a name
    nobody registered, BackendUnavailable if it cannot run here)."""
    cls = backend_class("tts", config.backend)
    return cls.from_config(config, Path(weights_dir))


def load_voices(config: TTSConfig, weights_dir: str | Path) -> SpeechSynthesizer:
    """The primary backend (``config.backend``: its failures stop the server)
    plus the voices of ``config.more_backends``: one of those that cannot run
    here is left out with one log line saying what to install, and the
    server starts without its voices."""
    primary = load_synthesizer(config, weights_dir)
    more: dict[str, SpeechSynthesizer] = {}
    for name in dict.fromkeys(config.more_backends):
        if name == config.backend:
            continue
        cls = backend_class("tts", name)  # an unknown name is a config error: raised
        try:
            more[name] = cls.from_config(config, Path(weights_dir))
        except BackendUnavailable as exc:
            log.warning("TTS voices of %r left out: %s", name, exc)
    if not more:
        return primary
    from models.tts.voices_router import VoicesRouter

    return VoicesRouter(config.backend, primary, more)
