"""The soak's measures (bench/soak.py) and its server probe: no server, no models."""

from __future__ import annotations

import asyncio
import math
import os
import subprocess
import sys
import time

import pytest

from bench.soak import (
    SECTION,
    ServerProbe,
    av_offset_series,
    drift,
    growth_percent,
    increases,
    log_problems,
    overload_verdict,
    per_cycle_slope,
    splice_section,
    window_change,
)


def streams(
    seconds: float, audio_lag_per_s: float = 0.0, audio_origin: int = 0, video_origin: int = 0
) -> tuple[list[tuple[float, int]], list[tuple[float, int]]]:
    """Received (arrival, RTP timestamp) of 20 ms audio packets and 40 ms
    video frames stamped from one clock; audio arrives ``audio_lag_per_s``
    later for every second that passes; origins as random as RTP's."""
    audio = [
        (0.020 * i + 0.001 + audio_lag_per_s * 0.020 * i, (audio_origin + 960 * i) % 2**32)
        for i in range(int(seconds / 0.020))
    ]
    video = [
        (0.040 * i + 0.003, (video_origin + 3600 * i) % 2**32) for i in range(int(seconds / 0.040))
    ]
    return audio, video


def test_growth_and_slope():
    assert growth_percent(100.0, 104.0) == pytest.approx(4.0)
    assert growth_percent(200.0, 190.0) == pytest.approx(-5.0)
    assert math.isnan(growth_percent(0.0, 10.0))
    assert per_cycle_slope([10.0, 12.0, 14.0, 16.0]) == pytest.approx(2.0)
    assert per_cycle_slope([5.0, 5.0, 5.0]) == pytest.approx(0.0)
    assert math.isnan(per_cycle_slope([1.0]))


def test_increases_and_log_problems():
    before = {"MediaClock._run": 0, "Server.main_loop": 1, "Handler.run": 2, "Session": 1}
    after = {"Server.main_loop": 1, "Handler.run": 1, "read_microphone": 3, "Session": 2}
    assert list(increases(before, after).items()) == [("read_microphone", 3), ("Session", 1)]
    assert increases(after, after) == {}
    log = (
        "INFO ok\nERROR asyncio: Task was destroyed but it is pending!\n"
        "task: <Task pending ...>\nERROR asyncio: Task was destroyed but it is pending!\n"
    )
    counts = log_problems(log)
    assert counts["pending tasks destroyed"] == 2
    assert counts["task exceptions never retrieved"] == 0


def levels(seconds: float, speaking: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """Received audio levels every 20 ms: loud inside the ``speaking`` spans."""
    return [
        (0.020 * i, 0.2 if any(a <= 0.020 * i < b for a, b in speaking) else 0.0)
        for i in range(int(seconds / 0.020))
    ]


def test_locked_streams_do_not_drift_even_across_an_rtp_wrap():
    # Audio's timestamps wrap (2**32) a few seconds in; origins differ.
    audio, video = streams(120.0, audio_origin=2**32 - 48_000 * 3, video_origin=12345)
    series = av_offset_series(audio, video, levels(120.0, [(0.0, 60.0)]), bin_s=10.0)
    assert len(series) == 12 and series[0]["t"] == 0.0
    assert series[0]["loud"] == 1.0 and series[-1]["loud"] == 0.0
    result = drift(series, window_s=20.0)
    assert abs(result["drift"]) < 1e-9 and result["excursion"] < 1e-9
    assert abs(result["audio_delay"]) < 1e-9 and abs(result["video_delay"]) < 1e-9


def test_audio_falling_behind_is_drift():
    # 0.5 ms later per second. 10 s bins, 20 s windows: the first window
    # (after 5 s of set-up) holds the bins from 10 and 20 s (arrivals around
    # 20 s), the last those from 100 and 110 s (around 110 s): 90 s, 45 ms.
    audio, video = streams(120.0, audio_lag_per_s=0.0005, audio_origin=7, video_origin=2**31)
    speech = levels(120.0, [(0.0, 30.0), (90.0, 120.0)])
    series = av_offset_series(audio, video, speech, bin_s=10.0)
    assert [round(b["loud"], 2) for b in series] == [1, 1, 1, 0, 0, 0, 0, 0, 0, 1, 1, 1]
    result = drift(series, window_s=20.0)
    assert result["drift"] == pytest.approx(0.045, abs=0.001)
    assert result["excursion"] == pytest.approx(0.0475, abs=0.001)  # the last bin
    assert result["audio_delay"] == pytest.approx(0.045, abs=0.001)
    assert abs(result["video_delay"]) < 1e-9


def test_drift_without_media_is_not_a_number():
    assert av_offset_series([], []) == []
    result = drift([])
    assert math.isnan(result["drift"]) and math.isnan(result["excursion"])
    assert math.isnan(window_change([], [], 10.0))


def test_overload_verdict():
    refused = {"outcome": "refused", "seconds": 0.1, "retry_after": "30", "message": "busy"}
    reply = {"lang": "en", "fps": 25.0, "max_gap": 0.08, "first_audio": 1.0, "bot": "Paris."}
    result = {
        "capacity": 1,
        "offers": 2,
        "first": [{"outcome": "admitted", "seconds": 1.0}, refused],
        "retries": [refused, refused],
        "rows": [reply],
        "reopened": {"outcome": "admitted"},
    }
    assert overload_verdict(result) == (True, True)
    hung = {**result, "retries": [refused, {"outcome": "hung", "seconds": 40.0}]}
    assert overload_verdict(hung) == (False, True)
    slow = {**result, "rows": [{**reply, "fps": 20.0}]}
    assert overload_verdict(slow) == (True, False)


def test_splice_section_replaces_only_its_own():
    doc = "# Benchmarks\n\n## A\n\na\n\n## Soak and load\n\nold\n\n## B\n\nb\n"
    new = splice_section(doc, SECTION, f"{SECTION}\n\nnew\n")
    assert new == "# Benchmarks\n\n## A\n\na\n\n## Soak and load\n\nnew\n\n## B\n\nb\n"
    appended = splice_section("# Benchmarks\n\n## A\n\na\n", SECTION, f"{SECTION}\n\nnew")
    assert appended.endswith("a\n\n## Soak and load\n\nnew\n")


def test_probe_counts_tasks_and_objects_in_a_running_process(tmp_path):
    """The sitecustomize probe answers in a plain asyncio process (no server)."""
    probe = ServerProbe(tmp_path)
    program = (
        "import asyncio, gc\n"
        "gc.disable()\n"
        "class Marker: pass\n"
        "class Cycle: pass\n"
        "for _ in range(3):\n"
        "    c = Cycle(); c.me = c\n"
        "del c\n"
        "async def waiting(): await asyncio.sleep(60)\n"
        "async def main():\n"
        "    kept = [Marker() for _ in range(7)]\n"
        "    await asyncio.gather(waiting(), waiting())\n"
        "asyncio.run(main())\n"
    )
    process = subprocess.Popen([sys.executable, "-c", program], env={**os.environ, **probe.env()})
    try:
        deadline = time.monotonic() + 20
        while not probe.installed and time.monotonic() < deadline:
            time.sleep(0.05)
        assert probe.installed
        probe.pid = process.pid
        time.sleep(0.5)  # into the loop
        census = asyncio.run(probe.census())
        assert census is not None
        assert census["tasks"].get("waiting") == 2
        assert census["objects"].get("__main__.Marker") == 7
        assert census["garbage"].get("__main__.Cycle") == 3  # freed by its gc.collect()
        assert "__main__.Cycle" not in census["objects"]
        assert asyncio.run(probe.trim())
        assert process.poll() is None  # the signals did not kill it
    finally:
        process.kill()
        process.wait()
