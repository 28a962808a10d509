"""The driving signal of the avatars: a mouth-shape track made from the reply.

A shape is four numbers in 0..1 (``SHAPE_FIELDS``):

* ``open``: jaw / lip opening (0 = the lips at rest, 1 = wide open);
* ``width``: lip corners spread (0.5 = rest, 1 = "ee", 0 = narrow);
* ``round``: lips rounded and pushed forward ("oo", "o", "sh");
* ``closure``: the lips pressed together (p, b, m; silence inside speech).

Two sources:

1. **Phonemes with timings**: the reply's ``(phoneme, start_s, end_s)`` spans
   (models/phonemes.py: Kokoro's own durations or our alignment); each
   phoneme's class has its shape (``shape_of``).
2. **Audio only** (``mouth_track(audio, sr)`` without timings): loudness opens
   the mouth, gaps inside speech close it, the spectral centroid of voiced
   frames picks spread (bright) or rounded (dark) lips.

``mouth_track`` gives the shapes at ``TRACK_RATE`` (100 per second) for a whole
pushed chunk of audio, so each frame looks ahead as far as it likes: shape
changes are anticipated by ``ANTICIPATE_S`` and smoothed (coarticulation), the
opening follows the loudness ``OPEN_LEAD_S`` ahead (louder: wider), bilabials
close the lips, and quiet stretches inside speech bring them together
(``QUIET_DRIVE``), so the lip gap follows the voice from pressed to wide open.
"""

from __future__ import annotations

import math

import numpy as np

from models.phonemes import BILABIALS, FRAME_RATE, frame_features, phoneme_class

SHAPE_FIELDS = ("open", "width", "round", "closure")
REST = np.array([0.0, 0.5, 0.0, 0.0], np.float32)  # idle: the photo as it is
SILENT = np.array([0.0, 0.5, 0.0, 1.0], np.float32)  # a pause inside speech: lips together
TRACK_RATE = FRAME_RATE  # shapes per second: one per audio feature frame
ANTICIPATE_S = 0.07  # lip shape (width, rounding) leads the sound by this much
CLOSURE_LEAD_S = 0.02  # lips close this much before a bilabial's aligned start
OPEN_LEAD_S = 0.03  # the opening follows the loudness this much ahead
BILABIAL_MIN_S = 0.06  # bilabial closures are held at least this long
OPEN_POWER = 0.8  # opening ~ amplitude ** OPEN_POWER (see mouth_track)
CLOSURE_SIGMA = 0.8  # smoothing of the closure channel (frames): bilabials close briskly
# Inside speech the lips come together as the voice gets quiet (the jaw rises
# between syllables): closure = QUIET_CLOSURE * (1 - drive / QUIET_DRIVE), where
# drive (0..1) is the loudness-driven opening. A face whose rest shows parted
# lips (a smile with teeth) needs this to look nearly shut on quiet consonants.
QUIET_DRIVE = 0.6
QUIET_CLOSURE = 0.9
SHORT_GAP_S = 0.12  # breaks between aligned phonemes shorter than this keep the lips apart

# --------------------------------------------------------------------- shapes
# phoneme class (models/phonemes.py) -> (open, width, round, closure)
_SHAPES: dict[str, tuple[float, float, float, float]] = {
    "open_v": (1.0, 0.6, 0.0, 0.0),  # a, ɑ, æ, ʌ
    "mid_v": (0.65, 0.65, 0.0, 0.0),  # e, ɛ, ə, ɜ, ɤ
    "front_v": (0.35, 1.0, 0.0, 0.0),  # i, ɪ
    "round_v": (0.6, 0.15, 0.75, 0.0),  # o, ɔ, ɒ
    "close_round_v": (0.3, 0.0, 1.0, 0.0),  # u, ʊ, y
    "bilabial": (0.0, 0.5, 0.0, 1.0),  # p, b, m
    "labiodental": (0.08, 0.45, 0.0, 0.55),  # f, v
    "glide_round": (0.2, 0.0, 0.9, 0.0),  # w, ɥ
    "glide_front": (0.25, 0.9, 0.0, 0.0),  # j
    "rhotic": (0.3, 0.3, 0.5, 0.0),  # ɹ, ɻ, r
    "postalveolar": (0.2, 0.3, 0.65, 0.0),  # ʃ, ʒ, ʧ, ʤ, ʂ, ʈʂ, ɕ, ʨ
    "sibilant": (0.18, 0.7, 0.0, 0.0),  # s, z, ʦ, ʣ
    "dental": (0.2, 0.6, 0.0, 0.0),  # θ, ð
    "alveolar": (0.2, 0.55, 0.0, 0.0),  # t, d, n, l
    "nasal_al": (0.2, 0.55, 0.0, 0.0),  # n, ŋ, ɲ
    "lateral": (0.3, 0.55, 0.0, 0.0),  # l
    "velar": (0.35, 0.5, 0.0, 0.0),  # k, g, x, h
}


def shape_of(phoneme: str) -> np.ndarray:
    cls = phoneme_class(phoneme)
    if cls is None:
        return SILENT.copy()
    return np.array(_SHAPES[cls], np.float32)


def envelope(audio: np.ndarray, sr: int) -> np.ndarray:
    """Loudness 0..1 per 10 ms (the curve the opening follows)."""
    return frame_features(audio, sr)[0]


# ---------------------------------------------------------------------- track
def _shift(x: np.ndarray, frames: int) -> np.ndarray:
    """x[t + frames] (look ahead), holding the last value."""
    if frames <= 0 or x.shape[0] == 0:
        return x
    return np.concatenate([x[frames:], np.repeat(x[-1:], min(frames, x.shape[0]), axis=0)])


def _smooth(x: np.ndarray, sigma_frames: float) -> np.ndarray:
    if sigma_frames <= 0 or x.shape[0] < 2:
        return x
    r = int(math.ceil(3 * sigma_frames))
    k = np.exp(-0.5 * (np.arange(-r, r + 1) / sigma_frames) ** 2)
    k /= k.sum()
    pad = np.pad(x, ((r, r),) + ((0, 0),) * (x.ndim - 1), mode="edge")
    if x.ndim == 1:
        return np.convolve(pad, k, mode="valid").astype(np.float32)
    return np.stack(
        [np.convolve(pad[:, j], k, mode="valid") for j in range(x.shape[1])], axis=1
    ).astype(np.float32)


def mouth_track(
    audio: np.ndarray,
    sr: int,
    timings: list[tuple[str, float, float]] | None = None,
) -> np.ndarray:
    """Shapes (T, 4) at ``TRACK_RATE`` for ``audio`` (row t: the shape at
    t / TRACK_RATE seconds), from phoneme ``timings`` if given, else from the
    audio alone. The track ends relaxed (closed lips) so the next chunk or the
    idle face takes over smoothly."""
    loud, _hf, centroid = frame_features(audio, sr)
    t_n = loud.size
    lead = int(round(OPEN_LEAD_S * TRACK_RATE))
    env = _smooth(_shift(loud, lead), 1.5)
    voiced = env > 0.12
    targets = np.repeat(SILENT[None, :], t_n, axis=0)
    if timings:
        assigned = np.zeros(t_n, bool)
        for ph, start, end in timings:
            a = max(0, int(round(start * TRACK_RATE)))
            b = min(t_n, max(a + 1, int(round(end * TRACK_RATE))))
            assigned[a:b] = True
            if ph in BILABIALS:  # a closure lasts long enough to be seen (>= 2 frames)
                short = BILABIAL_MIN_S * TRACK_RATE - (b - a)
                if short > 0:
                    a = max(0, a - int(short // 2))
                    b = min(t_n, b + int(short - short // 2))
            targets[a:b] = shape_of(ph)
        for ph, start, end in timings:  # closures last: they win over their neighbours
            if ph in BILABIALS:
                a = max(0, int(round(start * TRACK_RATE)))
                b = min(t_n, max(a + 1, int(round(end * TRACK_RATE))))
                short = BILABIAL_MIN_S * TRACK_RATE - (b - a)
                if short > 0:
                    a = max(0, a - int(short // 2))
                    b = min(t_n, b + int(short - short // 2))
                targets[a:b] = shape_of(ph)
        # A short break between words (< SHORT_GAP_S) does not close the lips: it
        # blends the neighbours, half open.
        idx = np.nonzero(assigned)[0]
        if idx.size:
            gaps = np.nonzero(np.diff(idx) > 1)[0]
            for g in gaps:
                a, b = idx[g] + 1, idx[g + 1]
                if (b - a) < SHORT_GAP_S * TRACK_RATE:
                    mix = 0.5 * (targets[a - 1] + targets[b])
                    mix[0] *= 0.5
                    mix[3] = min(targets[a - 1, 3], targets[b, 3])
                    targets[a:b] = mix
    else:
        # Audio only: spread (bright) vs rounded (dark) from the centroid.
        bright = np.clip((centroid - 900.0) / 1400.0, 0.0, 1.0)
        targets[voiced, 0] = 0.7
        targets[voiced, 1] = 0.25 + 0.6 * bright[voiced]
        targets[voiced, 2] = 0.6 * (1.0 - bright[voiced])
        targets[voiced, 3] = 0.0
    # Coarticulation: shape leads the sound and blends with its neighbours.
    shape = _smooth(_shift(targets, int(round(ANTICIPATE_S * TRACK_RATE))), 3.0)
    closure = _smooth(_shift(targets[:, 3], int(round(CLOSURE_LEAD_S * TRACK_RATE))), CLOSURE_SIGMA)
    out = np.empty((t_n, 4), np.float32)
    # Opening: the phoneme's openness scaled by the loudness just ahead, so a
    # loud (stressed) vowel opens wider than a quiet one of the same class.
    # The loudness is in dB over a 30 dB range; the jaw follows the amplitude
    # more closely (loud vowels open far more than quiet consonants), so the
    # dB scale is expanded back towards amplitude (an OPEN_POWER power of it).
    phon_open = _smooth(_shift(targets[:, 0], lead), 2.0)
    floor = 10.0 ** (-1.5 * OPEN_POWER)
    drive = np.clip((10.0 ** (1.5 * OPEN_POWER * (env - 1.0)) - floor) / (1.0 - floor), 0.0, 1.0)
    out[:, 0] = np.clip(drive * (0.55 + 0.45 * phon_open), 0.0, 1.0)
    out[:, 1] = shape[:, 1]
    out[:, 2] = shape[:, 2]
    # Quiet stretches bring the lips together (partly); bilabials and pauses
    # close them fully. The opening gives way to the closure.
    quiet = QUIET_CLOSURE * np.clip(1.0 - drive / QUIET_DRIVE, 0.0, 1.0)
    out[:, 3] = np.clip(np.maximum(closure, quiet), 0.0, 1.0)
    out[:, 0] *= 1.0 - out[:, 3]
    # The first and last 60 ms ease from/to the rest of a pause.
    ramp = min(6, t_n)
    w = np.linspace(0.0, 1.0, ramp, dtype=np.float32)[:, None]
    out[-ramp:] = out[-ramp:] * (1 - w) + SILENT[None, :] * w
    return out


def closed_frames(track: np.ndarray, threshold: float = 0.5) -> np.ndarray:
    """Bool per row: the lips are together (closure above ``threshold``)."""
    return track[:, 3] >= threshold
