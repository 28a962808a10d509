"""Scripted backends with set delays: they drive the real session pipeline
deterministically (the pattern of livekit agents' fake_session). Their delays
run on the time source they are given (``use_time``): the wall clock by
default, pipelines.timebase.VirtualTime in the session tests."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, Protocol

import numpy as np

from models.base import (
    AvatarModel,
    AvatarStream,
    ChatMessage,
    ChatModel,
    Speech,
    SpeechRecognizer,
    SpeechSynthesizer,
    Transcript,
    VADModel,
    VoiceActivityDetector,
)
from models.registry import Engines
from pipelines.timebase import REAL_TIME


class FakeClock(Protocol):
    """What the fakes take time on: RealTime or VirtualTime."""

    async def sleep(self, seconds: float) -> None: ...

    def block(self, seconds: float) -> None: ...


class LoudnessDetector(VoiceActivityDetector):
    """Speech = any frame louder than 0.05 RMS (test audio is synthetic)."""

    frame_samples = 512

    def speech_probability(self, frame: np.ndarray) -> float:
        return 1.0 if float(np.sqrt(np.mean(frame**2))) > 0.05 else 0.0

    def reset(self) -> None:
        pass


class LoudnessVAD(VADModel):
    def new_detector(self) -> VoiceActivityDetector:
        return LoudnessDetector()


class ScriptedASR(SpeechRecognizer):
    """Returns the text whose tone frequency best matches the utterance."""

    def __init__(self, texts: dict[int, str], delay: float = 0.05) -> None:
        self.texts = texts  # tone frequency (Hz) -> transcript
        self.delay = delay
        self.time: FakeClock = REAL_TIME

    def transcribe(self, audio: np.ndarray, language: str | None = None) -> Transcript:
        self.time.block(self.delay)
        spectrum = np.abs(np.fft.rfft(audio))
        peak = np.fft.rfftfreq(audio.size, 1 / 16000)[int(np.argmax(spectrum))]
        freq = min(self.texts, key=lambda f: abs(f - peak))
        text = self.texts[freq]
        lang = "zh" if any("\u4e00" <= c <= "\u9fff" for c in text) else "en"
        return Transcript(text=text, language=language or lang)


class ScriptedLLM(ChatModel):
    """Answers from a script keyed by the last user message; records requests."""

    def __init__(self, replies: dict[str, str], token_delay: float = 0.01) -> None:
        self.replies = replies
        self.token_delay = token_delay
        self.requests: list[tuple[str | None, list[ChatMessage]]] = []
        self.cancelled = 0
        self.released: list[str] = []
        self.time: FakeClock = REAL_TIME

    def release(self, conversation: str) -> None:
        self.released.append(conversation)

    async def stream_chat(
        self, messages: Sequence[ChatMessage], *, conversation: str | None = None
    ) -> AsyncIterator[str]:
        self.requests.append((conversation, list(messages)))
        question = next(m["content"] for m in reversed(messages) if m["role"] == "user")
        reply = next((r for q, r in self.replies.items() if q in question), "I see.")
        try:
            for word in reply.split(" "):
                await self.time.sleep(self.token_delay)
                yield word + " "
        except (asyncio.CancelledError, GeneratorExit):
            self.cancelled += 1
            raise


class ToneTTS(SpeechSynthesizer):
    """A 24 kHz tone, 60 ms per character, after a set delay."""

    def __init__(self, delay: float = 0.02, seconds_per_char: float = 0.06) -> None:
        self.delay = delay
        self.seconds_per_char = seconds_per_char
        self.calls: list[str] = []  # as each call starts
        self.time: FakeClock = REAL_TIME

    def synthesize(self, text: str, lang: str, voice: str | None = None) -> Speech:
        self.calls.append(text)
        self.time.block(self.delay)
        n = int(24000 * self.seconds_per_char * len(text))
        t = np.arange(n) / 24000
        return Speech(
            audio=(0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32), sample_rate=24000
        )

    def voices(self) -> list[str]:
        return ["tone"]


class BlankAvatarModel(AvatarModel):
    """The real buffering stream with a trivial, cheap renderer."""

    def __init__(self, size: int = 64) -> None:
        self.size = size

    def avatars(self) -> list[str]:
        return ["blank"]

    def new_stream(self, avatar: str | None = None) -> AvatarStream:
        from models.avatar.buffered import BufferedAvatarStream

        size = self.size

        class BlankStream(BufferedAvatarStream):
            def render(self, window, lookahead, speaking):  # type: ignore[no-untyped-def]
                level = int(min(255, 2000 * float(np.abs(window).mean()))) if window.size else 0
                return np.full((size, size, 3), level, dtype=np.uint8)

        return BlankStream()


def tone(freq: float, seconds: float, rate: int = 16000, amplitude: float = 0.3) -> np.ndarray:
    t = np.arange(int(rate * seconds)) / rate
    return (amplitude * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def silence(seconds: float, rate: int = 16000) -> np.ndarray:
    return np.zeros(int(rate * seconds), dtype=np.float32)


def fake_engines(
    llm: ScriptedLLM | None = None,
    asr: ScriptedASR | None = None,
    tts: ToneTTS | None = None,
    clock: FakeClock | None = None,
) -> Engines:
    engines = Engines(
        vad=LoudnessVAD(),
        asr=asr or ScriptedASR({440: "What is the capital of France?", 880: "你好"}),
        llm=llm or ScriptedLLM({"France": "Sure, the capital of France is Paris. It is lovely."}),
        tts=tts or ToneTTS(),
        avatar=BlankAvatarModel(),
    )
    if clock is not None:
        use_time(engines, clock)
    return engines


def use_time(engines: Engines, clock: FakeClock) -> None:
    """Let the scripted models among ``engines`` take their delays on ``clock``."""
    for model in (engines.asr, engines.llm, engines.tts):
        if isinstance(model, ScriptedASR | ScriptedLLM | ToneTTS):
            model.time = clock


class FailingLLM(ScriptedLLM):
    """A ScriptedLLM whose endpoint can be taken down (connection refused)."""

    def __init__(self, replies: dict[str, str]) -> None:
        super().__init__(replies)
        self.down = True

    async def stream_chat(
        self, messages: Sequence[ChatMessage], *, conversation: str | None = None
    ) -> AsyncIterator[str]:
        if self.down:
            raise ConnectionError("Connection refused: 127.0.0.1:8001")
        async for delta in super().stream_chat(messages, conversation=conversation):
            yield delta


@contextmanager
def served(app: Any) -> Iterator[str]:
    """Serve ``app`` with uvicorn on 127.0.0.1 in a thread; yield its base URL.
    Leaving the block shuts it down the way SIGTERM does (the lifespan ends)."""
    import socket
    import threading

    import uvicorn

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the test server did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(30)
