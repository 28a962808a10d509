"""Listening while a reply may be in flight: what the user's speech does to it.

On each chunk of microphone audio the turn detector (models/vad/turn.py)
reports speech starts and ends of turn; this policy turns them, and the
detector's running counts, into commands to the session: start a turn at the
end of speech, or speculatively at a pause and drop it if the user goes on;
pause the reply at the first sign of speech and resume it on a false alarm;
interrupt it (barge-in) when the speech goes on. With a recognizer that
streams partials it also keeps the utterance's live stream fed
(pipelines/transcription.py) and hands it to the turn that ends the utterance.
"""

from __future__ import annotations

import logging
from typing import Protocol

import numpy as np

from core.config import Config
from models.base import VAD_SAMPLE_RATE
from models.vad.turn import EndOfTurn, SpeechStart, TurnDetector
from pipelines.clock import MediaClock
from pipelines.timebase import TimeSource
from pipelines.transcription import LiveUtterance, UtteranceStream
from pipelines.turn import Turn

log = logging.getLogger(__name__)


class TurnTaking(Protocol):
    """The session, as the listening policy commands it."""

    @property
    def current_turn(self) -> Turn | None: ...

    def user_started_speaking(self) -> None: ...

    def start_voice_turn(
        self,
        end_of_speech: float,
        audio: np.ndarray,
        speculative_at: int | None = None,
        stream: UtteranceStream | None = None,
    ) -> Turn:
        """A turn on ``audio``; ``speculative_at``: a speculative turn on the
        speech that ends at this detector sample (it speaks once confirmed);
        ``stream``: the recognizer stream already fed ``audio`` (else the turn
        transcribes ``audio`` whole)."""
        ...

    def confirm(self, turn: Turn) -> None: ...

    def drop_speculation(self) -> None: ...

    def interrupt(self, reason: str) -> None: ...


class ListeningPolicy:
    """Pause, speculation and barge-in on the VAD's events (``config.vad``)."""

    def __init__(
        self,
        detector: TurnDetector,
        config: Config,
        time_source: TimeSource,
        media: MediaClock,
        turns: TurnTaking,
        session_id: str,
        *,
        live: LiveUtterance | None = None,
        speculate: bool = True,
    ) -> None:
        self.detector = detector
        self._config = config
        self._time = time_source
        self._media = media  # paused and resumed (hold), never read from
        self._turns = turns
        self._session_id = session_id
        # Feeds a recognizer that streams partials while the user speaks.
        self._live = live
        # Off where a dropped speculation cannot be taken back (speech to speech).
        self._speculate = speculate

    def hear(self, audio_16k: np.ndarray) -> None:
        """Microphone audio, 16 kHz mono float32, in arrival order."""
        detector = self.detector
        turns = self._turns
        live = self._live
        events = live.push(audio_16k) if live is not None else detector.push(audio_16k)
        for event in events:
            if isinstance(event, SpeechStart):
                turns.user_started_speaking()
            elif isinstance(event, EndOfTurn):
                # Speech ended (at_sample - end_sample) samples of audio ago.
                waited = (event.at_sample - event.end_sample) / VAD_SAMPLE_RATE
                ended = self._time.now() - waited
                stream = live.take(event) if live is not None else None
                turn = turns.current_turn
                if turn is not None and turn.speculative and (
                    turn.speech_end_sample == event.end_sample
                ):
                    if stream is not None:  # the speculation has this utterance already
                        stream.abandon()
                    turn.end_of_speech = ended  # it heard exactly this utterance
                    turns.confirm(turn)
                else:
                    turns.drop_speculation()
                    turns.start_voice_turn(ended, event.audio, stream=stream)
        vad = self._config.vad
        turn = turns.current_turn
        speculative = turn is not None and turn.speculative
        if turn is not None and speculative and detector.run_end_sample != turn.speech_end_sample:
            turns.drop_speculation()  # the user went on talking
        if live is not None:
            current = turns.current_turn
            live.follow(held_elsewhere=current is not None and current.speculative)
        if speculative:
            pass  # confirmed at its end of turn, or dropped above
        elif turn is None:
            speculate = vad.speculate_ms if self._speculate else 0
            if speculate and detector.in_speech and detector.silence_ms >= speculate:
                turns.start_voice_turn(
                    self._time.now() - detector.silence_ms / 1000,
                    detector.turn_audio(),
                    speculative_at=detector.run_end_sample,
                    stream=live.take_so_far() if live is not None else None,
                )
        elif detector.speech_ms >= vad.barge_in_ms:
            # The user talks over the avatar (or goes on talking while it thinks).
            # Record how much of their speech it took to notice (audio time).
            turn.barge_in_after = detector.speech_ms / 1000
            turns.interrupt("barge-in")
        else:
            self._pause_for_speech()

    def _pause_for_speech(self) -> None:
        """Pause the reply at the first sign of user speech; resume it if that
        speech stops before it becomes a barge-in (a cough, a click, "mm-hm")."""
        vad = self._config.vad
        if not vad.pause_on_speech_ms:
            return
        speech, silence = self.detector.speech_ms, self.detector.silence_ms
        media = self._media
        if speech >= vad.pause_on_speech_ms and silence < vad.resume_after_silence_ms:
            if not media.held:
                log.info("session %s: user speech, reply paused", self._session_id)
            media.hold(True)
        elif media.held:
            log.info("session %s: false alarm, reply resumed", self._session_id)
            media.hold(False)
