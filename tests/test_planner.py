"""Calibration-driven planning: what a machine holds, and when a reply starts.

The machine figures below are the medians `videochat calibrate` measured on
two 2-core machines (docs/benchmarks.md); no test here times anything but
scripted models, so the results do not depend on this machine's speed.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator

import numpy as np
import pytest

from core.config import AUTO, Config, load_config
from models.base import MEDIA_SAMPLE_RATE, Speech
from models.calibration import Calibration, CPUFacts, LLMRates, OthersCPU, TTSCost
from pipelines.clock import SentFrame
from pipelines.planner import ReplyCosts, ReplyPlanner, ReplyProgress
from pipelines.timebase import VirtualTime
from server.machine import (
    apply_plan,
    cache_key,
    describe,
    load_cached,
    plan_for,
    tts_spot_check,
)
from tests.fakes import ScriptedLLM, ToneTTS, fake_engines
from tests.test_session import QUESTION_EN, make_session, speak, wait_until


def machine(kind: str, cores: int = 2) -> Calibration:
    """A fast (AVX-512) or slow (AVX2 only) machine's calibration (2 cores,
    as measured, unless said)."""
    fast = kind == "fast"
    flags = ["avx2", "fma", "f16c"] + (["avx512f", "avx512_vnni"] if fast else [])
    tts = {"fixed_s": 0.3, "per_audio_s": 0.3} if fast else {"fixed_s": 0.4, "per_audio_s": 1.01}
    return Calibration(
        cpu=CPUFacts("AMD EPYC", cores, flags, 2450.0, 23.5),
        asr_s=0.45 if fast else 0.93,
        llm={
            "1": LLMRates(40.0, 18.8) if fast else LLMRates(16.0, 6.6),
            "2": LLMRates(75.0, 28.0) if fast else LLMRates(36.0, 12.0),
        },
        tts={
            "en": {t: TTSCost(chars_per_audio_s=15.9, **tts) for t in ("1", "2")},
            "zh": {t: TTSCost(chars_per_audio_s=5.5, **tts) for t in ("1", "2")},
        },
        tokens_per_char={"en": 0.24, "zh": 0.55},
        render_ms=1.5 if fast else 6.1,
        encode_ms=2.4 if fast else 8.2,
    )


def yaml_config() -> Config:
    return load_config()  # configs/cpu.yaml: the tunable settings are "auto"


def test_a_much_cheaper_voice_of_another_backend_is_named_in_the_plan():
    cal = machine("slow")
    assert not any("Piper" in note for note in plan_for(cal, yaml_config()).notes)
    cal.tts["en"]["1"].more_backends["piper"] = TTSCost(0.01, 0.10, 15.9)
    plan = plan_for(cal, yaml_config())
    (note,) = [note for note in plan.notes if "Piper" in note]
    assert note.startswith("en: Piper's voices cost 0.10 s") and "'piper'" in note
    assert "Piper" in describe(cal, plan)  # the paragraph the log and /api/machine show


# ------------------------------------------------------------------ planning
def test_a_two_core_machine_holds_one_conversation_four_fast_cores_two():
    # Two conversations replying at once on a fast 2-core machine stalled for
    # seconds (docs/benchmarks.md): live, a reply costs twice its stages' sum.
    two_fast = plan_for(machine("fast"), yaml_config())
    assert two_fast.capacity == 1 and two_fast.realtime_factor >= 1
    assert two_fast.settings["llm.first_piece_max_words"] == 4
    fast = plan_for(machine("fast", cores=4), yaml_config())
    slow = plan_for(machine("slow"), yaml_config())
    assert fast.capacity == 2 and fast.realtime_factor >= 1
    assert slow.capacity == 1 and slow.realtime_factor < 1 and slow.notes
    assert fast.settings["server.max_sessions"] == 2
    # A KV-cache slot per conversation and a spare (each is RAM held from the start).
    assert fast.settings["llm.parallel_slots"] == 3 and slow.settings["llm.parallel_slots"] == 2
    # A short first piece and cutting pieces early only pay where TTS is fast.
    assert fast.settings["llm.first_piece_max_words"] == 4
    assert slow.settings["llm.first_piece_max_words"] == 0
    assert slow.settings["llm.cut_when_queued_audio_below_s"] == 0.0 or slow.realtime_factor
    # One conversation alone gets both cores for its prompt and for TTS.
    assert slow.settings["llm.batch_threads"] == 2 and slow.settings["tts.parallel_calls"] == 2
    faster_with_two = machine("slow")
    for by_threads in faster_with_two.tts.values():
        by_threads["2"] = TTSCost(0.38, 0.67, by_threads["1"].chars_per_audio_s)
    two = plan_for(faster_with_two, yaml_config()).settings
    assert two["tts.threads"] == 2 and two["tts.parallel_calls"] == 1
    assert two["llm.first_piece_max_words"] == 0  # a sentence still takes longer
    assert fast.settings["llm.batch_threads"] == 1 and fast.settings["tts.parallel_calls"] == 1
    assert fast.settings["llm.nice"] == 10 and slow.settings["llm.nice"] == 0


class TimedTTS(ToneTTS):
    """A tone whose every call takes ``fixed + per_audio x audio`` seconds."""

    def __init__(self, fixed: float, per_audio: float) -> None:
        super().__init__(delay=0.0, seconds_per_char=0.06)
        self.fixed, self.per_audio = fixed, per_audio

    def synthesize(self, text, lang, voice=None):
        speech = super().synthesize(text, lang, voice)
        time.sleep(self.fixed + self.per_audio * speech.audio.size / speech.sample_rate)
        return speech


@pytest.mark.parametrize("slower", [1.0, 2.0])
def test_the_start_up_spot_check_compares_todays_tts_with_the_calibration(slower):
    cal = machine("fast")  # 0.3 s per call + 0.3 s per second of audio
    check = tts_spot_check(TimedTTS(0.3 * slower, 0.3 * slower), cal, tts_threads=1)
    assert check.ratio == pytest.approx(slower, rel=0.15)
    text = check.describe()
    assert ("slower than when it was calibrated" in text) is (slower > 1)
    assert "as calibrated" in text or slower > 1
    assert set(check.to_dict()) == {"measured_s", "predicted_s", "ratio"}


def test_the_planner_expects_short_replies_where_they_are_capped():
    costs = ReplyCosts.from_calibration(machine("slow"))
    capped = ReplyPlanner(costs, max_reply_audio_s=2.0)
    assert capped.reply_chars["en"] == pytest.approx(4.0 * 15.9)
    assert capped.reply_chars["zh"] == pytest.approx(4.0 * 5.5)
    assert ReplyPlanner(costs).reply_chars == {"en": 110.0, "zh": 40.0}


def test_the_first_token_limit_follows_the_prompt_rate():
    config = yaml_config()
    config.llm.first_token_timeout_s = AUTO
    fast = plan_for(machine("fast"), config).settings["llm.first_token_timeout_s"]
    slow = plan_for(machine("slow"), config).settings["llm.first_token_timeout_s"]
    # A slow machine's longest uncached prompt takes longer: a later limit.
    assert 15 <= fast < slow <= 60
    config.llm.first_token_timeout_s = 12.0
    assert plan_for(machine("slow"), config).pinned["llm.first_token_timeout_s"] == 12.0


def test_pinned_settings_are_kept():
    config = yaml_config()
    config.server.max_sessions = 3
    config.llm.batch_threads = 1
    plan = plan_for(machine("slow"), config)
    assert plan.pinned == {"server.max_sessions": 3, "llm.batch_threads": 1}
    apply_plan(config, plan)
    assert config.server.max_sessions == 3 and config.llm.batch_threads == 1
    assert config.tts.parallel_calls == 2  # still planned (2-thread calls do not pay here)


def test_without_a_plan_auto_becomes_the_built_in_default():
    config = yaml_config()
    assert config.server.max_sessions == AUTO
    apply_plan(config, None)
    assert config.server.max_sessions == 4 and config.llm.threads == 1


def test_calibration_cache_round_trip(tmp_path, monkeypatch):
    config = yaml_config()
    config.weights_dir = tmp_path
    cal = machine("slow")
    monkeypatch.setattr("server.machine.cpu_facts", lambda: cal.cpu)
    assert load_cached(config) is None
    from server.machine import _store

    _store(config, cal)
    again = load_cached(config)
    assert again is not None and again.to_dict() == cal.to_dict()
    # Another model set is another key: nothing cached for it.
    config.llm.model_file = "other.gguf"
    assert cache_key(cal.cpu, config) != cache_key(cal.cpu, yaml_config())
    assert load_cached(config) is None


def test_unreadable_cache_is_ignored(tmp_path):
    config = yaml_config()
    config.weights_dir = tmp_path
    (tmp_path / "calibration.json").write_text("{not json")
    assert load_cached(config) is None


# ---------------------------------------------------------------- the gate
def slow_planner() -> ReplyPlanner:
    return ReplyPlanner(ReplyCosts.from_calibration(machine("slow"), parallel_calls=2))


def test_on_a_slow_machine_the_answer_waits_for_enough_audio():
    planner = slow_planner()
    reply = ReplyProgress("en", written_chars=31, synthesized_chars=31, pending_pieces=0)
    # "The capital of France is Paris." is ready (2 s), the LLM writes on.
    assert not planner.may_start(reply, buffered_audio_s=2.0)
    reply.written_chars = 80
    reply.pending_pieces = 1
    reply.generation_done = True
    assert not planner.may_start(reply, buffered_audio_s=2.0)
    assert planner.may_start(reply, buffered_audio_s=4.0)
    reply.synthesized_chars = 80
    assert planner.may_start(reply, buffered_audio_s=5.0)  # all made


def test_on_a_fast_machine_the_first_piece_starts_at_once():
    planner = ReplyPlanner(ReplyCosts.from_calibration(machine("fast")))
    reply = ReplyProgress("en", written_chars=25, synthesized_chars=25)
    assert planner.may_start(reply, buffered_audio_s=1.5)


def test_without_calibration_everything_starts_at_once():
    planner = ReplyPlanner.immediate()
    assert planner.may_start(ReplyProgress("en", written_chars=500), 0.0)
    assert not planner.merges("en")


def test_merging_follows_the_fixed_cost_and_learns_the_load():
    planner = ReplyPlanner(ReplyCosts.from_calibration(machine("fast")))
    assert not planner.merges("en")
    for _ in range(10):  # TTS calls take 3x what calibration said: a busy machine
        planner.observe_synthesis(40, "en", 3 * planner.synth_seconds(40, "en"))
    assert planner.slowdown > 2
    assert planner.merges("en")


# ------------------------------------------- a slow TTS through the session
class SlowTTS(ToneTTS):
    """Slower than real time: 0.1 s per call plus 3 s per second of audio."""

    def synthesize(self, text: str, lang: str, voice: str | None = None) -> Speech:
        speech = super().synthesize(text, lang, voice)
        self.time.block(0.1 + 3.0 * speech.audio.size / speech.sample_rate)
        return speech


SLOW_REPLY = "One two three four five six. Seven eight nine ten eleven. Twelve thirteen fourteen."


def slow_tts_planner(seconds_per_char: float) -> ReplyPlanner:
    return ReplyPlanner(
        ReplyCosts(
            tts_fixed_s={"en": 0.1},
            tts_per_audio_s={"en": 3.0},
            chars_per_audio_s={"en": 1 / seconds_per_char},
            tokens_per_char={"en": 0.25},
            gen_tok_s=100.0,
            parallel_calls=2,
        ),
        reply_chars={"en": float(len(SLOW_REPLY))},
    )


@pytest.fixture
async def clock() -> AsyncIterator[VirtualTime]:
    virtual = VirtualTime()  # the session runs on virtual time, as in test_session.py
    yield virtual
    await virtual.aclose()


class LoudFrames:
    """Listens to a media clock: the release times of frames with reply audio."""

    def __init__(self) -> None:
        self.times: list[float] = []

    def frame_sent(self, sent: SentFrame) -> None:
        if np.abs(sent.frame.audio).max(initial=0) > 0:
            self.times.append(sent.at)


async def longest_silence_in_reply(planned: bool, clock: VirtualTime) -> float:
    per_char = 0.012
    engines = fake_engines(
        llm=ScriptedLLM({"France": SLOW_REPLY}, token_delay=0.005),
        tts=SlowTTS(delay=0, seconds_per_char=per_char),
    )
    planner = slow_tts_planner(per_char) if planned else None
    session, _ = make_session(engines, clock, planner=planner)
    session.config.tts.parallel_calls = 2
    session.config.llm.cut_when_queued_audio_below_s = 0
    loud = LoudFrames()
    session.clock.subscribe(loud)
    try:
        speak(session, QUESTION_EN)
        await wait_until(lambda: len(session.turns) == 1, clock, timeout=30)
    finally:
        await session.close()
    assert loud.times, "no reply audio"
    assert session.turns[0].heard_text.replace(".", "") == SLOW_REPLY.replace(".", "")
    gaps = np.diff(loud.times)
    return float(gaps.max(initial=0.0))


@pytest.mark.parametrize("planned", [False, True])
async def test_a_planned_reply_never_stalls_once_started(planned, clock):
    """TTS slower than real time: spoken piece by piece, the reply falls
    silent between pieces; planned, it starts later and plays through."""
    silence = await longest_silence_in_reply(planned, clock)
    frame = 1920 / MEDIA_SAMPLE_RATE
    if planned:
        assert silence <= 0.3 + frame
    else:
        assert silence > 0.5


def test_the_llm_writing_rate_is_learnt():
    planner = slow_planner()
    before = planner.writing_seconds(100, "en")
    for _ in range(10):  # the LLM writes 2x slower than calibrated (media share its core)
        planner.observe_writing(100, "en", 2 * before)
    assert 1.8 < planner.writing_slowdown < 2.1
    planner.observe_writing(5, "en", 100.0)  # too short to tell: ignored
    assert planner.writing_slowdown < 2.1


async def test_a_long_answer_starts_after_at_most_the_hold_limit(clock):
    """A planner that would wait for the whole reply (it expects far more
    text than comes in time): the answer starts max_answer_hold_s after its
    first piece is ready, not when everything is made."""
    per_char = 0.012
    engines = fake_engines(
        llm=ScriptedLLM({"France": SLOW_REPLY}, token_delay=0.3),  # slow writing
        tts=SlowTTS(delay=0, seconds_per_char=per_char),
    )
    planner = slow_tts_planner(per_char)
    planner.reply_chars["en"] = 10_000.0  # it expects a very long reply
    session, _ = make_session(engines, clock, planner=planner)
    session.config.llm.max_answer_hold_s = 0.5
    try:
        speak(session, QUESTION_EN)
        await wait_until(lambda: len(session.turns) == 1, clock, timeout=30)
    finally:
        await session.close()
    latency = session.turns[0].latency()
    assert latency["answer_audio_sent"] < latency["llm_done"]  # started before all was written


def test_the_answer_lag_is_learnt_per_language():
    planner = ReplyPlanner.immediate()
    planner.answer_lag_s = 0.5
    for _ in range(20):
        planner.observe_answer_lag(1.5, "zh")
    assert planner.answer_lag("zh") == pytest.approx(1.5, abs=0.01)
    assert planner.answer_lag("en") == 0.5  # an English reply is not slowed by Chinese ones
    planner.observe_answer_lag(0.8, "en")
    assert 0.5 < planner.answer_lag("en") < 0.8


# ------------------------------------------------- a voice of another backend
def slow_machine_with_piper(threads: tuple[str, ...] = ("1", "2")) -> Calibration:
    """The slow machine, its Kokoro English measured beside Piper's (measured
    there: 0.05 s per call, 0.08 s per second of audio)."""
    cal = machine("slow")
    for t in threads:
        cal.tts["en"][t].more_backends["piper"] = TTSCost(0.05, 0.08, 14.8)
    return cal


def test_a_piper_voice_is_planned_with_piper_costs_in_english_only():
    planner = ReplyPlanner(ReplyCosts.from_calibration(slow_machine_with_piper(), parallel_calls=2))
    joe = planner.for_backend("piper")
    assert joe is not planner and planner.for_backend("piper") is joe  # one per backend
    assert planner.for_backend(None) is planner
    assert joe.costs is not None and planner.costs is not None
    assert joe.costs.tts_fixed_s == {"en": 0.05, "zh": 0.4}  # Chinese: Kokoro speaks it
    assert joe.costs.tts_per_audio_s == {"en": 0.08, "zh": 1.01}
    assert joe.costs.parallel_calls == 2
    # Kokoro at 1.01 s per second of audio holds the answer back; Piper does not.
    reply = ReplyProgress("en", written_chars=31, synthesized_chars=31, pending_pieces=0)
    assert not planner.may_start(reply, buffered_audio_s=2.0)
    assert joe.may_start(reply, buffered_audio_s=2.0)
    assert not joe.merges("en")
    assert joe.predicted_answer_lag("en") < planner.predicted_answer_lag("en")
    # What it learns of the TTS is its own.
    joe.observe_synthesis(31, "en", 5.0)
    assert joe.slowdown > 1 and planner.slowdown == 1


def test_a_backend_not_calibrated_is_planned_with_the_primary_costs(caplog):
    planner = ReplyPlanner(ReplyCosts.from_calibration(machine("slow")))  # an older cache
    with caplog.at_level("WARNING", logger="pipelines.planner"):
        assert planner.for_backend("piper") is planner
        assert planner.for_backend("piper") is planner
    assert len([r for r in caplog.records if "calibrate --force" in r.getMessage()]) == 1
    assert ReplyPlanner.immediate().for_backend("piper").costs is None


def test_a_busy_machine_is_said_in_the_summary():
    cal = machine("slow")
    plan = plan_for(cal, yaml_config())
    assert "Other programs" not in describe(cal, plan)
    cal.others_cpu_share = 0.4
    assert "Other programs used 40% of the CPU" in describe(cal, plan)
    assert Calibration.from_dict(cal.to_dict()).others_cpu_share == 0.4


def test_the_cpu_other_programs_use_is_measured():
    others = OthersCPU()
    # Another program spinning one core for a while (not yet reaped, so not
    # this process's child time): at least a fifth of a 2-core machine.
    spin = "import time\nend = time.time() + 0.8\nwhile time.time() < end: pass"
    spinner = subprocess.Popen([sys.executable, "-c", spin])
    time.sleep(0.9)
    share = others.share()
    spinner.wait()
    assert share >= 0.2 / max(1, (os.cpu_count() or 1) / 2)
