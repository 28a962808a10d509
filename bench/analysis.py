"""Pure measurement functions of the benchmark (unit-tested in tests/test_bench.py)."""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np

LOUD_RMS = 0.01  # an audio frame louder than this is reply speech
NATURAL_PAUSE = 0.35  # s; silences up to this long between sentences are not stalls
AUDIO_FRAME = 0.02  # s; one received audio frame
# Lower-centre region of the picture where the mouth is (fractions of height, width).
MOUTH_ROWS = (0.45, 0.85)
MOUTH_COLS = (0.25, 0.75)
MOUTH_STEP = 2  # keep every second pixel of the crop
SHIFT = 2  # +- pixels (of the kept crop) searched to cancel the idle head sway


# ------------------------------------------------------------------- ASR error
def edit_distance(ref: Sequence[str], hyp: Sequence[str]) -> int:
    row = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, 1):
        prev, row[0] = row[0], i
        for j, h in enumerate(hyp, 1):
            prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (r != h))
    return row[-1]


def tokens(text: str, lang: str) -> list[str]:
    """Words (en, for WER) or characters (zh, for CER), without punctuation."""
    text = re.sub(r"[^\w\s]", " ", text.lower())
    return list(text.replace(" ", "")) if lang == "zh" else text.split()


def pct(values: Sequence[float], q: float) -> float:
    values = [v for v in values if v == v]  # drop NaN
    if not values:
        return float("nan")
    return float(np.percentile(values, q))


# --------------------------------------------------------------- audio stalls
def loud_times(audio: Sequence[tuple[float, float]], start: float, end: float) -> list[float]:
    return [t for t, rms in audio if start <= t <= end and rms > LOUD_RMS]


def stalls(
    audio: Sequence[tuple[float, float]],
    start: float,
    end: float,
    pause: float = NATURAL_PAUSE,
) -> list[tuple[float, float]]:
    """The silences inside a reply longer than the natural pause between sentences.

    ``audio`` is the client's (arrival time, rms) per 20 ms frame. Between the
    first and the last loud frame in [start, end], every silence (gap between
    consecutive loud frames, less one frame) longer than ``pause`` is returned
    as (seconds from the first loud frame to where it starts, seconds beyond
    ``pause``).
    """
    loud = loud_times(audio, start, end)
    found = []
    for before, after in zip(loud, loud[1:], strict=False):
        silence = after - before - AUDIO_FRAME
        if silence > pause:
            found.append((before + AUDIO_FRAME - loud[0], silence - pause))
    return found


def stall_time(
    audio: Sequence[tuple[float, float]],
    start: float,
    end: float,
    pause: float = NATURAL_PAUSE,
) -> float:
    """Seconds of silence inside a reply beyond the natural pause, summed."""
    return sum(excess for _, excess in stalls(audio, start, end, pause))


# ---------------------------------------------------------------------- video
def frame_stats(times: Sequence[float], start: float, end: float) -> tuple[float, float]:
    """(fps, longest arrival gap in s) of the video frames received in [start, end]."""
    inside = [t for t in times if start <= t <= end]
    if len(inside) < 2:
        return 0.0, float("nan")
    fps = (len(inside) - 1) / max(inside[-1] - inside[0], 1e-6)
    return fps, float(np.max(np.diff(inside)))


def mouth_crop(gray: np.ndarray) -> np.ndarray:
    """The lower-centre region of a grey picture, every MOUTH_STEP-th pixel, as int16."""
    h, w = gray.shape[:2]
    r0, r1 = int(h * MOUTH_ROWS[0]), int(h * MOUTH_ROWS[1])
    c0, c1 = int(w * MOUTH_COLS[0]), int(w * MOUTH_COLS[1])
    return np.ascontiguousarray(gray[r0:r1:MOUTH_STEP, c0:c1:MOUTH_STEP]).astype(np.int16)


def motion_score(crop: np.ndarray, references: Sequence[np.ndarray], shift: int = SHIFT) -> float:
    """Mean absolute difference between ``crop`` and the closest reference,
    allowing a small shift (the idle head sway moves the whole region)."""
    s = shift
    core = crop[s : crop.shape[0] - s, s : crop.shape[1] - s]
    best = float("inf")
    for ref in references:
        for dy in range(-s, s + 1):
            for dx in range(-s, s + 1):
                window = ref[s + dy : ref.shape[0] - s + dy, s + dx : ref.shape[1] - s + dx]
                best = min(best, float(np.mean(np.abs(core - window))))
    return best


def motion_threshold(idle: Sequence[np.ndarray], apart: int = 12, floor: float = 2.0) -> float:
    """How different idle frames are from each other (frames ``apart`` or more
    frames away, so that slow sway counts), with a margin: above this, the mouth moves."""
    worst = 0.0
    for i in range(0, len(idle), 3):
        others = [idle[j] for j in range(len(idle)) if abs(i - j) >= apart]
        if others:
            worst = max(worst, motion_score(idle[i], others[::2]))
    return 1.5 * worst + floor


def first_moving_mouth(
    idle: Sequence[np.ndarray],
    frames: Sequence[tuple[float, np.ndarray]],
    after: float,
    threshold: float | None = None,
) -> float | None:
    """Arrival time of the first frame after ``after`` whose mouth region differs
    from every idle frame by more than the threshold; None if none does."""
    if not idle:
        return None
    if threshold is None:
        threshold = motion_threshold(idle)
    refs = list(idle[-40:])
    for when, crop in frames:
        if when >= after and motion_score(crop, refs) > threshold:
            return when
    return None
