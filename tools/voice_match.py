"""Offline voice matching: a Kokoro voice that sounds as close as Kokoro can get
to a user's clip. This matches, it does not clone: the result is a point in the
space of Kokoro's own voices, judged by a speaker encoder (models/speaker/).

1. The clip is embedded; so is each stock voice of the clip's language (a few
   fixed sentences spoken by it, embedded once per machine and cached in
   ``weights/speaker/stock_embeddings.npz``, keyed by the encoder, the voice
   set and the sentences).
2. The nearest stock voices are blended (weights from their similarity), and
   the nearest is mixed with a little of each of the next few.
3. A (1+1) evolution strategy perturbs the timbre half of the style (dims
   0-127; 128-255 drive prosody and are kept from the blend) along the stock
   voices' principal directions. Each candidate speaks the scored sentences;
   the mean cosine similarity of their embeddings to the clip is the objective.
   It stops at the time budget or after a run of failures.

The nearest stock voice is scored the same way (the same sentences), and the
search only ever keeps an improvement, so the result is never worse than it.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from math import gcd
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import numpy as np

from models.speaker import DEFAULT_ENCODER, SPEAKER_DIR, SpeakerEncoder, l2_normalize, load_encoder

if TYPE_CHECKING:
    from models.tts.kokoro import KokoroSynthesizer

log = logging.getLogger(__name__)

STOCK_FILE = "stock_embeddings.npz"
DEFAULT_BUDGET_S = 60.0
SAMPLE_RATE = 16_000
TIMBRE = slice(0, 128)  # the decoder's half of a Kokoro style; 128-255 is prosody
STYLE_SHAPE = (510, 1, 256)
# The stock voices of a language: Kokoro names start with it (a/b English, z Chinese).
LANG_PREFIXES = {"en": ("a", "b"), "zh": ("z",)}
# Each stock voice speaks these once (its embedding is their mean); the first
# SCORED_SENTENCES of them are what every search candidate speaks.
SENTENCES = {
    "en": (
        "Please call Stella and ask her to bring these things.",
        "When sunlight strikes raindrops in the air, they form a rainbow.",
    ),
    "zh": (
        "请你明天下午三点到图书馆门口等我。",
        "今天天气很好，我们一起去公园散步吧。",
    ),
}
BLEND_K = 3
BLEND_TEMPERATURE = 0.02  # similarity differences are small: a sharp softmax
MIX_VOICES = 3  # the next nearest voices mixed into the nearest, each at MIX_WEIGHTS
MIX_WEIGHTS = (0.1, 0.25)
N_DIRECTIONS = 8
SCORED_SENTENCES = 1
PATIENCE = 20  # failed candidates in a row that end the search (10 stopped most at ~17 s)

Progress = Callable[[float, str], None]


@dataclass
class MatchResult:
    style: np.ndarray  # float32 (510, 1, 256): a Kokoro voice
    # cosine similarity (speaker embedding) of the matched voice's speech to the clip
    similarity: float
    nearest_stock: str  # the closest stock Kokoro voice of the clip's language
    nearest_similarity: float  # its similarity to the clip
    lang: str  # "en" or "zh"


# ---------------------------------------------------------------- the voice
class _Voice:
    """Kokoro speaking arbitrary style arrays, and the speaker encoders, shared
    by every match in this process: one call at a time."""

    def __init__(self, weights_dir: Path) -> None:
        from models.tts.kokoro import KOKORO_MODEL_FILE, KOKORO_VOICES_FILE, KokoroSynthesizer

        kokoro_dir = weights_dir / "kokoro"
        self.tts: KokoroSynthesizer = KokoroSynthesizer(
            kokoro_dir / KOKORO_MODEL_FILE, kokoro_dir / KOKORO_VOICES_FILE, warmup=False
        )
        self.weights_dir = weights_dir
        self.stock: dict[str, np.ndarray] = dict(self.tts._kokoro.voices)
        self.lock = threading.RLock()
        self._phonemes: dict[tuple[str, str], str] = {}
        # Stock voices' speech, kept while this process builds stock tables
        # (so a second encoder does not synthesize it all again).
        self.stock_audio: dict[tuple[str, str], np.ndarray] = {}

    def encoder(self, name: str) -> SpeakerEncoder:
        return shared_encoder(self.weights_dir, name)

    def speak_stock(self, name: str, text: str, lang: str) -> np.ndarray:
        key = (name, text)
        if key not in self.stock_audio:
            self.stock_audio[key] = self.speak(self.stock[name], text, lang, accent=name)
        return self.stock_audio[key]

    def phonemes(self, text: str, lang: str, accent: str) -> str:
        """``accent``: a stock voice name; its first letter picks the English
        front end (b: British), as models/tts/kokoro.py does for user voices
        through their ``nearest_stock``."""
        key = (text, lang, accent[:1])
        if key not in self._phonemes:
            self._phonemes[key] = self.tts.phonemize(text, lang, accent)
        return self._phonemes[key]

    def speak(
        self, style: np.ndarray, text: str, lang: str, accent: str = "af_heart"
    ) -> np.ndarray:
        """``text`` spoken with ``style``, 16 kHz float32."""
        audio, rate = self.tts._kokoro.create(
            self.phonemes(text, lang, accent),
            np.asarray(style, np.float32),
            speed=1.0,
            is_phonemes=True,
        )
        return resample_16k(np.asarray(audio, np.float32).reshape(-1), int(rate))


_voices: dict[Path, _Voice] = {}
_voices_lock = threading.Lock()
_encoders: dict[tuple[Path, str], SpeakerEncoder] = {}
_encoders_lock = threading.Lock()


def shared_encoder(weights_dir: Path, name: str) -> SpeakerEncoder:
    """The speaker encoder ``name``, loaded once per process."""
    key = (Path(weights_dir).resolve(), name)
    with _encoders_lock:
        if key not in _encoders:
            _encoders[key] = load_encoder(name, Path(weights_dir))
        return _encoders[key]


def configured_encoder(weights_dir: Path) -> SpeakerEncoder:
    """The speaker encoder the config names (``voices.encoder``)."""
    return shared_encoder(weights_dir, _configured()[0])


def shared_voice(weights_dir: Path) -> _Voice:
    key = Path(weights_dir).resolve()
    with _voices_lock:
        if key not in _voices:
            _voices[key] = _Voice(Path(weights_dir))
        return _voices[key]


def resample_16k(audio: np.ndarray, rate: int) -> np.ndarray:
    from scipy.signal import resample_poly

    if rate == SAMPLE_RATE:
        return np.asarray(audio, np.float32)
    g = gcd(rate, SAMPLE_RATE)
    return resample_poly(audio, SAMPLE_RATE // g, rate // g).astype(np.float32)


def stock_names(voice: _Voice, lang: str) -> list[str]:
    return sorted(n for n in voice.stock if n.startswith(LANG_PREFIXES[lang]))


# ------------------------------------------------------- stock embeddings
def _cache_key(voice: _Voice, encoder: str, lang: str, names: Sequence[str]) -> str:
    # The encoder's front end too: changing it changes every embedding.
    front_end = voice.encoder(encoder).front_end
    h = hashlib.sha256(f"{encoder}\n{front_end}\nown accent\n".encode())  # each its own accent
    for text in SENTENCES[lang]:
        h.update(text.encode() + b"\n")
    for name in names:
        h.update(name.encode() + b"\n" + np.ascontiguousarray(voice.stock[name]).tobytes())
    return f"{encoder}_{lang}_{h.hexdigest()[:16]}"


def stock_embeddings(
    weights_dir: Path, lang: str, encoder: str = DEFAULT_ENCODER, progress: Progress | None = None
) -> tuple[list[str], np.ndarray]:
    """The stock voices of ``lang`` and their embeddings per sentence,
    (voices, sentences, dim): computed once per machine, then read from the cache."""
    voice = shared_voice(weights_dir)
    names = stock_names(voice, lang)
    key = _cache_key(voice, encoder, lang, names)
    path = Path(weights_dir) / SPEAKER_DIR / STOCK_FILE
    cached: dict[str, np.ndarray] = {}
    if path.is_file():
        try:
            with np.load(path) as z:
                cached = {k: z[k] for k in z.files}
        except (OSError, ValueError):
            log.warning("%s unreadable: computing the stock embeddings again", path)
    if key in cached and cached[key].shape[:2] == (len(names), len(SENTENCES[lang])):
        return names, cached[key]
    t0 = time.monotonic()
    rows = []
    with voice.lock:
        for i, name in enumerate(names):
            if progress is not None:
                progress(i / len(names), f"embedding stock voice {name} ({i + 1}/{len(names)})")
            enc = voice.encoder(encoder)
            rows.append([enc.embed(voice.speak_stock(name, t, lang)) for t in SENTENCES[lang]])
    table = np.asarray(rows, np.float32)
    # Drop this encoder and language's stale tables (other voices or sentences).
    prefix = key.rsplit("_", 1)[0] + "_"
    cached = {k: v for k, v in cached.items() if not k.startswith(prefix)}
    cached[key] = table
    tmp = path.with_name(f"{path.name}.{os.getpid()}.partial.npz")  # processes may race
    np.savez(tmp, **cast(dict[str, Any], cached))  # numpy's stub types **kwds too narrowly
    tmp.replace(path)
    log.info("stock embeddings for %s (%s): %.0f s", lang, encoder, time.monotonic() - t0)
    return names, table


# ------------------------------------------------------------------ search
def _directions(styles: np.ndarray) -> np.ndarray:
    """Principal directions of the stock voices' timbre halves, each scaled by
    the spread of the voices along it: (n, 510, 1, 128)."""
    flat = styles[..., TIMBRE].reshape(len(styles), -1).astype(np.float64)
    centred = flat - flat.mean(axis=0)
    _, s, vt = np.linalg.svd(centred, full_matrices=False)
    n = min(N_DIRECTIONS, len(s) - 1) if len(s) > 1 else 0
    scaled = vt[:n] * (s[:n, None] / np.sqrt(max(1, len(styles) - 1)))
    return scaled.reshape(n, *styles.shape[1:3], 128).astype(np.float32)


def _configured() -> tuple[str, float]:
    """``voices.encoder`` and ``voices.match_budget_s`` from the config (the
    built-in defaults when it cannot be read)."""
    try:
        from core.config import load_config

        voices = load_config().voices
        return voices.encoder, float(voices.match_budget_s)
    except Exception as exc:  # a broken config must not stop adding a voice
        log.warning("config unreadable (%s): default encoder and budget", exc)
        return DEFAULT_ENCODER, DEFAULT_BUDGET_S


def match_voice(
    audio_16k: np.ndarray,
    lang: str,
    weights_dir: Path,
    progress: Callable[[float, str], None],
    *,
    encoder: str | None = None,
    budget_s: float | None = None,
    seed: int = 0,
    exclude: Sequence[str] = (),
    sentences: int = SCORED_SENTENCES,
) -> MatchResult:
    """Match the clip (16 kHz mono float32 speech) to a Kokoro voice of
    ``lang``. ``encoder``, ``budget_s``: None = the config's ``voices``
    section. ``exclude``: stock voices left out of the pool (held-out
    evaluation). ``sentences``: how many of the stock sentences each candidate
    speaks (more: less fitted to one sentence's sounds, fewer candidates).
    Deterministic for a given ``seed`` and candidate count; the time budget
    can end the search at a different candidate on a busy machine."""
    if lang not in LANG_PREFIXES:
        raise ValueError(f"lang must be one of {sorted(LANG_PREFIXES)}, not {lang!r}")
    if encoder is None or budget_s is None:
        configured = _configured()
        encoder = configured[0] if encoder is None else encoder
        budget_s = configured[1] if budget_s is None else budget_s
    weights_dir = Path(weights_dir)
    progress(0.0, "loading the voice model and speaker encoder")
    voice = shared_voice(weights_dir)
    enc = voice.encoder(encoder)
    clip = enc.embed(np.asarray(audio_16k, np.float32).reshape(-1))

    def stock_progress(f: float, msg: str) -> None:
        progress(0.3 * f, msg)

    names, table = stock_embeddings(weights_dir, lang, encoder, stock_progress)
    # The budget is the search's: the one-off stock table (first use) is not counted.
    started = time.monotonic()
    keep = [i for i, n in enumerate(names) if n not in set(exclude)]
    if not keep:
        raise ValueError(f"no stock voices of {lang} left to match against")
    names = [names[i] for i in keep]
    table = table[keep]
    per_voice = l2_normalize(table.mean(axis=1))
    sims = per_voice @ clip
    order = np.argsort(-sims, kind="stable")
    nearest = names[int(order[0])]
    scored = SENTENCES[lang][: max(1, sentences)]
    # The nearest voice's scores are in the cache: the same syntheses the
    # search would make, so both are measured alike.
    nearest_sim = float(np.mean(table[int(order[0]), : len(scored)] @ clip))
    best_style = voice.stock[nearest].astype(np.float32)
    best_sim = nearest_sim
    progress(0.3, f"nearest stock voice {nearest} ({nearest_sim:.3f}); blending")

    def score(style: np.ndarray) -> float:
        with voice.lock:
            said = [voice.speak(style, text, lang, accent=nearest) for text in scored]
            return float(np.mean([enc.embed(audio) @ clip for audio in said]))

    def searched() -> float:
        """The progress bar's share once the stock table is done."""
        return min(0.99, 0.4 + 0.6 * (time.monotonic() - started) / budget_s)

    styles = np.stack([voice.stock[n] for n in names]).astype(np.float32)
    # Blends of the 2 and 3 nearest, weighted by a softmax of their similarity,
    # then the nearest with a little of each next one (whole styles: a stock
    # voice can be a sharp peak that timbre steps alone only leave).
    blends = []
    for k in range(2, min(BLEND_K, len(names)) + 1):
        idx = order[:k]
        w = np.exp((sims[idx] - sims[idx].max()) / BLEND_TEMPERATURE)
        w /= w.sum()
        blends.append(np.tensordot(w, styles[idx], axes=1).astype(np.float32))
    for other in order[1 : 1 + MIX_VOICES]:
        for weight in MIX_WEIGHTS:
            blends.append((1 - weight) * best_style + weight * styles[int(other)])
    blend = best_style
    for tried, candidate in enumerate(blends, 1):
        if time.monotonic() - started >= budget_s:
            break
        s = score(candidate)
        if s > best_sim:
            best_sim, best_style, blend = s, candidate, candidate
        progress(
            searched(),
            f"blend {tried}/{len(blends)}: similarity {best_sim:.3f} (nearest {nearest_sim:.3f})",
        )
    # The search: perturb the timbre half along the principal directions;
    # step size up on success, down on failure (the 1/5 rule, roughly).
    rng = np.random.default_rng(seed)
    directions = _directions(styles)
    sigma = 0.5
    fails = 0
    rounds = 0
    while directions.size and time.monotonic() - started < budget_s and fails < PATIENCE:
        z = rng.standard_normal(len(directions)).astype(np.float32)
        candidate = best_style.copy()
        candidate[..., TIMBRE] += sigma * np.tensordot(z, directions, axes=1)
        candidate[..., 128:] = blend[..., 128:]
        s = score(candidate)
        rounds += 1
        if s > best_sim:
            best_sim, best_style = s, candidate
            sigma *= 1.5
            fails = 0
        else:
            sigma *= 0.85
            fails += 1
        progress(
            searched(),
            f"search round {rounds}: similarity {best_sim:.3f} (nearest {nearest_sim:.3f})",
        )
    log.info(
        "matched %s voice in %.0f s, %d rounds: %.3f (nearest %s %.3f)",
        lang,
        time.monotonic() - started,
        rounds,
        best_sim,
        nearest,
        nearest_sim,
    )
    progress(1.0, f"matched: similarity {best_sim:.3f} (nearest stock {nearest} {nearest_sim:.3f})")
    return MatchResult(
        style=np.ascontiguousarray(best_style, dtype=np.float32).reshape(STYLE_SHAPE),
        similarity=best_sim,
        nearest_stock=nearest,
        nearest_similarity=nearest_sim,
        lang=lang,
    )
