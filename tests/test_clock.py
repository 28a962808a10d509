"""The paced tracks between the media clock and aiortc's senders."""

from __future__ import annotations

import asyncio

import numpy as np

from pipelines.clock import QUEUE_LIMIT, PacedTrack, _video_frame


def frame(index: int):
    return _video_frame(np.zeros((16, 16, 3), np.uint8), index)


async def test_the_longest_wait_between_two_takes_is_recorded():
    track = PacedTrack("video")
    for i in range(3):
        track.put(frame(i))
    await track.recv()
    await asyncio.sleep(0.15)  # a sender busy encoding
    await track.recv()
    await track.recv()
    assert 0.15 <= track.max_take_gap < 1.0
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

    def next_frame(self):
        from models.base import SAMPLES_PER_VIDEO_FRAME, AvatarFrame

        self.rendered += 1
        image = np.full((16, 16, 3), self.rendered, np.uint8)
        audio = np.full(SAMPLES_PER_VIDEO_FRAME, self.rendered, np.int16)
        return AvatarFrame(image=image, audio=audio, speaking=True)


async def test_a_held_clock_repeats_the_picture_in_silence_and_resumes_in_order():
    from pipelines.clock import MediaClock

    avatar = CountingAvatar()
    clock = MediaClock(avatar)  # type: ignore[arg-type]
    clock.start()
    try:
        audio = []

        async def take(n: int) -> None:
            for _ in range(n):
                frame = await clock.audio_track.recv()
                audio.append(int(frame.to_ndarray().max()))

        await take(4)  # frames 1 and 2, two audio halves each
        clock.hold(True)
        rendered = avatar.rendered
        await take(8)
        assert avatar.rendered <= rendered + 1  # nothing taken from the avatar while held
        clock.hold(False)
        await take(8)
        played = [a for a in audio if a]
        assert played == sorted(played)  # resumed in order: nothing skipped or repeated twice
        assert len(set(played)) == len(played) / 2
        assert 0 in audio[4:12]  # silence while held
    finally:
        await clock.stop()


class IdleThenSpeakingAvatar(CountingAvatar):
    """Not speaking for its first 6 frames, then speaking."""

    def next_frame(self):
        frame = super().next_frame()
        frame.speaking = self.rendered > 6
        return frame


async def pictures_sent(listening: bool) -> list[int]:
    """The pictures a clock sends over 12 frames of IdleThenSpeakingAvatar, by
    index, with idle pictures at half the rate while the user has the turn."""
    from pipelines.clock import MediaClock

    clock = MediaClock(IdleThenSpeakingAvatar(), idle_video_every=2)  # type: ignore[arg-type]
    clock.listening = listening
    clock.start()
    try:
        for _ in range(24):  # 12 frames' audio: every 20 ms, idle or not
            await clock.audio_track.recv()
        await asyncio.sleep(0.01)
        pictures = []
        while not clock.video_track._queue.empty():
            pictures.append(int((await clock.video_track.recv()).to_ndarray(format="rgb24").max()))
        return pictures
    finally:
        await clock.stop()


async def test_idle_pictures_go_out_at_the_idle_rate_and_speech_at_the_full_rate():
    pictures = await pictures_sent(listening=True)
    idle = [p for p in pictures if p <= 6]
    speaking = [p for p in pictures if p > 6]
    assert idle == [1, 3, 5]  # every other idle picture
    assert speaking == list(range(7, 7 + len(speaking))) and len(speaking) >= 5


async def test_a_thinking_avatar_gets_every_picture():
    pictures = await pictures_sent(listening=False)  # the avatar's turn: thinking, speaking
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


async def test_a_failing_frame_callback_does_not_stop_the_media():
    from pipelines.clock import MediaClock

    calls = 0

    def broken(frame, now):  # type: ignore[no-untyped-def]
        nonlocal calls
        calls += 1
        raise RuntimeError("accounting bug")

    clock = MediaClock(CountingAvatar(), on_frame=broken)  # type: ignore[arg-type]
    clock.start()
    try:
        for _ in range(3):
            await asyncio.wait_for(clock.video_track.recv(), 2)
        assert calls >= 2
    finally:
        await clock.stop()
