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
    RecognizerStream,
    Speech,
    SpeechConversation,
    SpeechRecognizer,
    SpeechSynthesizer,
    SpeechToSpeech,
    TextDelta,
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


def heard_tone(audio: np.ndarray, texts: dict[int, str]) -> str:
    """The text whose tone frequency best matches ``audio``."""
    spectrum = np.abs(np.fft.rfft(audio))
    peak = np.fft.rfftfreq(audio.size, 1 / 16000)[int(np.argmax(spectrum))]
    return texts[min(texts, key=lambda f: abs(f - peak))]


def text_lang(text: str) -> str:
    return "zh" if any("\u4e00" <= c <= "\u9fff" for c in text) else "en"


class ScriptedASR(SpeechRecognizer):
    """Returns the text whose tone frequency best matches the utterance."""

    def __init__(self, texts: dict[int, str], delay: float = 0.05) -> None:
        self.texts = texts  # tone frequency (Hz) -> transcript
        self.delay = delay
        self.transcribed: list[int] = []  # the samples of each utterance transcribed
        self.time: FakeClock = REAL_TIME

    def transcribe(self, audio: np.ndarray, language: str | None = None) -> Transcript:
        self.transcribed.append(audio.size)
        self.time.block(self.delay)
        text = heard_tone(audio, self.texts)
        return Transcript(text=text, language=language or text_lang(text))


class StreamingASR(ScriptedASR):
    """Streams partials: the words of the tone's text come one per
    ``seconds_per_word`` of loud audio heard (the whole text once it is all
    heard), so a longer utterance gives a longer transcript."""

    streams_partials = True

    def __init__(
        self, texts: dict[int, str], seconds_per_word: float = 0.15, delay: float = 0.01
    ) -> None:
        super().__init__(texts, delay)
        self.seconds_per_word = seconds_per_word
        self.streams: list[ScriptedStream] = []

    def words_heard(self, audio: np.ndarray) -> str:
        if not audio.size:
            return ""
        windows = audio[: audio.size // 320 * 320].reshape(-1, 320)
        loud = float(np.sum(np.sqrt(np.mean(windows**2, axis=1)) > 0.05)) * 0.02
        words = heard_tone(audio, self.texts).split()
        return " ".join(words[: int(loud / self.seconds_per_word + 1e-9)])

    def new_stream(self, language: str | None = None) -> RecognizerStream:
        stream = ScriptedStream(self, language)
        self.streams.append(stream)
        return stream


class ScriptedStream(RecognizerStream):
    """Records its feeds: their sizes, threads, and that none overlapped."""

    def __init__(self, recognizer: StreamingASR, language: str | None) -> None:
        self.recognizer = recognizer
        self.language = language
        self.feeds: list[int] = []
        self.threads: set[int] = set()
        self.overlapped = False
        self.finished = False
        self._audio: list[np.ndarray] = []
        self._busy = False
        self._last = ""

    @property
    def audio(self) -> np.ndarray:
        return np.concatenate(self._audio) if self._audio else np.zeros(0, np.float32)

    def feed(self, audio: np.ndarray) -> str | None:
        import threading

        assert not self.finished
        self.overlapped |= self._busy
        self._busy = True
        try:
            self.threads.add(threading.get_ident())
            self.recognizer.time.block(self.recognizer.delay)
            self.feeds.append(audio.size)
            self._audio.append(np.asarray(audio, np.float32))
            text = self.recognizer.words_heard(self.audio)
        finally:
            self._busy = False
        if text == self._last:
            return None
        self._last = text
        return text

    def finish(self) -> Transcript:
        assert not self.finished and not self._busy
        self.finished = True
        self.recognizer.time.block(self.recognizer.delay)
        text = self.recognizer.words_heard(self.audio)
        return Transcript(text=text, language=self.language or text_lang(text))


class ScriptedLLM(ChatModel):
    """Answers from a script keyed by the last user message; records requests."""

    def __init__(self, replies: dict[str, str], token_delay: float = 0.01) -> None:
        self.replies = replies
        self.token_delay = token_delay
        self.requests: list[tuple[str | None, list[ChatMessage]]] = []
        self.cancelled = 0
        self.released: list[str] = []
        self.primed: list[tuple[str, list[ChatMessage]]] = []
        self.time: FakeClock = REAL_TIME

    def release(self, conversation: str) -> None:
        self.released.append(conversation)

    async def prime(self, messages: Sequence[ChatMessage], conversation: str) -> None:
        self.primed.append((conversation, list(messages)))

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


class ChunkedTTS(ToneTTS):
    """Streams its tone in ``chunks`` pieces, ``chunk_delay`` apart; records
    each chunk as it is made and whether each call ran to its end."""

    streams_audio = True

    def __init__(
        self,
        chunks: int = 4,
        chunk_delay: float = 0.05,
        delay: float = 0.02,
        seconds_per_char: float = 0.06,
    ) -> None:
        super().__init__(delay, seconds_per_char)
        self.chunks = chunks
        self.chunk_delay = chunk_delay
        self.made: list[tuple[str, int]] = []  # (text, chunk index)
        self.ended: list[tuple[str, bool]] = []  # (text, all chunks taken)

    def stream(self, text: str, lang: str, voice: str | None = None) -> Iterator[Speech]:
        whole = self.synthesize(text, lang, voice)
        taken = False
        try:
            for index, part in enumerate(np.array_split(whole.audio, self.chunks)):
                if index:
                    self.time.block(self.chunk_delay)
                self.made.append((text, index))
                yield Speech(audio=part, sample_rate=whole.sample_rate)
            taken = True
        finally:
            self.ended.append((text, taken))


class ScriptedConversation(SpeechConversation):
    """Hears the tone of the user's audio (or reads the typed text), says it
    back as a user TextDelta in two halves, then answers from the script:
    ``words_per_piece`` words of text, then their tone as speech in two chunks."""

    def __init__(
        self,
        model: ScriptedSpeechToSpeech,
        system_prompt: str,
        voice: str | None,
        language: str | None,
    ) -> None:
        self.model = model
        self.system_prompt = system_prompt
        self.voice = voice
        self.language = language
        self.calls: list[str] = []  # "respond", "cancel", "close" in order
        self.inputs: list[np.ndarray | str] = []
        self.cancelled: list[str | None] = []
        self.stopped = 0  # respond iterators that did not run to their end
        self.closed = False

    async def respond(self, user: np.ndarray | str) -> AsyncIterator[TextDelta | Speech]:
        model = self.model
        self.calls.append("respond")
        self.inputs.append(user)
        ended = False
        try:
            if isinstance(user, str):
                question = user
            else:
                question = heard_tone(user, model.texts)
                words = question.split()
                half = max(1, len(words) // 2)
                await model.time.sleep(model.delay)
                yield TextDelta(" ".join(words[:half]) + " ", role="user")
                yield TextDelta(" ".join(words[half:]), role="user")
            reply = next((r for q, r in model.replies.items() if q in question), "I see.")
            words = reply.split()
            for start in range(0, len(words), model.words_per_piece):
                text = " ".join(words[start : start + model.words_per_piece])
                await model.time.sleep(model.delay)
                yield TextDelta(text if start == 0 else " " + text)
                audio = tone(220, model.seconds_per_char * len(text), rate=24000)
                for part in np.array_split(audio, 2):
                    await model.time.sleep(model.delay)
                    yield Speech(audio=part, sample_rate=24000)
            ended = True
        finally:
            if not ended:
                self.stopped += 1

    async def cancel(self, heard: str | None = None) -> None:
        self.calls.append("cancel")
        self.cancelled.append(heard)

    async def close(self) -> None:
        self.calls.append("close")
        self.closed = True


class ScriptedSpeechToSpeech(SpeechToSpeech):
    """An end-to-end model from a script (like ScriptedASR + ScriptedLLM)."""

    def __init__(
        self,
        texts: dict[int, str],
        replies: dict[str, str],
        delay: float = 0.02,
        seconds_per_char: float = 0.03,
        words_per_piece: int = 3,
    ) -> None:
        self.texts = texts
        self.replies = replies
        self.delay = delay
        self.seconds_per_char = seconds_per_char
        self.words_per_piece = words_per_piece
        self.conversations: list[ScriptedConversation] = []
        self.time: FakeClock = REAL_TIME

    def new_conversation(
        self, *, system_prompt: str, voice: str | None = None, language: str | None = None
    ) -> SpeechConversation:
        conversation = ScriptedConversation(self, system_prompt, voice, language)
        self.conversations.append(conversation)
        return conversation

    def voices(self) -> list[str]:
        return ["scripted"]


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
    for model in (engines.asr, engines.llm, engines.tts, engines.s2s):
        if isinstance(model, ScriptedASR | ScriptedLLM | ToneTTS | ScriptedSpeechToSpeech):
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
def served(app: Any, port: int | None = None) -> Iterator[str]:
    """Serve ``app`` with uvicorn on 127.0.0.1 in a thread; yield its base URL.
    Leaving the block shuts it down the way SIGTERM does (the lifespan ends).
    The server's event loop is ``app.state.serving_loop`` (see on_server_loop)."""
    import socket
    import threading

    import uvicorn

    if port is None:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))

    def run() -> None:
        loop = asyncio.new_event_loop()
        app.state.serving_loop = loop
        loop.run_until_complete(server.serve())
        loop.close()

    thread = threading.Thread(target=run, daemon=True)
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


class Webhook:
    """Collects webhook POSTs (JSON bodies, each with ``_received_at``) on
    ``host``: 127.0.0.1, or a test network's address (tests/cluster/)."""

    def __init__(self, host: str = "127.0.0.1") -> None:
        import json
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        self.events: list[dict[str, Any]] = []
        received = self.events

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                length = int(self.headers.get("content-length", 0))
                body = json.loads(self.rfile.read(length) or b"{}")
                body["_received_at"] = time.time()
                received.append(body)
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer((host, 0), Handler)
        self.url = f"http://{host}:{self.httpd.server_address[1]}/hook"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def names(self) -> list[str]:
        return [e["event"] for e in self.events]

    def of(self, session_id: str, event: str | None = None) -> list[dict[str, Any]]:
        return [
            e
            for e in self.events
            if e.get("session_id") == session_id and (event is None or e.get("event") == event)
        ]

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


async def on_server_loop(app: Any, coro: Any) -> Any:
    """Run ``coro`` on the event loop of a server started by ``served`` (its
    sessions' tasks live there) and wait for its result."""
    return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(coro, app.state.serving_loop))


# ------------------------------------------- an OpenAI-compatible LLM server
def openai_server_app(state: dict[str, Any]) -> Any:
    """A FastAPI app speaking the OpenAI chat-completions protocol as vLLM
    serves it: ``GET /v1/models`` lists ``state["models"]`` owned by
    ``state["owned_by"]`` (vLLM's ModelCard says "vllm", llama.cpp's server
    "llamacpp"); ``POST /v1/chat/completions`` records each JSON body in
    ``state["requests"]`` and streams ``state["reply"]`` word by word as SSE
    chunks, after ``state["first_delay_s"]`` and ``state["word_delay_s"]``
    between words (a stalled or slow server)."""
    import json

    from fastapi import FastAPI, Request
    from fastapi.responses import StreamingResponse

    state.setdefault("requests", [])
    app = FastAPI()

    async def models() -> dict[str, Any]:
        listed = state.get("models", ["qwen"])
        owner = state.get("owned_by", "vllm")
        return {
            "object": "list",
            "data": [{"id": m, "object": "model", "owned_by": owner} for m in listed],
        }

    async def chat(request: Request) -> StreamingResponse:
        body = await request.json()
        state["requests"].append(body)

        async def chunks() -> AsyncIterator[str]:
            await asyncio.sleep(state.get("first_delay_s", 0.0))
            for i, word in enumerate(state.get("reply", "Hello there.").split(" ")):
                if i:
                    await asyncio.sleep(state.get("word_delay_s", 0.0))
                delta = {"content": (" " if i else "") + word}
                chunk = {
                    "id": "chatcmpl-1",
                    "object": "chat.completion.chunk",
                    "created": 0,
                    "model": body.get("model", ""),
                    "choices": [{"index": 0, "delta": delta, "finish_reason": None}],
                }
                yield f"data: {json.dumps(chunk)}\n\n"
            yield "data: [DONE]\n\n"

        return StreamingResponse(chunks(), media_type="text/event-stream")

    # This module's annotations are strings (__future__) and these classes are local.
    models.__annotations__ = {"return": dict}
    chat.__annotations__ = {"request": Request, "return": StreamingResponse}
    app.get("/v1/models")(models)
    app.post("/v1/chat/completions")(chat)
    return app
