"""VAD backend ``energy``: an RMS-level detector with the Silero interface
(deterministic, no model; useful for tests and very quiet rooms).
"""

from __future__ import annotations

import numpy as np

from core.config import Config, VADConfig
from models.backends import backend
from models.base import BackendNeeds, VADModel, VoiceActivityDetector


class EnergyVoiceDetector(VoiceActivityDetector):
    """Maps a frame's RMS level (dBFS) linearly onto [0, 1] between
    ``silence_db`` (0) and ``speech_db`` (1): with a threshold of 0.5 and the
    defaults, frames louder than -40 dBFS count as speech."""

    def __init__(
        self, frame_samples: int = 512, silence_db: float = -50.0, speech_db: float = -30.0
    ) -> None:
        if speech_db <= silence_db:
            raise ValueError("speech_db must be above silence_db")
        self.frame_samples = frame_samples
        self.silence_db = silence_db
        self.speech_db = speech_db

    def speech_probability(self, frame: np.ndarray) -> float:
        frame = np.asarray(frame, dtype=np.float32)
        rms = float(np.sqrt(np.mean(np.square(frame, dtype=np.float64)))) if frame.size else 0.0
        db = 20.0 * np.log10(max(rms, 1e-10))
        return float(np.clip((db - self.silence_db) / (self.speech_db - self.silence_db), 0, 1))

    def reset(self) -> None:
        pass


@backend("vad", "energy")
class EnergyVADModel(VADModel):
    def __init__(
        self, frame_samples: int = 512, silence_db: float = -50.0, speech_db: float = -30.0
    ) -> None:
        self._args = (frame_samples, silence_db, speech_db)
        EnergyVoiceDetector(*self._args)  # validate

    @classmethod
    def needs(cls, config: Config) -> BackendNeeds:
        """What ``videochat doctor`` checks: nothing beyond numpy."""
        return BackendNeeds()

    @classmethod
    def from_config(cls, config: VADConfig) -> EnergyVADModel:
        return cls()

    def new_detector(self) -> VoiceActivityDetector:
        return EnergyVoiceDetector(*self._args)
