"""One clock per session drives both outgoing tracks.

Every 40 ms the clock takes one frame from its frame source (the avatar
stream: the picture plus the two 20 ms audio frames it was lip-synced to) and
hands each media frame to its track at its due time. pts come from frame and
sample counters. aiortc stamps RTCP sender reports with the wall clock at
*send* time, so a frame released early or late would be mis-synced: we release
on time instead of letting aiortc pull as fast as it can.

Control runs one way. The clock knows only its frame source and its time
source; it publishes each frame it releases (``SentFrame``) to whoever
subscribed (the session's playback accounting, pipelines/playback.py) and
never calls into the session. The session commands it through ``hold``,
``flush`` and ``set_listening``.
"""

from __future__ import annotations

import asyncio
import fractions
import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Protocol

import av
import numpy as np
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from models.base import MEDIA_FPS, MEDIA_SAMPLE_RATE, AvatarFrame
from pipelines.timebase import REAL_TIME, TimeSource

log = logging.getLogger(__name__)

AUDIO_FRAME_SAMPLES = MEDIA_SAMPLE_RATE // 50  # 20 ms
VIDEO_CLOCK_RATE = 90_000
FRAME_PERIOD = 1.0 / MEDIA_FPS
QUEUE_LIMIT = 10  # frames; past this the receiver is not keeping up and we drop


class FrameSource(Protocol):
    """Where the clock takes its frames: the avatar stream (called in the
    clock's own render thread, one call at a time)."""

    def next_frame(self) -> AvatarFrame: ...


@dataclass(frozen=True)
class SentFrame:
    """A frame as the clock released it."""

    frame: AvatarFrame  # its ``played`` says which reply audio went out in it
    at: float  # release time, on the clock's time source
    held: bool  # the clock was paused (``hold``) as it went out


class FrameListener(Protocol):
    def frame_sent(self, sent: SentFrame) -> None: ...


class PacedTrack(MediaStreamTrack):
    """A track whose frames are pushed by the clock at their due time."""

    def __init__(self, kind: str, time_source: TimeSource = REAL_TIME) -> None:
        super().__init__()
        self.kind = kind
        self._time = time_source
        self._queue: asyncio.Queue[av.AudioFrame | av.VideoFrame | None] = asyncio.Queue()
        self.dropped = 0
        # aiortc's sender takes a frame, encodes it, sends its packets, then asks
        # for the next: the longest wait between two takes is the longest gap
        # on the wire that this server caused (encoding included).
        self.max_take_gap = 0.0
        self._last_take: float | None = None

    def put(self, frame: av.AudioFrame | av.VideoFrame) -> None:
        if self._queue.qsize() >= QUEUE_LIMIT:
            self._queue.get_nowait()
            self.dropped += 1
        self._queue.put_nowait(frame)

    async def recv(self) -> av.AudioFrame | av.VideoFrame:
        if self.readyState != "live":
            raise MediaStreamError
        frame = await self._queue.get()
        if frame is None:
            raise MediaStreamError
        now = self._time.now()
        if self._last_take is not None:
            self.max_take_gap = max(self.max_take_gap, now - self._last_take)
        self._last_take = now
        return frame

    def stop(self) -> None:
        super().stop()
        self._queue.put_nowait(None)


class MediaClock:
    """Pulls frames at 25 fps and releases them to the tracks on time."""

    def __init__(
        self,
        frames: FrameSource,
        *,
        time_source: TimeSource = REAL_TIME,
        idle_video_every: int = 1,
    ) -> None:
        self._frames = frames
        self._time = time_source
        # While the user has the turn (see ``set_listening``) and the avatar is
        # not speaking, only every Nth picture is sent (the audio, silence,
        # still goes out every 20 ms): encoding is most of a session's media
        # cost, and the idle motion (sway, breathing, blinks) stays smooth at
        # half the rate. Thinking and speaking always get every frame.
        self.idle_video_every = max(1, int(idle_video_every))
        self._listening = True
        self.audio_track = PacedTrack("audio", time_source)
        self.video_track = PacedTrack("video", time_source)
        self._listeners: list[FrameListener] = []
        self._task: asyncio.Task[None] | None = None
        # One thread per session renders, so a slow ASR/TTS call elsewhere
        # never delays this session's frames.
        self._renderer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="avatar")
        self.frames_sent = 0
        self.late_frames = 0
        self.max_gap = 0.0
        self._flushes = 0  # bumped by flush(); frames rendered before it go out silent
        self._held = False  # see hold()

    # ------------------------------------------------------------- listeners
    def subscribe(self, listener: FrameListener) -> None:
        """Tell ``listener`` about every frame released from now on."""
        self._listeners.append(listener)

    def unsubscribe(self, listener: FrameListener) -> None:
        if listener in self._listeners:
            self._listeners.remove(listener)

    # -------------------------------------------------------------- commands
    def flush(self) -> None:
        """Silence audio already rendered but not yet sent (barge-in): the frame
        rendered ahead and the second half of the current one."""
        self._flushes += 1

    def hold(self, held: bool) -> None:
        """Pause the reply where it is (the user may be starting to talk): until
        released, the clock repeats the last picture with silence and takes
        nothing from the frame source, so a false alarm resumes exactly where
        it stopped, and a real barge-in interrupts a reply that is already
        silent."""
        self._held = held

    @property
    def held(self) -> bool:
        return self._held

    def set_listening(self, listening: bool) -> None:
        """Whether the user has the turn (idle pictures at the idle rate)."""
        self._listening = listening

    @property
    def listening(self) -> bool:
        return self._listening

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="media-clock")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
        self.audio_track.stop()
        self.video_track.stop()
        self._renderer.shutdown(wait=False, cancel_futures=True)

    # ------------------------------------------------------------------ loop
    def _render(self) -> asyncio.Future[AvatarFrame]:
        return self._time.run_in_thread(self._renderer, self._frames.next_frame)

    async def _run(self) -> None:
        time_source = self._time
        start = time_source.now()
        index = 0
        samples = 0
        last_sent = None
        pending = self._render()
        rendered_at = self._flushes
        last_image: np.ndarray | None = None
        try:
            while True:
                if self._held and last_image is not None:
                    # The rendered frame waits in `pending` for the release.
                    frame = AvatarFrame(
                        image=last_image,
                        audio=np.zeros(2 * AUDIO_FRAME_SAMPLES, np.int16),
                        speaking=False,
                    )
                else:
                    frame = await pending
                    if rendered_at != self._flushes:
                        frame.audio = np.zeros_like(frame.audio)
                        frame.played = []
                    # Render the next frame while this one waits for its due time.
                    rendered_at = self._flushes
                    pending = self._render()
                    last_image = frame.image
                due = start + index * FRAME_PERIOD
                delay = due - time_source.now()
                if delay > 0:
                    await time_source.sleep(delay)
                elif delay < -FRAME_PERIOD:
                    # Fell behind by more than a frame (CPU starved): re-anchor
                    # the clock rather than bursting frames out.
                    self.late_frames += 1
                    start = time_source.now() - index * FRAME_PERIOD
                now = time_source.now()
                if last_sent is not None:
                    self.max_gap = max(self.max_gap, now - last_sent)
                last_sent = now

                every = self.idle_video_every if self._listening else 1
                if frame.speaking or index % every == 0:
                    self.video_track.put(_video_frame(frame.image, index))
                self.audio_track.put(_audio_frame(frame.audio[:AUDIO_FRAME_SAMPLES], samples))
                self._publish(SentFrame(frame, now, self._held))
                # The second 20 ms of audio goes out 20 ms later.
                flushes = self._flushes
                await time_source.sleep(max(0.0, due + FRAME_PERIOD / 2 - time_source.now()))
                second_half = frame.audio[AUDIO_FRAME_SAMPLES:]
                if flushes != self._flushes:
                    second_half = np.zeros_like(second_half)
                self.audio_track.put(_audio_frame(second_half, samples + AUDIO_FRAME_SAMPLES))
                samples += 2 * AUDIO_FRAME_SAMPLES
                index += 1
                self.frames_sent = index
        finally:
            pending.cancel()

    def _publish(self, sent: SentFrame) -> None:
        for listener in list(self._listeners):
            try:
                listener.frame_sent(sent)
            except Exception:  # accounting must never stop the media
                log.exception("frame listener failed")

    @property
    def dropped(self) -> int:
        return self.audio_track.dropped + self.video_track.dropped


def _video_frame(image: np.ndarray, index: int) -> av.VideoFrame:
    frame = av.VideoFrame.from_ndarray(image, format="rgb24")
    frame.pts = index * (VIDEO_CLOCK_RATE // MEDIA_FPS)
    frame.time_base = fractions.Fraction(1, VIDEO_CLOCK_RATE)
    return frame


def _audio_frame(pcm: np.ndarray, pts: int) -> av.AudioFrame:
    frame = av.AudioFrame.from_ndarray(pcm.reshape(1, -1), format="s16", layout="mono")
    frame.sample_rate = MEDIA_SAMPLE_RATE
    frame.pts = pts
    frame.time_base = fractions.Fraction(1, MEDIA_SAMPLE_RATE)
    return frame
