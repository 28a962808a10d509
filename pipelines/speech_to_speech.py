"""A session's turns through an end-to-end model (``engines.s2s``) in place of
ASR + LLM + TTS: one ``SpeechConversation`` per session, the user's utterance
(or typed text) in, text and speech out.

What it says goes through the reply speaker's ``push`` like any reply
(pipelines/reply.py), so playback accounting, barge-in, the clock's hold, the
marks and the page's events work as they do for the cascade. The model's
reply text leads its audio: the text that came before a speech chunk is shown
with that chunk (cut at a whole word), and more audio with no new text goes
on the same piece. A barge-in cancels the reply and tells the conversation
what was played (``cancel(heard=...)``), which is all it keeps.

The user's words on the page come from the model when it says what it heard
(user ``TextDelta``s); a model that does not (``transcribes_user = False`` on
the backend, e.g. GLM-4-Voice) has the session's local ASR transcribe the
utterance in a worker thread while the model answers.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

import numpy as np

from core.lang import detect_lang
from models.base import AvatarStream, SpeechToSpeech, TextDelta, Transcript
from models.registry import Engines
from pipelines.events import BotTextEvent, ErrorEvent, Mark, Stage, UserTextEvent
from pipelines.history import ChatHistory
from pipelines.reply import ReplySpeaker
from pipelines.splitter import CLAUSE_END
from pipelines.timebase import TimeSource
from pipelines.transcription import UtteranceStream, transcribe_whole
from pipelines.turn import Turn

log = logging.getLogger(__name__)

Emit = Callable[[UserTextEvent | BotTextEvent | ErrorEvent], None]


def _cjk(ch: str) -> bool:
    return "\u3000" <= ch <= "\u9fff" or "\uff00" <= ch <= "\uffef"


def shown_with_audio(pending: str) -> tuple[str, str]:
    """Split reply text that came before a speech chunk into what is shown
    with the chunk and what waits for the next one: whole words only (text
    streams in tokens, and the page joins pieces with a space)."""
    if not pending or pending[-1].isspace() or pending[-1] in CLAUSE_END or _cjk(pending[-1]):
        return pending, ""
    cut = max(pending.rfind(" "), pending.rfind("\n"))
    return pending[: cut + 1], pending[cut + 1 :]


def _joined(first: str, second: str) -> str:
    if not first or not second:
        return first or second
    return first + second if _cjk(first[-1]) or _cjk(second[0]) else f"{first} {second}"


class SpeechToSpeechTurns:
    """One session's conversation with the end-to-end model."""

    def __init__(
        self,
        model: SpeechToSpeech,
        engines: Engines,
        time_source: TimeSource,
        avatar: AvatarStream,
        speaker: ReplySpeaker,
        history: ChatHistory,
        emit: Emit,
        finish: Callable[[Turn], None],
        *,
        session_id: str,
        lang: str,
        voice: str | None,
    ) -> None:
        self._engines = engines
        self._time = time_source
        self._avatar = avatar  # told when the reply is all pushed (end_of_segment)
        self._speaker = speaker
        self._history = history
        self._emit = emit
        self._finish = finish  # the session ends the turn
        self._session_id = session_id
        self._lang = lang  # "en", "zh" or "auto"
        # False: the model answers without saying what it heard (ASR runs beside it).
        self._model_transcribes = model.transcribes_user
        self.conversation = model.new_conversation(
            system_prompt=history.system_prompt,
            voice=voice,
            language=None if lang == "auto" else lang,
        )
        self._answering: Turn | None = None  # the turn whose reply the model has
        self._task: asyncio.Task[None] | None = None  # ... and the task that asked for it
        self._cancelling: asyncio.Task[None] | None = None
        self._closed = False

    async def run(
        self,
        turn: Turn,
        audio: np.ndarray | None,
        text: str | None,
        stream: UtteranceStream | None = None,
    ) -> None:
        """The turn's task (the signature of TurnRunner.run; there is no
        recognizer stream here): it ends when the reply is pushed."""
        if stream is not None:
            stream.abandon()
        if self._cancelling is not None:
            # The model must know what was heard of the last reply before it
            # hears the next question.
            await asyncio.wait([self._cancelling])
        await turn.confirmed.wait()
        user: np.ndarray | str
        if audio is not None:
            user = audio
        else:
            assert text is not None
            user = text
            self._user_said(turn, text, typed=True)
        self._answering, self._task = turn, asyncio.current_task()
        transcript = None
        if audio is not None and not self._model_transcribes:
            transcript = asyncio.ensure_future(self._transcribe(audio))
        try:
            await self._respond(turn, user, typed=audio is None, transcript=transcript)
            self._engines.health.ok(Stage.S2S)
        except asyncio.CancelledError:
            if transcript is not None:
                transcript.cancel()
            raise
        except Exception as exc:
            log.exception("session %s turn %d: the reply failed", self._session_id, turn.index)
            self._engines.health.failed(Stage.S2S, exc)
            self._emit(ErrorEvent(message=f"turn failed: {exc}", stage=Stage.S2S))
            if not turn.pieces:  # unanswered: not glued onto the next question
                self._history.drop_unanswered()
        self._avatar.end_of_segment()
        turn.generation_done = True
        if not turn.pieces:
            self._finish(turn)

    async def _transcribe(self, audio: np.ndarray) -> str:
        """The utterance through the local ASR (for a model that does not
        say what it heard); "" if that fails: the reply goes on without it."""
        forced = None if self._lang == "auto" else self._lang
        try:
            transcript: Transcript = await self._time.run_in_thread(
                self._engines.inference, transcribe_whole, self._engines.asr, audio, forced
            )
        except Exception:
            log.exception("session %s: transcribing the utterance failed", self._session_id)
            return ""
        return transcript.text.strip()

    async def _respond(
        self,
        turn: Turn,
        user: np.ndarray | str,
        typed: bool,
        transcript: asyncio.Future[str] | None = None,
    ) -> None:
        """``transcript``: the local ASR's words for the utterance, when the
        model does not say what it heard; shown once the reply has started
        (at its end at the latest)."""
        heard: list[str] = []  # the user's words, as the model transcribes them
        said = False  # the user's side of the turn is done
        pending = ""  # reply text not shown yet
        answering = False
        piece_open = False  # the last piece may get more audio
        async for item in self.conversation.respond(user):
            if isinstance(item, TextDelta) and item.role == "user":
                if not typed and not answering:
                    heard.append(item.text)
                    self._emit(UserTextEvent(text="".join(heard).strip(), final=False))
                continue
            answering = True
            if not typed and not said and (transcript is None or transcript.done()):
                # The model's own words for it, or the ASR's once they are ready.
                self._user_said(turn, await self._heard(heard, transcript), typed=False)
                said = True
            if isinstance(item, TextDelta):
                turn.mark(Mark.LLM_FIRST_TOKEN)
                pending += item.text
                continue
            if not np.asarray(item.audio).size:
                continue
            shown, pending = shown_with_audio(pending)
            shown = shown.strip()
            if shown or not piece_open:
                if piece_open:
                    self._speaker.piece_complete(turn)
                turn.mark(Mark.FIRST_CLAUSE)
            part = await self._speaker.prepared(shown, self._piece_lang(turn, shown), item)
            part.continues = piece_open and not shown
            await self._speaker.push(turn, part, complete=False)
            piece_open = True
        if not typed and not said:
            self._user_said(turn, await self._heard(heard, transcript), typed=False)
        turn.mark(Mark.LLM_DONE)
        self._rest_of_text(turn, pending.strip())
        if piece_open:
            self._speaker.piece_complete(turn)

    @staticmethod
    async def _heard(heard: list[str], transcript: asyncio.Future[str] | None) -> str:
        return (await transcript) if transcript is not None else "".join(heard).strip()

    def _user_said(self, turn: Turn, text: str, typed: bool) -> None:
        """The user's side of the turn: on the page (typed text is there
        already), in the turn and in the history."""
        if not typed:
            turn.mark(Mark.ASR_FINAL)
        if not text:
            return
        if not typed:
            self._emit(UserTextEvent(text=text, final=True))
        turn.user_text = text
        turn.progress.lang = detect_lang(text) if self._lang == "auto" else self._lang
        self._history.add_user(text)
        log.info("session %s turn %d: %r", self._session_id, turn.index, text)

    def _rest_of_text(self, turn: Turn, rest: str) -> None:
        """Reply text after the last audio: it belongs to the last piece (shown
        now if that is playing already); with no audio at all it is shown,
        not heard."""
        if not rest:
            return
        if not turn.pieces:
            self._emit(BotTextEvent(text=rest, spoken=False))
            return
        piece = turn.pieces[-1]
        piece.text = _joined(piece.text, rest)
        if piece.played:
            self._emit(BotTextEvent(text=rest))

    def _piece_lang(self, turn: Turn, text: str) -> str:
        if self._lang != "auto":
            return self._lang
        return detect_lang(text) if text else turn.progress.lang

    # -------------------------------------------------------- interruption
    def interrupted(self, turn: Turn) -> None:
        """The session interrupted ``turn``: once its task has stopped, the
        conversation keeps only what the user heard of the reply."""
        if turn is not self._answering:
            return
        self._answering = None
        task, self._task = self._task, None
        heard = turn.heard(fillers=False)
        self._cancelling = asyncio.ensure_future(self._cancel(task, heard))

    async def _cancel(self, task: asyncio.Task[None] | None, heard: str) -> None:
        if task is not None and not task.done():
            await asyncio.wait([task])
        try:
            await self.conversation.cancel(heard=heard)
        except Exception:  # the next turn goes on regardless
            log.exception("session %s: cancelling the reply failed", self._session_id)

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._cancelling is not None:
            await asyncio.wait([self._cancelling])
        try:
            await self.conversation.close()
        except Exception:
            log.exception("session %s: closing the conversation failed", self._session_id)
