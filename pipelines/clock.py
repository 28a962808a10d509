"""One clock per session drives both outgoing tracks.

Every 40 ms the clock takes one frame from the avatar (the picture plus the
two 20 ms audio frames it was lip-synced to) and hands each media frame to its
track at its due wall-clock time. pts come from frame and sample counters.
aiortc stamps RTCP sender reports with the wall clock at *send* time, so a
frame released early or late would be mis-synced: we release on time instead
of letting aiortc pull as fast as it can.
"""

from __future__ import annotations

import asyncio
import fractions
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import av
import numpy as np
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from models.base import MEDIA_FPS, MEDIA_SAMPLE_RATE, AvatarFrame, AvatarStream

log = logging.getLogger(__name__)

AUDIO_FRAME_SAMPLES = MEDIA_SAMPLE_RATE // 50  # 20 ms
VIDEO_CLOCK_RATE = 90_000
FRAME_PERIOD = 1.0 / MEDIA_FPS
QUEUE_LIMIT = 10  # frames; past this the receiver is not keeping up and we drop


class PacedTrack(MediaStreamTrack):
    """A track whose frames are pushed by the clock at their due time."""

    def __init__(self, kind: str) -> None:
        super().__init__()
        self.kind = kind
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
        now = time.perf_counter()
        if self._last_take is not None:
            self.max_take_gap = max(self.max_take_gap, now - self._last_take)
        self._last_take = now
        return frame

    def stop(self) -> None:
        super().stop()
        self._queue.put_nowait(None)


FrameCallback = Callable[[AvatarFrame, float], None]


class MediaClock:
    """Pulls avatar frames at 25 fps and releases them to the tracks on time."""

    def __init__(
        self,
        avatar: AvatarStream,
        on_frame: FrameCallback | None = None,
        idle_video_every: int = 1,
    ) -> None:
        self.avatar = avatar
        # While the user has the turn (see ``listening``) and the avatar is not
        # speaking, only every Nth picture is sent (the audio, silence, still
        # goes out every 20 ms): encoding is most of a session's media cost,
        # and the idle motion (sway, breathing, blinks) stays smooth at half
        # the rate. Thinking and speaking always get every frame.
        self.idle_video_every = max(1, int(idle_video_every))
        self.listening = True
        self.audio_track = PacedTrack("audio")
        self.video_track = PacedTrack("video")
        self._on_frame = on_frame
        self._task: asyncio.Task[None] | None = None
        # One thread per session renders, so a slow ASR/TTS call elsewhere
        # never delays this session's frames.
        self._renderer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="avatar")
        self.frames_sent = 0
        self.late_frames = 0
        self.max_gap = 0.0
        self._flushes = 0  # bumped by flush(); frames rendered before it go out silent
        self.held = False  # see hold()

    def flush(self) -> None:
        """Silence audio already rendered but not yet sent (barge-in): the frame
        rendered ahead and the second half of the current one."""
        self._flushes += 1

    def hold(self, held: bool) -> None:
        """Pause the reply where it is (the user may be starting to talk): until
        released, the clock repeats the last picture with silence and takes
        nothing from the avatar, so a false alarm resumes exactly where it
        stopped, and a real barge-in interrupts a reply that is already silent."""
        self.held = held

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

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        start = loop.time()
        index = 0
        samples = 0
        last_sent = None
        pending = loop.run_in_executor(self._renderer, self.avatar.next_frame)
        rendered_at = self._flushes
        last_image: np.ndarray | None = None
        while True:
            if self.held and last_image is not None:
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
                pending = loop.run_in_executor(self._renderer, self.avatar.next_frame)
                last_image = frame.image
            due = start + index * FRAME_PERIOD
            delay = due - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            elif delay < -FRAME_PERIOD:
                # Fell behind by more than a frame (CPU starved): re-anchor the
                # clock rather than bursting frames out.
                self.late_frames += 1
                start = loop.time() - index * FRAME_PERIOD
            now = loop.time()
            if last_sent is not None:
                self.max_gap = max(self.max_gap, now - last_sent)
            last_sent = now

            every = self.idle_video_every if self.listening else 1
            if frame.speaking or index % every == 0:
                self.video_track.put(_video_frame(frame.image, index))
            self.audio_track.put(_audio_frame(frame.audio[:AUDIO_FRAME_SAMPLES], samples))
            if self._on_frame is not None:
                try:
                    self._on_frame(frame, time.perf_counter())
                except Exception:  # accounting must never stop the media
                    log.exception("frame callback failed")
            # The second 20 ms of audio goes out 20 ms later.
            flushes = self._flushes
            await asyncio.sleep(max(0.0, due + FRAME_PERIOD / 2 - loop.time()))
            second_half = frame.audio[AUDIO_FRAME_SAMPLES:]
            if flushes != self._flushes:
                second_half = np.zeros_like(second_half)
            self.audio_track.put(_audio_frame(second_half, samples + AUDIO_FRAME_SAMPLES))
            samples += 2 * AUDIO_FRAME_SAMPLES
            index += 1
            self.frames_sent = index

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
