"""TTS backend ``edge-tts``: Microsoft Edge's online neural voices
(``pip install edge-tts``, needs internet).

The service sends MP3 in pieces as it speaks; ``stream`` decodes each piece
as it arrives (PyAV's MP3 parser and decoder, fed incrementally) and hands the
audio on, so the first words play before the sentence is downloaded. Every
request runs on one event loop, in a thread of its own that lives as long as
the synthesizer (a loop per sentence used to cost a loop's start-up and
teardown each time), and every wait is bounded: the connection, each piece,
and the whole sentence.

Word timings (edge-tts 7.3.1, ``communicate.py``): since 7.2.0 the service
sends sentence boundaries unless asked for ``boundary="WordBoundary"``; each
word event has its offset and duration in 100-ns ticks from the start of the
audio. A word ends at its offset plus duration or at the next word's offset,
whichever is first (the service's durations can overlap the next word); its
phonemes (espeak or misaki, as for Kokoro) are spread evenly over it and
handed on with each audio chunk, relative to the chunk's start, for the mouth.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import re
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from core.config import Config, TTSConfig
from core.lang import CJK_CHARS
from models.backends import backend
from models.base import BackendNeeds, BackendUnavailable, PackageNeed, Speech, SpeechSynthesizer
from models.phonemes import parse_phonemes
from models.tts.common import normalize_lang

log = logging.getLogger(__name__)

_EDGE_VOICE = re.compile(r"^[a-z]{2,3}-[A-Z]{2,4}(?:-[A-Za-z]+)?-[A-Za-z]+Neural$")
_CJK = re.compile(f"[{CJK_CHARS}]")
TICKS_PER_SECOND = 10_000_000  # edge-tts offsets and durations (constants.py)

Word = tuple[float, float, str]  # start_s, end_s (offset + duration), text


class WordPhonemes:
    """A word's phonemes as Kokoro's front ends make them (espeak through
    kokoro-onnx's tokenizer for Latin words, misaki's ZHG2P for Chinese),
    split into the letters the mouth knows (models/phonemes.py); cached."""

    def __init__(self) -> None:
        self._lock = threading.Lock()  # espeak and misaki are not thread-safe
        self._english: Any = None
        self._chinese: Any = None
        self._cache: dict[tuple[str, str], list[str]] = {}
        self._failed = False

    def __call__(self, word: str, espeak_lang: str = "en-us") -> list[str]:
        key = (word, espeak_lang)
        with self._lock:
            if key not in self._cache:
                if len(self._cache) >= 20_000:  # a server runs for weeks: bound the memory
                    self._cache.clear()
                self._cache[key] = self._phonemes(word, espeak_lang)
            return self._cache[key]

    def _phonemes(self, word: str, espeak_lang: str) -> list[str]:
        if self._failed or not word.strip():
            return []
        try:
            if _CJK.search(word):
                if self._chinese is None:
                    from misaki import zh

                    self._chinese = zh.ZHG2P()
                ipa = str(self._chinese(word)[0] or "")
            else:
                if self._english is None:
                    from kokoro_onnx.tokenizer import Tokenizer

                    self._english = Tokenizer()
                ipa = self._english.phonemize(word, espeak_lang)
        except Exception:  # no timings is a lesser evil than no voice: the mouth uses the audio
            log.exception("edge-tts: phonemizing words failed; the mouth follows the audio")
            self._failed = True
            return []
        return [p for p in parse_phonemes(ipa) if p not in (" ", ".")]


def word_spans(
    words: list[Word], start: float, end: float, phonemes: Callable[[str], list[str]]
) -> list[tuple[str, float, float]]:
    """The phoneme spans of ``words`` inside [start, end) of the whole audio,
    relative to ``start``."""
    spans: list[tuple[str, float, float]] = []
    for i, (w_start, w_end, text) in enumerate(words):
        if i + 1 < len(words):
            w_end = min(w_end, words[i + 1][0])
        if w_end <= start or w_start >= end or w_end <= w_start:
            continue
        letters = phonemes(text)
        step = (w_end - w_start) / max(len(letters), 1)
        for k, letter in enumerate(letters):
            a, b = max(w_start + k * step, start), min(w_start + (k + 1) * step, end)
            if b > a:
                spans.append((letter, a - start, b - start))
    return spans


class MP3StreamDecoder:
    """MP3 bytes, fed in pieces of any size, to mono float32 at ``sample_rate``."""

    def __init__(self, sample_rate: int) -> None:
        import av

        self._codec: Any = av.CodecContext.create("mp3", "r")
        self._resampler: Any = av.AudioResampler(format="flt", layout="mono", rate=sample_rate)
        self._head = b""  # the first bytes, until we know whether an ID3 tag starts them
        self._started = False

    def decode(self, data: bytes) -> np.ndarray:
        """The audio the bytes so far complete (may be empty)."""
        if not self._started:
            audio_start = self._skip_id3(self._head + data)
            if audio_start is None:
                return np.zeros(0, np.float32)
            data = audio_start
        return self._frames(self._codec.parse(data))

    def flush(self) -> np.ndarray:
        """The audio still held by the parser, decoder and resampler."""
        if not self._started:  # a stream shorter than an ID3 header: nothing to decode
            return np.zeros(0, np.float32)
        parts = [self._frames(self._codec.parse(None))]
        parts += [self._resampled(frame) for frame in self._codec.decode(None)]
        parts.append(self._resampled(None))
        return np.concatenate(parts).astype(np.float32, copy=False)

    def _skip_id3(self, data: bytes) -> bytes | None:
        """``data`` without a leading ID3v2 tag (the MP3 parser rejects it);
        None while the tag is not complete yet."""
        if len(data) < 10:
            self._head = data
            return None
        if data[:3] == b"ID3":
            size = 10 + int.from_bytes(bytes(b & 0x7F for b in data[6:10]), "big")
            if len(data) < size:
                self._head = data
                return None
            data = data[size:]
        self._head = b""
        self._started = True
        return data

    def _frames(self, packets: list[Any]) -> np.ndarray:
        parts = [np.zeros(0, np.float32)]
        for packet in packets:
            for frame in self._codec.decode(packet):
                parts.append(self._resampled(frame))
        return np.concatenate(parts).astype(np.float32, copy=False)

    def _resampled(self, frame: Any) -> np.ndarray:
        out = [f.to_ndarray().reshape(-1) for f in self._resampler.resample(frame)]
        return np.concatenate(out) if out else np.zeros(0, np.float32)


def decode_mp3(data: bytes, sample_rate: int) -> np.ndarray:
    """A whole MP3 clip to mono float32 at ``sample_rate``."""
    decoder = MP3StreamDecoder(sample_rate)
    return np.concatenate([decoder.decode(data), decoder.flush()])


@backend("tts", "edge-tts")
class EdgeTTSSynthesizer(SpeechSynthesizer):
    """Microsoft Edge's online neural voices through ``edge-tts``."""

    sample_rate = 24_000  # edge-tts streams audio-24khz-48kbitrate-mono-mp3
    streams_audio = True
    has_timings = True  # from the service's word boundaries
    CONNECT_TIMEOUT_S = 10  # edge-tts' own bounds (whole seconds)
    RECEIVE_TIMEOUT_S = 15
    PIECE_TIMEOUT_S = 20.0  # our bound on the wait for the next piece of a sentence
    SENTENCE_TIMEOUT_S = 60.0  # and on a whole sentence
    DEFAULT_VOICES = {"en": "en-US-AriaNeural", "zh": "zh-CN-XiaoxiaoNeural"}
    KNOWN_VOICES = [
        "en-US-AriaNeural",
        "en-US-AvaNeural",
        "en-US-JennyNeural",
        "en-US-AndrewNeural",
        "en-US-GuyNeural",
        "en-GB-SoniaNeural",
        "en-GB-RyanNeural",
        "zh-CN-XiaoxiaoNeural",
        "zh-CN-XiaoyiNeural",
        "zh-CN-YunxiNeural",
        "zh-CN-YunjianNeural",
        "zh-CN-YunyangNeural",
    ]

    def __init__(
        self, voice_en: str | None = None, voice_zh: str | None = None, speed: float = 1.0
    ) -> None:
        try:
            import av  # noqa: F401
            import edge_tts  # noqa: F401
        except ImportError as exc:
            raise BackendUnavailable(
                f"TTS backend 'edge-tts' needs the edge-tts package ({exc}): "
                "`pip install edge-tts`. It calls Microsoft's online service, "
                "so it also needs internet access."
            ) from exc
        self.voice_en = self._pick(voice_en, "en")
        self.voice_zh = self._pick(voice_zh, "zh")
        self.speed = speed
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_lock = threading.Lock()
        self._phonemes = WordPhonemes()

    @classmethod
    def needs(cls, config: Config) -> BackendNeeds:
        """What ``videochat doctor`` checks."""
        return BackendNeeds(
            packages=(PackageNeed("edge_tts", "pip install -e '.[edge]'"),),
            external="internet access to Microsoft's Edge read-aloud service",
        )

    @classmethod
    def from_config(cls, config: TTSConfig, weights_dir: Path) -> EdgeTTSSynthesizer:
        return cls(config.voice_en, config.voice_zh, config.speed)

    def _pick(self, voice: str | None, lang: str) -> str:
        if voice and _EDGE_VOICE.match(voice):
            return voice
        if voice:
            log.info(
                "edge-tts: %r is not an Edge voice, using %s", voice, self.DEFAULT_VOICES[lang]
            )
        return self.DEFAULT_VOICES[lang]

    def voices(self) -> list[str]:
        return sorted(set(self.KNOWN_VOICES) | {self.voice_en, self.voice_zh})

    def _event_loop(self) -> asyncio.AbstractEventLoop:
        """The loop every request runs on, started on first use."""
        with self._loop_lock:
            if self._loop is None:
                loop = asyncio.new_event_loop()
                threading.Thread(target=loop.run_forever, name="edge-tts", daemon=True).start()
                self._loop = loop
            return self._loop

    def close(self) -> None:
        """Stop the request loop (a later call starts a new one)."""
        with self._loop_lock:
            loop, self._loop = self._loop, None
        if loop is not None:
            loop.call_soon_threadsafe(loop.stop)

    def synthesize(self, text: str, lang: str, voice: str | None = None) -> Speech:
        chunks = [speech.audio for speech in self.stream(text, lang, voice)]
        audio = np.concatenate(chunks) if chunks else np.zeros(0, np.float32)
        return Speech(audio, self.sample_rate)

    def stream(self, text: str, lang: str, voice: str | None = None) -> Iterator[Speech]:
        import edge_tts

        lang = normalize_lang(lang, text)
        voice = voice or (self.voice_zh if lang == "zh" else self.voice_en)
        if not _EDGE_VOICE.match(voice):
            raise ValueError(
                f"unknown edge-tts voice {voice!r}; e.g. {', '.join(self.KNOWN_VOICES)}"
            )
        if not text.strip():
            return
        rate = f"{round((self.speed - 1.0) * 100):+d}%"
        espeak_lang = "en-gb" if voice.startswith("en-GB") else "en-us"
        pieces: queue.Queue[bytes | Word | Exception | None] = queue.Queue()

        async def download() -> None:
            try:
                communicate = edge_tts.Communicate(
                    text,
                    voice,
                    rate=rate,
                    boundary="WordBoundary",  # the default (7.2+) sends sentences only
                    connect_timeout=self.CONNECT_TIMEOUT_S,
                    receive_timeout=self.RECEIVE_TIMEOUT_S,
                )
                async for message in communicate.stream():
                    kind = message.get("type")
                    if kind == "audio" and message.get("data"):
                        pieces.put(bytes(message["data"]))
                    elif kind == "WordBoundary":
                        start = float(message["offset"]) / TICKS_PER_SECOND
                        end = start + float(message["duration"]) / TICKS_PER_SECOND
                        pieces.put((start, end, str(message.get("text", ""))))
            except Exception as exc:  # handed to the reading thread
                pieces.put(exc)
            else:
                pieces.put(None)

        def phonemes(word: str) -> list[str]:
            return self._phonemes(word, espeak_lang)

        future = asyncio.run_coroutine_threadsafe(download(), self._event_loop())
        decoder = MP3StreamDecoder(self.sample_rate)
        words: list[Word] = []
        made = 0  # samples handed on so far: where the next chunk starts
        deadline = time.monotonic() + self.SENTENCE_TIMEOUT_S

        def chunk(audio: np.ndarray) -> Speech:
            nonlocal made
            start = made / self.sample_rate
            made += audio.size
            spans = word_spans(words, start, made / self.sample_rate, phonemes)
            return Speech(audio, self.sample_rate, spans)

        try:
            while True:
                wait = min(self.PIECE_TIMEOUT_S, deadline - time.monotonic())
                try:
                    piece = pieces.get(timeout=max(wait, 0.0))
                except queue.Empty:
                    raise TimeoutError(
                        f"edge-tts sent no audio for {wait:.0f} s ({text[:40]!r})"
                    ) from None
                if piece is None:
                    break
                if isinstance(piece, Exception):
                    raise piece
                if isinstance(piece, tuple):
                    words.append(piece)
                    continue
                audio = decoder.decode(piece)
                if audio.size:
                    yield chunk(audio)
            tail = decoder.flush()
            if tail.size:
                yield chunk(tail)
        finally:
            future.cancel()  # a consumer that stops early (barge-in) ends the download
