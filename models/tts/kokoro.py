"""TTS backend ``kokoro`` (the default, offline, CPU).

Kokoro-82M int8 ONNX through kokoro-onnx. English text is phonemized by
espeak-ng (kokoro-onnx's own tokenizer, library from ``espeakng-loader``),
Chinese by misaki's ``ZHG2P`` (pypinyin + jieba, no espeak); the phonemes go
to ``Kokoro.create(..., is_phonemes=True)``. Mixed text is split into runs so
that English words inside a Chinese sentence (and Chinese inside English) are
phonemized by the right front end. One call makes a whole sentence, so
``stream`` is the base class's single chunk.

User voices (``weights/voices/<name>/``: ``style.npy``, a Kokoro voice matched
to a user's clip by tools/voice_library.py, and ``meta.json`` with its
``lang``) are looked up on use, so one added or removed while the server runs
counts at once; kokoro-onnx takes their style array in place of a voice name.
"""

from __future__ import annotations

import logging
import re
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from core.config import Config, TTSConfig
from core.lang import CJK_CHARS
from models.backends import backend
from models.base import (
    BackendNeeds,
    BackendUnavailable,
    PackageNeed,
    Speech,
    SpeechSynthesizer,
    WeightNeed,
)
from models.needs import MB, VIDEOCHAT_WEIGHTS
from models.tts import user_voices
from models.tts.common import normalize_lang

log = logging.getLogger(__name__)

KOKORO_SAMPLE_RATE = 24_000
KOKORO_MODEL_FILE = "kokoro-v1.0.int8.onnx"
KOKORO_VOICES_FILE = "voices.npz"

_CJK_RUN = re.compile(f"([{CJK_CHARS}]+)")
# A run of Latin words inside Chinese text ("用 ChatGPT 写", "Hello World").
_LATIN_RUN = re.compile(r"([A-Za-z][A-Za-z'\-]*(?:\s+[A-Za-z][A-Za-z'\-]*)*)")
_STYLE_SHAPE = (510, 1, 256)


@dataclass(frozen=True)
class UserVoice:
    """A user voice as read from ``weights/voices/<name>/``."""

    style: np.ndarray  # float32 (510, 1, 256)
    lang: str  # "en" | "zh"
    accent: str  # a stock voice whose name picks espeak's English (b...: British)
    stamp: tuple[int, int]  # meta.json's (inode, mtime): a voice added again is read again


@backend("tts", "kokoro")
class KokoroSynthesizer(SpeechSynthesizer):
    """Kokoro-82M (v1.0, int8 ONNX), 24 kHz, 54 voices in English and Chinese.

    ``synthesize`` is blocking and safe to call from several worker threads
    (onnxruntime sessions are thread-safe; espeak and the Chinese G2P are
    serialized by locks)."""

    sample_rate = KOKORO_SAMPLE_RATE
    has_timings = True  # Kokoro's own durations, or the aligner's (models/phonemes.py)

    def __init__(
        self,
        model_path: str | Path,
        voices_path: str | Path,
        *,
        voice_en: str = "af_heart",
        voice_zh: str = "zf_xiaoxiao",
        speed: float = 1.0,
        threads: int = 2,
        warmup: bool = True,
        user_voices_dir: str | Path | None = None,
    ) -> None:
        model_path, voices_path = Path(model_path), Path(voices_path)
        missing = [str(p) for p in (model_path, voices_path) if not p.is_file()]
        if missing:
            raise BackendUnavailable(
                f"Kokoro weights not found: {', '.join(missing)}; run `videochat weights`"
            )
        try:
            import onnxruntime as ort
            from kokoro_onnx import Kokoro
            from misaki import zh
        except ImportError as exc:
            raise BackendUnavailable(
                f"TTS backend 'kokoro' needs kokoro-onnx and misaki[zh] ({exc}): "
                "`pip install kokoro-onnx==0.6.1 'misaki[zh]==0.9.4' espeakng-loader==0.2.4`"
            ) from exc
        if not 0.5 <= speed <= 2.0:
            raise ValueError(f"speed must be between 0.5 and 2.0, got {speed}")

        # kokoro-onnx's own create_session() takes no options; build the session
        # ourselves so the thread count is ours, then hand it over.
        options = ort.SessionOptions()
        options.intra_op_num_threads = max(1, int(threads))
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        # The same graph with Kokoro's per-phoneme durations as a second output
        # (models/tts/kokoro_timing.py, written by `videochat weights`): identical
        # audio, plus real phoneme timings for the avatar's mouth.
        from models.tts.kokoro_timing import timed_path

        timed = timed_path(model_path)
        session = ort.InferenceSession(
            str(timed if timed.is_file() else model_path),
            sess_options=options,
            providers=["CPUExecutionProvider"],
        )
        self._kokoro = Kokoro.from_session(session, str(voices_path))
        # True when Speech.phonemes come from Kokoro's own durations, False when
        # they come from aligning the phonemes to the audio (models/phonemes.py).
        self.timed = bool(getattr(self._kokoro, "has_timings", False)) and hasattr(
            self._kokoro, "_create_batches"
        )
        # np.load gives a lazy NpzFile that re-reads the zip on every lookup and
        # is not thread-safe: load all 54 voices (28 MB) once.
        self._kokoro.voices = {name: np.asarray(v) for name, v in self._kokoro.voices.items()}
        self._voices = sorted(self._kokoro.voices)
        self.user_voices_dir = Path(user_voices_dir) if user_voices_dir is not None else None
        self._user_voices: dict[str, UserVoice] = {}
        self._user_lock = threading.Lock()
        self._fallbacks_logged: set[tuple[str, str]] = set()

        logging.getLogger("jieba").setLevel(logging.WARNING)  # "Building prefix dict..."
        # espeak splits "ChatGPT" into several words; phonemizer warns about it
        logging.getLogger("phonemizer").setLevel(logging.ERROR)
        self._g2p_zh = zh.ZHG2P()  # version=None: the IPA phoneme set of Kokoro v1.0
        self._g2p_lock = threading.Lock()

        self.voice_en = self._check_voice(voice_en)
        self.voice_zh = self._check_voice(voice_zh)
        self.speed = speed
        if warmup:
            # First calls pay for onnxruntime's allocations and jieba's dictionary.
            self.synthesize("Hello there.", "en")
            self.synthesize("你好。", "zh")

    @classmethod
    def needs(cls, config: Config) -> BackendNeeds:
        """What ``videochat doctor`` checks."""
        return BackendNeeds(
            packages=(
                PackageNeed("kokoro_onnx", "pip install -e ."),
                PackageNeed("misaki", "pip install -e ."),
            ),
            weights=(
                WeightNeed("kokoro/kokoro-v1.0.int8.onnx", 90 * MB, VIDEOCHAT_WEIGHTS),
                WeightNeed("kokoro/voices.npz", 25 * MB, VIDEOCHAT_WEIGHTS),
            ),
        )

    @classmethod
    def from_config(cls, config: TTSConfig, weights_dir: Path) -> KokoroSynthesizer:
        return cls(
            weights_dir / "kokoro" / KOKORO_MODEL_FILE,
            weights_dir / "kokoro" / KOKORO_VOICES_FILE,
            voice_en=config.voice_en,
            voice_zh=config.voice_zh,
            speed=config.speed,
            threads=int(config.threads),
            user_voices_dir=weights_dir / "voices",
        )

    # -- voices
    def voices(self) -> list[str]:
        """The stock voices, then the user voices on disk now."""
        return [*self._voices, *self.user_voices()]

    def stock_voices(self) -> list[str]:
        return list(self._voices)

    def user_voices(self) -> list[str]:
        """The user voices on disk now that have a Kokoro style."""
        root = self.user_voices_dir
        if root is None:
            return []
        return [
            name
            for name in user_voices.user_voice_names(root.parent)
            if name not in self._kokoro.voices and (root / name / "style.npy").is_file()
        ]

    def _check_voice(self, voice: str) -> str:
        if voice not in self._kokoro.voices:
            raise ValueError(
                f"unknown Kokoro voice {voice!r}; available: {', '.join(self.voices())}"
            )
        return voice

    def user_voice(self, name: str) -> UserVoice | None:
        """The user voice ``name`` as on disk now (cached while its meta.json is
        unchanged), or None if there is none."""
        root = self.user_voices_dir
        if root is None or name in self._kokoro.voices:
            return None
        found = user_voices.user_voice(root.parent, name)
        if found is None:
            with self._user_lock:
                self._user_voices.pop(name, None)
            return None
        with self._user_lock:
            cached = self._user_voices.get(name)
        if cached is not None and cached.stamp == found.stamp:
            return cached
        try:
            style = np.load(found.folder / "style.npy").astype(np.float32)
        except (OSError, ValueError) as exc:
            log.warning("user voice %r unreadable: %s", name, exc)
            return None
        if style.shape != _STYLE_SHAPE:
            log.warning("user voice %r: style of shape %s; skipped", name, style.shape)
            return None
        accent = found.nearest_stock if found.nearest_stock in self._kokoro.voices else "a"
        voice = UserVoice(style, found.lang, accent, found.stamp)
        with self._user_lock:
            self._user_voices[name] = voice
        return voice

    def _resolve(self, voice: str | None, lang: str) -> tuple[str | np.ndarray, str]:
        """What Kokoro gets for ``voice`` in ``lang`` (a stock name or a user
        voice's style) and the stock name that picks the English front end."""
        default = self.voice_zh if lang == "zh" else self.voice_en
        if not voice or voice in self._kokoro.voices:
            name = self._check_voice(voice or default)
            return name, name
        user = self.user_voice(voice)
        if user is None:
            self._check_voice(voice)  # raises, listing the voices
        assert user is not None
        if user.lang != lang:
            # A matched voice speaks its own language only; the other one goes
            # to that language's configured stock voice.
            if (voice, lang) not in self._fallbacks_logged:
                self._fallbacks_logged.add((voice, lang))
                log.info("voice %r is %s: %s text is spoken by %s", voice, user.lang, lang, default)
            return default, default
        return user.style, user.accent

    # -- phonemes
    @staticmethod
    def _espeak_lang(voice: str) -> str:
        return "en-gb" if voice.startswith("b") else "en-us"

    def _phonemize_en(self, text: str, voice: str) -> str:
        if not text.strip():
            return ""
        return self._kokoro.tokenizer.phonemize(text, self._espeak_lang(voice))

    def _phonemize_zh(self, text: str) -> str:
        if not text.strip():
            return ""
        with self._g2p_lock:
            phonemes, _ = self._g2p_zh(text)
        return phonemes

    def phonemize(self, text: str, lang: str, voice: str | None = None) -> str:
        """Kokoro phonemes for ``text``; ``lang`` picks the front end for the
        text between runs of the other script."""
        lang = normalize_lang(lang, text)
        voice = voice or (self.voice_zh if lang == "zh" else self.voice_en)
        parts: list[str] = []
        if lang == "zh":
            # Latin runs -> espeak; the rest (Chinese, digits, punctuation) -> misaki,
            # which also spells out Arabic numerals in Chinese.
            for i, chunk in enumerate(_LATIN_RUN.split(text)):
                parts.append(
                    self._phonemize_en(chunk, voice) if i % 2 else self._phonemize_zh(chunk)
                )
        else:
            for i, chunk in enumerate(_CJK_RUN.split(text)):
                parts.append(
                    self._phonemize_zh(chunk) if i % 2 else self._phonemize_en(chunk, voice)
                )
        vocab = self._kokoro.tokenizer.vocab
        phonemes = " ".join(p.strip() for p in parts if p.strip())
        return "".join(ch for ch in phonemes if ch in vocab).strip()

    # -- synthesis
    def synthesize(self, text: str, lang: str, voice: str | None = None) -> Speech:
        lang = normalize_lang(lang, text)
        style, accent = self._resolve(voice, lang)
        phonemes = self.phonemize(text, lang, accent)
        if not phonemes.strip(" .,!?;:"):
            return Speech(np.zeros(0, dtype=np.float32), self.sample_rate)
        if self.timed:
            return self._synthesize_timed(phonemes, style)
        audio, sample_rate = self._kokoro.create(
            phonemes, style, speed=self.speed, is_phonemes=True
        )
        audio = np.asarray(audio, dtype=np.float32).reshape(-1)
        # This graph does not output its durations: align the phonemes to the
        # audio (models/phonemes.py, a few ms) so the avatar gets timed mouth shapes.
        try:
            from models.phonemes import align_phonemes

            timings = align_phonemes(phonemes, audio, int(sample_rate))
        except Exception:  # lip-sync falls back to the audio; never fail the reply
            log.exception("phoneme alignment failed")
            timings = []
        return Speech(audio, int(sample_rate), timings)

    def _synthesize_timed(self, phonemes: str, voice: str | np.ndarray) -> Speech:
        """Kokoro.create's own steps (kokoro-onnx 0.6.1) minus its timing-based
        pause insertion, so the audio is sample for sample what ``create`` gives
        with the plain graph; the timings are Kokoro's predicted durations."""
        from models.phonemes import spans_from_tokens

        k = self._kokoro
        style, _, batches = k._prepare(phonemes, voice, self.speed, "en-us", True, 0.25, 0.1)
        audio, spoken = k._create_batches(batches, style, self.speed, True)
        audio = np.asarray(audio, dtype=np.float32).reshape(-1)
        return Speech(audio, self.sample_rate, spans_from_tokens(spoken))
