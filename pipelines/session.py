"""One conversation: its wiring, states and events, and its turns' lives.

mic -> listening policy (VAD: pause, speculation, barge-in; a streaming
recognizer fed as the user speaks, pipelines/transcription.py) -> a task per
turn (pipelines/turn_runner.py: ASR -> history -> LLM -> TTS -> avatar; or,
with an end-to-end model, pipelines/speech_to_speech.py) -> media clock ->
tracks; the frames the clock released -> playback accounting -> back here as
what the user heard.

Control runs one way: the session commands its parts (the media clock through
``hold``/``flush``/``set_listening``, the avatar's queue through ``clear``,
the turn task by cancelling it) and they report through the typed observer
interfaces it implements (``TurnTaking`` for the listening policy,
``PlaybackObserver`` for playback) or the callbacks it hands them (``emit``,
``finish``). Everything per conversation lives here; models are shared
(models/registry.py). Control overtakes data: an interruption cancels the turn
task and clears the avatar's queue at once, and the history keeps only what
the user heard.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from core.config import Config
from models.base import ChatMessage
from models.registry import Engines
from models.tts.voices_router import voice_backend
from models.vad.turn import TurnDetector
from pipelines.clock import MediaClock
from pipelines.events import (
    MAX_TEXT_CHARS,
    BotTextEvent,
    EndedEvent,
    ErrorEvent,
    Mark,
    State,
    StateEvent,
    TurnEvent,
    UserTextEvent,
    parse_client_message,
    to_wire,
)
from pipelines.history import ChatHistory
from pipelines.listening import ListeningPolicy
from pipelines.planner import ReplyPlanner
from pipelines.playback import Playback
from pipelines.speech_to_speech import SpeechToSpeechTurns
from pipelines.timebase import REAL_TIME, TimeSource
from pipelines.transcription import LiveUtterance, UtteranceStream
from pipelines.turn import ReplyPiece, Turn
from pipelines.turn_runner import TurnRunner

log = logging.getLogger(__name__)

EventSink = Callable[[dict[str, Any]], None]  # takes the JSON object sent to the page
Event = StateEvent | UserTextEvent | BotTextEvent | TurnEvent | ErrorEvent | EndedEvent


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
        time_source: TimeSource = REAL_TIME,
        history: Sequence[ChatMessage] | None = None,
    ) -> None:
        self.id = session_id or self.new_id()
        # Process-wide (it learns the machine's load); without one (tests with
        # scripted models) every piece is spoken as soon as it is synthesized.
        # A voice another TTS backend speaks (Piper's) is planned with its costs.
        self.planner = (planner or ReplyPlanner.immediate()).for_backend(
            voice_backend(engines.tts, voice) if engines.s2s is None else None
        )
        self.on_turn_end = on_turn_end  # e.g. metrics; called once per finished turn
        self.engines = engines
        self.config = config
        self.time_source = time_source  # every wait and timestamp of this session
        self.lang = lang if lang in ("en", "zh") else "auto"
        self.voice = voice
        self.avatar_name = avatar or config.avatar.default
        self.avatar = engines.avatar.new_stream(self.avatar_name)
        self.history = ChatHistory(
            system_prompt or config.llm.system_prompt, config.llm.max_history_messages
        )
        if history:  # a reconnect continues where the conversation was
            self.history.restore(history)
        self.greeting = greeting
        self.clock = MediaClock(
            self.avatar,
            time_source=time_source,
            idle_video_every=round(config.avatar.fps / float(config.avatar.idle_fps)),
        )
        self.playback = Playback(self.avatar, self)
        self.clock.subscribe(self.playback)
        detector = TurnDetector.from_config(engines.vad.new_detector(), config.vad)
        # A recognizer that streams partials hears the user as they speak.
        self._live = (
            LiveUtterance(detector, self._new_utterance_stream)
            if engines.s2s is None and engines.asr.streams_partials
            else None
        )
        self.listening = ListeningPolicy(
            detector,
            config,
            time_source,
            self.clock,
            self,
            self.id,
            live=self._live,
            speculate=engines.s2s is None,
        )
        self.turn_runner = TurnRunner(
            engines,
            config,
            self.planner,
            time_source,
            self.avatar,
            self.history,
            self.emit,
            self._finish_turn,
            session_id=self.id,
            lang=self.lang,
            # With an end-to-end model the voice is its voice; the TTS says
            # only given lines (say, the greeting), in its own default voice.
            voice=voice if engines.s2s is None else None,
        )
        # An end-to-end model takes the user's turns in place of ASR + LLM + TTS.
        self.speech_to_speech = (
            SpeechToSpeechTurns(
                engines.s2s,
                engines,
                time_source,
                self.avatar,
                self.turn_runner.speaker,
                self.history,
                self.emit,
                self._finish_turn,
                session_id=self.id,
                lang=self.lang,
                voice=voice or config.s2s.voice or None,
            )
            if engines.s2s is not None
            else None
        )
        self.state = State.LISTENING
        self.created = time.time()
        self._last_activity = time_source.now()  # speech, text or the end of a reply
        self._tasks: set[asyncio.Task[Any]] = set()  # e.g. the microphone reader
        self.turns: list[Turn] = []
        self._turn: Turn | None = None
        self._turn_task: asyncio.Task[None] | None = None
        self._prime_task: asyncio.Task[None] | None = None
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

    def emit(self, event: Event) -> None:
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
            self.clock.set_listening(state == State.LISTENING)
            self.emit(StateEvent(value=state))

    # ------------------------------------------------------------- lifecycle
    @staticmethod
    def new_id() -> str:
        return uuid.uuid4().hex[:12]

    def start(self) -> None:
        first = self.clock.frames_sent == 0 and self._prime_task is None
        if first and self.speech_to_speech is None:
            # Fill this conversation's KV-cache slot with the persona while the
            # user is still getting ready to talk.
            self._prime_task = asyncio.create_task(
                self.engines.llm.prime(self.history.messages(), self.id)
            )
            if self.voice is not None:
                self.engines.make_voice_lines(
                    self.voice, self.config.llm, self.config.inference_nice
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
        return self.time_source.now() - self._last_activity

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
        if self._live is not None:
            self._live.close()
        if self.speech_to_speech is not None:
            await self.speech_to_speech.close()
        self.engines.llm.release(self.id)
        await self.clock.stop()
        self.avatar.close()  # after the clock: nothing renders from it any more

    # ---------------------------------------------------------------- inputs
    def feed_mic(self, audio_16k: np.ndarray) -> None:
        """Microphone audio, 16 kHz mono float32, in arrival order."""
        if not self.closed:
            self.listening.hear(audio_16k)

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
        self._last_activity = self.time_source.now()
        self.interrupt("typed")
        self.emit(UserTextEvent(text=parsed.text, final=True))
        self.start_turn(source="text", end_of_speech=self.time_source.now(), text=parsed.text)

    def say(self, text: str) -> Turn:
        """Make the avatar say ``text`` (not the LLM's words): the REST
        ``say`` call and the greeting. It interrupts what is being said."""
        text = checked_text(text)
        self.interrupt("say")
        return self.start_turn(source="say", end_of_speech=self.time_source.now(), text=text)

    # ------------------------------------- TurnTaking (the listening policy)
    @property
    def current_turn(self) -> Turn | None:
        return self._turn

    def user_started_speaking(self) -> None:
        self._last_activity = self.time_source.now()
        self.emit(UserTextEvent(text="", final=False))

    def _new_utterance_stream(self) -> UtteranceStream:
        return UtteranceStream(
            self.engines.asr,
            self.engines.inference,
            self.time_source,
            None if self.lang == "auto" else self.lang,
            self._partial_transcript,
        )

    def _partial_transcript(self, text: str) -> None:
        if not self.closed:
            self.emit(UserTextEvent(text=text, final=False))

    def start_voice_turn(
        self,
        end_of_speech: float,
        audio: np.ndarray,
        speculative_at: int | None = None,
        stream: UtteranceStream | None = None,
    ) -> Turn:
        return self.start_turn(
            source="voice",
            end_of_speech=end_of_speech,
            audio=audio,
            confirmed=speculative_at is None,
            speech_end_sample=speculative_at,
            stream=stream,
        )

    def confirm(self, turn: Turn) -> None:
        turn.confirmed.set()
        self._set_state(State.THINKING)

    def drop_speculation(self) -> None:
        """Forget a speculative turn without a trace: nothing was said or shown."""
        turn = self._turn
        if turn is None or not turn.speculative:
            return
        if self._turn_task is not None and not self._turn_task.done():
            self._turn_task.cancel()
        self._turn = None

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
        stream: UtteranceStream | None = None,
    ) -> Turn:
        self.drop_speculation()
        if self._turn is not None:
            self.interrupt("new turn")
        turn = Turn(
            index=len(self.turns) + 1,
            source=source,
            end_of_speech=end_of_speech,
            speech_end_sample=speech_end_sample,
            now=self.time_source.now,
        )
        self._turn = turn
        if confirmed:
            self.confirm(turn)
        runner: TurnRunner | SpeechToSpeechTurns = self.turn_runner
        if self.speech_to_speech is not None and source != "say":
            runner = self.speech_to_speech  # a given line is the TTS's to say
        self._turn_task = asyncio.create_task(runner.run(turn, audio, text, stream))
        return turn

    # ------------------------------------------ PlaybackObserver (playback)
    def piece_started(self, turn: Turn, piece: ReplyPiece) -> None:
        if piece.text:  # an end-to-end model's audio may come before its text
            self.emit(BotTextEvent(text=piece.text))
        self._set_state(State.SPEAKING)

    def reply_played(self, turn: Turn) -> None:
        self._finish_turn(turn)

    def answer_pending(self, turn: Turn) -> None:
        # The page shows the avatar thinking, not speaking in silence.
        self._set_state(State.THINKING)

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
        if self.speech_to_speech is not None:
            self.speech_to_speech.interrupted(turn)

    def _finish_turn(self, turn: Turn) -> None:
        if self._turn is not turn:
            return
        self.clock.hold(False)
        turn.heard_text = turn.heard()
        if turn.user_text:
            # Without fillers: a model that sees "Let me see." in its own past
            # answers starts writing it (measured: docs/benchmarks.md).
            self.history.add_assistant(turn.heard(fillers=False))
            self._prime_next_turn()
        self._send_latency(turn)
        log.debug("session %s turn %d marks: %s", self.id, turn.index, turn.latency())
        self.turns.append(turn)
        self._turn = None
        self._last_activity = self.time_source.now()  # idle counts from the reply's end
        self._set_state(State.LISTENING)
        if self.on_turn_end is not None:
            try:
                self.on_turn_end(turn)
            except Exception:
                log.exception("turn-end hook failed")

    def _prime_next_turn(self) -> None:
        """Process the exchange just ended into this conversation's KV cache
        while the user is still thinking or talking, so the next question's
        prompt holds only its own words (measured on a slow machine: the
        previous answer and question cost 0.5-1 s before the next first token;
        docs/benchmarks.md)."""
        if self.speech_to_speech is None and not self.closed:
            self.own_task(self.engines.llm.prime(self.history.next_prefix(), self.id))

    def _send_latency(self, turn: Turn) -> None:
        if not turn.latency_sent:
            turn.latency_sent = True
            self.emit(TurnEvent(index=turn.index, latency=turn.latency(), playback=turn.playback()))

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
            "voice": self.voice,
            "mode": "end-to-end" if self.engines.s2s is not None else "cascade",
            "created": self.created,
            "turns": len(self.turns),
            "frames_sent": self.clock.frames_sent,
            "frames_dropped": self.clock.dropped,
        }
        if detail:
            info["turn_log"] = [t.summary() for t in self.turns]
            info["history"] = self.history.turns
        return info
