"""The generic part of every renderer behind the ``AvatarStream`` contract.

``BufferedAvatarStream`` queues the pushed 48 kHz reply audio with its tags,
takes exactly one video frame's worth (1920 samples) per tick, pads with
silence when the queue runs dry, accounts in ``played`` for the samples taken
from each chunk pushed with a tag (untagged audio plays but is not listed;
adjacent pieces of one tag are summed), and hands the audio of this frame plus
the next ~100 ms to ``render``, which a renderer implements. Each pushed chunk
can carry a mouth-shape track (models/avatar/mouth.py); the row of the frame's
middle is ``frame_shape`` while ``render`` runs.
"""

from __future__ import annotations

import threading
from abc import abstractmethod
from collections import deque
from typing import Any

import numpy as np

from models.avatar.mouth import TRACK_RATE
from models.base import (
    MEDIA_FPS,
    MEDIA_SAMPLE_RATE,
    SAMPLES_PER_VIDEO_FRAME,
    AvatarFrame,
    AvatarStream,
    Speech,
)

LOOKAHEAD_SAMPLES = MEDIA_SAMPLE_RATE // 10  # 100 ms of queued audio after the frame


class _Chunk:
    __slots__ = ("audio", "offset", "tag", "track")

    def __init__(self, audio: np.ndarray, tag: Any, track: np.ndarray | None = None) -> None:
        self.audio = audio
        self.offset = 0
        self.tag = tag
        self.track = track  # mouth shapes at TRACK_RATE for this chunk, or None


def _as_float_mono(audio: np.ndarray) -> np.ndarray:
    a = np.asarray(audio)
    if a.ndim > 1:
        if a.ndim == 2 and 1 in a.shape:
            a = a.reshape(-1)
        else:
            raise ValueError(f"avatar audio must be mono, got shape {a.shape}")
    if a.dtype == np.int16:
        return a.astype(np.float32) / 32768.0
    return np.ascontiguousarray(a, dtype=np.float32)


def _same_tag(a: Any, b: Any) -> bool:
    if a is b:
        return True
    try:
        return bool(a == b)
    except Exception:  # tags that do not compare (arrays, odd objects)
        return False


class BufferedAvatarStream(AvatarStream):
    """Audio queue + frame pacing shared by renderers; subclasses implement
    ``render``. ``push_audio``/``clear``/``end_of_segment`` may be called from the
    event loop while ``next_frame`` runs in a worker thread (one caller at a time)."""

    samples_per_frame = SAMPLES_PER_VIDEO_FRAME
    lookahead_samples = LOOKAHEAD_SAMPLES
    # While a reply is open (audio pushed, no end_of_segment yet) and the queue
    # runs dry (TTS slower than playback), frames still count as speaking for
    # this many frames.
    underrun_grace_frames = MEDIA_FPS

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._chunks: deque[_Chunk] = deque()
        self._queued = 0
        self._segment_open = False
        self._underrun = 0
        self.frame_index = 0
        # The mouth shape (models/avatar/mouth.py) of the frame being rendered, from the
        # track of the chunk its audio comes from; None when no track applies.
        self.frame_shape: np.ndarray | None = None

    # ------------------------------------------------------------- producer
    def prepare(self, audio: np.ndarray, speech: Speech | None = None) -> Any:
        samples = _as_float_mono(audio)
        return self.make_track(samples, speech) if samples.size else None

    def push_audio(
        self,
        audio: np.ndarray,
        tag: Any = None,
        speech: Speech | None = None,
        prepared: Any = None,
    ) -> None:
        samples = _as_float_mono(audio)
        # The mouth track (13-32 ms of CPU) is best made in prepare(), off the loop.
        track = prepared if prepared is not None else self.prepare(samples, speech)
        with self._lock:
            self._segment_open = True
            self._underrun = 0
            if samples.size:
                self._chunks.append(_Chunk(samples, tag, track))
                self._queued += samples.size

    def make_track(self, samples: np.ndarray, speech: Speech | None) -> np.ndarray | None:
        """The mouth-shape track of a pushed chunk (48 kHz ``samples``), or None
        (renderers that drive the mouth from the audio window need none)."""
        return None

    def end_of_segment(self) -> None:
        with self._lock:
            self._segment_open = False

    def clear(self) -> None:
        with self._lock:
            self._chunks.clear()
            self._queued = 0
            self._segment_open = False
            self._underrun = 0

    @property
    def queued_samples(self) -> int:
        with self._lock:
            return self._queued

    # ------------------------------------------------------------- consumer
    def next_frame(self) -> AvatarFrame:
        n = self.samples_per_frame
        window = np.zeros(n, np.float32)
        played: list[tuple[Any, int]] = []
        shape: np.ndarray | None = None
        with self._lock:
            pos = 0
            track = self._chunks[0].track if self._chunks else None
            if track is not None:
                first = self._chunks[0]
                centre = first.offset + n // 2  # the frame's middle, in chunk samples
                row = int(centre * TRACK_RATE // MEDIA_SAMPLE_RATE)
                shape = track[min(row, track.shape[0] - 1)]
            while pos < n and self._chunks:
                chunk = self._chunks[0]
                take = min(n - pos, chunk.audio.size - chunk.offset)
                window[pos : pos + take] = chunk.audio[chunk.offset : chunk.offset + take]
                chunk.offset += take
                pos += take
                if chunk.tag is not None:
                    if played and _same_tag(played[-1][0], chunk.tag):
                        played[-1] = (played[-1][0], played[-1][1] + take)
                    else:
                        played.append((chunk.tag, take))
                if chunk.offset >= chunk.audio.size:
                    self._chunks.popleft()
            self._queued -= pos
            lookahead = self._peek(self.lookahead_samples)
            if pos:
                self._underrun = 0
            elif self._segment_open:
                self._underrun += 1
            speaking = pos > 0 or (
                self._segment_open and self._underrun <= self.underrun_grace_frames
            )
        self.frame_shape = shape
        image = self.render(window, lookahead, speaking)
        self.frame_index += 1
        pcm = np.rint(np.clip(window, -1.0, 1.0) * 32767.0).astype(np.int16)
        return AvatarFrame(image=image, audio=pcm, speaking=speaking, played=played)

    def _peek(self, n: int) -> np.ndarray:
        """Up to ``n`` queued samples, not consumed (call with the lock held)."""
        parts: list[np.ndarray] = []
        need = n
        for chunk in self._chunks:
            if need <= 0:
                break
            part = chunk.audio[chunk.offset : chunk.offset + need]
            parts.append(part)
            need -= part.size
        if not parts:
            return np.zeros(0, np.float32)
        return np.concatenate(parts) if len(parts) > 1 else parts[0].copy()

    @abstractmethod
    def render(self, window: np.ndarray, lookahead: np.ndarray, speaking: bool) -> np.ndarray:
        """The picture for this frame: ``window`` is the 1920 float32 samples played
        with it (silence-padded), ``lookahead`` up to ~100 ms of audio queued after
        it (shorter or empty near the end). Returns (size, size, 3) uint8 RGB."""

