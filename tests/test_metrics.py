"""GET /metrics and the turn-end hook, with fake engines (no models)."""

from __future__ import annotations

import asyncio

import httpx
from fastapi.testclient import TestClient

from bench.client import Client
from core.config import Config
from pipelines.session import Session
from pipelines.timebase import VirtualTime
from pipelines.turn import Turn
from server.app import create_app
from server.metrics import STAGES, Metrics
from server.rtc import offer_loopback_only
from tests.fakes import fake_engines, served


def fake_turn(interrupted: bool = False, barge_in: float | None = None) -> Turn:
    turn = Turn(index=1, source="voice", end_of_speech=100.0)
    turn.marks = {
        "asr_final": 100.4,
        "llm_first_token": 100.7,
        "first_clause": 100.9,
        "tts_first_audio": 101.3,
        "first_audio_sent": 101.4,
    }
    turn.interrupted = interrupted
    turn.barge_in_after = barge_in
    return turn


def sample(metrics: Metrics, name: str, **labels: str) -> float | None:
    return metrics.registry.get_sample_value(name, labels or None)


def test_metrics_endpoint_answers_prometheus_text():
    with TestClient(create_app(Config(), fake_engines())) as client:
        response = client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    body = response.text
    for name in (
        "videochat_turn_stage_seconds",
        "videochat_turn_first_audio_seconds",
        "videochat_active_sessions",
        "videochat_turns_total",
        "videochat_frames_dropped_total",
        "videochat_frames_late_total",
    ):
        assert name in body, name


def test_docs_are_served_read_only_for_the_benchmark_plots():
    with TestClient(create_app(Config(), fake_engines())) as client:
        assert client.get("/docs/benchmarks.md").status_code == 200
        assert client.post("/docs/benchmarks.md").status_code in (404, 405)


def test_apps_do_not_share_a_registry():
    first, second = create_app(Config(), fake_engines()), create_app(Config(), fake_engines())
    first.state.metrics.observe_turn(fake_turn())
    assert sample(first.state.metrics, "videochat_turns_total", interrupted="no") == 1
    assert sample(second.state.metrics, "videochat_turns_total", interrupted="no") == 0


def test_observe_turn_updates_histograms_and_counters():
    metrics = Metrics()
    metrics.observe_turn(fake_turn())
    metrics.observe_turn(fake_turn(interrupted=True, barge_in=0.25))
    count = "videochat_turn_stage_seconds_count"
    for stage in STAGES[:-1]:
        assert sample(metrics, count, stage=stage) == 2, stage
    assert sample(metrics, count, stage="barge_in_detected_after") == 1
    total = sample(metrics, "videochat_turn_stage_seconds_sum", stage="first_audio_sent")
    assert abs(total - 2.8) < 1e-6
    assert sample(metrics, "videochat_turn_first_audio_seconds_count") == 2
    # 1.4 s falls in the 1.5 s bucket, not in the 1.25 s one.
    assert sample(metrics, "videochat_turn_first_audio_seconds_bucket", le="1.5") == 2
    assert sample(metrics, "videochat_turn_first_audio_seconds_bucket", le="1.25") == 0
    assert sample(metrics, "videochat_turns_total", interrupted="yes") == 1
    assert sample(metrics, "videochat_turns_total", interrupted="no") == 1
    assert b"videochat_turn_stage_seconds_bucket" in metrics.render()


async def test_frame_counters_are_read_from_the_clocks_and_kept_after_close():
    clock = VirtualTime()
    metrics = Metrics()
    session = Session(fake_engines(), Config(), time_source=clock)
    live = [session]
    metrics.track_sessions(lambda: live)
    metrics.session_opened(1)
    session.start()
    try:
        await clock.sleep(1.0)  # a second of media: 25 frames
        media = session.clock
        sent = media.frames_sent
        assert 24 <= sent <= 26
        assert sample(metrics, "videochat_active_sessions") == 1
        assert sample(metrics, "videochat_frames_sent_total") == sent
        # Nobody reads the tracks here: past their queue limit, frames are dropped.
        assert sample(metrics, "videochat_frames_dropped_total") == media.dropped > 0
        assert sample(metrics, "videochat_frames_late_total") == media.late_frames == 0
        assert sample(metrics, "videochat_frame_max_gap_seconds") == media.max_gap
    finally:
        await session.close()
        await clock.aclose()
    live.clear()
    metrics.session_closed(session, 0)
    assert sample(metrics, "videochat_active_sessions") == 0
    assert sample(metrics, "videochat_frames_sent_total") == sent
    assert sample(metrics, "videochat_frames_dropped_total") == session.clock.dropped


def scrape(base: str, name: str, **labels: str) -> float | None:
    """One sample of the server's GET /metrics."""
    from prometheus_client.parser import text_string_to_metric_families

    text = httpx.get(f"{base}/metrics", timeout=10).text
    for family in text_string_to_metric_families(text):
        for found in family.samples:
            if found.name == name and found.labels == labels:
                return found.value
    return None


async def test_a_served_session_reports_its_turns_and_frames():
    """The real wiring: a session opened through /offer by an aiortc client,
    a typed question, then GET /metrics (the session manager's turn-end hook
    and the clocks' counters, live and after the session closed)."""
    offer_loopback_only()  # the test client offers only 127.0.0.1
    config = Config()
    config.server.loopback_only = True
    with served(create_app(config, fake_engines())) as base:
        assert scrape(base, "videochat_turns_total", interrupted="no") == 0
        client = Client(base)
        try:
            await client.connect()
            client.send({"type": "text", "text": "What is the capital of France?"})
            turn = await client.wait_for(lambda e: e["type"] == "turn", 20)
            assert "first_audio_sent" in turn["latency"]
            assert scrape(base, "videochat_active_sessions") == 1
            assert scrape(base, "videochat_turns_total", interrupted="no") == 1
            assert scrape(base, "videochat_turn_first_audio_seconds_count") == 1
            asr = scrape(base, "videochat_turn_stage_seconds_count", stage="asr_final")
            assert asr in (None, 0)  # a typed question: no speech recognised
            count = scrape(base, "videochat_turn_stage_seconds_count", stage="first_audio_sent")
            assert count == 1
            live_frames = scrape(base, "videochat_frames_sent_total")
            assert live_frames is not None and live_frames > 0
        finally:
            await client.close()
        for _ in range(100):  # the server notices the hang-up
            if scrape(base, "videochat_active_sessions") == 0:
                break
            await asyncio.sleep(0.05)
        assert scrape(base, "videochat_active_sessions") == 0
        retained = scrape(base, "videochat_frames_sent_total")
        assert retained is not None and retained >= live_frames  # kept after close
