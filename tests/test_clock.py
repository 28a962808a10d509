"""The media clock and the paced tracks between it and aiortc's senders.

The clock runs on virtual time (pipelines/timebase.py) here, so its pacing is
checked exactly; one test checks it on the wall clock.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import numpy as np
import pytest

from models.base import SAMPLES_PER_VIDEO_FRAME, AvatarFrame
from pipelines.clock import QUEUE_LIMIT, MediaClock, PacedTrack, SentFrame, _video_frame
from pipelines.timebase import VirtualTime


@pytest.fixture
async def clock() -> AsyncIterator[VirtualTime]:
    virtual = VirtualTime()
    yield virtual
    await virtual.aclose()


def frame(index: int):
    return _video_frame(np.zeros((16, 16, 3), np.uint8), index)


async def test_the_longest_wait_between_two_takes_is_recorded(clock):
    track = PacedTrack("video", clock)
    for i in range(3):
        track.put(frame(i))
    await track.recv()
    await clock.sleep(0.15)  # a sender busy encoding
    await track.recv()
    await track.recv()
    assert track.max_take_gap == pytest.approx(0.15)
    track.stop()


async def test_a_sender_that_does_not_keep_up_loses_the_oldest_frames():
    track = PacedTrack("video")
    for i in range(QUEUE_LIMIT + 3):
        track.put(frame(i))
    assert track.dropped == 3
    first = await track.recv()
    assert first.pts == frame(3).pts
    track.stop()


class CountingAvatar:
    """Frames whose audio is their index, so the order played can be read back."""

    def __init__(self) -> None:
        self.rendered = 0

    def next_frame(self) -> AvatarFrame:
        self.rendered += 1
        image = np.full((16, 16, 3), self.rendered, np.uint8)
        audio = np.full(SAMPLES_PER_VIDEO_FRAME, self.rendered, np.int16)
        return AvatarFrame(image=image, audio=audio, speaking=True)


class Recorder:
    """A frame listener: what the clock published."""

    def __init__(self) -> None:
        self.sent: list[SentFrame] = []

    def frame_sent(self, sent: SentFrame) -> None:
        self.sent.append(sent)


async def test_a_held_clock_repeats_the_picture_in_silence_and_resumes_in_order(clock):
    avatar = CountingAvatar()
    media = MediaClock(avatar, time_source=clock)
    recorder = Recorder()
    media.subscribe(recorder)
    media.start()
    try:
        audio = []

        async def take(n: int) -> None:
            for _ in range(n):
                frame = await media.audio_track.recv()
                audio.append(int(frame.to_ndarray().max()))

        await take(4)  # frames 1 and 2, two audio halves each
        media.hold(True)
        rendered = avatar.rendered
        await take(8)
        assert avatar.rendered <= rendered + 1  # nothing taken from the avatar while held
        media.hold(False)
        await take(8)
        played = [a for a in audio if a]
        assert played == sorted(played)  # resumed in order: nothing skipped or repeated twice
        assert len(set(played)) == len(played) / 2
        # The frame already rendered and due goes out, then silence while held.
        assert audio[4:12] == [3, 3] + [0] * 6
        # Listeners are told each frame and whether the clock was held as it
        # went out (hold and release are seen at the next release).
        published = [(int(s.frame.audio.max()), s.held) for s in recorder.sent[:10]]
        assert published == [
            (1, False), (2, False), (3, True), (0, True), (0, True), (0, True),
            (0, False), (4, False), (5, False), (6, False),
        ]  # fmt: skip
    finally:
        await media.stop()


async def test_frames_are_released_every_40_ms_and_published_as_they_go(clock):
    media = MediaClock(CountingAvatar(), time_source=clock)
    recorder = Recorder()
    media.subscribe(recorder)
    media.start()
    try:
        arrivals = []
        for _ in range(10):
            await media.audio_track.recv()
            arrivals.append(clock.now())
        # Each picture's two 20 ms audio halves: at its due time and 20 ms later.
        assert np.diff(arrivals) == pytest.approx([0.02] * 9)
        times = [s.at for s in recorder.sent]
        assert np.diff(times) == pytest.approx([0.04] * (len(times) - 1))
        assert [int(s.frame.audio.max()) for s in recorder.sent] == list(
            range(1, len(times) + 1)
        )
        media.unsubscribe(recorder)
        count = len(recorder.sent)
        await media.audio_track.recv()
        await media.audio_track.recv()
        assert len(recorder.sent) == count
        assert media.late_frames == 0 and media.max_gap == pytest.approx(0.04)
    finally:
        await media.stop()


async def test_frames_are_released_on_the_wall_clock():
    """Real pacing: 13 pictures take 12 frame periods, not less."""
    media = MediaClock(CountingAvatar())
    media.start()
    try:
        await media.audio_track.recv()
        started = time.monotonic()
        for _ in range(24):
            await media.audio_track.recv()
        elapsed = time.monotonic() - started
        assert 0.46 <= elapsed < 1.0
    finally:
        await media.stop()


class IdleThenSpeakingAvatar(CountingAvatar):
    """Not speaking for its first 6 frames, then speaking."""

    def next_frame(self):
        frame = super().next_frame()
        frame.speaking = self.rendered > 6
        return frame


async def pictures_sent(listening: bool, clock: VirtualTime) -> list[int]:
    """The pictures a clock sends over 12 frames of IdleThenSpeakingAvatar, by
    index, with idle pictures at half the rate while the user has the turn."""
    media = MediaClock(IdleThenSpeakingAvatar(), time_source=clock, idle_video_every=2)
    media.set_listening(listening)
    media.start()
    try:
        for _ in range(24):  # 12 frames' audio: every 20 ms, idle or not
            await media.audio_track.recv()
        await clock.sleep(0.01)
        pictures = []
        while not media.video_track._queue.empty():
            pictures.append(int((await media.video_track.recv()).to_ndarray(format="rgb24").max()))
        return pictures
    finally:
        await media.stop()


async def test_idle_pictures_go_out_at_the_idle_rate_and_speech_at_the_full_rate(clock):
    pictures = await pictures_sent(listening=True, clock=clock)
    idle = [p for p in pictures if p <= 6]
    speaking = [p for p in pictures if p > 6]
    assert idle == [1, 3, 5]  # every other idle picture
    assert speaking == list(range(7, 7 + len(speaking))) and len(speaking) >= 5


async def test_a_thinking_avatar_gets_every_picture(clock):
    pictures = await pictures_sent(listening=False, clock=clock)  # thinking, speaking
    # Nothing skipped (the oldest may have left the bounded queue).
    assert pictures == list(range(pictures[0], pictures[0] + len(pictures)))
    assert len([p for p in pictures if p <= 6]) >= 3  # idle, yet every one


def test_vp8_is_encoded_without_the_denoiser():
    import fractions

    import av
    from aiortc.codecs import get_encoder
    from aiortc.codecs.vpx import Vp8Decoder, vp8_depayload
    from aiortc.jitterbuffer import JitterFrame
    from aiortc.rtcrtpparameters import RTCRtpCodecParameters

    from server.rtc import encode_vp8_without_denoiser

    encode_vp8_without_denoiser()
    encoder = get_encoder(RTCRtpCodecParameters("video/VP8", clockRate=90_000, payloadType=96))
    assert type(encoder).__name__ == "Vp8EncoderWithoutDenoiser"
    decoder = Vp8Decoder()
    image = np.zeros((64, 64, 3), np.uint8)
    image[16:48, 16:48] = (200, 100, 50)
    for index in range(3):
        frame = av.VideoFrame.from_ndarray(image, format="rgb24")
        frame.pts, frame.time_base = index * 3600, fractions.Fraction(1, 90_000)
        payloads, timestamp = encoder.encode(frame)
        data = b"".join(vp8_depayload(p) for p in payloads)
        (decoded,) = decoder.decode(JitterFrame(data=data, timestamp=timestamp))
        out = decoded.to_ndarray(format="rgb24")
        assert out.shape == image.shape
        assert abs(int(out[32, 32, 0]) - 200) < 20  # the picture survives the round trip


async def test_a_failing_frame_listener_does_not_stop_the_media(clock):
    class Broken:
        calls = 0

        def frame_sent(self, sent: SentFrame) -> None:
            self.calls += 1
            raise RuntimeError("accounting bug")

    broken, recorder = Broken(), Recorder()
    media = MediaClock(CountingAvatar(), time_source=clock)
    media.subscribe(broken)
    media.subscribe(recorder)  # later listeners are still told
    media.start()
    try:
        for _ in range(3):
            await media.video_track.recv()
        assert broken.calls >= 3 and len(recorder.sent) == broken.calls
    finally:
        await media.stop()
