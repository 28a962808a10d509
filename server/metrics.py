"""Prometheus metrics: per-turn stage latencies, sessions, turns, frames.

Each app owns its own registry (several apps in one process, as in the tests,
must not collide on the global default registry). `GET /metrics` answers
`Metrics.render()` in the Prometheus text format.

- `videochat_turn_stage_seconds{stage}`: seconds from the end of the user's
  speech to each mark of `Turn.latency()` (one histogram, labelled by stage
  only, to keep cardinality low); `barge_in_detected_after` is the user speech
  it took to notice a barge-in.
- `videochat_turn_first_audio_seconds`: the total, end of speech to the first
  reply audio sent.
- `videochat_active_sessions`, `videochat_turns_total{interrupted}`.
- `videochat_frames_{sent,dropped,late}_total`,
  `videochat_frame_max_gap_seconds` (frames released by the clock) and
  `videochat_frame_max_send_gap_seconds` (frames taken by aiortc's sender,
  which encodes and sends one before taking the next): read from each
  session's media clock at scrape time (live sessions plus closed ones).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from pipelines.events import Mark

STAGES = (
    Mark.ASR_FINAL,
    Mark.LLM_FIRST_TOKEN,
    Mark.FIRST_CLAUSE,
    Mark.TTS_FIRST_AUDIO,
    Mark.FIRST_AUDIO_SENT,
    "barge_in_detected_after",  # seconds of user speech, not a mark
)
BUCKETS = (0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.25, 1.5, 2.0, 2.5, 3.0, 4.0, 6.0, 10.0)
CONTENT_TYPE = CONTENT_TYPE_LATEST


class _ClockCollector(Collector):
    """Frame counters read from the sessions' media clocks on each scrape."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def collect(self) -> Iterable[Any]:
        sent, dropped, late = self.metrics.retired_frames()
        max_gap = self.metrics.retired_max_gap
        take_gap = self.metrics.retired_take_gap
        for session in self.metrics.live_sessions():
            clock = session.clock
            sent += int(clock.frames_sent)
            dropped += int(clock.dropped)
            late += int(clock.late_frames)
            max_gap = max(max_gap, float(clock.max_gap))
            take_gap = max(take_gap, float(clock.video_track.max_take_gap))
        yield CounterMetricFamily(
            "videochat_frames_sent", "Video frames released by the media clocks", value=sent
        )
        yield CounterMetricFamily(
            "videochat_frames_dropped",
            "Media frames dropped because a receiver did not keep up",
            value=dropped,
        )
        yield CounterMetricFamily(
            "videochat_frames_late",
            "Times a media clock fell more than a frame behind (CPU starved) and re-anchored",
            value=late,
        )
        yield GaugeMetricFamily(
            "videochat_frame_max_gap_seconds",
            "Longest gap between two released video frames, over all sessions so far",
            value=max_gap,
        )
        yield GaugeMetricFamily(
            "videochat_frame_max_send_gap_seconds",
            "Longest gap between two video frames taken by the WebRTC sender (it takes "
            "the next one after encoding and sending the last), over all sessions so far",
            value=take_gap,
        )


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.stage_seconds = Histogram(
            "videochat_turn_stage_seconds",
            "Seconds from the end of the user's speech to each stage of a turn",
            ["stage"],
            buckets=BUCKETS,
            registry=self.registry,
        )
        self.first_audio_seconds = Histogram(
            "videochat_turn_first_audio_seconds",
            "Seconds from the end of the user's speech to the first reply audio sent",
            buckets=BUCKETS,
            registry=self.registry,
        )
        self.active_sessions = Gauge(
            "videochat_active_sessions", "Live sessions", registry=self.registry
        )
        self.turns = Counter(
            "videochat_turns",
            "Finished turns",
            ["interrupted"],
            registry=self.registry,
        )
        for value in ("yes", "no"):
            self.turns.labels(interrupted=value)  # export both series from the start
        self._sessions: Callable[[], Iterable[Any]] = lambda: ()
        self._retired = [0, 0, 0]  # frames sent, dropped, late of closed sessions
        self.retired_max_gap = 0.0
        self.retired_take_gap = 0.0
        self._lock = threading.Lock()
        self.registry.register(_ClockCollector(self))
        self.capacity = Gauge(
            "videochat_capacity_sessions",
            "Conversations this machine holds in real time (from its calibration)",
            registry=self.registry,
        )
        self.calibration = Gauge(
            "videochat_calibration",
            "This machine's calibration: seconds (asr, tts fixed / per audio second), "
            "tokens/s (llm) or ms per frame (render, encode)",
            ["stage", "measure", "lang", "threads"],
            registry=self.registry,
        )

    # ------------------------------------------------------------ sessions
    def track_sessions(self, sessions: Callable[[], Iterable[Any]]) -> None:
        """Where the live sessions are, for the frame counters read on scrape."""
        self._sessions = sessions

    def live_sessions(self) -> list[Any]:
        return list(self._sessions())

    def retired_frames(self) -> list[int]:
        with self._lock:
            return list(self._retired)

    def session_opened(self, count: int) -> None:
        self.active_sessions.set(count)

    def session_closed(self, session: Any, count: int) -> None:
        """Keep a closed session's frame counts so the counters never go down."""
        clock = session.clock
        with self._lock:
            self._retired[0] += int(clock.frames_sent)
            self._retired[1] += int(clock.dropped)
            self._retired[2] += int(clock.late_frames)
            self.retired_max_gap = max(self.retired_max_gap, float(clock.max_gap))
            self.retired_take_gap = max(
                self.retired_take_gap, float(clock.video_track.max_take_gap)
            )
        self.active_sessions.set(count)

    def set_machine(self, machine: dict[str, Any]) -> None:
        """Export the calibration and the capacity planned from it."""
        cal, plan = machine["calibration"], machine["plan"]
        self.capacity.set(plan["capacity"])
        gauge = self.calibration
        gauge.labels("asr", "seconds", "en", "").set(cal["asr_s"])
        gauge.labels("render", "ms_per_frame", "", "1").set(cal["render_ms"])
        gauge.labels("encode", "ms_per_frame", "", "1").set(cal["encode_ms"])
        for threads, rates in cal["llm"].items():
            gauge.labels("llm", "prompt_tokens_per_s", "", threads).set(rates["prompt_tok_s"])
            gauge.labels("llm", "gen_tokens_per_s", "", threads).set(rates["gen_tok_s"])
        for lang, by_threads in cal["tts"].items():
            for threads, cost in by_threads.items():
                gauge.labels("tts", "fixed_seconds", lang, threads).set(cost["fixed_s"])
                gauge.labels("tts", "seconds_per_audio_second", lang, threads).set(
                    cost["per_audio_s"]
                )

    # --------------------------------------------------------------- turns
    def observe_turn(self, turn: Any) -> None:
        """`Session(on_turn_end=...)` hook: record one finished turn."""
        latency = turn.latency()
        for stage in STAGES:
            value = latency.get(stage)
            if value is not None and value >= 0:
                self.stage_seconds.labels(stage=stage).observe(value)
        total = latency.get("first_audio_sent")
        if total is not None and total >= 0:
            self.first_audio_seconds.observe(total)
        self.turns.labels(interrupted="yes" if turn.interrupted else "no").inc()

    # -------------------------------------------------------------- output
    def render(self) -> bytes:
        return generate_latest(self.registry)
