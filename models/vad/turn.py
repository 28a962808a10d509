"""End-of-turn logic on top of any voice activity detector.

``TurnDetector``: per-session pure logic. Feed it 16 kHz float32 audio of any
chunk size; it returns ``SpeechStart`` and ``EndOfTurn`` events.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, ClassVar

import numpy as np

from models.base import VAD_SAMPLE_RATE, VoiceActivityDetector

if TYPE_CHECKING:
    from core.config import VADConfig


@dataclass(frozen=True)
class SpeechStart:
    """Speech has lasted ``min_speech_ms``: the user is talking."""

    type: ClassVar[str] = "speech_start"
    start_sample: int  # stream position of the first speech frame of the run
    at_sample: int  # stream position (end of the frame) where it was confirmed


@dataclass(frozen=True, eq=False)
class EndOfTurn:
    """``hangover_ms`` of silence followed confirmed speech (or the turn grew
    past ``max_turn_ms``)."""

    type: ClassVar[str] = "end_of_turn"
    audio: np.ndarray = field(repr=False)  # 16 kHz float32: pre-roll + speech + hangover
    audio_start_sample: int  # stream position of audio[0]
    start_sample: int  # first speech frame
    end_sample: int  # end of the last speech frame ("where speech ended")
    at_sample: int  # stream position where the turn was declared over
    speech_ms: float  # speech frames in the turn, in ms
    forced: bool = False  # True when cut at max_turn_ms

    @property
    def duration_s(self) -> float:
        return len(self.audio) / VAD_SAMPLE_RATE


TurnEvent = SpeechStart | EndOfTurn


class TurnDetector:
    """Per-session end-of-turn detector (synchronous, no threads, no clock: time
    is counted in stream samples).

    ``push(audio)`` frames the audio for the detector and returns the events
    it caused, in order. A run of speech starts at the first frame with
    probability >= ``threshold``; it becomes a turn (``SpeechStart``) once it
    holds ``min_speech_ms`` of speech frames; a gap of ``hangover_ms`` ends it,
    as an ``EndOfTurn`` if it had become a turn and silently otherwise (coughs,
    clicks). While in a run, a frame only counts as silence below
    ``neg_threshold`` (Silero's usual hysteresis, threshold - 0.15).
    """

    def __init__(
        self,
        detector: VoiceActivityDetector,
        *,
        threshold: float = 0.5,
        hangover_ms: float = 300,
        min_speech_ms: float = 200,
        pre_roll_ms: float = 200,
        max_turn_ms: float = 25_000,
        neg_threshold: float | None = None,
        sample_rate: int = VAD_SAMPLE_RATE,
    ) -> None:
        self.detector = detector
        self.frame_samples = int(detector.frame_samples)
        self.sample_rate = sample_rate
        self.threshold = threshold
        self.neg_threshold = max(threshold - 0.15, 0.01) if neg_threshold is None else neg_threshold
        self.frame_ms = 1000.0 * self.frame_samples / sample_rate
        self.hangover_ms = hangover_ms
        self.min_speech_ms = min_speech_ms
        self.max_turn_ms = max_turn_ms
        self._pre_roll_frames = max(0, int(np.ceil(pre_roll_ms / self.frame_ms)))
        self._pending = np.zeros(0, dtype=np.float32)
        self._pre_roll: deque[np.ndarray] = deque(maxlen=self._pre_roll_frames or 1)
        self.samples_seen = 0  # stream position: samples consumed into frames
        self.last_probability = 0.0
        self._reset_run()
        self.speech_end_sample: int | None = None  # where the last speech frame ended

    @classmethod
    def from_config(cls, detector: VoiceActivityDetector, config: VADConfig) -> TurnDetector:
        return cls(
            detector,
            threshold=config.threshold,
            hangover_ms=config.hangover_ms,
            min_speech_ms=config.min_speech_ms,
        )

    # -- state
    def _reset_run(self) -> None:
        self._in_run = False
        self._confirmed = False
        self._frames: list[np.ndarray] = []
        self._audio_start = 0
        self._run_start = 0
        self._run_end = 0
        self._speech_frames = 0
        self._silent_frames = 0

    @property
    def in_speech(self) -> bool:
        """A turn is under way (``SpeechStart`` was emitted, no ``EndOfTurn`` yet)."""
        return self._confirmed

    @property
    def speech_ms(self) -> float:
        """Speech in the current run (confirmed or not), in ms; 0 between runs.
        Compare with ``barge_in_ms`` to interrupt the avatar."""
        return self._speech_frames * self.frame_ms if self._in_run else 0.0

    @property
    def run_end_sample(self) -> int:
        """End of the last speech frame of the current run (grows while the user talks)."""
        return self._run_end

    def turn_audio(self) -> np.ndarray:
        """The current run's audio so far (pre-roll included), for a speculative ASR."""
        return np.concatenate(self._frames) if self._frames else np.zeros(0, np.float32)

    @property
    def silence_ms(self) -> float:
        """Trailing silence inside the current run, in ms."""
        return self._silent_frames * self.frame_ms if self._in_run else 0.0

    def reset(self) -> None:
        """Forget everything (new stream); the detector's state too."""
        self.detector.reset()
        self._pending = np.zeros(0, dtype=np.float32)
        self._pre_roll.clear()
        self.samples_seen = 0
        self.last_probability = 0.0
        self.speech_end_sample = None
        self._reset_run()

    # -- input
    def push(self, audio: np.ndarray) -> list[TurnEvent]:
        audio = np.asarray(audio)
        if audio.dtype == np.int16:
            audio = audio.astype(np.float32) / 32768.0
        audio = audio.astype(np.float32, copy=False).reshape(-1)
        if self._pending.size:
            audio = np.concatenate([self._pending, audio])
        n = self.frame_samples
        whole = (audio.size // n) * n
        events: list[TurnEvent] = []
        for offset in range(0, whole, n):
            event = self._frame(audio[offset : offset + n].copy())
            if event is not None:
                events.append(event)
        self._pending = audio[whole:].copy()
        return events

    def flush(self) -> list[TurnEvent]:
        """End of stream: close a confirmed turn now (without waiting for the
        hang-over); an unconfirmed run is dropped."""
        events: list[TurnEvent] = []
        if self._confirmed:
            events.append(self._end_turn(forced=True))
        self._reset_run()
        return events

    def _frame(self, frame: np.ndarray) -> TurnEvent | None:
        start = self.samples_seen
        end = start + frame.size
        self.samples_seen = end
        prob = float(self.detector.speech_probability(frame))
        self.last_probability = prob

        if not self._in_run:
            if prob >= self.threshold:
                self._in_run = True
                self._frames = list(self._pre_roll) if self._pre_roll_frames else []
                self._audio_start = start - sum(f.size for f in self._frames)
                self._frames.append(frame)
                self._run_start, self._run_end = start, end
                self._speech_frames, self._silent_frames = 1, 0
                self._pre_roll.clear()
                return self._maybe_confirm(end)
            if self._pre_roll_frames:
                self._pre_roll.append(frame)
            return None

        self._frames.append(frame)
        if prob >= self.neg_threshold:
            self._speech_frames += 1
            self._silent_frames = 0
            self._run_end = end
            if self._confirmed:
                self.speech_end_sample = end
            event = self._maybe_confirm(end)
            if event is not None:
                return event
        else:
            self._silent_frames += 1
            if self._silent_frames * self.frame_ms >= self.hangover_ms:
                if self._confirmed:
                    return self._end_turn(forced=False)
                self._drop_run()
                return None
        if self._confirmed and (end - self._audio_start) * 1000.0 / self.sample_rate >= (
            self.max_turn_ms
        ):
            return self._end_turn(forced=True)
        return None

    def _maybe_confirm(self, at: int) -> SpeechStart | None:
        if not self._confirmed and self._speech_frames * self.frame_ms >= self.min_speech_ms:
            self._confirmed = True
            self.speech_end_sample = self._run_end
            return SpeechStart(start_sample=self._run_start, at_sample=at)
        return None

    def _drop_run(self) -> None:
        # Keep the tail of the dropped run as pre-roll for the next one.
        tail = self._frames[-self._pre_roll_frames :] if self._pre_roll_frames else []
        self._reset_run()
        self._pre_roll.extend(tail)

    def _end_turn(self, forced: bool) -> EndOfTurn:
        audio = np.concatenate(self._frames) if self._frames else np.zeros(0, np.float32)
        event = EndOfTurn(
            audio=audio,
            audio_start_sample=self._audio_start,
            start_sample=self._run_start,
            end_sample=self._run_end,
            at_sample=self.samples_seen,
            speech_ms=self._speech_frames * self.frame_ms,
            forced=forced,
        )
        self.speech_end_sample = self._run_end
        tail = self._frames[-self._pre_roll_frames :] if self._pre_roll_frames else []
        self._reset_run()
        self._pre_roll.extend(tail)
        return event
