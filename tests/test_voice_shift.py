"""models/tts/voice_shift.py on synthetic voiced sound (no weights), and the
calibration timing a backend in its costliest voice. Nothing here times."""

from __future__ import annotations

import numpy as np
import pyworld

from models.base import Speech
from models.calibration import measure_tts
from models.tts.voice_shift import VoiceShape, shift_voice
from models.tts.voices_router import VoicesRouter
from tests.fakes import ToneTTS

RATE = 22_050


def vowel(f0: float, seconds: float = 1.5) -> np.ndarray:
    """A buzz at ``f0`` with a formant-like spectral peak near 700 Hz."""
    t = np.arange(int(RATE * seconds)) / RATE
    harmonics = [
        np.exp(-(((k * f0) - 700.0) ** 2) / (2 * 300.0**2)) * np.sin(2 * np.pi * k * f0 * t)
        for k in range(1, int(4000 / f0))
    ]
    return (0.3 * np.sum(harmonics, axis=0) / len(harmonics) * 4).astype(np.float32)


def median_f0(audio: np.ndarray, rate: int = RATE) -> float:
    """The median pitch of the voiced frames, by WORLD's own estimator."""
    x = audio.astype(np.float64)
    f0, times = pyworld.dio(x, rate)
    f0 = pyworld.stonemask(x, f0, times, rate)
    return float(np.median(f0[f0 > 0]))


def test_pitch_is_raised_and_length_and_loudness_are_kept() -> None:
    before = vowel(150.0)
    after = shift_voice(before, RATE, VoiceShape(pitch=1.5, formants=1.25))
    assert after.dtype == np.float32 and after.shape == before.shape
    assert 200 < median_f0(after) < 250  # 150 Hz x 1.5
    rms = [float(np.sqrt(np.mean(a**2))) for a in (before, after)]
    assert abs(rms[1] / rms[0] - 1) < 0.05
    assert float(np.abs(after).max()) <= 1.0


def test_formants_move_up_with_the_envelope() -> None:
    before = vowel(150.0)
    # Pitch kept: only the spectral peak moves (700 Hz -> ~875 Hz).
    after = shift_voice(before, RATE, VoiceShape(pitch=1.0, formants=1.25))

    def peak_hz(audio: np.ndarray) -> float:
        spectrum = np.abs(np.fft.rfft(audio * np.hanning(audio.size)))
        smooth = np.convolve(spectrum, np.ones(301) / 301, mode="same")
        return float(np.argmax(smooth) * RATE / audio.size)

    assert peak_hz(before) < 780 and 800 < peak_hz(after) < 1000


def test_silence_and_scraps_come_back_unchanged() -> None:
    shape = VoiceShape(pitch=1.5, formants=1.25)
    for audio in (np.zeros(RATE, np.float32), np.zeros(0, np.float32), vowel(150.0, 0.01)):
        out = shift_voice(audio, RATE, shape)
        assert out.dtype == np.float32 and np.array_equal(out, audio)


class CostliestVoiceTTS(ToneTTS):
    """A backend whose voices differ in cost: it names the one to time."""

    calibration_voice = "dear"

    def __init__(self) -> None:
        super().__init__(delay=0.0)
        self.asked: list[str | None] = []

    def synthesize(self, text: str, lang: str, voice: str | None = None) -> Speech:
        self.asked.append(voice)
        return super().synthesize(text, lang, voice)


def test_calibration_times_another_backend_in_its_costliest_voice() -> None:
    primary, other = ToneTTS(delay=0.0), CostliestVoiceTTS()
    costs = measure_tts(VoicesRouter("kokoro", primary, {"other": other}), runs=1)
    assert set(costs["en"].more_backends) == {"other"}
    assert other.asked and set(other.asked) == {"dear"}
