"""Speaking the reply: written pieces -> TTS calls -> the avatar's queue, in
order, with the answer held until the planner says it can play through.

Audio comes from ``tts.stream``: a backend that ``streams_audio`` hands over
a piece's audio in chunks, each pushed to the avatar as it comes under the
piece's tag (one chunk for Kokoro). Every push goes through ``push``, which
the speech-to-speech turns use too, so playback accounting, barge-in, the
clock's hold and the marks see one path."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import Any

import numpy as np

from core.config import Config
from core.lang import detect_lang
from models.base import MEDIA_SAMPLE_RATE, AvatarStream, Speech, to_media_rate
from models.registry import Engines, Opener
from pipelines.events import BotTextEvent, ErrorEvent, Mark, Stage
from pipelines.openers import Openers, SayLine
from pipelines.planner import ReplyPlanner
from pipelines.timebase import TimeSource, wait_for
from pipelines.turn import ReplyPiece, Turn

log = logging.getLogger(__name__)

SpokenEvent = BotTextEvent | ErrorEvent  # what speaking tells the page

PLAN_RECHECK_S = 0.1  # while the answer is held, the planner looks again this often


@dataclass
class SpeechPart:
    """Reply audio ready to push: a synthesized piece, or one chunk of it."""

    text: str
    lang: str
    speech: Speech
    audio: np.ndarray  # at the media rate
    prepared: Any = None  # the avatar's work on it, done in a worker thread
    continues: bool = False  # more audio of the piece pushed just before it


class _PieceEnd:
    """The piece being streamed has all its audio."""


PIECE_END = _PieceEnd()


class SynthesisFailed(RuntimeError):
    """One piece could not be synthesized; its text is shown instead."""

    def __init__(self, text: str, message: str) -> None:
        super().__init__(message)
        self.text = text


def _join(first: str, second: str, lang: str) -> str:
    return first + second if lang == "zh" else f"{first} {second}"


class ReplySpeaker:
    """One session's speech: it owns the pushes to its avatar stream."""

    def __init__(
        self,
        engines: Engines,
        config: Config,
        planner: ReplyPlanner,
        time_source: TimeSource,
        avatar: AvatarStream,
        openers: Openers,
        emit: Callable[[SpokenEvent], None],
        *,
        session_id: str,
        lang: str,
        voice: str | None,
    ) -> None:
        self._engines = engines
        self._config = config
        self._planner = planner
        self._time = time_source
        self._avatar = avatar
        self._openers = openers
        self._emit = emit
        self._session_id = session_id
        self._lang = lang  # "auto": each piece's language is detected
        self._voice = voice
        # Openers, fillers and fault lines (audio made at start-up, by id) as
        # this session's avatar prepared them.
        self._prepared_lines: dict[int, Any] = {}

    async def speak(
        self,
        turn: Turn,
        pieces: asyncio.Queue[str | None],
        lang: str,
        opener: Opener | None,
    ) -> None:
        """Synthesize the reply's pieces and push them to the avatar in order.
        The answer starts once the planner says the audio made so far lasts
        until the rest is made (pipelines/planner.py); the opener, held in its
        own task, is timed to end just before that (pipelines/openers.py)."""
        made: asyncio.Queue[SpeechPart | _PieceEnd | None] = asyncio.Queue()
        saying = None
        if opener is not None:
            saying = asyncio.create_task(self._openers.say(turn, opener, self._line_saying(turn)))
        synthesis = asyncio.create_task(self._synthesize_pieces(turn, pieces, lang, made))
        time_source = self._time
        try:
            held: list[SpeechPart | _PieceEnd] = []
            buffered = 0.0  # seconds of audio in `held`
            first_ready: float | None = None
            finished = False  # the last piece came while the answer was held
            max_hold = self._config.llm.max_answer_hold_s
            while not turn.reply_ready.is_set():
                try:
                    item = await wait_for(time_source, made.get(), PLAN_RECHECK_S)
                except TimeoutError:  # the LLM wrote on: the prediction changed
                    pass
                else:
                    if item is None:
                        finished = True
                        break
                    held.append(item)
                    if isinstance(item, SpeechPart):
                        buffered += item.audio.size / MEDIA_SAMPLE_RATE
                        first_ready = first_ready or time_source.now()
                if held and self._planner.may_start(turn.progress, buffered):
                    if not turn.reply_ready.is_set():
                        self._trace_opening(turn, buffered, first_ready)
                    self._open_answer(turn)
                elif first_ready is not None and time_source.now() - first_ready >= max_hold:
                    # A long reply on a slow machine: pauses later beat a long
                    # silence now.
                    log.info(
                        "session %s: answer started before it can play through", self._session_id
                    )
                    self._open_answer(turn)
            self._open_answer(turn)
            if saying is not None and turn.llm_error is not None and not held:
                saying.cancel()  # no answer is coming: no "Sure," before the apology
            elif saying is not None:
                await saying  # the opener goes first
            for done in held:
                await self._deliver(turn, done)
            while not finished and (item := await made.get()) is not None:
                await self._deliver(turn, item)
        finally:
            synthesis.cancel()
            if saying is not None:
                saying.cancel()

    async def say_line(
        self, turn: Turn, line: Opener, *, filler: bool = False, opener: bool = False
    ) -> None:
        """Push a line synthesized at start-up (opener, filler, fault line);
        the avatar prepares it once per session, off the event loop."""
        key = id(line.audio)
        if key not in self._prepared_lines:
            self._prepared_lines[key] = await self._time.run_in_thread(
                None, self._avatar.prepare, line.audio, line.speech
            )
        part = SpeechPart(line.text, line.lang, line.speech, line.audio, self._prepared_lines[key])
        await self.push(turn, part, filler=filler, opener=opener)

    def _line_saying(self, turn: Turn) -> SayLine:
        async def say(line: Opener, filler: bool) -> None:
            await self.say_line(turn, line, filler=filler, opener=not filler)

        return say

    async def _deliver(self, turn: Turn, item: SpeechPart | _PieceEnd) -> None:
        if isinstance(item, SpeechPart):
            await self.push(turn, item, complete=not self._engines.tts.streams_audio)
        else:
            self.piece_complete(turn)

    async def push(
        self,
        turn: Turn,
        part: SpeechPart,
        *,
        filler: bool = False,
        opener: bool = False,
        complete: bool = True,
    ) -> None:
        """Queue ``part`` on the avatar once the turn is confirmed: a new reply
        piece, or more audio of the last one (``part.continues``) under the
        same tag. ``complete``: the piece has all its audio (else
        ``piece_complete`` says so later)."""
        await turn.confirmed.wait()
        turn.mark(Mark.TTS_FIRST_AUDIO)
        if part.continues and turn.pieces:
            index = len(turn.pieces) - 1
            turn.pieces[index].samples += part.audio.size
        else:
            index = len(turn.pieces)
            expected = self._planner.audio_seconds(len(part.text), part.lang) * MEDIA_SAMPLE_RATE
            turn.pieces.append(
                ReplyPiece(
                    part.text,
                    part.lang,
                    samples=part.audio.size,
                    filler=filler,
                    opener=opener,
                    complete=complete,
                    expected_samples=0 if complete else round(expected),
                )
            )
        self._avatar.push_audio(
            part.audio, tag=(turn.index, index), speech=part.speech, prepared=part.prepared
        )

    @staticmethod
    def piece_complete(turn: Turn) -> None:
        """The last piece pushed has all its audio."""
        if turn.pieces:
            turn.pieces[-1].complete = True

    async def prepared(self, text: str, lang: str, speech: Speech) -> SpeechPart:
        """``speech`` at the media rate with the avatar's work on it, done in the
        inference pool (speech that did not come from ``tts``, e.g. an
        end-to-end model's)."""
        audio, prepared = await self._time.run_in_thread(
            self._engines.inference, self._prepare, speech
        )
        return SpeechPart(text, lang, speech, audio, prepared)

    def _prepare(self, speech: Speech) -> tuple[np.ndarray, Any]:
        audio = to_media_rate(speech)
        return audio, self._avatar.prepare(audio, speech)

    def _trace_opening(self, turn: Turn, buffered: float, first_ready: float | None) -> None:
        if not log.isEnabledFor(logging.DEBUG):
            return
        now = self._time.now()
        progress = turn.progress
        log.debug(
            "session %s turn %d: answer opens at +%.2f s (%.2f s after its first audio was "
            "made) with %.2f s of audio made; %d chars written, %d synthesized, writing %s; "
            "predicted to finish in %.2f s; TTS slowdown %.2f, writing slowdown %.2f",
            self._session_id,
            turn.index,
            now - turn.end_of_speech,
            now - first_ready if first_ready is not None else 0.0,
            buffered,
            progress.written_chars,
            progress.synthesized_chars,
            "done" if progress.generation_done else "on",
            self._planner.seconds_to_finish(progress) if self._planner.costs else 0.0,
            self._planner.slowdown,
            self._planner.writing_slowdown,
        )

    def _open_answer(self, turn: Turn) -> None:
        if not turn.reply_ready.is_set():
            self._openers.learn_reply_lag(turn)
            turn.reply_ready.set()

    async def _synthesize_pieces(
        self,
        turn: Turn,
        pieces: asyncio.Queue[str | None],
        lang: str,
        made: asyncio.Queue[SpeechPart | _PieceEnd | None],
    ) -> None:
        """TTS calls for the written pieces, their audio in order into ``made``
        (each piece's chunks, then PIECE_END). A call starts when a slot is
        free (``tts.parallel_calls``; the first piece alone: it gets the CPU),
        taking all the text waiting then as one call where the planner merges
        (a call's fixed cost is large)."""
        slots = asyncio.Semaphore(max(1, int(self._config.tts.parallel_calls)))
        order: asyncio.Queue[asyncio.Queue[SpeechPart | SynthesisFailed | None] | None] = (
            asyncio.Queue()
        )
        tasks: list[asyncio.Task[None]] = []
        time_source = self._time
        loop = asyncio.get_running_loop()

        async def synthesize(
            text: str, piece_lang: str, out: asyncio.Queue[SpeechPart | SynthesisFailed | None]
        ) -> None:
            """Chunks into ``out`` as the worker makes them, then None (or the failure)."""
            turn.synthesizing += 1
            started = time_source.now()
            stop = threading.Event()

            def hand_over(part: SpeechPart) -> None:  # in the worker thread
                loop.call_soon_threadsafe(out.put_nowait, part)

            try:
                await time_source.run_in_thread(
                    self._engines.inference, self._synthesize, text, piece_lang, hand_over, stop
                )
            except Exception as exc:
                failure = SynthesisFailed(text, f"speech synthesis failed: {exc}")
                failure.__cause__ = exc
                out.put_nowait(failure)
                return
            finally:
                stop.set()  # cancelled: the worker stops at its next chunk
                turn.synthesizing -= 1
                slots.release()
            # The chunks the worker handed over were queued on the loop before
            # its call returned: None comes after all of them.
            out.put_nowait(None)
            took = time_source.now() - started
            log.debug(
                "session %s turn %d: TTS %d chars (%s) from +%.2f s in %.2f s (predicted %.2f): %r",
                self._session_id,
                turn.index,
                len(text),
                piece_lang,
                started - turn.end_of_speech,
                took,
                self._planner.synth_seconds(len(text), piece_lang),
                text[:60],
            )
            self._planner.observe_synthesis(len(text), piece_lang, took)
            turn.progress.synthesized_chars += len(text)

        async def deliver() -> None:
            while (out := await order.get()) is not None:
                started = False  # a chunk of this piece went to `made`
                while (item := await out.get()) is not None:
                    if isinstance(item, SynthesisFailed):  # one sentence unspoken, not the reply
                        self._engines.health.failed(Stage.TTS, item.__cause__)
                        log.error(
                            "session %s: TTS failed on %r: %s", self._session_id, item.text, item
                        )
                        if not started:  # else it is shown as its audio plays
                            self._emit(BotTextEvent(text=item.text, spoken=False))
                        self._emit(ErrorEvent(message=str(item), stage=Stage.TTS))
                        break
                    if item.audio.size:  # nothing to say (punctuation only)
                        item.continues = started
                        started = True
                        made.put_nowait(item)
                if started:
                    made.put_nowait(PIECE_END)
            made.put_nowait(None)

        delivery = asyncio.create_task(deliver())
        carry: list[str | None] = []  # taken while merging, not merged: next
        auto = self._lang == "auto"
        try:
            while True:
                await slots.acquire()
                text = carry.pop() if carry else await pieces.get()
                if text is None:
                    break
                piece_lang = detect_lang(text) if auto else lang
                count = 1
                if self._planner.merges(piece_lang):
                    limit = self._planner.max_merged_chars(piece_lang)
                    while not pieces.empty():
                        more = pieces.get_nowait()
                        same = more is not None and (not auto or detect_lang(more) == piece_lang)
                        if more is None or not same or len(text) + len(more) > limit:
                            carry.append(more)
                            break
                        text = _join(text, more, piece_lang)
                        count += 1
                turn.progress.pending_pieces -= count
                out: asyncio.Queue[SpeechPart | SynthesisFailed | None] = asyncio.Queue()
                task = asyncio.create_task(synthesize(text, piece_lang, out))
                tasks.append(task)
                order.put_nowait(out)
                if len(tasks) == 1:
                    await asyncio.wait([task])  # the first piece has the CPU to itself
            order.put_nowait(None)
            await delivery
        finally:
            delivery.cancel()
            for task in tasks:
                task.cancel()

    def _synthesize(
        self,
        text: str,
        lang: str,
        hand_over: Callable[[SpeechPart], None],
        stop: threading.Event,
    ) -> None:
        """In a worker thread: the speech of ``text`` chunk by chunk, each at the
        media rate with the avatar's preparation of it (the mouth track), all
        off the event loop, handed over as soon as it is made."""
        chunks = self._engines.tts.stream(text, lang, self._voice)
        wall, cpu = time.perf_counter(), time.thread_time()
        preparing = 0.0
        try:
            for speech in chunks:
                if stop.is_set():
                    break
                audio = to_media_rate(speech)
                before = time.perf_counter()
                prepared = self._avatar.prepare(audio, speech)
                preparing += time.perf_counter() - before
                hand_over(SpeechPart(text, lang, speech, audio, prepared))
        finally:
            if isinstance(chunks, Generator):  # a backend may hold a lock until it ends
                chunks.close()
            log.debug(
                "session %s: TTS worker %.2f s wall, %.2f s CPU of its own thread, "
                "%.2f s preparing the mouth, for %d chars",
                self._session_id,
                time.perf_counter() - wall,
                time.thread_time() - cpu,
                preparing,
                len(text),
            )
