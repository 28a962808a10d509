"""The mel front ends of the speaker encoders, in numpy.

librosa is what both encoders were trained with, but it is a large dependency
(numba, llvmlite) for two filterbanks: this reproduces
``librosa.feature.melspectrogram`` for the settings they use (Slaney mel scale
and area normalisation, periodic window, power 2), which is a few lines.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

_F_SP = 200.0 / 3  # Slaney: linear below 1 kHz at 200/3 Hz per mel...
_MIN_LOG_HZ = 1000.0
_MIN_LOG_MEL = _MIN_LOG_HZ / _F_SP
_LOGSTEP = np.log(6.4) / 27.0  # ...and logarithmic above


def hz_to_mel(hz: np.ndarray | float) -> np.ndarray:
    f = np.asarray(hz, dtype=np.float64)
    log_part = _MIN_LOG_MEL + np.log(np.maximum(f, 1e-10) / _MIN_LOG_HZ) / _LOGSTEP
    return np.where(f >= _MIN_LOG_HZ, log_part, f / _F_SP)


def mel_to_hz(mel: np.ndarray | float) -> np.ndarray:
    m = np.asarray(mel, dtype=np.float64)
    return np.where(
        m >= _MIN_LOG_MEL, _MIN_LOG_HZ * np.exp(_LOGSTEP * (m - _MIN_LOG_MEL)), _F_SP * m
    )


@lru_cache(maxsize=8)
def mel_filterbank(sr: int, n_fft: int, n_mels: int, fmin: float = 0.0) -> np.ndarray:
    """(n_mels, n_fft // 2 + 1) triangular filters, Slaney-normalised (each
    filter's area is constant), as librosa's ``filters.mel(htk=False, norm="slaney")``."""
    freqs = np.fft.rfftfreq(n_fft, 1.0 / sr)
    edges = mel_to_hz(np.linspace(hz_to_mel(fmin), hz_to_mel(sr / 2), n_mels + 2))
    widths = np.diff(edges)
    ramps = edges[:, None] - freqs[None, :]
    lower = -ramps[:-2] / widths[:-1, None]
    upper = ramps[2:] / widths[1:, None]
    bank = np.maximum(0.0, np.minimum(lower, upper))
    bank *= (2.0 / (edges[2:] - edges[:-2]))[:, None]
    return bank.astype(np.float32)


@lru_cache(maxsize=8)
def _window(kind: str, length: int, n_fft: int) -> np.ndarray:
    k = np.arange(length)
    a = {"hann": 0.5, "hamming": 0.54}[kind]
    w = a - (1 - a) * np.cos(2 * np.pi * k / length)  # periodic, as scipy's get_window
    out = np.zeros(n_fft)
    off = (n_fft - length) // 2  # librosa centres a short window in the FFT frame
    out[off : off + length] = w
    return out


def power_mel(
    audio: np.ndarray,
    *,
    sr: int = 16_000,
    n_fft: int,
    hop: int,
    win_length: int,
    window: str,
    n_mels: int,
    center: bool,
) -> np.ndarray:
    """Power mel spectrogram, (frames, n_mels) float32. ``center`` pads n_fft/2
    zeros at each end (librosa >= 0.10's constant padding)."""
    y = np.asarray(audio, dtype=np.float32).reshape(-1)
    if center:
        y = np.pad(y, n_fft // 2)
    frames = 1 + (y.size - n_fft) // hop
    if frames < 1:
        return np.zeros((0, n_mels), np.float32)
    idx = np.arange(n_fft)[None, :] + hop * np.arange(frames)[:, None]
    spec = np.abs(np.fft.rfft(y[idx] * _window(window, win_length, n_fft), axis=1)) ** 2
    return (spec @ mel_filterbank(sr, n_fft, n_mels).T).astype(np.float32)
