"""What the user actually heard: the frames the media clock released, counted
per reply piece, with the turn's first-audio marks and its playback gaps.

``Playback`` subscribes to the clock (pipelines/clock.py) and reports what
it sees to the session through ``PlaybackObserver``; the clock itself knows
neither of them.
"""

from __future__ import annotations

from typing import Protocol

from models.base import MEDIA_SAMPLE_RATE, SAMPLES_PER_VIDEO_FRAME, AvatarStream
from pipelines.clock import SentFrame
from pipelines.events import Mark
from pipelines.turn import ReplyPiece, Turn

FRAME_SECONDS = SAMPLES_PER_VIDEO_FRAME / MEDIA_SAMPLE_RATE


class PlaybackObserver(Protocol):
    """The session, as playback accounting sees it."""

    @property
    def current_turn(self) -> Turn | None: ...

    def piece_started(self, turn: Turn, piece: ReplyPiece) -> None:
        """The first audio of ``piece`` went out."""

    def reply_played(self, turn: Turn) -> None:
        """The reply is written and every piece of it has been played."""

    def answer_pending(self, turn: Turn) -> None:
        """The filler and opener are played; the answer is still being made."""


class Playback:
    """Counts, per frame released, the samples of each reply piece played."""

    def __init__(self, avatar: AvatarStream, observer: PlaybackObserver) -> None:
        self._avatar = avatar  # read only: whether reply audio is still queued
        self._observer = observer

    def frame_sent(self, sent: SentFrame) -> None:
        turn = self._observer.current_turn
        if turn is None:
            return
        now = sent.at
        reply_audio = False
        for tag, samples in sent.frame.played:
            turn_index, piece_index = tag
            if turn_index != turn.index or piece_index >= len(turn.pieces):
                continue
            piece = turn.pieces[piece_index]
            reply_audio = reply_audio or samples > 0
            if piece.played == 0 and samples > 0:
                if piece_index == 0:
                    turn.marks.setdefault(Mark.FIRST_AUDIO_SENT, now)
                if not piece.filler and not piece.opener:
                    turn.marks.setdefault(Mark.ANSWER_AUDIO_SENT, now)
                self._observer.piece_started(turn, piece)
            piece.played += samples
        if reply_audio:
            if turn.last_audio_frame is not None and not sent.held:
                gap = now - turn.last_audio_frame - FRAME_SECONDS
                turn.longest_gap = max(turn.longest_gap, gap)
                if now > turn.marks.get(Mark.ANSWER_AUDIO_SENT, now):
                    turn.longest_gap_in_answer = max(turn.longest_gap_in_answer, gap)
            turn.last_audio_frame = now
        all_played = self._avatar.queued_samples == 0 and all(
            p.played >= p.samples for p in turn.pieces
        )
        if turn.generation_done and all_played:
            turn.mark(Mark.REPLY_DONE)
            self._observer.reply_played(turn)
        elif Mark.ANSWER_AUDIO_SENT not in turn.marks and turn.pieces and all_played:
            self._observer.answer_pending(turn)
