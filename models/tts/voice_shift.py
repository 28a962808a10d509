"""A voice made from another by raising its pitch and its formants.

Piper's only voice that installs offline (``joe``) is male, and the default
avatar is a woman; on a slow machine Kokoro cannot keep up (docs/benchmarks.md)
while Piper can. ``joan`` is ``joe``'s speech analysed by the WORLD vocoder
(``pyworld``): its pitch multiplied and its spectral envelope stretched along
the frequency axis (formants up, as from a shorter vocal tract), then
resynthesized. Duration is unchanged, so Piper's phoneme timings still drive
the mouth.

WORLD (``pyworld-prebuilt``, prebuilt wheels of the ``pyworld`` wrapper; the
``pyworld`` sdist needs Cython and a compiler) was chosen over Praat's
"Change gender" (``praat-parselmouth``, PSOLA): on four answer-sized sentences
both moved the speaker encoder's nearest stock voices to women's, and Whisper
understood WORLD's output as well as ``joe``'s, Praat's less well
(docs/benchmarks.md, "A woman's voice that keeps up"). It costs about 0.06 s
per second of audio on one core and releases the GIL while it computes.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

FRAME_PERIOD_MS = 5.0  # WORLD's analysis hop: fine enough for speech, cheap


@dataclass(frozen=True)
class VoiceShape:
    """How a voice is changed: pitch and formant frequencies multiplied."""

    pitch: float
    formants: float


def shift_voice(audio: np.ndarray, sample_rate: int, shape: VoiceShape) -> np.ndarray:
    """``audio`` (mono float32) with its pitch and formants raised by ``shape``:
    the same length and loudness (RMS), float32 in [-1, 1]."""
    import pyworld

    x = np.asarray(audio, np.float64).reshape(-1)
    if x.size < sample_rate * FRAME_PERIOD_MS / 1000 * 4 or not np.any(x):
        return np.asarray(audio, np.float32).reshape(-1)  # too short to analyse
    f0, times = pyworld.dio(x, sample_rate, frame_period=FRAME_PERIOD_MS)
    f0 = pyworld.stonemask(x, f0, times, sample_rate)
    envelope = pyworld.cheaptrick(x, f0, times, sample_rate)
    aperiodicity = pyworld.d4c(x, f0, times, sample_rate)
    y = pyworld.synthesize(
        f0 * shape.pitch,
        _stretch(envelope, shape.formants),
        aperiodicity,
        sample_rate,
        FRAME_PERIOD_MS,
    )
    y = np.pad(y, (0, max(0, x.size - y.size)))[: x.size]
    level = np.sqrt(np.mean(x**2)) / max(float(np.sqrt(np.mean(y**2))), 1e-9)
    return np.clip(y * level, -1.0, 1.0).astype(np.float32)


def _stretch(envelope: np.ndarray, factor: float) -> np.ndarray:
    """Each frame's spectral envelope with its features moved up by ``factor``
    (what was at bin k is now at bin k * factor), linearly interpolated."""
    bins = envelope.shape[1]
    source = np.arange(bins) / factor
    low = np.minimum(source.astype(int), bins - 2)
    weight = source - low
    stretched = envelope[:, low] * (1 - weight) + envelope[:, low + 1] * weight
    return np.ascontiguousarray(np.maximum(stretched, 1e-16))
