"""A session's MuseTalk renderer behind the ``AvatarStream`` contract.

Pushed audio is cut into video frames as it arrives (one slot of 1920 samples
per 40 ms frame, continuing a partly filled last slot exactly as
``BufferedAvatarStream`` does), so each frame's audio and its picture are
fixed together: the slot's render job is queued on the one shared worker
(models/avatar/musetalk_worker.py) with the slot's deadline, the time the
clock will show it. ``next_frame`` takes the next slot, waits for its picture
at most until that deadline, and when the worker is behind shows the last
picture (or the idle frame) with the slot's audio instead of holding up the
clock. ``clear`` (barge-in) drops the slots and the session's pending jobs.

A chunk's audio features (Whisper) are computed once for the whole chunk, as
upstream does per clip: in ``prepare`` (off the event loop, on the worker
thread) or, when ``push_audio`` gets no prepared features, by a worker call
whose result queues the chunk's frames. A frame's picture comes from the chunk
its audio starts in; pure silence gets no job (the avatar's idle frames).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from models.avatar.buffered import _as_float_mono, _same_tag
from models.avatar.musetalk_prepare import MuseTalkAvatar
from models.avatar.musetalk_worker import FRAME_PERIOD, BatchWorker, FrameJob
from models.base import (
    MEDIA_FPS,
    SAMPLES_PER_VIDEO_FRAME,
    AvatarFrame,
    AvatarStream,
    Speech,
)

log = logging.getLogger(__name__)

SILENCE = 1e-4  # a chunk quieter than this everywhere gets the idle face, no render

# (audio chunk at 48 kHz) -> its features; (features, start sample, slot's stream
# frame) -> the worker's payload for that frame.
Features = Callable[[np.ndarray], Any]
MakePayload = Callable[[Any, int, int], Any]


@dataclass
class Prepared:
    """What ``prepare`` returns: the chunk's audio features (None: silence)."""

    features: Any


class _Slot:
    __slots__ = (
        "audio",
        "filled",
        "played",
        "frame",
        "deadline",
        "job",
        "queued",
        "taken",
        "voiced",
    )

    def __init__(self, frame: int, deadline: float) -> None:
        self.audio = np.zeros(SAMPLES_PER_VIDEO_FRAME, np.float32)
        self.filled = 0
        self.played: list[tuple[Any, int]] = []
        self.frame = frame  # the stream frame number that shows it
        self.deadline = deadline
        self.job: FrameJob | None = None
        self.queued = threading.Event()  # set once ``job`` is there
        self.taken = False
        self.voiced = False  # started by a chunk that is not silence: it gets a picture

    def add(self, samples: np.ndarray, tag: Any) -> int:
        take = min(SAMPLES_PER_VIDEO_FRAME - self.filled, samples.size)
        self.audio[self.filled : self.filled + take] = samples[:take]
        self.filled += take
        if tag is not None:
            if self.played and _same_tag(self.played[-1][0], tag):
                self.played[-1] = (self.played[-1][0], self.played[-1][1] + take)
            else:
                self.played.append((tag, take))
        return take


class MuseTalkStream(AvatarStream):
    """Per-session MuseTalk renderer; ``push_audio``/``clear``/``end_of_segment``
    may come from the event loop while ``next_frame`` runs in the clock's thread."""

    underrun_grace_frames = MEDIA_FPS  # as BufferedAvatarStream
    wait_margin_s = 0.005  # the blend's share of a frame, after the picture comes

    def __init__(
        self,
        avatar: MuseTalkAvatar,
        worker: BatchWorker,
        features: Features,
        make_payload: MakePayload,
        *,
        size: int,
        clock: Callable[[], float] = time.monotonic,
        min_wait_s: float = 0.0,
    ) -> None:
        self.avatar = avatar
        self.size = size
        self._worker = worker
        self._features = features
        self._make_payload = make_payload
        self._clock = clock
        # How long next_frame waits for a picture even past its deadline: 0 in
        # service (the clock never waits); tests on virtual time raise it.
        self.min_wait_s = min_wait_s
        self._lock = threading.Lock()
        self._slots: deque[_Slot] = deque()
        self._queued = 0
        self._segment_open = False
        self._underrun = 0
        self._epoch = 0  # bumped by clear(): features still being made are then dropped
        self._frames_out = 0
        self._last: np.ndarray | None = None
        self._current: _Slot | None = None  # the slot next_frame is showing
        self.late_frames = 0  # frames whose picture was not ready in time
        self.rendered_frames = 0  # frames shown with a MuseTalk picture

    # ------------------------------------------------------------- producer
    def prepare(self, audio: np.ndarray, speech: Speech | None = None) -> Prepared | None:
        samples = _as_float_mono(audio)
        if not samples.size or float(np.abs(samples).max()) < SILENCE:
            return Prepared(None)
        try:
            return Prepared(self._worker.call(self._features, samples).result())
        except Exception:  # push_audio tries again; the reply's audio plays regardless
            log.exception("audio features failed")
            return None

    def push_audio(
        self,
        audio: np.ndarray,
        tag: Any = None,
        speech: Speech | None = None,
        prepared: Any = None,
    ) -> None:
        samples = _as_float_mono(audio).copy()  # the caller may reuse its buffer
        fresh: list[tuple[_Slot, int]] = []  # slots this chunk starts, with its offset there
        with self._lock:
            self._segment_open = True
            self._underrun = 0
            if not samples.size:
                return
            epoch = self._epoch
            pos = 0
            if self._slots and self._slots[-1].filled < SAMPLES_PER_VIDEO_FRAME:
                pos = self._slots[-1].add(samples, tag)
            now = self._clock()
            while pos < samples.size:
                ahead = len(self._slots)
                slot = _Slot(self._frames_out + ahead, now + (ahead + 1) * FRAME_PERIOD)
                fresh.append((slot, pos))
                pos += slot.add(samples[pos:], tag)
                self._slots.append(slot)
            self._queued += samples.size
            voiced = float(np.abs(samples).max()) >= SILENCE
            for slot, _ in fresh:
                slot.voiced = voiced
        if not fresh or not voiced:
            return
        # The frames' payloads are made on the worker thread, not here on the event loop.
        if isinstance(prepared, Prepared) and prepared.features is not None:
            future = self._worker.call(self._queue_jobs, epoch, fresh, prepared.features)
        else:
            future = self._worker.call(self._features_then_jobs, epoch, fresh, samples)

        def failed(done: Future[Any]) -> None:
            if done.cancelled() or done.exception() is not None:
                log.error("queueing frames failed: %s", done.exception() or "cancelled")
                for slot, _ in fresh:  # no picture will come: next_frame goes on at once
                    slot.queued.set()

        future.add_done_callback(failed)

    def _features_then_jobs(
        self, epoch: int, fresh: list[tuple[_Slot, int]], samples: np.ndarray
    ) -> None:
        self._queue_jobs(epoch, fresh, self._features(samples))

    def _queue_jobs(self, epoch: int, fresh: list[tuple[_Slot, int]], features: Any) -> None:
        payloads = [self._make_payload(features, offset, slot.frame) for slot, offset in fresh]
        with self._lock:
            if epoch != self._epoch:
                return  # cleared meanwhile
            for (slot, _), payload in zip(fresh, payloads, strict=True):
                if slot.taken and slot is not self._current:
                    continue  # shown already, without its picture
                slot.job = self._worker.submit(self, slot.deadline, payload)
                slot.queued.set()

    def end_of_segment(self) -> None:
        with self._lock:
            self._segment_open = False

    def clear(self) -> None:
        with self._lock:
            self._epoch += 1
            for slot in [*self._slots, *([self._current] if self._current else [])]:
                slot.queued.set()  # no job will come: a next_frame waiting on it goes on
            self._slots.clear()
            self._queued = 0
            self._segment_open = False
            self._underrun = 0
            self._worker.drop(self)

    def close(self) -> None:
        self.clear()

    @property
    def queued_samples(self) -> int:
        with self._lock:
            return self._queued

    @property
    def pending_jobs(self) -> int:
        return self._worker.pending(self)

    # ------------------------------------------------------------- consumer
    def next_frame(self) -> AvatarFrame:
        with self._lock:
            slot = self._slots.popleft() if self._slots else None
            self._current = slot
            frame = self._frames_out
            self._frames_out += 1
            if slot is not None:
                slot.taken = True
                self._queued -= slot.filled
                self._underrun = 0
            elif self._segment_open:
                self._underrun += 1
            speaking = slot is not None or (
                self._segment_open and self._underrun <= self.underrun_grace_frames
            )
        image = self._picture(slot, frame, speaking)
        if image.shape[0] != self.size:
            image = cv2.resize(image, (self.size, self.size), interpolation=cv2.INTER_AREA)
        self._last = image
        if slot is None:
            pcm = np.zeros(SAMPLES_PER_VIDEO_FRAME, np.int16)
            return AvatarFrame(image=image, audio=pcm, speaking=speaking, played=[])
        pcm = np.rint(np.clip(slot.audio, -1.0, 1.0) * 32767.0).astype(np.int16)
        return AvatarFrame(image=image, audio=pcm, speaking=speaking, played=slot.played)

    def _picture(self, slot: _Slot | None, frame: int, speaking: bool) -> np.ndarray:
        if slot is None or not slot.voiced:
            return self.avatar.idle(frame)
        now = self._clock()
        until = max(slot.deadline - self.wait_margin_s, now + self.min_wait_s)
        # The job is there once the chunk's features are (a worker call of its own).
        if slot.queued.wait(max(0.0, until - now)) and (job := slot.job) is not None:
            if job.wait(until - self._clock()) and job.error is None and not job.cancelled:
                self.rendered_frames += 1
                return self.avatar.compose(frame, job.result)
        # Behind: the audio plays on time with the last picture (or the idle one).
        self.late_frames += 1
        if speaking and self._last is not None:
            return self._last
        return self.avatar.idle(frame)
