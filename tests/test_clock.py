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
