"""The LLM writes the reply: its stream is cut into speakable pieces
(pipelines/splitter.py) and queued for TTS, within a first-token time limit."""

from __future__ import annotations

import asyncio
import logging

from core.config import Config
from models.base import MEDIA_SAMPLE_RATE, AvatarStream, ChatMessage
from models.registry import Engines
from pipelines.events import Mark
from pipelines.planner import ReplyPlanner
from pipelines.splitter import SentenceSplitter, ends_sentence
from pipelines.timebase import Timeout, TimeSource
from pipelines.turn import Turn

log = logging.getLogger(__name__)


class LLMFailed(RuntimeError):
    """The language model did not answer (down, erroring or too slow)."""


class ReplyWriter:
    """One session's link to the shared LLM (its own conversation slot)."""

    def __init__(
        self,
        engines: Engines,
        config: Config,
        planner: ReplyPlanner,
        time_source: TimeSource,
        avatar: AvatarStream,
        conversation: str,
    ) -> None:
        self._engines = engines
        self._config = config
        self._planner = planner
        self._time = time_source
        self._avatar = avatar  # read only: how much reply audio is still queued
        self._conversation = conversation

    async def write(
        self, turn: Turn, messages: list[ChatMessage], pieces: asyncio.Queue[str | None]
    ) -> None:
        """Stream the reply to ``messages`` into ``pieces`` (None at the end).
        A failure is kept in ``turn.llm_error``, not raised: the turn says so."""
        llm = self._config.llm
        splitter = SentenceSplitter(  # "auto" settings are numbers by now (server/machine.py)
            max_first_words=int(llm.first_piece_max_words),
            max_first_cjk=int(llm.first_piece_max_cjk),
        )
        limit = float(llm.first_token_timeout_s)
        try:
            async with Timeout(self._time, limit or None) as waiting:
                spoke = await self._stream(turn, messages, splitter, pieces, waiting)
                if not spoke and messages[-1]["role"] == "assistant":
                    # The model ended the turn right after the opener: ask again
                    # without it so the user never gets a bare "Hmm,".
                    log.info(
                        "session %s: empty continuation after the opener; again",
                        self._conversation,
                    )
                    await self._stream(turn, messages[:-1], splitter, pieces, waiting)
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
            self._learn(turn)
        except Exception:  # learning must never break a reply
            log.exception("session %s: planner update failed", self._conversation)

    def _learn(self, turn: Turn) -> None:
        turn.mark(Mark.LLM_DONE)
        progress = turn.progress
        self._planner.observe_reply(progress.written_chars, progress.lang)
        if Mark.LLM_FIRST_TOKEN in turn.marks:
            self._planner.observe_writing(
                progress.written_chars,
                progress.lang,
                turn.marks[Mark.LLM_DONE] - turn.marks[Mark.LLM_FIRST_TOKEN],
            )

    async def _stream(
        self,
        turn: Turn,
        messages: list[ChatMessage],
        splitter: SentenceSplitter,
        pieces: asyncio.Queue[str | None],
        waiting: Timeout,
    ) -> bool:
        """Stream one completion into ``pieces``; False if it said nothing.
        ``waiting`` bounds the wait for the first token (then it is lifted)."""
        spoke = False
        log.debug(
            "session %s turn %d: LLM request at +%.2f s (%d messages)",
            self._conversation,
            turn.index,
            self._time.now() - turn.end_of_speech,
            len(messages),
        )
        stream = self._engines.llm.stream_chat(messages, conversation=self._conversation)
        try:
            async for delta in stream:
                if not turn.first_token.is_set():
                    waiting.lift()
                turn.mark(Mark.LLM_FIRST_TOKEN)
                turn.first_token.set()
                ready = splitter.push(delta)
                if not ready and splitter.started and self._running_dry(turn, pieces):
                    ready = splitter.cut_early()
                for piece in ready:
                    turn.hand_to_tts(piece, pieces)
                    spoke = True
                    if self._long_enough(turn, piece):
                        return spoke
        finally:
            # Closing the stream (an async generator) stops the generation.
            close = getattr(stream, "aclose", None)
            if close is not None:
                await close()
        for piece in splitter.flush():
            turn.hand_to_tts(piece, pieces)
            spoke = True
        return spoke

    def _long_enough(self, turn: Turn, piece: str) -> bool:
        """Whether the reply ends with ``piece``: a sentence end once
        ``llm.max_reply_audio_s`` of speech is written (shorter spoken answers
        where the machine is slow; the rest is never written nor heard)."""
        limit = float(self._config.llm.max_reply_audio_s)
        if not limit or not ends_sentence(piece):
            return False
        progress = turn.progress
        if self._planner.audio_seconds(progress.written_chars, progress.lang) < limit:
            return False
        log.debug(
            "session %s turn %d: reply ends after %d chars (llm.max_reply_audio_s %g)",
            self._conversation,
            turn.index,
            progress.written_chars,
            limit,
        )
        return True

    def _running_dry(self, turn: Turn, pieces: asyncio.Queue[str | None]) -> bool:
        """Whether the reply audio queued for playback is about to run out with
        nothing else on its way (no piece waiting, no TTS call running)."""
        low = float(self._config.llm.cut_when_queued_audio_below_s)
        if not low or not turn.confirmed.is_set() or turn.synthesizing or not pieces.empty():
            return False
        if not turn.reply_ready.is_set():  # the planner holds the answer back on purpose
            return False
        return self._avatar.queued_samples < low * MEDIA_SAMPLE_RATE
