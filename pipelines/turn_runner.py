"""What one turn does, in its own task: the transcript (ASR: the utterance's
live stream finished, or the whole utterance through a new stream), the history,
the LLM's answer spoken with its opener, a given line spoken (``say``), and
the fault line when the LLM fails. The session starts and cancels the task;
the turn ends through the session (``finish``) once it is played."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

import numpy as np

from core.config import Config
from core.lang import detect_lang
from models.base import AvatarStream
from models.registry import Engines
from pipelines.events import ErrorEvent, Mark, Stage, UserTextEvent
from pipelines.history import ChatHistory
from pipelines.openers import Openers
from pipelines.planner import ReplyPlanner
from pipelines.reply import ReplySpeaker, SpokenEvent
from pipelines.splitter import SentenceSplitter
from pipelines.timebase import TimeSource
from pipelines.transcription import UtteranceStream, transcribe_whole
from pipelines.turn import Turn
from pipelines.writer import ReplyWriter

log = logging.getLogger(__name__)


class TurnRunner:
    """One session's turns: ASR -> history -> LLM writer -> reply speaker."""

    def __init__(
        self,
        engines: Engines,
        config: Config,
        planner: ReplyPlanner,
        time_source: TimeSource,
        avatar: AvatarStream,
        history: ChatHistory,
        emit: Callable[[SpokenEvent | UserTextEvent], None],
        finish: Callable[[Turn], None],
        *,
        session_id: str,
        lang: str,
        voice: str | None,
    ) -> None:
        self._engines = engines
        self._time = time_source
        self._avatar = avatar  # told when the reply is all pushed (end_of_segment)
        self._history = history
        self._emit = emit
        self._finish = finish  # the session ends the turn
        self._session_id = session_id
        self._lang = lang  # "en", "zh" or "auto" (detected per turn)
        self.openers = Openers(engines, config, planner, time_source, voice)
        self.writer = ReplyWriter(engines, config, planner, time_source, avatar, session_id)
        self.speaker = ReplySpeaker(
            engines,
            config,
            planner,
            time_source,
            avatar,
            self.openers,
            emit,
            session_id=session_id,
            lang=lang,
            voice=voice,
        )

    async def run(
        self,
        turn: Turn,
        audio: np.ndarray | None,
        text: str | None,
        stream: UtteranceStream | None = None,
    ) -> None:
        """The turn's task: it ends when the reply is pushed (the turn itself
        ends when that is played, or at once if there is nothing to say).
        ``stream``: the utterance's live recognizer stream, already fed
        ``audio`` (only its tail is left to decode)."""
        try:
            lang = self._lang
            if audio is not None:
                if stream is not None:
                    transcript = await stream.finish()
                else:
                    forced = None if self._lang == "auto" else self._lang
                    transcript = await self._time.run_in_thread(
                        self._engines.inference, transcribe_whole, self._engines.asr, audio, forced
                    )
                turn.mark(Mark.ASR_FINAL)
                text = transcript.text.strip()
                lang = transcript.language
                if not text:
                    await turn.confirmed.wait()
                    log.info("session %s: nothing recognised, still listening", self._session_id)
                    self._finish(turn)
                    return
            assert text is not None
            if lang == "auto":
                lang = detect_lang(text)
            turn.progress.lang = lang
            if turn.source == "say":
                await self._say_text(turn, text, lang)
                return
            await self._answer(turn, text, lang, heard=audio is not None)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.exception("session %s turn %d failed", self._session_id, turn.index)
            self._emit(ErrorEvent(message=f"turn failed: {exc}"))
            self._finish(turn)

    async def _answer(self, turn: Turn, text: str, lang: str, heard: bool) -> None:
        """The LLM's answer to ``text``, spoken. Generation may start before
        the turn is confirmed; speaking may not."""
        pieces: asyncio.Queue[str | None] = asyncio.Queue()
        messages = self._history.messages_with_user(text)
        opener = self.openers.pick(lang)
        if opener is not None:
            # Say a short, pre-synthesized opener and let the LLM continue
            # the sentence it starts (assistant prefill).
            messages.append({"role": "assistant", "content": opener.text})
        producer = asyncio.create_task(self.writer.write(turn, messages, pieces))
        speaker = asyncio.create_task(self.speaker.speak(turn, pieces, lang, opener))
        try:
            await turn.confirmed.wait()
            if heard:
                self._emit(UserTextEvent(text=text, final=True))
            turn.user_text = text
            self._history.add_user(text)
            log.info("session %s turn %d (%s): %r", self._session_id, turn.index, lang, text)
            await speaker
        finally:
            producer.cancel()
            speaker.cancel()
        if turn.llm_error is not None:
            await self._llm_failed(turn, lang)
        else:
            self._engines.health.ok(Stage.LLM)
        self._reply_written(turn)

    async def _say_text(self, turn: Turn, text: str, lang: str) -> None:
        """Speak a given text through TTS and the avatar, without the LLM."""
        splitter = SentenceSplitter()
        pieces: asyncio.Queue[str | None] = asyncio.Queue()
        for piece in [*splitter.push(text), *splitter.flush()]:
            turn.hand_to_tts(piece, pieces)
        pieces.put_nowait(None)
        turn.progress.generation_done = True
        log.info("session %s turn %d: saying %r", self._session_id, turn.index, text)
        await self.speaker.speak(turn, pieces, lang, None)
        self._reply_written(turn)

    def _reply_written(self, turn: Turn) -> None:
        """Everything of the reply is pushed to the avatar; it ends when played."""
        self._avatar.end_of_segment()
        turn.generation_done = True
        if not turn.pieces:
            self._finish(turn)

    async def _llm_failed(self, turn: Turn, lang: str) -> None:
        """Say so, in the user's language; keep the question out of the history
        (it was not answered, so it must not be glued onto the next one)."""
        error = turn.llm_error
        self._engines.health.failed(Stage.LLM, error)
        log.error("session %s turn %d: the LLM failed: %s", self._session_id, turn.index, error)
        answered = any(not p.opener and not p.filler for p in turn.pieces)
        if not answered:
            self._history.drop_unanswered()
        line = self._engines.fault_lines.get(lang) or self._engines.fault_lines.get("en")
        message = line.text if line is not None else "Sorry, I cannot answer right now."
        self._emit(ErrorEvent(message=message, stage=Stage.LLM, detail=str(error)))
        if line is not None and not answered:
            await self.speaker.say_line(turn, line, filler=True)
