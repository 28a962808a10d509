"""One conversation: its state, history and the per-turn pipeline.

mic -> VAD -> ASR -> LLM -> splitter -> TTS -> avatar -> clock -> tracks.
Everything per conversation lives here; models are shared (models/registry.py).
Control overtakes data: an interruption cancels the turn task and clears the
avatar's queue at once, and the history keeps only what the user heard.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from core.config import Config
from core.lang import detect_lang
from models.base import (
    MEDIA_SAMPLE_RATE,
    SAMPLES_PER_VIDEO_FRAME,
    VAD_SAMPLE_RATE,
    AvatarFrame,
    Speech,
    to_media_rate,
)
from models.registry import Engines, Opener
from models.vad import EndOfTurn, SpeechStart, TurnDetector
from pipelines.clock import MediaClock
from pipelines.events import (
    MAX_TEXT_CHARS,
    BotTextEvent,
    ErrorEvent,
    Mark,
    Stage,
    State,
    StateEvent,
    TurnEvent,
    UserTextEvent,
    parse_client_message,
    to_wire,
)
from pipelines.history import ChatHistory
from pipelines.planner import ReplyPlanner, ReplyProgress
from pipelines.splitter import SentenceSplitter

log = logging.getLogger(__name__)

EventSink = Callable[[dict[str, Any]], None]  # takes the JSON object sent to the page
Event = StateEvent | UserTextEvent | BotTextEvent | TurnEvent | ErrorEvent
OPENER_PAUSE_S = 0.2  # a comma's pause between the opener and the answer
MAX_FILLER_GAP_S = 0.7  # the longest silence between a filler and the opener
PLAN_RECHECK_S = 0.1  # while the answer is held, the planner looks again this often
# _push's default: the audio is one of the lines synthesized at start-up
# (openers, fillers, fault lines), which live as long as the process.
_LINE: Any = object()


async def _wait_event(event: asyncio.Event, until: float) -> None:
    """Wait for ``event``, but not past the perf_counter time ``until``."""
    left = until - time.perf_counter()
    if event.is_set() or left <= 0:
        return
    try:
        await asyncio.wait_for(event.wait(), left)
    except TimeoutError:
        pass


@dataclass
class ReplyPiece:
    text: str
    lang: str
    samples: int
    played: int = 0
    filler: bool = False  # "Let me see.": heard, but not the model's words
    opener: bool = False  # "Sure,": the model's words, said before the answer proper


@dataclass
class Turn:
    """The timeline of one exchange; times are perf_counter seconds."""

    index: int
    source: str  # "voice" | "text" | "say"
    end_of_speech: float
    marks: dict[str, float] = field(default_factory=dict)
    user_text: str = ""
    pieces: list[ReplyPiece] = field(default_factory=list)
    generation_done: bool = False
    interrupted: bool = False
    latency_sent: bool = False
    heard_text: str = ""
    barge_in_after: float | None = None  # seconds of user speech before the barge-in
    # Playback: the longest run of frames without reply audio between the
    # first reply audio and the end, over the whole reply and once the answer
    # proper had started (the queue ran dry: what the planner prevents).
    longest_gap: float = 0.0
    longest_gap_in_answer: float = 0.0
    last_audio_frame: float | None = None
    # A speculative turn starts during the hang-over; it speaks only once confirmed.
    confirmed: asyncio.Event = field(default_factory=asyncio.Event)
    speech_end_sample: int | None = None  # the VAD position its audio ends at
    # Set when the LLM's first token arrives; the opener waits for it (bounded).
    first_token: asyncio.Event = field(default_factory=asyncio.Event)
    synthesizing: int = 0  # TTS calls of this turn running
    # The answer may start: enough of it is synthesized (pipelines/planner.py).
    reply_ready: asyncio.Event = field(default_factory=asyncio.Event)
    progress: ReplyProgress = field(default_factory=lambda: ReplyProgress("en"))
    llm_error: BaseException | None = None  # why the LLM gave no (full) answer

    def mark(self, name: Mark) -> None:
        self.marks.setdefault(name, time.perf_counter())

    def latency(self) -> dict[str, float]:
        times = {str(name): round(t - self.end_of_speech, 4) for name, t in self.marks.items()}
        if self.barge_in_after is not None:
            times["barge_in_detected_after"] = round(self.barge_in_after, 4)
        return times

    def playback(self) -> dict[str, float]:
        return {
            "longest_gap": round(self.longest_gap, 3),
            "longest_gap_in_answer": round(self.longest_gap_in_answer, 3),
        }

    def heard(self, fillers: bool = True) -> str:
        """The part of the reply that was actually played to the user (without
        fillers: the part the model wrote, for the chat history)."""
        parts: list[str] = []
        pieces = [p for p in self.pieces if fillers or not p.filler]
        for piece in pieces:
            if piece.played >= piece.samples:
                parts.append(piece.text)
            elif piece.played > 0:
                parts.append(_prefix(piece.text, piece.played / piece.samples))
                break
            else:
                break
        joiner = "" if parts and all(p.lang == "zh" for p in pieces[: len(parts)]) else " "
        return joiner.join(p for p in parts if p).strip()

    def summary(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "source": self.source,
            "user_text": self.user_text,
            "bot_text": self.heard_text,  # what the user heard
            "reply_text": " ".join(p.text for p in self.pieces),  # what was synthesized
            "interrupted": self.interrupted,
            "latency": self.latency(),
            "playback": self.playback(),
        }


@dataclass
class _Made:
    """A synthesized piece of the reply, waiting for its turn to be pushed."""

    text: str
    lang: str
    speech: Speech
    audio: np.ndarray
    prepared: Any = None  # the avatar's work on it, done in the TTS worker


def checked_text(text: Any) -> str:
    """A typed question or a line to say, stripped; ValueError if unusable."""
    if not isinstance(text, str):
        raise ValueError("text must be a string")
    text = text.strip()
    if not text:
        raise ValueError("empty text")
    if len(text) > MAX_TEXT_CHARS:
        raise ValueError(f"text longer than {MAX_TEXT_CHARS} chars")
    return text


class SynthesisFailed(RuntimeError):
    """One piece could not be synthesized; its text is shown instead."""

    def __init__(self, text: str, message: str) -> None:
        super().__init__(message)
        self.text = text


class LLMFailed(RuntimeError):
    """The language model did not answer (down, erroring or too slow)."""


def _join(first: str, second: str, lang: str) -> str:
    return first + second if lang == "zh" else f"{first} {second}"


def _prefix(text: str, fraction: float) -> str:
    if any("\u4e00" <= ch <= "\u9fff" for ch in text):
        return text[: int(len(text) * fraction)]
    words = text.split()
    return " ".join(words[: int(len(words) * fraction)])


class Session:
    def __init__(
        self,
        engines: Engines,
        config: Config,
        *,
        session_id: str | None = None,
        lang: str = "auto",
        avatar: str | None = None,
        voice: str | None = None,
        system_prompt: str | None = None,
        greeting: str | None = None,
        on_turn_end: Callable[[Turn], None] | None = None,
        planner: ReplyPlanner | None = None,
    ) -> None:
        self.id = session_id or self.new_id()
        # Process-wide (it learns the machine's load); without one (tests with
        # scripted models) every piece is spoken as soon as it is synthesized.
        self.planner = planner or ReplyPlanner.immediate()
        self.on_turn_end = on_turn_end  # e.g. metrics; called once per finished turn
        self.engines = engines
        self.config = config
        self.lang = lang if lang in ("en", "zh") else "auto"
        self.voice = voice
        self.avatar_name = avatar or config.avatar.default
        self.avatar = engines.avatar.new_stream(self.avatar_name)
        self.history = ChatHistory(
            system_prompt or config.llm.system_prompt, config.llm.max_history_messages
        )
        self.greeting = greeting
        self.detector = TurnDetector.from_config(engines.vad.new_detector(), config.vad)
        self.clock = MediaClock(
            self.avatar,
            on_frame=self._on_frame,
            idle_video_every=round(config.avatar.fps / float(config.avatar.idle_fps)),
        )
        self.state = State.LISTENING
        self.created = time.time()
        self._last_activity = time.monotonic()  # speech, text or the end of a reply
        self._tasks: set[asyncio.Task[Any]] = set()  # e.g. the microphone reader
        # Openers, fillers and fault lines (audio made at start-up, by id) as
        # this session's avatar prepared them.
        self._prepared_lines: dict[int, Any] = {}
        self.turns: list[Turn] = []
        self._turn: Turn | None = None
        self._turn_task: asyncio.Task[None] | None = None
        self._prime_task: asyncio.Task[None] | None = None
        self._rng = random.Random()
        self._last_opener: str | None = None
        self._sink: EventSink | None = None
        self._pending: list[dict[str, Any]] = []
        self.closed = False

    # ------------------------------------------------------------ events out
    def attach(self, sink: EventSink) -> None:
        """Start delivering events (the data channel opened); flush the backlog."""
        self._sink = sink
        backlog, self._pending = self._pending, []
        for event in backlog:
            sink(event)
        self.emit(StateEvent(value=self.state))

    def emit(self, event: Any) -> None:
        """Send a typed event (pipelines/events.py) to the page."""
        wire = to_wire(event)
        if self._sink is None:
            self._pending.append(wire)
            return
        try:
            self._sink(wire)
        except Exception:  # a closed channel must not break the pipeline
            log.debug("session %s: event dropped", self.id, exc_info=True)

    def _set_state(self, state: State) -> None:
        if state != self.state:
            self.state = state
            self.clock.listening = state == State.LISTENING
            self.emit(StateEvent(value=state))

    # ------------------------------------------------------------- lifecycle
    @staticmethod
    def new_id() -> str:
        return uuid.uuid4().hex[:12]

    def start(self) -> None:
        first = self.clock.frames_sent == 0 and self._prime_task is None
        if first:
            # Fill this conversation's KV-cache slot with the persona while the
            # user is still getting ready to talk.
            self._prime_task = asyncio.create_task(
                self.engines.llm.prime(self.history.messages(), self.id)
            )
        self.clock.start()
        if first and self.greeting:
            self.say(self.greeting)

    def own_task(self, coro: Any) -> asyncio.Task[Any]:
        """Run ``coro`` for as long as this session lives (cancelled on close)."""
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def idle_seconds(self) -> float:
        """Seconds since the user last spoke or typed, or a reply ended."""
        if self._turn is not None:
            return 0.0
        return time.monotonic() - self._last_activity

    async def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        await self._cancel_turn()
        if self._prime_task is not None:
            self._prime_task.cancel()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=1.0)
        self.engines.llm.release(self.id)
        await self.clock.stop()

    # ---------------------------------------------------------------- inputs
    def feed_mic(self, audio_16k: np.ndarray) -> None:
        """Microphone audio, 16 kHz mono float32, in arrival order."""
        detector = self.detector
        for event in detector.push(audio_16k):
            if isinstance(event, SpeechStart):
                self._last_activity = time.monotonic()
                self.emit(UserTextEvent(text="", final=False))
            elif isinstance(event, EndOfTurn):
                # Speech ended (at_sample - end_sample) samples of audio ago.
                waited = (event.at_sample - event.end_sample) / VAD_SAMPLE_RATE
                ended = time.perf_counter() - waited
                turn = self._turn
                if self._is_speculative(turn) and turn.speech_end_sample == event.end_sample:
                    turn.end_of_speech = ended  # it heard exactly this utterance
                    self._confirm(turn)
                else:
                    self._drop_speculation()
                    self.start_turn(source="voice", end_of_speech=ended, audio=event.audio)
        turn = self._turn
        if self._is_speculative(turn):
            if detector.run_end_sample != turn.speech_end_sample:
                self._drop_speculation()  # the user went on talking
        elif turn is None:
            speculate = self.config.vad.speculate_ms
            if speculate and detector.in_speech and detector.silence_ms >= speculate:
                self.start_turn(
                    source="voice",
                    end_of_speech=time.perf_counter() - detector.silence_ms / 1000,
                    audio=detector.turn_audio(),
                    confirmed=False,
                    speech_end_sample=detector.run_end_sample,
                )
        elif detector.speech_ms >= self.config.vad.barge_in_ms:
            # The user talks over the avatar (or goes on talking while it thinks).
            # Record how much of their speech it took to notice (audio time).
            turn.barge_in_after = detector.speech_ms / 1000
            self.interrupt("barge-in")
        else:
            self._pause_for_speech(detector)

    def _pause_for_speech(self, detector: TurnDetector) -> None:
        """Pause the reply at the first sign of user speech; resume it if that
        speech stops before it becomes a barge-in (a cough, a click, "mm-hm")."""
        vad = self.config.vad
        if not vad.pause_on_speech_ms:
            return
        speech, silence = detector.speech_ms, detector.silence_ms
        if speech >= vad.pause_on_speech_ms and silence < vad.resume_after_silence_ms:
            if not self.clock.held:
                log.info("session %s: user speech, reply paused", self.id)
            self.clock.hold(True)
        elif self.clock.held:
            log.info("session %s: false alarm, reply resumed", self.id)
            self.clock.hold(False)

    @staticmethod
    def _is_speculative(turn: Turn | None) -> bool:
        return turn is not None and not turn.confirmed.is_set()

    def _confirm(self, turn: Turn) -> None:
        turn.confirmed.set()
        self._set_state(State.THINKING)

    def _drop_speculation(self) -> None:
        """Forget a speculative turn without a trace: nothing was said or shown."""
        turn = self._turn
        if not self._is_speculative(turn):
            return
        if self._turn_task is not None and not self._turn_task.done():
            self._turn_task.cancel()
        self._turn = None

    def handle_message(self, message: dict[str, Any]) -> None:
        """A message from the page (pipelines/events.py: ClientMessage)."""
        try:
            parsed = parse_client_message(message)
        except ValueError as exc:
            self.emit(ErrorEvent(message=str(exc)))
            return
        if parsed.type == "interrupt":
            self.interrupt("client")
            return
        self._last_activity = time.monotonic()
        self.interrupt("typed")
        self.emit(UserTextEvent(text=parsed.text, final=True))
        self.start_turn(source="text", end_of_speech=time.perf_counter(), text=parsed.text)

    def say(self, text: str) -> Turn:
        """Make the avatar say ``text`` (not the LLM's words): the REST
        ``say`` call and the greeting. It interrupts what is being said."""
        text = checked_text(text)
        self.interrupt("say")
        return self.start_turn(source="say", end_of_speech=time.perf_counter(), text=text)

    # ------------------------------------------------------------------ turn
    def start_turn(
        self,
        *,
        source: str,
        end_of_speech: float,
        audio: np.ndarray | None = None,
        text: str | None = None,
        confirmed: bool = True,
        speech_end_sample: int | None = None,
    ) -> Turn:
        self._drop_speculation()
        if self._turn is not None:
            self.interrupt("new turn")
        turn = Turn(
            index=len(self.turns) + 1,
            source=source,
            end_of_speech=end_of_speech,
            speech_end_sample=speech_end_sample,
        )
        self._turn = turn
        if confirmed:
            self._confirm(turn)
        self._turn_task = asyncio.create_task(self._run_turn(turn, audio, text))
        return turn

    async def _run_turn(self, turn: Turn, audio: np.ndarray | None, text: str | None) -> None:
        loop = asyncio.get_running_loop()
        try:
            lang = self.lang
            if audio is not None:
                forced = None if self.lang == "auto" else self.lang
                transcript = await loop.run_in_executor(
                    self.engines.inference, self.engines.asr.transcribe, audio, forced
                )
                turn.mark(Mark.ASR_FINAL)
                text = transcript.text.strip()
                lang = transcript.language
                if not text:
                    await turn.confirmed.wait()
                    log.info("session %s: nothing recognised, still listening", self.id)
                    self._finish_turn(turn)
                    return
            assert text is not None
            if lang == "auto":
                lang = detect_lang(text)
            turn.progress.lang = lang
            if turn.source == "say":
                await self._say_text(turn, text, lang)
                return
            # Generation may start before the turn is confirmed; speaking may not.
            pieces: asyncio.Queue[str | None] = asyncio.Queue()
            messages = self.history.messages_with_user(text)
            opener = self._pick_opener(lang)
            if opener is not None:
                # Say a short, pre-synthesized opener and let the LLM continue
                # the sentence it starts (assistant prefill).
                messages.append({"role": "assistant", "content": opener.text})
            producer = asyncio.create_task(self._generate(turn, messages, pieces))
            speaker = asyncio.create_task(self._speak(turn, pieces, lang, opener))
            try:
                await turn.confirmed.wait()
                if audio is not None:
                    self.emit(UserTextEvent(text=text, final=True))
                turn.user_text = text
                self.history.add_user(text)
                log.info("session %s turn %d (%s): %r", self.id, turn.index, lang, text)
                await speaker
            finally:
                producer.cancel()
                speaker.cancel()
            if turn.llm_error is not None:
                await self._llm_failed(turn, lang)
            else:
                self.engines.health.ok(Stage.LLM)
            self.avatar.end_of_segment()
            turn.generation_done = True
            if not turn.pieces:
                self._finish_turn(turn)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.exception("session %s turn %d failed", self.id, turn.index)
            self.emit(ErrorEvent(message=f"turn failed: {exc}"))
            self._finish_turn(turn)

    async def _say_text(self, turn: Turn, text: str, lang: str) -> None:
        """Speak a given text through TTS and the avatar, without the LLM."""
        splitter = SentenceSplitter()
        pieces: asyncio.Queue[str | None] = asyncio.Queue()
        for piece in [*splitter.push(text), *splitter.flush()]:
            self._hand_to_tts(turn, piece, pieces)
        pieces.put_nowait(None)
        turn.progress.generation_done = True
        log.info("session %s turn %d: saying %r", self.id, turn.index, text)
        await self._speak(turn, pieces, lang, None)
        self.avatar.end_of_segment()
        turn.generation_done = True
        if not turn.pieces:
            self._finish_turn(turn)

    async def _llm_failed(self, turn: Turn, lang: str) -> None:
        """Say so, in the user's language; keep the question out of the history
        (it was not answered, so it must not be glued onto the next one)."""
        error = turn.llm_error
        self.engines.health.failed(Stage.LLM, error)
        log.error("session %s turn %d: the LLM failed: %s", self.id, turn.index, error)
        answered = any(not p.opener and not p.filler for p in turn.pieces)
        if not answered:
            self.history.drop_unanswered()
        line = self.engines.fault_lines.get(lang) or self.engines.fault_lines.get("en")
        message = line.text if line is not None else "Sorry, I cannot answer right now."
        self.emit(ErrorEvent(message=message, stage=Stage.LLM, detail=str(error)))
        if line is not None and not answered:
            await self._push(turn, line.text, line.lang, line.speech, line.audio, filler=True)

    async def _generate(
        self,
        turn: Turn,
        messages: list[dict[str, str]],
        pieces: asyncio.Queue[str | None],
    ) -> None:
        splitter = SentenceSplitter(
            max_first_words=self.config.llm.first_piece_max_words,
            max_first_cjk=self.config.llm.first_piece_max_cjk,
        )
        limit = self.config.llm.first_token_timeout_s
        try:
            async with asyncio.timeout(limit or None) as waiting:
                spoke = await self._stream_reply(turn, messages, splitter, pieces, waiting)
                if not spoke and messages[-1]["role"] == "assistant":
                    # The model ended the turn right after the opener: ask again
                    # without it so the user never gets a bare "Hmm,".
                    log.info("session %s: empty continuation after the opener; again", self.id)
                    await self._stream_reply(turn, messages[:-1], splitter, pieces, waiting)
        except TimeoutError:
            turn.llm_error = LLMFailed(f"no answer within {limit:g} s")
            return
        except Exception as exc:  # the endpoint is down or answered with an error
            turn.llm_error = exc
            return
        finally:
            turn.progress.generation_done = True
            pieces.put_nowait(None)
        try:
            turn.mark(Mark.LLM_DONE)
            self.planner.observe_reply(turn.progress.written_chars, turn.progress.lang)
            if Mark.LLM_FIRST_TOKEN in turn.marks:
                self.planner.observe_writing(
                    turn.progress.written_chars,
                    turn.progress.lang,
                    turn.marks[Mark.LLM_DONE] - turn.marks[Mark.LLM_FIRST_TOKEN],
                )
        except Exception:  # learning must never break a reply
            log.exception("session %s: planner update failed", self.id)

    async def _stream_reply(
        self,
        turn: Turn,
        messages: list[dict[str, str]],
        splitter: SentenceSplitter,
        pieces: asyncio.Queue[str | None],
        waiting: asyncio.Timeout | None = None,
    ) -> bool:
        """Stream one completion into ``pieces``; False if it said nothing.
        ``waiting`` bounds the wait for the first token (then it is lifted)."""
        spoke = False
        async for delta in self.engines.llm.stream_chat(messages, conversation=self.id):
            if waiting is not None and not turn.first_token.is_set():
                waiting.reschedule(None)
            turn.mark(Mark.LLM_FIRST_TOKEN)
            turn.first_token.set()
            ready = splitter.push(delta)
            if not ready and splitter.started and self._running_dry(turn, pieces):
                ready = splitter.cut_early()
            for piece in ready:
                self._hand_to_tts(turn, piece, pieces)
                spoke = True
        for piece in splitter.flush():
            self._hand_to_tts(turn, piece, pieces)
            spoke = True
        return spoke

    @staticmethod
    def _hand_to_tts(turn: Turn, piece: str, pieces: asyncio.Queue[str | None]) -> None:
        turn.mark(Mark.FIRST_CLAUSE)
        turn.progress.written_chars += len(piece)
        turn.progress.pending_pieces += 1
        pieces.put_nowait(piece)

    def _running_dry(self, turn: Turn, pieces: asyncio.Queue[str | None]) -> bool:
        """Whether the reply audio queued for playback is about to run out with
        nothing else on its way (no piece waiting, no TTS call running)."""
        low = self.config.llm.cut_when_queued_audio_below_s
        if not low or not turn.confirmed.is_set() or turn.synthesizing or not pieces.empty():
            return False
        if not turn.reply_ready.is_set():  # the planner holds the answer back on purpose
            return False
        return self.avatar.queued_samples < low * MEDIA_SAMPLE_RATE

    def _synthesize(self, text: str, lang: str) -> tuple[Speech, np.ndarray, Any]:
        """In a worker thread: the speech, its audio at the media rate and the
        avatar's preparation of it (the mouth track), all off the event loop."""
        speech = self.engines.tts.synthesize(text, lang, self.voice)
        audio = to_media_rate(speech)
        return speech, audio, self.avatar.prepare(audio, speech)

    def _pick_opener(self, lang: str) -> Opener | None:
        choices = self.engines.openers.get(lang, []) if self.voice is None else []
        choices = [o for o in choices if o.text != self._last_opener] or choices
        if not choices or not self.engines.llm.supports_prefill:
            return None
        opener = choices[self._rng.randrange(len(choices))]
        self._last_opener = opener.text
        return opener

    async def _say_opener(self, turn: Turn, opener: Opener) -> None:
        """Say the opener so that it ends a comma's pause before the answer
        starts. Said at once, the ~0.3-0.5 s opener ends long before the answer
        is written and synthesized and leaves a pause. So it waits for the
        LLM's first token, then for as long as the answer usually takes from
        there (learnt across sessions: a property of this machine and its
        load) less the opener's own length; never past ``llm.opener_wait_s``
        after the end of speech, nor once the answer may start.

        When the answer is still expected well after the opener would end
        (a slow or busy CPU), a filler ("Let me see.") is said first and the
        opener then waits again, but leaves at most ``MAX_FILLER_GAP_S`` of
        silence after the filler: thinking aloud, not dead air."""
        deadline = turn.end_of_speech + self.config.llm.opener_wait_s
        await _wait_event(turn.first_token, deadline)
        await _wait_event(turn.reply_ready, min(self._opener_start(turn, opener), deadline))
        filler = self._pick_filler(turn, opener)
        if filler is not None:
            await self._push(
                turn, filler.text, filler.lang, filler.speech, filler.audio, filler=True
            )
            said = time.perf_counter() + filler.voiced_seconds
            start = min(self._opener_start(turn, opener), said + MAX_FILLER_GAP_S)
            await _wait_event(turn.reply_ready, start)
        await self._push(turn, opener.text, opener.lang, opener.speech, opener.audio, opener=True)

    def _expected_answer(self, turn: Turn) -> float:
        """When the answer is expected to start (perf_counter time): the learnt
        lag after the first token, or after now while no token has come."""
        return turn.marks.get(Mark.LLM_FIRST_TOKEN, time.perf_counter()) + self.planner.answer_lag_s

    def _opener_start(self, turn: Turn, opener: Opener) -> float:
        return self._expected_answer(turn) - opener.voiced_seconds - OPENER_PAUSE_S

    def _pick_filler(self, turn: Turn, opener: Opener) -> Opener | None:
        """A filler when the answer is expected more than
        ``llm.filler_when_silence_ahead_s`` after the opener would end."""
        ahead = self.config.llm.filler_when_silence_ahead_s
        choices = self.engines.fillers.get(opener.lang, [])
        if not ahead or not choices or turn.reply_ready.is_set():
            return None
        now = time.perf_counter()
        wait = self._expected_answer(turn) - now
        if wait - opener.voiced_seconds < ahead:
            return None
        # The longer fillers for the longer waits ("Let me see." for a second,
        # "Hmm, let me think about that." for two): two of the longest that
        # fit, so the same one is not said every time.
        room = wait - opener.voiced_seconds - 2 * OPENER_PAUSE_S
        fitting = sorted(
            (f for f in choices if f.voiced_seconds <= room), key=lambda f: -f.voiced_seconds
        )
        if not fitting:
            return min(choices, key=lambda f: f.voiced_seconds)
        return self._rng.choice(fitting[:2])

    def _learn_reply_lag(self, turn: Turn) -> None:
        """Seconds from the first token to the moment the answer may start."""
        first_token = turn.marks.get(Mark.LLM_FIRST_TOKEN)
        if first_token is not None:
            self.planner.observe_answer_lag(time.perf_counter() - first_token)

    async def _push(
        self,
        turn: Turn,
        text: str,
        lang: str,
        speech: Speech,
        audio: np.ndarray,
        filler: bool = False,
        opener: bool = False,
        prepared: Any = _LINE,
    ) -> None:
        if prepared is _LINE:  # made at start-up: prepared once per session, off the loop
            if id(audio) not in self._prepared_lines:
                self._prepared_lines[id(audio)] = await asyncio.to_thread(
                    self.avatar.prepare, audio, speech
                )
            prepared = self._prepared_lines[id(audio)]
        await turn.confirmed.wait()
        turn.mark(Mark.TTS_FIRST_AUDIO)
        tag = (turn.index, len(turn.pieces))
        turn.pieces.append(ReplyPiece(text, lang, samples=audio.size, filler=filler, opener=opener))
        self.avatar.push_audio(audio, tag=tag, speech=speech, prepared=prepared)

    async def _speak(
        self,
        turn: Turn,
        pieces: asyncio.Queue[str | None],
        lang: str,
        opener: Opener | None,
    ) -> None:
        """Synthesize the reply's pieces and push them to the avatar in order.
        The answer starts once the planner says the audio made so far lasts
        until the rest is made (pipelines/planner.py); the opener, held in its
        own task, is timed to end just before that."""
        made: asyncio.Queue[_Made | None] = asyncio.Queue()
        saying = asyncio.create_task(self._say_opener(turn, opener)) if opener else None
        synthesis = asyncio.create_task(self._synthesize_pieces(turn, pieces, lang, made))
        try:
            held: list[_Made] = []
            buffered = 0.0  # seconds of audio in `held`
            first_ready: float | None = None
            max_hold = self.config.llm.max_answer_hold_s
            while not turn.reply_ready.is_set():
                try:
                    item = await asyncio.wait_for(made.get(), PLAN_RECHECK_S)
                except TimeoutError:  # the LLM wrote on: the prediction changed
                    item = False
                if item is None:
                    break
                if item:
                    held.append(item)
                    buffered += item.audio.size / MEDIA_SAMPLE_RATE
                    first_ready = first_ready or time.perf_counter()
                if held and self.planner.may_start(turn.progress, buffered):
                    self._open_answer(turn)
                elif first_ready is not None and time.perf_counter() - first_ready >= max_hold:
                    # A long reply on a slow machine: pauses later beat a long
                    # silence now.
                    log.info("session %s: answer started before it can play through", self.id)
                    self._open_answer(turn)
            else:
                item = False
            self._open_answer(turn)
            if saying is not None and turn.llm_error is not None and not held:
                saying.cancel()  # no answer is coming: no "Sure," before the apology
            elif saying is not None:
                await saying  # the opener goes first
            for done in held:
                await self._push(
                    turn, done.text, done.lang, done.speech, done.audio, prepared=done.prepared
                )
            while item is not None and (item := await made.get()) is not None:
                await self._push(
                    turn, item.text, item.lang, item.speech, item.audio, prepared=item.prepared
                )
        finally:
            synthesis.cancel()
            if saying is not None:
                saying.cancel()

    def _open_answer(self, turn: Turn) -> None:
        if not turn.reply_ready.is_set():
            self._learn_reply_lag(turn)
            turn.reply_ready.set()

    async def _synthesize_pieces(
        self,
        turn: Turn,
        pieces: asyncio.Queue[str | None],
        lang: str,
        made: asyncio.Queue[_Made | None],
    ) -> None:
        """TTS calls for the written pieces, results in order into ``made``.
        A call starts when a slot is free (``tts.parallel_calls``; the first
        piece alone: it gets the CPU), taking all the text waiting then as one
        call where the planner merges (a call's fixed cost is large)."""
        loop = asyncio.get_running_loop()
        slots = asyncio.Semaphore(max(1, int(self.config.tts.parallel_calls)))
        order: asyncio.Queue[asyncio.Task[_Made] | None] = asyncio.Queue()
        tasks: list[asyncio.Task[_Made]] = []

        async def synthesize(text: str, piece_lang: str) -> _Made:
            turn.synthesizing += 1
            started = time.perf_counter()
            try:
                speech, audio, prepared = await loop.run_in_executor(
                    self.engines.inference, self._synthesize, text, piece_lang
                )
            except Exception as exc:
                raise SynthesisFailed(text, f"speech synthesis failed: {exc}") from exc
            finally:
                turn.synthesizing -= 1
                slots.release()
            self.planner.observe_synthesis(len(text), piece_lang, time.perf_counter() - started)
            turn.progress.synthesized_chars += len(text)
            return _Made(text, piece_lang, speech, audio, prepared)

        async def deliver() -> None:
            while (task := await order.get()) is not None:
                try:
                    done = await task
                    if done.audio.size:  # nothing to say (punctuation only)
                        made.put_nowait(done)
                except asyncio.CancelledError:
                    raise
                except SynthesisFailed as failure:  # one sentence unspoken, not the reply
                    self.engines.health.failed(Stage.TTS, failure.__cause__)
                    log.error("session %s: TTS failed on %r: %s", self.id, failure.text, failure)
                    self.emit(BotTextEvent(text=failure.text, spoken=False))
                    self.emit(ErrorEvent(message=str(failure), stage=Stage.TTS))
            made.put_nowait(None)

        delivery = asyncio.create_task(deliver())
        carry: list[str | None] = []  # taken while merging, not merged: next
        try:
            while True:
                await slots.acquire()
                text = carry.pop() if carry else await pieces.get()
                if text is None:
                    break
                piece_lang = detect_lang(text) if self.lang == "auto" else lang
                count = 1
                if self.planner.merges(piece_lang):
                    limit = self.planner.max_merged_chars(piece_lang)
                    while not pieces.empty():
                        more = pieces.get_nowait()
                        same = more is not None and (
                            self.lang != "auto" or detect_lang(more) == piece_lang
                        )
                        if more is None or not same or len(text) + len(more) > limit:
                            carry.append(more)
                            break
                        text = _join(text, more, piece_lang)
                        count += 1
                turn.progress.pending_pieces -= count
                task = asyncio.create_task(synthesize(text, piece_lang))
                tasks.append(task)
                order.put_nowait(task)
                if len(tasks) == 1:
                    await asyncio.wait([task])  # the first piece has the CPU to itself
            order.put_nowait(None)
            await delivery
        finally:
            delivery.cancel()
            for task in tasks:
                task.cancel()

    # ---------------------------------------------------------- media clock
    def _on_frame(self, frame: AvatarFrame, now: float) -> None:
        """Called by the clock as each frame is released: playback accounting."""
        turn = self._turn
        if turn is None:
            return
        reply_audio = False
        for tag, samples in frame.played:
            turn_index, piece_index = tag
            if turn_index != turn.index or piece_index >= len(turn.pieces):
                continue
            piece = turn.pieces[piece_index]
            reply_audio = reply_audio or samples > 0
            if piece.played == 0 and samples > 0:
                self.emit(BotTextEvent(text=piece.text))
                if piece_index == 0:
                    turn.marks.setdefault(Mark.FIRST_AUDIO_SENT, now)
                self._set_state(State.SPEAKING)
                if not piece.filler and not piece.opener:
                    turn.marks.setdefault(Mark.ANSWER_AUDIO_SENT, now)
            piece.played += samples
        if reply_audio:
            if turn.last_audio_frame is not None and not self.clock.held:
                gap = now - turn.last_audio_frame - SAMPLES_PER_VIDEO_FRAME / MEDIA_SAMPLE_RATE
                turn.longest_gap = max(turn.longest_gap, gap)
                if now > turn.marks.get(Mark.ANSWER_AUDIO_SENT, now):
                    turn.longest_gap_in_answer = max(turn.longest_gap_in_answer, gap)
            turn.last_audio_frame = now
        if (
            turn.generation_done
            and self.avatar.queued_samples == 0
            and all(p.played >= p.samples for p in turn.pieces)
        ):
            turn.mark(Mark.REPLY_DONE)
            self._finish_turn(turn)
        elif (
            Mark.ANSWER_AUDIO_SENT not in turn.marks
            and self.avatar.queued_samples == 0
            and turn.pieces
            and all(p.played >= p.samples for p in turn.pieces)
        ):
            # The filler and opener are said; the answer is still being made:
            # the page shows the avatar thinking, not speaking in silence.
            self._set_state(State.THINKING)

    def _send_latency(self, turn: Turn) -> None:
        if not turn.latency_sent:
            turn.latency_sent = True
            self.emit(
                TurnEvent(index=turn.index, latency=turn.latency(), playback=turn.playback())
            )

    # -------------------------------------------------------- interruption
    def interrupt(self, reason: str) -> None:
        turn = self._turn
        if turn is None:
            return
        log.info("session %s turn %d interrupted (%s)", self.id, turn.index, reason)
        self.avatar.clear()
        self.clock.flush()  # _finish_turn below also releases a pause
        if self._turn_task is not None and not self._turn_task.done():
            self._turn_task.cancel()
        turn.interrupted = True
        turn.mark(Mark.INTERRUPTED)
        self._finish_turn(turn)

    def _finish_turn(self, turn: Turn) -> None:
        if self._turn is not turn:
            return
        self.clock.hold(False)
        turn.heard_text = turn.heard()
        if turn.user_text:
            # Without fillers: a model that sees "Let me see." in its own past
            # answers starts writing it (measured: docs/benchmarks.md).
            self.history.add_assistant(turn.heard(fillers=False))
        self._send_latency(turn)
        self.turns.append(turn)
        self._turn = None
        self._set_state(State.LISTENING)
        if self.on_turn_end is not None:
            try:
                self.on_turn_end(turn)
            except Exception:
                log.exception("turn-end hook failed")

    async def _cancel_turn(self) -> None:
        task = self._turn_task
        self.interrupt("closing")
        if task is not None and not task.done():
            task.cancel()
            try:
                await task
            except (asyncio.CancelledError, Exception):
                pass

    # ---------------------------------------------------------------- views
    def summary(self, detail: bool = False) -> dict[str, Any]:
        info: dict[str, Any] = {
            "id": self.id,
            "state": self.state,
            "lang": self.lang,
            "avatar": self.avatar_name,
            "created": self.created,
            "turns": len(self.turns),
            "frames_sent": self.clock.frames_sent,
            "frames_dropped": self.clock.dropped,
        }
        if detail:
            info["turn_log"] = [t.summary() for t in self.turns]
            info["history"] = self.history.turns
        return info
