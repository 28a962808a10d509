"""The user's speech to text through the recognizer's streams (models/base.py).

A recognizer that streams partials (``streams_partials``) is fed while the
user speaks: ``LiveUtterance`` hands it the audio the turn detector collects
for the utterance (pre-roll included) as it comes, so only the tail is left
to decode when the turn ends, and each new partial goes to the page. A batch
recognizer (Whisper) gets the whole utterance at the end of the turn in one
worker call (``transcribe_whole``): one decode, no partials.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from concurrent.futures import Executor

import numpy as np

from models.base import SpeechRecognizer, Transcript, mono_float32
from models.vad.turn import EndOfTurn, TurnDetector, TurnEvent
from pipelines.timebase import TimeSource

log = logging.getLogger(__name__)


def transcribe_whole(
    recognizer: SpeechRecognizer, audio: np.ndarray, language: str | None
) -> Transcript:
    """In a worker thread: one utterance through a stream, fed once (a batch
    recognizer decodes it once, at ``finish``)."""
    stream = recognizer.new_stream(language)
    stream.feed(audio)
    return stream.finish()


class UtteranceStream:
    """One utterance's ``RecognizerStream``, fed from the event loop without
    blocking it: the feeds run in ``executor``, one at a time and in order
    (audio that arrives meanwhile goes in the next feed)."""

    def __init__(
        self,
        recognizer: SpeechRecognizer,
        executor: Executor,
        time_source: TimeSource,
        language: str | None,
        on_partial: Callable[[str], None] | None = None,
    ) -> None:
        self._executor = executor
        self._time = time_source
        self._on_partial = on_partial  # each new transcript so far
        self._stream = recognizer.new_stream(language)  # cheap: state only, no decoding
        self._waiting: list[np.ndarray] = []
        self._feeder: asyncio.Task[None] | None = None
        self._error: BaseException | None = None
        self._finishing = False
        self._abandoned = False
        self.fed_samples = 0  # handed to ``feed`` so far

    def feed(self, audio: np.ndarray) -> None:
        """Queue more of the utterance (16 kHz mono); it is fed in the background."""
        if self._finishing or self._abandoned:
            raise RuntimeError("this utterance is finished")
        audio = mono_float32(audio)
        if not audio.size:
            return
        self._waiting.append(audio)
        self.fed_samples += audio.size
        if self._feeder is None or self._feeder.done():
            self._feeder = asyncio.ensure_future(self._feed_waiting())

    async def finish(self) -> Transcript:
        """The final transcript, once every queued feed is done: only what the
        stream has not decoded yet is left to decode. Cancelled, the stream is
        abandoned."""
        if self._finishing or self._abandoned:
            raise RuntimeError("this utterance is finished")
        self._finishing = True
        try:
            if self._feeder is not None:
                await self._feeder
            if self._error is not None:
                raise self._error
            return await self._time.run_in_thread(self._executor, self._stream.finish)
        except asyncio.CancelledError:
            self.abandon()
            raise

    def abandon(self) -> None:
        """Nobody will read this utterance: stop feeding and say nothing more.
        A feed already running in a worker ends there; the stream is dropped."""
        self._abandoned = True
        self._waiting = []
        if self._feeder is not None:
            self._feeder.cancel()

    async def _feed_waiting(self) -> None:
        while self._waiting and not self._abandoned and self._error is None:
            chunk = self._waiting[0] if len(self._waiting) == 1 else np.concatenate(self._waiting)
            self._waiting = []
            try:
                partial = await self._time.run_in_thread(
                    self._executor, self._stream.feed, chunk
                )
            except Exception as exc:  # raised by finish(), where the turn reports it
                log.warning("speech recognition failed on a partial: %s", exc)
                self._error = exc
                return
            if partial is not None and self._on_partial is not None and not self._abandoned:
                self._on_partial(partial)


class LiveUtterance:
    """Keeps a live ``UtteranceStream`` fed with the utterance the turn detector
    is collecting, from the moment it reports speech (its pre-roll included):
    the detector's own framing is mirrored, so each feed is exactly the audio
    the detector took since the last one, and the stream holds at every moment
    what ``detector.turn_audio()`` would return."""

    def __init__(self, detector: TurnDetector, new_stream: Callable[[], UtteranceStream]) -> None:
        self._detector = detector
        self._new_stream = new_stream
        self._unframed = np.zeros(0, np.float32)  # pushed, not yet framed by the detector
        self._framed = np.zeros(0, np.float32)  # what the last push framed ...
        self._framed_from = 0  # ... from this stream position
        self._stream: UtteranceStream | None = None
        self._fed_to = 0  # the stream position the live stream's audio ends at

    def push(self, audio: np.ndarray) -> list[TurnEvent]:
        """``detector.push``, keeping the audio it framed."""
        detector = self._detector
        before = detector.samples_seen
        events = detector.push(audio)
        framed = detector.samples_seen - before
        pushed = np.concatenate([self._unframed, mono_float32(audio)])
        self._framed, self._unframed = pushed[:framed], pushed[framed:]
        self._framed_from = before
        return events

    def take(self, end: EndOfTurn) -> UtteranceStream | None:
        """The live stream of the utterance ``end`` closes, fed up to its end,
        or None where none was live (its turn then transcribes it whole)."""
        stream, self._stream = self._stream, None
        if stream is not None:
            stream.feed(end.audio[self._fed_to - end.audio_start_sample :])
        return stream

    def take_so_far(self) -> UtteranceStream | None:
        """The live stream as it is now (a speculative turn finishes it)."""
        stream, self._stream = self._stream, None
        return stream

    def follow(self, held_elsewhere: bool) -> None:
        """After a push and what it caused: feed the live stream what the
        detector took, or start one when the detector is in an utterance
        without one (``held_elsewhere``: a speculative turn has this
        utterance's stream; if the user goes on, that turn is dropped and a
        new stream gets the utterance so far)."""
        detector = self._detector
        if not detector.in_speech:
            return
        if self._stream is None:
            if held_elsewhere:
                return
            self._stream = self._new_stream()
            self._stream.feed(detector.turn_audio())
        else:
            self._stream.feed(self._framed[self._fed_to - self._framed_from :])
        self._fed_to = detector.samples_seen

    def close(self) -> None:
        if self._stream is not None:
            self._stream.abandon()
            self._stream = None
