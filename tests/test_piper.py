"""Piper's English voice ``joe`` beside Kokoro: the backend on its real model
(weights/piper/, assembled by `videochat weights`), the router that serves
both backends' voices, its calibration, the listing and sample over HTTP, and
a session in that voice end to end (scripted ASR and LLM on virtual time,
real TTS). Nothing here asserts a time or a speed."""

from __future__ import annotations

import logging
import sys
import wave
from collections.abc import AsyncIterator, Iterator
from io import BytesIO
from pathlib import Path

import httpx
import numpy as np
import pytest
from scipy.signal import resample_poly

from core.config import ASRConfig, Config, TTSConfig
from models.base import BackendUnavailable, Speech, SpeechSynthesizer
from models.calibration import (
    Calibration,
    CPUFacts,
    LLMRates,
    TTSCost,
    measure_tts,
    more_tts_text,
)
from models.tts import load_synthesizer, load_voices
from models.tts.piper import PIPER_VOICE, PiperSynthesizer, UnsupportedLanguage
from models.tts.voices_router import VoicesRouter, voice_backend
from pipelines.planner import ReplyCosts, ReplyPlanner
from pipelines.timebase import VirtualTime
from server.app import create_app
from server.machine import plan_for
from tests.fakes import ScriptedASR, ScriptedLLM, ToneTTS, fake_engines, served
from tests.test_contracts import check_synthesizer, weights
from tests.test_session import make_session, of_type, speak, wait_until
from tests.test_voice_shift import median_f0

PIPER_RATE = 22_050
KOKORO_RATE = 24_000
SENTENCE = "The capital of France is Paris."
HELLO_ZH = "你好，很高兴见到你。"
API_KEY = "k-test"


def have_piper() -> bool:
    try:
        import piper  # noqa: F401
    except ImportError:
        return False
    return (weights() / "piper" / "en_US-joe-medium.onnx").is_file()


needs_piper = pytest.mark.skipif(
    not have_piper(), reason="piper-tts or weights/piper missing: install, `videochat weights`"
)


@pytest.fixture(scope="module")
def piper() -> PiperSynthesizer:
    if not have_piper():
        pytest.skip("piper-tts or weights/piper missing")
    return PiperSynthesizer.from_config(TTSConfig(), weights())


@pytest.fixture(scope="module")
def kokoro() -> SpeechSynthesizer:
    if not (weights() / "kokoro" / "kokoro-v1.0.int8.onnx").is_file():
        pytest.skip("weights/kokoro missing: run `videochat weights`")
    return load_synthesizer(TTSConfig(backend="kokoro"), weights())


@pytest.fixture(scope="module")
def router(kokoro: SpeechSynthesizer, piper: PiperSynthesizer) -> VoicesRouter:
    return VoicesRouter("kokoro", kokoro, {"piper": piper})


@pytest.fixture
async def clock() -> AsyncIterator[VirtualTime]:
    virtual = VirtualTime()
    yield virtual
    await virtual.aclose()


def transcribe(speech: Speech) -> str:
    from models.asr import load_recognizer

    if not (weights() / "whisper-base" / "model.bin").is_file():
        pytest.skip("weights/whisper-base missing: run `videochat weights`")
    asr = load_recognizer(ASRConfig(backend="faster-whisper"), weights())
    audio = resample_poly(speech.audio, 16_000, speech.sample_rate).astype(np.float32)
    return asr.transcribe(audio, "en").text


# ----------------------------------------------------------------- the backend
def test_piper_speaks_english_that_whisper_understands(piper: PiperSynthesizer) -> None:
    # A sentence long enough for Whisper base (it hears short ones badly, Kokoro's too).
    text = "The weather today is sunny and warm, so we can go for a walk in the park."
    speech = piper.synthesize(text, "en")
    assert speech.sample_rate == PIPER_RATE
    assert speech.audio.dtype == np.float32 and speech.audio.ndim == 1
    assert 0.05 < float(np.abs(speech.audio).max()) <= 1.0
    # Sixteen words: a plausible length for them at a speaking pace.
    assert 2.5 < speech.audio.size / speech.sample_rate < 8.0
    heard = transcribe(speech).lower()
    assert all(word in heard for word in ("weather", "sunny", "walk", "park")), heard


def test_piper_meets_the_tts_contract_and_streams_its_sentence(piper: PiperSynthesizer) -> None:
    chunks = check_synthesizer(piper, "Hello there, how are you?", "en")
    whole = piper.synthesize("Hello there, how are you?", "en")
    assert np.concatenate([c.audio for c in chunks]).size == whole.audio.size
    assert piper.voices() == [PIPER_VOICE, "joan"]


def test_joan_is_joe_at_a_womans_pitch_with_joes_timings(piper: PiperSynthesizer) -> None:
    text = "The weather today is sunny and warm, so we can go for a walk in the park."
    joe, joan = piper.synthesize(text, "en"), piper.synthesize(text, "en", voice="joan")
    pitch = {name: median_f0(s.audio, s.sample_rate) for name, s in (("joe", joe), ("joan", joan))}

    # The same length and mouth timings (durations have no noise), 1.5x the pitch.
    assert joan.audio.size == joe.audio.size and joan.phonemes == joe.phonemes
    assert 1.3 < pitch["joan"] / pitch["joe"] < 1.7
    assert pitch["joan"] > 180  # a woman's range; joe's is about 150 Hz
    heard = transcribe(joan).lower()
    assert all(word in heard for word in ("weather", "sunny", "walk", "park")), heard
    assert piper.describe_voice("joan") == {
        "langs": ["en"],
        "gender": "female",
        "description": "Piper joe, pitch and formants raised, fast",
        "backend": "piper",
    }
    with pytest.raises(ValueError, match="joe, joan"):
        piper.synthesize(text, "en", voice="jo")


def test_piper_times_the_mouth_over_the_whole_audio(piper: PiperSynthesizer) -> None:
    speech = piper.synthesize("Hello there. How are you today?", "en")
    duration = speech.audio.size / speech.sample_rate
    starts = [a for _, a, _ in speech.phonemes]
    assert piper.timed  # the graph's own durations, not the aligner's guess
    assert len(speech.phonemes) >= 15
    assert starts == sorted(starts)
    assert all(0 <= a < b <= duration + 1e-6 for _, a, b in speech.phonemes)
    # Both sentences are timed: the first phoneme early, the last near the end.
    assert starts[0] < 0.3 and speech.phonemes[-1][2] > duration - 0.6
    assert {p for p, _, _ in speech.phonemes} >= {"h", "ð", "j"}  # hello, there, you


def test_piper_refuses_chinese_and_skips_chinese_inside_english(piper: PiperSynthesizer) -> None:
    with pytest.raises(UnsupportedLanguage):
        piper.synthesize("你好。", "zh")
    plain = piper.synthesize("I like it a lot.", "en")
    mixed = piper.synthesize("I like 北京 it a lot.", "en")
    assert mixed.audio.size == pytest.approx(plain.audio.size, rel=0.25)
    assert piper.synthesize("。，", "en").audio.size == 0


def test_a_missing_piper_package_is_named(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setitem(sys.modules, "piper", None)  # import piper -> ImportError
    with pytest.raises(BackendUnavailable, match=r"pip install piper-tts==1\.8\.0"):
        load_synthesizer(TTSConfig(backend="piper"), tmp_path)


def test_missing_voice_files_name_videochat_weights(tmp_path: Path) -> None:
    if "piper" not in sys.modules and not have_piper():
        pytest.skip("piper-tts not installed")
    with pytest.raises(BackendUnavailable, match="videochat weights"):
        load_synthesizer(TTSConfig(backend="piper"), tmp_path)


def test_a_missing_optional_backend_leaves_the_primary_alone(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    import models.tts

    primary = ToneTTS()
    monkeypatch.setattr(models.tts, "load_synthesizer", lambda config, weights_dir: primary)
    monkeypatch.setitem(sys.modules, "piper", None)
    with caplog.at_level(logging.WARNING, logger="models.tts"):
        tts = load_voices(TTSConfig(more_backends=["piper"]), tmp_path)
    assert tts is primary
    left_out = [r.getMessage() for r in caplog.records if "left out" in r.getMessage()]
    assert len(left_out) == 1 and "pip install piper-tts==1.8.0" in left_out[0]


async def test_an_unknown_name_in_more_backends_is_refused_before_any_model_loads() -> None:
    from core.config import ConfigError
    from models.registry import load_engines

    config = Config()
    config.tts.more_backends = ["no-such-tts"]
    with pytest.raises(ConfigError, match="no-such-tts"):
        await load_engines(config)


# ------------------------------------------------------------------ the router
def test_the_router_lists_joe_and_routes_by_voice_and_language(
    router: VoicesRouter, kokoro: SpeechSynthesizer, caplog: pytest.LogCaptureFixture
) -> None:
    voices = router.voices()
    assert PIPER_VOICE in voices and "af_heart" in voices and "zf_xiaoxiao" in voices
    assert router.backend_of(PIPER_VOICE) == "piper" and router.backend_of("af_heart") == "kokoro"
    assert voice_backend(router, PIPER_VOICE) == "piper"
    assert voice_backend(router, "af_heart") is None and voice_backend(kokoro, "joe") is None
    assert router.describe_voice(PIPER_VOICE) == {
        "langs": ["en"],
        "gender": "male",
        "description": "Piper en_US joe (medium), fast",
        "backend": "piper",
    }
    assert router.describe_voice("af_heart") is None

    english = router.synthesize(SENTENCE, "en", voice=PIPER_VOICE)
    assert english.sample_rate == PIPER_RATE
    assert router.synthesize(SENTENCE, "en").sample_rate == KOKORO_RATE  # no voice: Kokoro's
    with caplog.at_level(logging.INFO, logger="models.tts.voices_router"):
        chinese = [router.synthesize(HELLO_ZH, "zh", voice=PIPER_VOICE) for _ in range(2)]
        streamed = list(router.stream(HELLO_ZH, "zh", voice=PIPER_VOICE))
    # Chinese in joe's voice is Kokoro's configured Chinese voice speaking.
    reference = kokoro.synthesize(HELLO_ZH, "zh", voice="zf_xiaoxiao")
    for speech in (*chinese, *streamed):
        assert speech.sample_rate == KOKORO_RATE
        assert speech.audio.size == reference.audio.size
    logged = [r for r in caplog.records if "does not speak zh" in r.getMessage()]
    assert len(logged) == 1  # once per voice and language


def test_the_router_meets_the_tts_contract(router: VoicesRouter) -> None:
    check_synthesizer(router, "Hello there, how are you?", "en")
    assert router.has_timings and not router.streams_audio
    with pytest.raises(ValueError):
        router.synthesize("Hello.", "en", voice="no-such-voice")


# ------------------------------------------------------- calibration, planning
def test_calibration_measures_piper_beside_the_primary(piper: PiperSynthesizer) -> None:
    router = VoicesRouter("kokoro", ToneTTS(delay=0.0), {"piper": piper})
    costs = measure_tts(router, runs=1)
    assert set(costs) == {"en", "zh"}
    assert set(costs["en"].more_backends) == {"piper"} and costs["zh"].more_backends == {}
    joe = costs["en"].more_backends["piper"]
    assert joe.fixed_s >= 0 and joe.per_audio_s > 0 and 8 < joe.chars_per_audio_s < 25
    # Stored and read back (weights/calibration.json); a cache from before has none.
    cal = calibration({lang: {"1": cost} for lang, cost in costs.items()})
    again = Calibration.from_dict(cal.to_dict())
    assert again.tts["en"]["1"].more_backends["piper"] == joe
    old = cal.to_dict()
    for by_threads in old["tts"].values():
        for cost in by_threads.values():
            del cost["more_backends"]
    assert Calibration.from_dict(old).tts["en"]["1"].more_backends == {}
    # The calibration paragraph names it (server/machine.py `describe`).
    assert more_tts_text(cal.tts) == (
        f"Piper (en) {joe.fixed_s:.2f} s per call + {joe.per_audio_s:.2f} s per s of audio"
    )
    assert more_tts_text(Calibration.from_dict(old).tts) == ""


def calibration(tts: dict[str, dict[str, TTSCost]]) -> Calibration:
    cpu = CPUFacts("test CPU", 2, ["avx2"], None, 8.0)
    return Calibration(cpu, 1.0, {"1": LLMRates(50.0, 10.0)}, tts, {"en": 0.25, "zh": 0.7}, 1, 1)


def slow_machine_with_piper() -> Calibration:
    piper = TTSCost(0.05, 0.08, 15.0)
    return calibration(
        {
            "en": {"1": TTSCost(0.45, 1.21, 14.0, {"piper": piper})},
            "zh": {"1": TTSCost(0.5, 1.3, 4.5)},
        }
    )


# ------------------------------------------------------------ HTTP and session
@pytest.fixture
def app_with_router(router: VoicesRouter, tmp_path: Path) -> Iterator[str]:
    config = Config()
    config.weights_dir = tmp_path  # the samples are cached here
    config.server.loopback_only = True
    config.server.api_key = API_KEY
    engines = fake_engines(ScriptedLLM({"France": SENTENCE}))
    engines.tts = router
    with served(create_app(config, engines)) as base:
        yield base


def test_the_voice_list_offers_joe_in_english_with_a_sample(app_with_router: str) -> None:
    listing = httpx.get(f"{app_with_router}/api/voices").json()
    joe = [v for v in listing["stock"]["en"] if v["name"] == PIPER_VOICE]
    assert joe == [
        {
            "name": "joe",
            "lang": "en",
            "sample": "/api/voices/joe/sample",
            "gender": "male",
            "description": "Piper en_US joe (medium), fast",
            "backend": "piper",
        }
    ]
    assert all(v["name"] != PIPER_VOICE for v in listing["stock"]["zh"])
    sample = httpx.get(f"{app_with_router}{joe[0]['sample']}", timeout=60)
    assert sample.status_code == 200
    with wave.open(BytesIO(sample.content)) as wav:
        assert wav.getframerate() == PIPER_RATE and wav.getnframes() > PIPER_RATE


def test_the_voice_list_says_which_voices_keep_up_on_this_machine(
    router: VoicesRouter, tmp_path: Path
) -> None:
    # A slow machine (docs/benchmarks.md: Kokoro's answers paused, joe's did
    # not): its calibration says so per voice, and the page reads it.
    plan = plan_for(slow_machine_with_piper(), Config())
    assert plan.voice_realtime["en"]["main"] < 1 <= plan.voice_realtime["en"]["piper"]
    assert set(plan.voice_realtime["zh"]) == {"main"}  # joe speaks no Chinese
    config = Config()
    config.weights_dir = tmp_path
    config.server.loopback_only = True
    engines = fake_engines(ScriptedLLM({"France": SENTENCE}))
    engines.tts = router
    app = create_app(config, engines)
    with served(app) as base:
        unplanned = httpx.get(f"{base}/api/voices").json()  # a server handed its models
        assert all("keeps_up" not in v for v in unplanned["stock"]["en"])
        app.state.machine = {"plan": plan.to_dict()}
        listing = httpx.get(f"{base}/api/voices").json()
    keeps_up = {v["name"]: v["keeps_up"] for v in listing["stock"]["en"]}
    assert keeps_up.pop(PIPER_VOICE) is True and keeps_up.pop("joan") is True
    assert keeps_up and not any(keeps_up.values())  # the main backend's voices
    assert all(v["keeps_up"] is False for v in listing["stock"]["zh"])


def test_a_session_can_be_minted_in_joes_voice(app_with_router: str) -> None:
    key = {"Authorization": f"Bearer {API_KEY}"}
    made = httpx.post(f"{app_with_router}/api/sessions", json={"voice": "joe"}, headers=key)
    assert made.status_code == 201, made.text
    bad = httpx.post(f"{app_with_router}/api/sessions", json={"voice": "jo"}, headers=key)
    assert bad.status_code == 400 and "jo" in bad.text


async def test_a_session_in_joes_voice_speaks_english_with_piper_and_plans_with_its_costs(
    clock: VirtualTime, router: VoicesRouter
) -> None:
    engines = fake_engines(
        llm=ScriptedLLM({"France": "Sure, the capital of France is Paris.", "你好": "你好！"}),
        asr=ScriptedASR({440: "What is the capital of France?", 880: "你好"}),
    )
    engines.tts = router
    planner = ReplyPlanner(ReplyCosts.from_calibration(slow_machine_with_piper()))
    session, events = make_session(engines, clock, voice=PIPER_VOICE, planner=planner)
    rates: list[tuple[str, int]] = []
    push_audio = session.avatar.push_audio

    def recording(audio, tag=None, speech=None, prepared=None):  # type: ignore[no-untyped-def]
        rates.append((tag, speech.sample_rate if speech is not None else 0))
        push_audio(audio, tag=tag, speech=speech, prepared=prepared)

    session.avatar.push_audio = recording  # type: ignore[method-assign]
    try:
        # Planned with Piper's English costs, Kokoro's Chinese ones.
        assert session.planner is planner.for_backend("piper") and session.planner is not planner
        assert session.planner.costs is not None
        assert session.planner.costs.tts_fixed_s == {"en": 0.05, "zh": 0.5}
        speak(session, 440)
        await wait_until(lambda: len(session.turns) == 1, clock, timeout=60)
        english = {rate for _, rate in rates}
        assert english == {PIPER_RATE}
        said = " ".join(e["text"] for e in of_type(events, "bot_text"))
        assert said == "Sure, the capital of France is Paris."
        assert all(p.played == p.samples > 0 for p in session.turns[0].pieces)
        rates.clear()
        speak(session, 880)
        await wait_until(lambda: len(session.turns) == 2, clock, timeout=60)
        assert {rate for _, rate in rates} == {KOKORO_RATE}  # joe's Chinese: Kokoro's voice
    finally:
        await session.close()


def test_openers_are_made_in_joes_voice_and_chinese_ones_are_the_default_voices(
    router: VoicesRouter,
) -> None:
    from models.registry import other_backend_voices, synthesize_openers

    texts = {"en": ["Sure,"], "zh": ["嗯，"]}
    default = synthesize_openers(texts, router)
    assert other_backend_voices(router) == [PIPER_VOICE, "joan"]
    in_joe = synthesize_openers(texts, router, voice=PIPER_VOICE, default=default)
    assert in_joe["en"][0].speech.sample_rate == PIPER_RATE  # Piper said it
    assert default["en"][0].speech.sample_rate == KOKORO_RATE
    assert in_joe["zh"] is default["zh"]  # joe's Chinese is Kokoro's Chinese voice
