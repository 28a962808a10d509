"""Phonemes and when they are heard: the timing of a reply's phonemes in its audio.

Kokoro is given a phoneme string (IPA from espeak for English, misaki's
pinyin-IPA for Chinese). The avatar's mouth (models/avatar/mouth.py) needs to
know when each phoneme is heard, as ``(phoneme, start_s, end_s)`` spans:

1. **Kokoro's own durations** (``spans_from_tokens``): the timed graph
   (models/tts/kokoro_timing.py) reports a span per input character.
2. **Alignment** (``align_phonemes``), when the graph does not say: the
   phoneme string aligned to the audio by a left-to-right Viterbi over 10 ms
   frames whose states are the phonemes in order (each with a minimum
   duration) and optional pauses between words (mandatory ones at
   punctuation); the cost of a frame in a state compares the frame's loudness
   and high-frequency share with what the phoneme's class predicts (vowels
   loud and low, fricatives quiet and hissy, stops quiet, nasals in between).
   A few milliseconds for a sentence.

The TTS makes the spans and the avatar reads them, so this module belongs to
neither stage's package.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import numpy as np

FRAME_RATE = 100  # audio feature frames per second (10 ms)

# ---------------------------------------------------------------- phoneme table
# class -> expected (loudness 0..1, hf share 0..1), minimum duration in 10 ms
# frames. models/avatar/mouth.py gives each class its mouth shape.
_ACOUSTICS: dict[str, tuple[tuple[float, float], int]] = {
    "open_v": ((1.0, 0.05), 3),  # a, ɑ, æ, ʌ
    "mid_v": ((0.95, 0.05), 3),  # e, ɛ, ə, ɜ, ɤ
    "front_v": ((0.9, 0.08), 3),  # i, ɪ
    "round_v": ((0.95, 0.04), 3),  # o, ɔ, ɒ
    "close_round_v": ((0.85, 0.04), 3),  # u, ʊ, y
    "bilabial": ((0.25, 0.2), 3),  # p, b, m
    "labiodental": ((0.3, 0.5), 2),  # f, v
    "glide_round": ((0.7, 0.05), 2),  # w, ɥ
    "glide_front": ((0.75, 0.07), 2),  # j
    "rhotic": ((0.75, 0.06), 2),  # ɹ, ɻ, r
    "postalveolar": ((0.35, 0.7), 2),  # ʃ, ʒ, ʧ, ʤ, ʂ, ʈʂ, ɕ, ʨ
    "sibilant": ((0.3, 0.85), 2),  # s, z, ʦ, ʣ
    "dental": ((0.3, 0.45), 2),  # θ, ð
    "alveolar": ((0.35, 0.3), 2),  # t, d, n, l
    "nasal_al": ((0.6, 0.05), 2),  # n, ŋ, ɲ
    "lateral": ((0.7, 0.06), 2),  # l
    "velar": ((0.3, 0.3), 2),  # k, g, x, h
}
PHONEME_CLASSES = tuple(_ACOUSTICS)
# IPA letter -> its class
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


def phoneme_class(phoneme: str) -> str | None:
    """The class (a key of ``PHONEME_CLASSES``) of one IPA letter, None for
    anything else (pauses, marks)."""
    return _CHAR_CLASS.get(phoneme)


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


# ------------------------------------------------------------------- features
def frame_features(audio: np.ndarray, sr: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per 10 ms (``FRAME_RATE`` frames a second): loudness 0..1 (relative to
    the clip's loud frames), the share of energy above 3 kHz, and the spectral
    centroid (Hz)."""
    audio = np.asarray(audio, np.float32).reshape(-1)
    hop = max(1, int(round(sr / FRAME_RATE)))
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
    loud, hf, _ = frame_features(audio, sr)
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
        cls = _ACOUSTICS[_CHAR_CLASS[tok]]
        (e, h), dmin = cls
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
        dur = t_n / FRAME_RATE / max(1, len(phones))
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
            dmin = _ACOUSTICS[cls_name][1]
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
            out.append((p, float(where[0] / FRAME_RATE), float((where[-1] + 1) / FRAME_RATE)))
    return out
