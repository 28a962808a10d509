"""The benchmark's pure measurement functions (no server, no models)."""

from __future__ import annotations

import math

import numpy as np

from bench.analysis import (
    edit_distance,
    first_moving_mouth,
    frame_stats,
    mouth_crop,
    pct,
    stall_time,
    stalls,
    tokens,
)


def test_edit_distance_and_tokens():
    assert edit_distance([], []) == 0
    assert edit_distance(list("abc"), list("abc")) == 0
    assert edit_distance(list("kitten"), list("sitting")) == 3
    assert edit_distance(["a", "b"], []) == 2
    assert tokens("What is the capital of France?", "en") == [
        "what",
        "is",
        "the",
        "capital",
        "of",
        "france",
    ]
    assert tokens("中国的首都 是哪里？", "zh") == list("中国的首都是哪里")
    ref, hyp = tokens("你能推荐一本好书吗？", "zh"), tokens("你能腿肩已笨耗属吗?", "zh")
    assert edit_distance(ref, hyp) == 6


def test_pct_ignores_nan():
    assert pct([1.0, float("nan"), 3.0], 50) == 2.0
    assert math.isnan(pct([], 50))


def audio_track(loud_spans: list[tuple[float, float]], end: float) -> list[tuple[float, float]]:
    """(time, rms) every 20 ms; loud inside the spans."""
    out = []
    for i in range(int(end / 0.02)):
        t = i * 0.02
        out.append((t, 0.1 if any(a <= t < b for a, b in loud_spans) else 0.0))
    return out


def test_stall_counts_only_silence_beyond_the_natural_pause():
    # Two sentences 300 ms apart: a natural pause, no stall.
    audio = audio_track([(1.0, 2.0), (2.3, 3.0)], 4.0)
    assert stall_time(audio, 0.0, 4.0) == 0.0
    # A second sentence 1 s late: 1 s of silence, 0.65 s beyond the pause.
    audio = audio_track([(1.0, 2.0), (3.0, 3.5), (3.8, 4.0)], 5.0)
    assert abs(stall_time(audio, 0.0, 5.0) - 0.65) < 0.03
    # ... which starts 1 s into the reply.
    [(where, excess)] = stalls(audio, 0.0, 5.0)
    assert abs(where - 1.0) < 0.03 and abs(excess - 0.65) < 0.03
    # Silence before the reply starts or after it ends is not a stall.
    assert stall_time(audio_track([(2.0, 3.0)], 6.0), 0.0, 6.0) == 0.0


def test_frame_stats():
    times = [i * 0.04 for i in range(51)]  # 25 fps for 2 s
    times.insert(30, 1.18)  # one extra
    del times[40:43]  # a 160 ms hole
    fps, gap = frame_stats(times, 0.0, 2.0)
    assert 22 < fps < 25
    assert abs(gap - 0.16) < 1e-6
    assert frame_stats([1.0], 0.0, 2.0)[0] == 0.0


def face(mouth_open: float, sway: int, noise: np.random.Generator) -> np.ndarray:
    """A 256x256 grey 'face': textured skin, a mouth that opens, the head swaying."""
    yy, xx = np.mgrid[0:256, 0:256]
    img = 120 + 30 * np.sin(xx / 7.0) * np.cos(yy / 9.0)
    cy, cx = 170, 128 + sway
    lips = (np.abs(yy - cy) < 3 + 14 * mouth_open) & (np.abs(xx - cx) < 28)
    img[lips] = 40
    img[(np.abs(yy - cy) < 3) & (np.abs(xx - cx) < 30)] = 80  # closed lips line
    img += noise.normal(0, 1.5, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def test_first_moving_mouth_ignores_sway_and_finds_the_opening():
    rng = np.random.default_rng(0)
    sways = [int(round(2 * math.sin(i / 6))) for i in range(80)]
    idle = [mouth_crop(face(0.0, s, rng)) for s in sways[:40]]
    # After the end of speech (t = 0): 10 still frames swaying, then the mouth moves.
    frames = []
    for i in range(25):
        opening = 0.0 if i < 10 else 0.6 * abs(math.sin(i / 2))
        frames.append((i * 0.04, mouth_crop(face(opening, sways[40 + i], rng))))
    first = first_moving_mouth(idle, frames, after=0.0)
    assert first is not None
    assert 0.36 <= first <= 0.48  # frame 10 or 11 (sin(5) ~ 0.96: wide open at once)
    # No motion at all: nothing found.
    still = [(i * 0.04, mouth_crop(face(0.0, sways[40 + i], rng))) for i in range(20)]
    assert first_moving_mouth(idle, still, after=0.0) is None
    assert first_moving_mouth([], frames, after=0.0) is None
