"""The small typed contracts of each pipeline stage.

Data flows one way: mic -> VAD -> ASR -> LLM -> TTS -> avatar -> clock -> tracks,
or mic -> speech-to-speech -> avatar where one end-to-end model replaces ASR,
LLM and TTS. A backend implements one of these, registers under its name in
its own file (``models.backends.backend``) and is chosen by name in the config.
Models load once per process (``from_config``); anything that holds
per-conversation or per-utterance state is made through a ``new_*`` method.

What a backend can do beyond the contract is said by class attributes with a
default here (``streams_partials``, ``supports_prefill``, ``has_timings``,
``streams_audio``), so callers branch on flags, not on backend names.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

if TYPE_CHECKING:
    from core.config import ASRConfig, AvatarConfig, LLMConfig, S2SConfig, TTSConfig, VADConfig

# Sample rates at the stage boundaries.
VAD_SAMPLE_RATE = 16_000  # VAD and ASR take 16 kHz mono float32 in [-1, 1]
MEDIA_SAMPLE_RATE = 48_000  # what the avatar returns and WebRTC sends
MEDIA_FPS = 25
SAMPLES_PER_VIDEO_FRAME = MEDIA_SAMPLE_RATE // MEDIA_FPS  # 1920 = two 20 ms audio frames


class BackendUnavailable(RuntimeError):
    """A backend chosen in the config cannot run here: the message names what to
    install or download."""


# ------------------------------------------------------- What a backend needs
# Declared next to each backend's code (a ``needs(config)`` classmethod that
# returns ``BackendNeeds``) and read by ``videochat doctor`` (tools/doctor.py),
# which checks them without loading any model.
@dataclass(frozen=True)
class PackageNeed:
    """A Python package the backend imports."""

    module: str  # the import name, e.g. "funasr"
    install: str  # the command that installs it, e.g. "pip install funasr"
    min_version: str = ""  # "": any version will do


@dataclass(frozen=True)
class WeightNeed:
    """A weight file or folder, relative to the weights folder (``weights/``)."""

    path: str  # e.g. "musetalk/musetalkV15/unet.pth"; a folder's path ends with "/"
    # A lower bound on its size (a folder: its files together) that a truncated
    # download or a Git LFS pointer fails; not an exact size. 0: any size.
    min_bytes: int
    fetch: str  # the upstream command that gets it (printed, never run)


@dataclass(frozen=True)
class BackendNeeds:
    packages: tuple[PackageNeed, ...] = ()
    weights: tuple[WeightNeed, ...] = ()
    cuda: bool = False  # needs a CUDA GPU
    gpu_memory_gb: float = 0.0  # GPU memory it takes (one process, fp16), roughly
    # Something else it needs that no check here can see (a server, internet).
    external: str = ""


def mono_float32(audio: np.ndarray) -> np.ndarray:
    """Audio as contiguous 1-D float32 in [-1, 1] (int16 PCM is scaled)."""
    audio = np.asarray(audio)
    if audio.dtype == np.int16:
        audio = audio.astype(np.float32) / 32768.0
    return np.ascontiguousarray(audio, dtype=np.float32).reshape(-1)


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
    @classmethod
    def from_config(cls, config: VADConfig) -> VADModel:
        """Build the backend from its config section (what the registry calls)."""
        raise NotImplementedError(f"{cls.__name__} cannot be built from the config")

    @abstractmethod
    def new_detector(self) -> VoiceActivityDetector: ...


# --------------------------------------------------------------------------- ASR
@dataclass
class Transcript:
    text: str
    language: str  # "en" | "zh" (what was forced or detected)


class RecognizerStream(ABC):
    """One utterance, fed while the user speaks. Blocking (call it from a worker
    thread), one caller at a time; ``finish`` ends it."""

    @abstractmethod
    def feed(self, audio: np.ndarray) -> str | None:
        """Add 16 kHz mono audio (float32 or int16, any chunk size). Returns the
        transcript so far when it changed, else None."""

    @abstractmethod
    def finish(self) -> Transcript:
        """The end of the utterance: its final transcript."""


class BufferedRecognizerStream(RecognizerStream):
    """A batch recognizer as a stream: keeps the audio and transcribes it all at
    ``finish`` (no partials)."""

    def __init__(self, recognizer: SpeechRecognizer, language: str | None) -> None:
        self._recognizer = recognizer
        self._language = language
        self._chunks: list[np.ndarray] = []
        self._finished = False

    def feed(self, audio: np.ndarray) -> str | None:
        if self._finished:
            raise RuntimeError("this utterance is finished")
        self._chunks.append(mono_float32(audio).copy())  # the caller may reuse its buffer
        return None

    def finish(self) -> Transcript:
        if self._finished:
            raise RuntimeError("this utterance is finished")
        self._finished = True
        audio = np.concatenate(self._chunks) if self._chunks else np.zeros(0, np.float32)
        self._chunks = []
        return self._recognizer.transcribe(audio, self._language)


class SpeechRecognizer(ABC):
    """Loaded once, shared by sessions; ``transcribe`` and streams are blocking
    and safe to use from worker threads."""

    # True when a stream's ``feed`` gives partial transcripts while the user speaks.
    streams_partials: bool = False

    @classmethod
    def from_config(cls, config: ASRConfig, weights_dir: Path) -> SpeechRecognizer:
        """Build the backend from its config section (what the registry calls)."""
        raise NotImplementedError(f"{cls.__name__} cannot be built from the config")

    @abstractmethod
    def transcribe(self, audio: np.ndarray, language: str | None = None) -> Transcript:
        """``audio``: 16 kHz mono float32. ``language``: "en", "zh" or None (detect)."""

    def new_stream(self, language: str | None = None) -> RecognizerStream:
        """A stream for one utterance. Batch backends keep this default, which
        transcribes at ``finish``; streaming ones decode as audio arrives."""
        return BufferedRecognizerStream(self, language)


# --------------------------------------------------------------------------- LLM
ChatMessage = dict[str, str]  # {"role": "system"|"user"|"assistant", "content": ...}


class ChatModel(ABC):
    # True when a trailing assistant message is continued rather than answered
    # (llama.cpp's server does this); lets the pipeline speak an opener first.
    supports_prefill: bool = False

    @classmethod
    def from_config(cls, config: LLMConfig, weights_dir: Path, *, nice: int = 0) -> ChatModel:
        """Build the backend from its config section (what the registry calls);
        ``nice``: the priority its own threads run at (models/threads.py)."""
        raise NotImplementedError(f"{cls.__name__} cannot be built from the config")

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
    # Optional (phoneme, start_s, end_s) timings for lip-sync, from the start of
    # this audio; empty if unknown.
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
    """Loaded once; ``synthesize`` and ``stream`` are blocking (run them in a
    worker thread)."""

    # True when Speech.phonemes carries timings (for the avatar's mouth).
    has_timings: bool = False
    # True when ``stream`` yields audio while the rest is still being made.
    streams_audio: bool = False
    # The voice `videochat calibrate` times, where voices differ in cost (the
    # costliest, so the plan holds for all); None: the configured voice.
    calibration_voice: str | None = None

    @classmethod
    def from_config(cls, config: TTSConfig, weights_dir: Path) -> SpeechSynthesizer:
        """Build the backend from its config section (what the registry calls)."""
        raise NotImplementedError(f"{cls.__name__} cannot be built from the config")

    @abstractmethod
    def synthesize(self, text: str, lang: str, voice: str | None = None) -> Speech:
        """``lang``: "en" or "zh". ``voice`` overrides the configured voice."""

    def stream(self, text: str, lang: str, voice: str | None = None) -> Iterator[Speech]:
        """The same speech in chunks, each as soon as it is made (timings from
        the chunk's own start); concatenated they are the whole. Exhaust or
        close the iterator: a backend may hold a lock while it runs. The
        default yields ``synthesize``'s result as one chunk."""
        yield self.synthesize(text, lang, voice)

    @abstractmethod
    def voices(self) -> list[str]: ...

    def describe_voice(self, voice: str) -> dict[str, Any] | None:
        """What the backend says of one of its voices beyond its name (Piper's:
        its languages, gender, a description), or None: nothing to add."""
        return None


# ------------------------------------------------------------- Speech to speech
@dataclass(frozen=True)
class TextDelta:
    """Text from an end-to-end model: what it heard the user say (``role``
    "user") or the next piece of its reply ("assistant")."""

    text: str
    role: Literal["user", "assistant"] = "assistant"


class SpeechConversation(ABC):
    """One conversation with an end-to-end model; it keeps the dialogue."""

    @abstractmethod
    def respond(self, user: np.ndarray | str) -> AsyncIterator[TextDelta | Speech]:
        """The user's turn, as 16 kHz mono float32 audio or typed text, answered
        as it is made: TextDelta and Speech items, interleaved. Cancelling the
        iterating task stops generation."""

    @abstractmethod
    async def cancel(self, heard: str | None = None) -> None:
        """Stop the reply in flight (barge-in): its ``respond`` iterator ends.
        ``heard``: the part of the reply the user heard, which is all the
        conversation keeps of it (None: keep what was made)."""

    async def close(self) -> None:  # noqa: B027 - optional hook
        """The conversation has ended: free what the model kept for it."""


class SpeechToSpeech(ABC):
    """An end-to-end model (GLM-4-Voice, ...) that takes the place of ASR, LLM
    and TTS: audio or text in, text and speech out."""

    # Whether its replies include what it heard the user say (``TextDelta``
    # role "user"); if not, the pipeline runs the local ASR for the subtitles.
    transcribes_user: bool = True

    @classmethod
    def from_config(cls, config: S2SConfig, weights_dir: Path) -> SpeechToSpeech:
        """Build the backend from its config section (what the registry calls)."""
        raise NotImplementedError(f"{cls.__name__} cannot be built from the config")

    @abstractmethod
    def new_conversation(
        self, *, system_prompt: str, voice: str | None = None, language: str | None = None
    ) -> SpeechConversation: ...

    @abstractmethod
    def voices(self) -> list[str]: ...

    async def start(self) -> None:  # noqa: B027 - optional hook
        """Bring up whatever the model needs (a server, a warm cache)."""

    async def close(self) -> None:  # noqa: B027 - optional hook
        ...


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

    def close(self) -> None:  # noqa: B027 - optional hook
        """The session has ended: drop what is queued and release what the
        stream holds (e.g. its place in a shared GPU worker's batches)."""
        self.clear()


class AvatarModel(ABC):
    @classmethod
    def from_config(cls, config: AvatarConfig, weights_dir: Path) -> AvatarModel:
        """Build the backend from its config section (what the registry calls)."""
        raise NotImplementedError(f"{cls.__name__} cannot be built from the config")

    @abstractmethod
    def avatars(self) -> list[str]: ...

    @abstractmethod
    def new_stream(self, avatar: str | None = None) -> AvatarStream: ...
