"""GET /metrics and the turn-end hook, with fake engines (no models)."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

from fastapi.testclient import TestClient

from core.config import Config
from pipelines.session import Session, Turn
from server.app import SessionManager, create_app
from server.metrics import STAGES, Metrics
from tests.fakes import fake_engines


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


def test_frame_counters_are_read_from_the_clocks_and_kept_after_close():
    metrics = Metrics()
    clock = SimpleNamespace(
        frames_sent=250,
        dropped=3,
        late_frames=2,
        max_gap=0.09,
        video_track=SimpleNamespace(max_take_gap=0.12),
    )
    session = SimpleNamespace(clock=clock)
    live = [session]
    metrics.track_sessions(lambda: live)
    metrics.session_opened(1)
    assert sample(metrics, "videochat_active_sessions") == 1
    assert sample(metrics, "videochat_frames_dropped_total") == 3
    assert sample(metrics, "videochat_frames_late_total") == 2
    assert sample(metrics, "videochat_frame_max_gap_seconds") == 0.09
    assert sample(metrics, "videochat_frame_max_send_gap_seconds") == 0.12
    live.clear()
    metrics.session_closed(session, 0)
    assert sample(metrics, "videochat_active_sessions") == 0
    assert sample(metrics, "videochat_frames_sent_total") == 250
    assert sample(metrics, "videochat_frames_dropped_total") == 3
    assert sample(metrics, "videochat_frame_max_send_gap_seconds") == 0.12


async def test_sessions_report_their_turns_through_the_hook():
    metrics = Metrics()
    manager = SessionManager(fake_engines(), Config(), metrics)
    # What SessionManager.open does for every session it creates.
    session = Session(manager.engines, manager.config, on_turn_end=manager.metrics.observe_turn)
    try:
        session.attach(lambda event: None)
        session.start()
        session.handle_message({"type": "text", "text": "Tell me about France"})
        for _ in range(200):
            if session.turns:
                break
            await asyncio.sleep(0.05)
    finally:
        await session.close()
    assert session.turns
    assert sample(metrics, "videochat_turns_total", interrupted="no") == 1
    assert sample(metrics, "videochat_turn_first_audio_seconds_count") == 1
