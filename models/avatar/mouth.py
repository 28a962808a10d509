"""The driving signal of the avatars: a mouth-shape track made from the reply.

A shape is four numbers in 0..1 (``SHAPE_FIELDS``):

* ``open``: jaw / lip opening (0 = the lips at rest, 1 = wide open);
* ``width``: lip corners spread (0.5 = rest, 1 = "ee", 0 = narrow);
* ``round``: lips rounded and pushed forward ("oo", "o", "sh");
* ``closure``: the lips pressed together (p, b, m; silence inside speech).

Two sources:

1. **Phonemes with timings** (``align_phonemes``). Kokoro does not say when
   each phoneme is spoken, so we align the phoneme string it was given (IPA from
   espeak for English, misaki's pinyin-IPA for Chinese) to its own audio: a
   left-to-right Viterbi over 10 ms frames whose states are the phonemes in
   order (each with a minimum duration) and optional pauses between words
   (mandatory ones at punctuation); the cost of a frame in a state compares
   the frame's loudness and high-frequency share with what the phoneme's class
   predicts (vowels loud and low, fricatives quiet and hissy, stops quiet,
   nasals in between). A few milliseconds for a sentence.
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
from collections.abc import Iterable
from typing import Any

import numpy as np

SHAPE_FIELDS = ("open", "width", "round", "closure")
REST = np.array([0.0, 0.5, 0.0, 0.0], np.float32)  # idle: the photo as it is
SILENT = np.array([0.0, 0.5, 0.0, 1.0], np.float32)  # a pause inside speech: lips together
TRACK_RATE = 100  # shapes per second
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

# ---------------------------------------------------------------- phoneme table
# class -> (open, width, round, closure), expected (loudness 0..1, hf share 0..1),
# minimum duration in 10 ms frames.
_CLASSES: dict[str, tuple[tuple[float, float, float, float], tuple[float, float], int]] = {
    "open_v": ((1.0, 0.6, 0.0, 0.0), (1.0, 0.05), 3),  # a, ɑ, æ, ʌ
    "mid_v": ((0.65, 0.65, 0.0, 0.0), (0.95, 0.05), 3),  # e, ɛ, ə, ɜ, ɤ
    "front_v": ((0.35, 1.0, 0.0, 0.0), (0.9, 0.08), 3),  # i, ɪ
    "round_v": ((0.6, 0.15, 0.75, 0.0), (0.95, 0.04), 3),  # o, ɔ, ɒ
    "close_round_v": ((0.3, 0.0, 1.0, 0.0), (0.85, 0.04), 3),  # u, ʊ, y
    "bilabial": ((0.0, 0.5, 0.0, 1.0), (0.25, 0.2), 3),  # p, b, m
    "labiodental": ((0.08, 0.45, 0.0, 0.55), (0.3, 0.5), 2),  # f, v
    "glide_round": ((0.2, 0.0, 0.9, 0.0), (0.7, 0.05), 2),  # w, ɥ
    "glide_front": ((0.25, 0.9, 0.0, 0.0), (0.75, 0.07), 2),  # j
    "rhotic": ((0.3, 0.3, 0.5, 0.0), (0.75, 0.06), 2),  # ɹ, ɻ, r
    "postalveolar": ((0.2, 0.3, 0.65, 0.0), (0.35, 0.7), 2),  # ʃ, ʒ, ʧ, ʤ, ʂ, ʈʂ, ɕ, ʨ
    "sibilant": ((0.18, 0.7, 0.0, 0.0), (0.3, 0.85), 2),  # s, z, ʦ, ʣ
    "dental": ((0.2, 0.6, 0.0, 0.0), (0.3, 0.45), 2),  # θ, ð
    "alveolar": ((0.2, 0.55, 0.0, 0.0), (0.35, 0.3), 2),  # t, d, n, l
    "nasal_al": ((0.2, 0.55, 0.0, 0.0), (0.6, 0.05), 2),  # n, ŋ, ɲ
    "lateral": ((0.3, 0.55, 0.0, 0.0), (0.7, 0.06), 2),  # l
    "velar": ((0.35, 0.5, 0.0, 0.0), (0.3, 0.3), 2),  # k, g, x, h
}
_CHAR_CLASS: dict[str, str] = {}
for _cls, _chars in {
    "open_v": "aɑæʌɐAIW",
    "mid_v": "eɛəɜɚᵊɤœøɘ",
    "front_v": "iɪɨᵻ",
    "round_v": "oɔɒOY",
    "close_round_v": "uʊyɯᵝ",
    "bilabial": "pbmɸβ",
    "labiodental": "fvʋ",
    "glide_round": "wɥ",
    "glide_front": "jʎçʝ",
    "rhotic": "ɹɻrɾɽʁ",
    "postalveolar": "ʃʒʧʤʂʐɕʑʨʥʈꭧ",
    "sibilant": "szʦʣ",
    "dental": "θð",
    "alveolar": "tdɖ",
    "nasal_al": "nŋɲɳɴ",
    "lateral": "l",
    "velar": "kgɡxhχɣɟqʔcɰ",
}.items():
    for _c in _chars:
        _CHAR_CLASS[_c] = _cls

_PAUSE_CHARS = set('.,!?;:—…()"“”')
_IGNORED = set("ˈˌʰʲ̃→↓↗↘0123456789-'")
BILABIALS = set("pbmɸβ")


def parse_phonemes(phonemes: str) -> list[str]:
    """Split a Kokoro phoneme string into tokens: one phoneme per IPA letter
    (length marks, stress, aspiration and tone marks dropped), ``" "`` for a word
    break and ``"."`` for punctuation (a pause)."""
    out: list[str] = []
    for ch in phonemes:
        if ch in _PAUSE_CHARS:
            if out and out[-1] == " ":
                out[-1] = "."
            elif out and out[-1] != ".":
                out.append(".")
        elif ch.isspace():
            if out and out[-1] not in (" ", "."):
                out.append(" ")
        elif ch == "ː":
            if out and out[-1] in _CHAR_CLASS:
                out.append(out[-1])  # a long vowel: the same target, twice the time
        elif ch in _IGNORED:
            continue
        elif ch in _CHAR_CLASS:
            out.append(ch)
    while out and out[-1] in (" ", "."):
        out.pop()
    while out and out[0] in (" ", "."):
        out.pop(0)
    return out


def shape_of(phoneme: str) -> np.ndarray:
    cls = _CHAR_CLASS.get(phoneme)
    if cls is None:
        return SILENT.copy()
    return np.array(_CLASSES[cls][0], np.float32)


# ------------------------------------------------------------------- features
def _frames(audio: np.ndarray, sr: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per 10 ms: loudness 0..1 (relative to the clip's loud frames), the share
    of energy above 3 kHz, and the spectral centroid (Hz)."""
    audio = np.asarray(audio, np.float32).reshape(-1)
    hop = max(1, int(round(sr / TRACK_RATE)))
    n = max(1, int(math.ceil(audio.size / hop)))
    win = 2 * hop
    nfft = 1 << int(math.ceil(math.log2(win)))
    padded = np.zeros(n * hop + win, np.float32)
    padded[hop // 2 : hop // 2 + audio.size] = audio
    idx = np.arange(n)[:, None] * hop + np.arange(win)[None, :]
    frames = padded[idx] * np.hanning(win).astype(np.float32)[None, :]
    spec = np.abs(np.fft.rfft(frames, nfft, axis=1)) ** 2
    freqs = np.fft.rfftfreq(nfft, 1.0 / sr)
    total = spec.sum(axis=1) + 1e-12
    hf = spec[:, freqs >= 3000.0].sum(axis=1) / total
    band = (freqs >= 100.0) & (freqs <= 5000.0)
    centroid = (spec[:, band] * freqs[band]).sum(axis=1) / (spec[:, band].sum(axis=1) + 1e-12)
    db = 10.0 * np.log10(total / win + 1e-12)
    top = float(np.percentile(db, 95)) if n > 3 else float(db.max())
    loud = np.clip((db - (top - 30.0)) / 30.0, 0.0, 1.0)
    loud[db < -70.0] = 0.0  # digital silence
    return loud.astype(np.float32), hf.astype(np.float32), centroid.astype(np.float32)


def envelope(audio: np.ndarray, sr: int) -> np.ndarray:
    """Loudness 0..1 per 10 ms (the curve the opening follows)."""
    return _frames(audio, sr)[0]


# ------------------------------------------------------- Kokoro's own durations
_STRESS = set("ˈˌ")
# Kokoro's decoder sounds a phoneme about 50 ms before the span its durations
# give it (measured: the loudness envelope of the eval sentences correlates best
# with the vowel spans, and worst with the p/b/m spans, 50-70 ms earlier).
KOKORO_SHIFT_S = -0.05


def spans_from_tokens(
    spoken: Iterable[Any], shift_s: float = KOKORO_SHIFT_S
) -> list[tuple[str, float, float]]:
    """(phoneme, start_s, end_s) from per-token spans the TTS itself reports
    (Kokoro's predicted durations: ``(char, start, end)`` or objects with
    ``phoneme``/``start``/``end``, one per input character). Stress marks give
    their time to the phoneme after them (espeak puts them before the stressed
    syllable's nucleus), length and tone marks to the one before; word breaks
    and punctuation stay gaps. All spans move by ``shift_s`` (clipped at 0)."""
    out: list[list[Any]] = []
    pending: float | None = None  # start of a stress mark waiting for its phoneme
    for item in spoken:
        if isinstance(item, tuple):
            ch, start, end = item
        else:
            ch, start, end = item.phoneme, item.start, item.end
        start, end = float(start), float(end)
        if ch in _CHAR_CLASS:
            out.append([ch, start if pending is None else pending, end])
            pending = None
        elif ch in _STRESS:
            pending = start if pending is None else pending
        elif ch.isspace() or ch in _PAUSE_CHARS:
            pending = None
        elif out and abs(out[-1][2] - start) < 1e-6:  # ː, tones, diacritics
            out[-1][2] = max(out[-1][2], end)
    moved = [(p, max(0.0, a + shift_s), max(0.0, b + shift_s)) for p, a, b in out]
    return [(p, a, b) for p, a, b in moved if b > a]


# ------------------------------------------------------------------ alignment
def align_phonemes(phonemes: str, audio: np.ndarray, sr: int) -> list[tuple[str, float, float]]:
    """(phoneme, start_s, end_s) for the phonemes of ``phonemes`` (Kokoro's input
    string) in ``audio``, by a Viterbi alignment on loudness and hiss."""
    tokens = parse_phonemes(phonemes)
    if not tokens or np.asarray(audio).size == 0:
        return []
    loud, hf, _ = _frames(audio, sr)
    t_n = loud.size
    # States: a leading pause, then per phoneme its chain of min-duration states,
    # a pause state at word breaks (skippable) and punctuation (not), a trailing pause.
    exp_e: list[float] = []
    exp_h: list[float] = []
    owner: list[int] = []  # index into `phones`, -1 for pauses
    loop: list[bool] = []  # may stay in the state
    skip_ok: list[bool] = []  # may be jumped over
    phones: list[str] = []

    def pause(optional: bool) -> None:
        exp_e.append(0.0)
        exp_h.append(-1.0)
        owner.append(-1)
        loop.append(True)
        skip_ok.append(optional)

    pause(True)
    for tok in tokens:
        if tok in (" ", "."):
            pause(tok == " ")
            continue
        cls = _CLASSES[_CHAR_CLASS[tok]]
        (e, h), dmin = cls[1], cls[2]
        phones.append(tok)
        for k in range(dmin):
            exp_e.append(e)
            exp_h.append(h)
            owner.append(len(phones) - 1)
            loop.append(k == dmin - 1)
            skip_ok.append(False)
    pause(True)
    s_n = len(exp_e)
    if s_n > t_n:  # more phoneme states than frames: spread evenly
        dur = t_n / TRACK_RATE / max(1, len(phones))
        return [(p, i * dur, (i + 1) * dur) for i, p in enumerate(phones)]
    # A prior that keeps the alignment near a steady speaking rate between the
    # first and last loud frames (each state's expected frame by typical durations).
    speech = np.nonzero(loud > 0.35)[0]
    first, last = (int(speech[0]), int(speech[-1]) + 1) if speech.size else (0, t_n)
    typical = np.array([0.0 if o < 0 else 1.0 for o in owner], np.float32)
    for i, (o, sk) in enumerate(zip(owner, skip_ok, strict=True)):
        if o < 0 and not sk and 0 < i < s_n - 1:
            typical[i] = 12.0  # a pause at punctuation
        elif o >= 0:
            cls_name = _CHAR_CLASS[phones[o]]
            dmin = _CLASSES[cls_name][2]
            typical[i] = (8.0 if cls_name.endswith("_v") else 5.5) / dmin
    cum = np.cumsum(typical) - 0.5 * typical
    total = max(1e-6, float(typical.sum()))
    centre = first + cum / total * max(1, last - first)
    prior = 0.06 * ((np.arange(t_n, dtype=np.float32)[:, None] - centre[None, :]) / 12.0) ** 2
    prior[:, 0] = 0.0
    prior[:, -1] = 0.0
    e_arr = np.array(exp_e, np.float32)
    h_arr = np.array(exp_h, np.float32)
    use_h = (h_arr >= 0).astype(np.float32)
    cost = (loud[:, None] - e_arr[None, :]) ** 2 + 0.6 * use_h[None, :] * (
        hf[:, None] - np.maximum(h_arr, 0)[None, :]
    ) ** 2
    cost += prior.astype(np.float32)
    loop_arr = np.array(loop)
    skip_arr = np.array(skip_ok)
    inf = np.float32(1e9)
    d = np.full(s_n, inf, np.float32)
    d[0] = cost[0, 0]
    if skip_arr[0]:
        d[1] = cost[0, 1]
    back = np.zeros((t_n, s_n), np.int8)  # 0 stay, 1 from s-1, 2 from s-2
    stay_pen = np.where(loop_arr, 0.0, inf).astype(np.float32)
    for t in range(1, t_n):
        stay = d + stay_pen
        step = np.full(s_n, inf, np.float32)
        step[1:] = d[:-1]
        jump = np.full(s_n, inf, np.float32)
        jump[2:] = np.where(skip_arr[1:-1], d[:-2], inf)
        best = np.minimum(np.minimum(stay, step), jump)
        back[t] = np.where(best == stay, 0, np.where(best == step, 1, 2))
        d = best + cost[t]
    s = s_n - 1 if d[s_n - 1] <= d[s_n - 2] or not skip_arr[s_n - 1] else s_n - 2
    path = np.empty(t_n, np.int32)
    for t in range(t_n - 1, -1, -1):
        path[t] = s
        s -= int(back[t, s])
    own = np.array(owner)[path]
    out: list[tuple[str, float, float]] = []
    for i, p in enumerate(phones):
        where = np.nonzero(own == i)[0]
        if where.size:
            out.append((p, float(where[0] / TRACK_RATE), float((where[-1] + 1) / TRACK_RATE)))
    return out


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
    loud, _hf, centroid = _frames(audio, sr)
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
