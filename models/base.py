"""The small typed interfaces of each pipeline stage.

Data flows one way: mic -> VAD -> ASR -> LLM -> TTS -> avatar -> clock -> tracks.
A backend implements one of these and is chosen by name in the config
(see models/registry.py). Models load once per process; anything that holds
per-conversation state is created per session through a ``new_*`` method.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

# Sample rates at the stage boundaries.
VAD_SAMPLE_RATE = 16_000  # VAD and ASR take 16 kHz mono float32 in [-1, 1]
MEDIA_SAMPLE_RATE = 48_000  # what the avatar returns and WebRTC sends
MEDIA_FPS = 25
SAMPLES_PER_VIDEO_FRAME = MEDIA_SAMPLE_RATE // MEDIA_FPS  # 1920 = two 20 ms audio frames


class BackendUnavailable(RuntimeError):
    """A backend chosen in the config cannot run here: the message names what to
    install or download."""


# --------------------------------------------------------------------------- VAD
class VoiceActivityDetector(ABC):
    """Per-session, stateful speech detector on 16 kHz audio."""

    frame_samples: int  # the window it scores (512 samples = 32 ms for Silero)

    @abstractmethod
    def speech_probability(self, frame: np.ndarray) -> float:
        """Probability of speech in one frame of ``frame_samples`` float32 samples."""

    @abstractmethod
    def reset(self) -> None: ...


class VADModel(ABC):
    @abstractmethod
    def new_detector(self) -> VoiceActivityDetector: ...


# --------------------------------------------------------------------------- ASR
@dataclass
class Transcript:
    text: str
    language: str  # "en" | "zh" (what was forced or detected)


class SpeechRecognizer(ABC):
    """Loaded once, shared by sessions; ``transcribe`` is blocking and thread-safe
    enough to be called from a worker thread."""

    @abstractmethod
    def transcribe(self, audio: np.ndarray, language: str | None = None) -> Transcript:
        """``audio``: 16 kHz mono float32. ``language``: "en", "zh" or None (detect)."""


# --------------------------------------------------------------------------- LLM
ChatMessage = dict[str, str]  # {"role": "system"|"user"|"assistant", "content": ...}


class ChatModel(ABC):
    # True when a trailing assistant message is continued rather than answered
    # (llama.cpp's server does this); lets the pipeline speak an opener first.
    supports_prefill: bool = False

    @abstractmethod
    def stream_chat(
        self, messages: Sequence[ChatMessage], *, conversation: str | None = None
    ) -> AsyncIterator[str]:
        """Stream reply text deltas. ``conversation`` lets a backend pin a
        conversation to a KV-cache slot. Cancelling the iterating task stops
        generation."""

    async def start(self) -> None:  # noqa: B027 - optional hook
        """Bring up whatever the model needs (a local server, a warm cache)."""

    async def prime(self, messages: Sequence[ChatMessage], conversation: str) -> None:  # noqa: B027
        """Optionally pre-process ``messages`` (the system prompt) into the
        conversation's cache so its first real turn starts warm."""

    def release(self, conversation: str) -> None:  # noqa: B027 - optional hook
        """The conversation has ended: free what the backend kept for it."""

    async def close(self) -> None:  # noqa: B027 - optional hook
        ...


# --------------------------------------------------------------------------- TTS
@dataclass
class Speech:
    audio: np.ndarray  # mono float32 in [-1, 1]
    sample_rate: int
    # Optional (phoneme, start_s, end_s) timings for lip-sync; empty if unknown.
    phonemes: list[tuple[str, float, float]] = field(default_factory=list)


def to_media_rate(speech: Speech) -> np.ndarray:
    """The speech as mono float32 at MEDIA_SAMPLE_RATE (what the avatar takes)."""
    from math import gcd

    from scipy.signal import resample_poly

    audio = np.asarray(speech.audio, dtype=np.float32).reshape(-1)
    if speech.sample_rate == MEDIA_SAMPLE_RATE:
        return audio
    g = gcd(speech.sample_rate, MEDIA_SAMPLE_RATE)
    up, down = MEDIA_SAMPLE_RATE // g, speech.sample_rate // g
    return resample_poly(audio, up, down).astype(np.float32)


class SpeechSynthesizer(ABC):
    """Loaded once; ``synthesize`` is blocking (run it in a worker thread)."""

    @abstractmethod
    def synthesize(self, text: str, lang: str, voice: str | None = None) -> Speech:
        """``lang``: "en" or "zh". ``voice`` overrides the configured voice."""

    @abstractmethod
    def voices(self) -> list[str]: ...


# ------------------------------------------------------------------------ Avatar
@dataclass
class AvatarFrame:
    """One 40 ms tick: the picture and exactly the audio it was lip-synced to."""

    image: np.ndarray  # (size, size, 3) uint8 RGB
    audio: np.ndarray  # (SAMPLES_PER_VIDEO_FRAME,) int16 mono at 48 kHz
    speaking: bool
    # (tag, samples) for each pushed segment this frame's audio came from, so the
    # pipeline knows how much of each reply sentence has actually been played.
    played: list[tuple[Any, int]] = field(default_factory=list)


class AvatarStream(ABC):
    """Per-session renderer (the livekit-agents avatar contract, pulled by the
    session clock once per video frame)."""

    def prepare(self, audio: np.ndarray, speech: Speech | None = None) -> Any:
        """CPU work on reply audio (48 kHz mono float32) that ``push_audio``
        would otherwise do, e.g. the mouth track. Called from a worker thread
        so the event loop that paces media never waits for it; the result goes
        to ``push_audio(prepared=...)``. None: nothing to prepare."""
        return None

    @abstractmethod
    def push_audio(
        self,
        audio: np.ndarray,
        tag: Any = None,
        speech: Speech | None = None,
        prepared: Any = None,
    ) -> None:
        """Queue reply audio (48 kHz mono float32). ``speech`` carries phoneme
        timings when the TTS knows them; ``prepared`` is what ``prepare``
        returned for this audio (else the stream does that work itself)."""

    @abstractmethod
    def end_of_segment(self) -> None:
        """No more audio for this reply (the mouth may relax)."""

    @abstractmethod
    def clear(self) -> None:
        """Drop all queued audio now (barge-in)."""

    @property
    @abstractmethod
    def queued_samples(self) -> int: ...

    @abstractmethod
    def next_frame(self) -> AvatarFrame:
        """Render the next 40 ms. Blocking CPU work: call it off the event loop."""


class AvatarModel(ABC):
    @abstractmethod
    def avatars(self) -> list[str]: ...

    @abstractmethod
    def new_stream(self, avatar: str | None = None) -> AvatarStream: ...
