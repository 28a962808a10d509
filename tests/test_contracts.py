"""Every registered backend against its stage's contract (models/base.py).

Backends whose package and weights are here (Silero, Whisper, Kokoro, the
embedded llama.cpp, the photo avatar) run for real, the heavy ones loaded once
per module. The others (FunASR, CosyVoice, edge-tts, GPT-SoVITS's api_v2 server, an
OpenAI-compatible endpoint such as vLLM) run against fakes of their upstream
modules with the upstream call signatures (tests/upstream_fakes.py), so our
side of each call is checked; MuseTalk runs its real code on tiny random networks on the
CPU (tests/test_musetalk.py, skipped without torch). A backend with no
case here fails ``test_every_registered_backend_has_a_contract_case``.
"""

from __future__ import annotations

import asyncio
import wave
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from core.config import (
    ASRConfig,
    AvatarConfig,
    ConfigError,
    LLMConfig,
    S2SConfig,
    TTSConfig,
    VADConfig,
)
from models import backends
from models.base import (
    MEDIA_SAMPLE_RATE,
    SAMPLES_PER_VIDEO_FRAME,
    AvatarModel,
    ChatModel,
    Speech,
    SpeechConversation,
    SpeechRecognizer,
    SpeechSynthesizer,
    SpeechToSpeech,
    TextDelta,
    Transcript,
    VADModel,
)
from tests.test_glm4voice import (  # noqa: F401 - fixtures of the glm-4-voice case
    glm4voice,
    tiny_server,
    tiny_weights,
    upstream_modules,
)
from tests.upstream_fakes import (
    FakeCommunicate,
    FakeGPTSoVITSServer,
    install_cosyvoice,
    install_edge_tts,
    install_funasr,
    install_openai,
    write_user_voice,
)

FIXTURES = Path(__file__).resolve().parent / "fixtures"
SR = 16_000


def read_wav(name: str) -> np.ndarray:
    with wave.open(str(FIXTURES / name), "rb") as wav:
        pcm = np.frombuffer(wav.readframes(wav.getnframes()), dtype="<i2")
    return pcm.astype(np.float32) / 32768.0


def weights() -> Path:
    from core.config import load_config

    return load_config().weights_path


# ------------------------------------------------------------ what is checked
def check_vad(model: VADModel) -> None:
    frames = read_wav("question_en.wav")[: 40 * 512]
    detector = model.new_detector()
    n = detector.frame_samples
    assert n > 0
    frames = frames[: frames.size // n * n].reshape(-1, n)
    alone = [detector.speech_probability(f) for f in frames]
    assert all(0.0 <= p <= 1.0 for p in alone) and max(alone) > 0.5
    assert model.new_detector().speech_probability(np.zeros(n, np.float32)) < 0.5
    detector.reset()
    other = model.new_detector()  # detectors are independent
    again = []
    for f in frames:
        again.append(detector.speech_probability(f))
        other.speech_probability(np.zeros(n, np.float32))
    assert again == pytest.approx(alone, abs=1e-6)


def check_recognizer(asr: SpeechRecognizer, audio: np.ndarray, expect: str) -> list[str]:
    """The batch call, then the same audio streamed in 20 ms chunks; returns the partials."""
    assert asr.transcribe(np.zeros(0, np.float32)).text == ""
    batch = asr.transcribe(audio)
    assert isinstance(batch, Transcript) and batch.language in ("en", "zh")
    assert expect in batch.text.lower(), batch.text
    stream = asr.new_stream()
    partials = [p for i in range(0, audio.size, 320) if (p := stream.feed(audio[i : i + 320]))]
    assert stream.finish() == batch
    with pytest.raises(RuntimeError):
        stream.feed(audio[:320])
    if asr.streams_partials:
        assert partials and all(isinstance(p, str) and p for p in partials)
    else:
        assert partials == []
    pcm = asr.new_stream(batch.language)  # int16 PCM, the language forced
    pcm.feed((audio * 32767).astype(np.int16))
    assert pcm.finish().text == batch.text
    return partials


def check_synthesizer(tts: SpeechSynthesizer, text: str, lang: str) -> list[Speech]:
    voices = tts.voices()
    assert voices and all(isinstance(v, str) for v in voices)
    whole = tts.synthesize(text, lang)
    assert whole.sample_rate > 0 and whole.audio.dtype == np.float32 and whole.audio.ndim == 1
    assert 0.01 < float(np.abs(whole.audio).max()) <= 1.0
    chunks = list(tts.stream(text, lang))
    assert chunks and all(c.sample_rate == whole.sample_rate for c in chunks)
    assert all(c.audio.dtype == np.float32 and c.audio.ndim == 1 for c in chunks)
    assert np.concatenate([c.audio for c in chunks]).size == whole.audio.size
    if tts.streams_audio:
        assert len(chunks) > 1
    if tts.has_timings:  # timings from each chunk's start; a chunk may have none (a pause)
        assert any(chunk.phonemes for chunk in chunks)
        for chunk in chunks:
            duration = chunk.audio.size / chunk.sample_rate
            assert all(0 <= a < b <= duration + 0.03 for _, a, b in chunk.phonemes)
    early = tts.stream(text, lang)  # a reader that stops early (barge-in) frees the backend
    next(early)
    early.close()
    assert tts.synthesize("", lang).audio.size == 0
    with pytest.raises(ValueError):
        tts.synthesize(text, lang, voice="no-such-voice")
    return chunks


async def check_chat(llm: ChatModel) -> None:
    await llm.start()
    try:
        assert isinstance(llm.supports_prefill, bool)
        messages = [
            {"role": "system", "content": "Answer in one word."},
            {"role": "user", "content": "What colour is the sky?"},
        ]
        deltas = [d async for d in llm.stream_chat(messages, conversation="contract")]
        assert deltas and all(isinstance(d, str) and d for d in deltas)
        reply = llm.stream_chat(messages, conversation="contract")
        assert await anext(reply)
        await reply.aclose()  # stops generation
        llm.release("contract")
    finally:
        await llm.close()


def check_avatar(model: AvatarModel, size: int) -> None:
    assert model.avatars() and all(isinstance(name, str) for name in model.avatars())
    stream = model.new_stream()
    idle = stream.next_frame()  # nothing said: a picture with silence
    assert idle.image.shape == (size, size, 3) and idle.image.dtype == np.uint8
    assert idle.audio.shape == (SAMPLES_PER_VIDEO_FRAME,) and idle.audio.dtype == np.int16
    assert not idle.audio.any() and idle.played == [] and not idle.speaking
    # Two reply pieces, neither a whole number of frames; the second prepared
    # off the loop as the pipeline does.
    t = np.arange(int(0.5 * MEDIA_SAMPLE_RATE)) / MEDIA_SAMPLE_RATE
    voice = 0.3 * np.sin(2 * np.pi * 220 * t) * (1 + 0.3 * np.sin(2 * np.pi * 5 * t))
    first, second = voice[:14_500].astype(np.float32), voice[14_500:].astype(np.float32)
    stream.push_audio(first, tag="first")
    stream.push_audio(second, tag="second", prepared=stream.prepare(second))
    stream.end_of_segment()
    assert stream.queued_samples == voice.size
    frames = [stream.next_frame() for _ in range(-(-voice.size // SAMPLES_PER_VIDEO_FRAME))]
    assert all(f.image.shape == (size, size, 3) and f.image.dtype == np.uint8 for f in frames)
    assert all(f.audio.shape == (SAMPLES_PER_VIDEO_FRAME,) for f in frames)
    assert frames[0].speaking and stream.queued_samples == 0
    played = np.concatenate([f.audio for f in frames])
    expected = np.rint(np.clip(np.concatenate([first, second]), -1, 1) * 32767).astype(np.int16)
    assert np.array_equal(played[: voice.size], expected)  # the audio it was given, in order
    assert not played[voice.size :].any()  # then silence
    counted: dict[str, int] = {}
    for frame in frames:
        assert sum(n for _, n in frame.played) <= SAMPLES_PER_VIDEO_FRAME
        for tag, samples in frame.played:
            counted[tag] = counted.get(tag, 0) + samples
    assert counted == {"first": first.size, "second": second.size}
    assert not stream.next_frame().speaking  # the reply ended
    # Barge-in: clear() drops the queue at once and the next frame is silent.
    stream.push_audio(voice, tag="cut")
    assert stream.next_frame().played == [("cut", SAMPLES_PER_VIDEO_FRAME)]
    stream.clear()
    assert stream.queued_samples == 0
    after = stream.next_frame()
    assert not after.audio.any() and after.played == [] and not after.speaking
    assert after.image.shape == (size, size, 3)
    # The session ends: close() leaves nothing queued.
    stream.push_audio(voice, tag="late")
    stream.close()
    assert stream.queued_samples == 0


# ------------------------------------------------------------- real backends
@pytest.fixture(scope="module")
def silero() -> VADModel:
    from models.vad import load_vad

    return load_vad(VADConfig(backend="silero"))


@pytest.fixture(scope="module")
def whisper() -> SpeechRecognizer:
    from models.asr import load_recognizer

    if not (weights() / "whisper-base" / "model.bin").is_file():
        pytest.skip("weights/whisper-base missing: run `videochat weights`")
    return load_recognizer(ASRConfig(backend="faster-whisper"), weights())


@pytest.fixture(scope="module")
def kokoro() -> SpeechSynthesizer:
    from models.tts import load_synthesizer

    if not (weights() / "kokoro" / "kokoro-v1.0.int8.onnx").is_file():
        pytest.skip("weights/kokoro missing: run `videochat weights`")
    return load_synthesizer(TTSConfig(backend="kokoro"), weights())


@pytest.fixture(scope="module")
def piper_tts() -> SpeechSynthesizer:
    from models.tts import load_synthesizer

    pytest.importorskip("piper", reason="piper-tts missing: `pip install piper-tts==1.8.0`")
    if not (weights() / "piper" / "en_US-joe-medium.onnx").is_file():
        pytest.skip("weights/piper missing: run `videochat weights`")
    return load_synthesizer(TTSConfig(backend="piper"), weights())


def embedded_llm() -> ChatModel:
    from models.llm import load_chat_model

    config = LLMConfig(backend="embedded", parallel_slots=1, context_tokens=512, max_tokens=4)
    if not (weights() / config.model_file).is_file():
        pytest.skip(f"weights/{config.model_file} missing: run `videochat weights`")
    return load_chat_model(config, weights())


AVATAR_SIZE = 160  # small: the contract, not the looks


def avatar(tmp_path: Path, name: str) -> AvatarModel:
    from models.avatar import load_avatar

    # An empty weights dir: the built-in astronaut, the default avatar.
    return load_avatar(AvatarConfig(backend=name, size=AVATAR_SIZE), tmp_path)


def musetalk_tiny(tmp_path: Path) -> AvatarModel:
    """MuseTalk on tiny random networks in the real weights layout, on the CPU."""
    from tests.test_musetalk import tiny_model

    return tiny_model(tmp_path, size=AVATAR_SIZE)  # type: ignore[no-any-return]


# ------------------------------------- optional backends on upstream fakes
@pytest.fixture
def funasr_modules(monkeypatch: pytest.MonkeyPatch) -> None:
    install_funasr(monkeypatch)


def funasr(tmp_path: Path, model: str) -> SpeechRecognizer:
    from models.asr import load_recognizer

    (tmp_path / "funasr" / model).mkdir(parents=True, exist_ok=True)
    return load_recognizer(ASRConfig(backend="funasr", model=model), tmp_path)


@pytest.fixture
def cosyvoice(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> SpeechSynthesizer:
    from models.tts import load_synthesizer

    install_cosyvoice(monkeypatch)
    model_dir = tmp_path / "cosyvoice" / "CosyVoice2-0.5B"
    model_dir.mkdir(parents=True)
    (model_dir / "cosyvoice2.yaml").write_text("{}", encoding="utf-8")
    return load_synthesizer(TTSConfig(backend="cosyvoice"), tmp_path)


@pytest.fixture
def gpt_sovits(tmp_path: Path) -> Iterator[SpeechSynthesizer]:
    from models.tts import load_synthesizer

    write_user_voice(tmp_path, "alice", seconds=4.0, lang="en", transcript="Hello, I am Alice.")
    with FakeGPTSoVITSServer() as server:
        tts = load_synthesizer(TTSConfig(backend="gpt-sovits", base_url=server.url), tmp_path)
        yield tts
        tts.close()  # type: ignore[attr-defined]


@pytest.fixture
def edge_tts(monkeypatch: pytest.MonkeyPatch) -> Iterator[SpeechSynthesizer]:
    from models.tts import load_synthesizer

    install_edge_tts(monkeypatch)
    tts = load_synthesizer(TTSConfig(backend="edge-tts"), Path("."))
    yield tts
    tts.close()  # type: ignore[attr-defined]


def openai_llm(monkeypatch: pytest.MonkeyPatch) -> ChatModel:
    from models.llm import load_chat_model

    install_openai(monkeypatch)
    config = LLMConfig(backend="openai", base_url="http://127.0.0.1:9/v1")
    return load_chat_model(config, Path("."))


# ------------------------------------------------------------------- the cases
# Every registered backend, by stage, and how its contract case gets one.
CASES: dict[str, dict[str, Callable[[pytest.FixtureRequest, Path], Any]]] = {
    "vad": {
        "silero": lambda request, tmp: request.getfixturevalue("silero"),
        "energy": lambda request, tmp: load_vad(VADConfig(backend="energy")),
    },
    "asr": {
        "faster-whisper": lambda request, tmp: request.getfixturevalue("whisper"),
        "funasr": lambda request, tmp: (
            request.getfixturevalue("funasr_modules"),
            funasr(tmp, "paraformer-zh-streaming"),
        )[1],
    },
    "llm": {
        "embedded": lambda request, tmp: embedded_llm(),
        "openai": lambda request, tmp: openai_llm(request.getfixturevalue("monkeypatch")),
    },
    "tts": {
        "kokoro": lambda request, tmp: request.getfixturevalue("kokoro"),
        "edge-tts": lambda request, tmp: request.getfixturevalue("edge_tts"),
        "cosyvoice": lambda request, tmp: request.getfixturevalue("cosyvoice"),
        "gpt-sovits": lambda request, tmp: request.getfixturevalue("gpt_sovits"),
        "piper": lambda request, tmp: request.getfixturevalue("piper_tts"),
    },
    # GLM-4-Voice on tiny random models (tests/test_glm4voice.py; skipped without torch).
    "s2s": {"glm-4-voice": lambda request, tmp: request.getfixturevalue("glm4voice")},
    "avatar": {
        "photo": lambda request, tmp: avatar(tmp, "photo"),
        "musetalk": lambda request, tmp: musetalk_tiny(tmp),
    },
}


def test_every_registered_backend_has_a_contract_case() -> None:
    for stage, cases in CASES.items():
        assert backends.backend_names(stage) == sorted(cases), stage  # type: ignore[arg-type]


@pytest.mark.parametrize("name", backends.backend_names("vad"))
def test_vad_contract(name: str, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    check_vad(CASES["vad"][name](request, tmp_path))


ASR_INPUT = {"faster-whisper": ("question_en.wav", "france"), "funasr": (None, "今天天气")}


@pytest.mark.parametrize("name", backends.backend_names("asr"))
def test_asr_contract(name: str, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    wav, expect = ASR_INPUT[name]
    audio = read_wav(wav) if wav else np.full(int(2.5 * SR), 0.1, np.float32)
    check_recognizer(CASES["asr"][name](request, tmp_path), audio, expect)


@pytest.mark.parametrize("name", backends.backend_names("tts"))
def test_tts_contract(name: str, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    tts = CASES["tts"][name](request, tmp_path)
    check_synthesizer(tts, "Hello there, how are you?", "en")


@pytest.mark.parametrize("name", backends.backend_names("llm"))
async def test_llm_contract(name: str, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    await check_chat(CASES["llm"][name](request, tmp_path))


@pytest.mark.parametrize("name", backends.backend_names("avatar"))
def test_avatar_contract(name: str, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    model = CASES["avatar"][name](request, tmp_path)
    try:
        check_avatar(model, AVATAR_SIZE)
    finally:
        close = getattr(model, "close", None)  # musetalk: its worker thread
        if callable(close):
            close()


def test_an_unknown_avatar_backend_is_refused_with_the_registered_ones() -> None:
    from core.config import load_config

    config = load_config(**{"avatar.backend": "wav2lip"})  # a plain string in core/
    with pytest.raises(ConfigError) as refused:
        backends.check_backends(config)
    assert "avatar.backend: unknown backend 'wav2lip' (known here: musetalk, photo)" in str(
        refused.value
    )


def load_vad(config: VADConfig) -> VADModel:
    from models.vad import load_vad as load

    return load(config)


# ------------------------------------------------- backend-specific behaviour
def test_funasr_streams_600_ms_chunks_as_upstream_does(tmp_path: Path, funasr_modules: None):
    asr = funasr(tmp_path, "paraformer-zh-streaming")
    model = asr._model  # type: ignore[attr-defined]
    audio = np.full(int(2.5 * SR), 0.1, np.float32)
    stream = asr.new_stream("zh")
    partials = [stream.feed(audio[i : i + 4000]) for i in range(0, audio.size, 4000)]
    final = stream.finish()
    # The upstream example: 600 ms slices, the last one (shorter) final, one cache.
    assert [c["samples"] for c in model.calls] == [9600] * 4 + [1600]
    assert [c["is_final"] for c in model.calls] == [False] * 4 + [True]
    assert all(c["chunk_size"] == [0, 10, 5] for c in model.calls)
    assert {(c["encoder_chunk_look_back"], c["decoder_chunk_look_back"]) for c in model.calls} == {
        (4, 1)
    }
    assert len({id(c["cache"]) for c in model.calls}) == 1
    assert [p for p in partials if p] == ["今天", "今天天气", "今天天气怎么样", "今天天气怎么样啊"]
    assert final == Transcript("今天天气怎么样啊今天", "zh")
    other = asr.new_stream()  # each utterance starts from an empty cache
    other.feed(audio[:12_000])
    assert model.calls[-1]["cache"] == {"steps": 1}


def test_funasr_sensevoice_is_a_batch_backend(tmp_path: Path, funasr_modules: None) -> None:
    asr = funasr(tmp_path, "SenseVoiceSmall")
    assert not asr.streams_partials
    check_recognizer(asr, np.full(SR, 0.1, np.float32), "今天天气")


def test_edge_tts_streams_on_one_loop_with_bounded_waits(edge_tts: Any) -> None:
    chunks = [list(edge_tts.stream(text, "en")) for text in ("Hello there.", "How are you?")]
    assert all(len(c) > 1 for c in chunks)
    loops = FakeCommunicate.loops
    assert len(loops) == 2 and loops[0] is loops[1]  # one loop, reused
    FakeCommunicate.hang = True
    edge_tts.PIECE_TIMEOUT_S = 0.3
    cancelled = FakeCommunicate.cancelled
    try:
        with pytest.raises(TimeoutError, match="no audio"):
            list(edge_tts.stream("A silent service.", "en"))
    finally:
        FakeCommunicate.hang = False
    for _ in range(100):  # the download is cancelled on the loop's thread
        if FakeCommunicate.cancelled > cancelled:
            break
        asyncio.run(asyncio.sleep(0.01))
    assert FakeCommunicate.cancelled == cancelled + 1
    assert len(list(edge_tts.stream("Back again.", "en"))) > 1


def test_cosyvoice_streams_what_it_makes(cosyvoice: SpeechSynthesizer) -> None:
    chunks = list(cosyvoice.stream("你好，今天天气很好。", "zh"))  # 50 tokens
    # CosyVoice's pieces as they come: 25 tokens (960 samples each), then the rest.
    assert [c.audio.size // 960 for c in chunks] == [25, 25]


# ------------------------------------------------------------ speech to speech
async def check_speech_to_speech(model: SpeechToSpeech) -> None:
    await model.start()
    assert all(isinstance(v, str) for v in model.voices())
    conversation = model.new_conversation(system_prompt="Be brief.", language="en")
    for user in ("What is the capital of France?", read_wav("question_en.wav")):
        items = [item async for item in conversation.respond(user)]
        assert all(isinstance(item, TextDelta | Speech) for item in items)
        roles = [item.role for item in items if isinstance(item, TextDelta)]
        # What it heard (if it says) comes first, then its reply.
        assert "assistant" in roles and roles == sorted(roles, key=lambda r: r == "assistant")
        speech = [item for item in items if isinstance(item, Speech)]
        assert speech and all(s.sample_rate > 0 and s.audio.dtype == np.float32 for s in speech)
    reply = conversation.respond("Tell me more.")
    assert await anext(reply)
    await conversation.cancel(heard="Paris")  # barge-in: the reply ends

    async def rest() -> list[Any]:
        return [item async for item in reply]

    await asyncio.wait_for(rest(), timeout=5)
    await conversation.close()
    await model.close()


class FakeConversation(SpeechConversation):
    """Answers every turn with the same words, each as text then speech."""

    def __init__(self, system_prompt: str) -> None:
        self.history = [{"role": "system", "content": system_prompt}]
        self._stop = False
        self._heard: str | None = None

    async def respond(self, user: np.ndarray | str) -> AsyncIterator[TextDelta | Speech]:
        self._stop, self._heard = False, None
        if not isinstance(user, str):
            user = "what is the capital of France?"  # "recognized"
            yield TextDelta(user, role="user")
        self.history.append({"role": "user", "content": user})
        said = ""
        for word in ("Paris ", "is ", "the ", "capital."):
            await asyncio.sleep(0)
            if self._stop:
                break
            said += word
            yield TextDelta(word)
            yield Speech(np.full(2400, 0.1, np.float32), 24_000)
        heard = self._heard if self._stop and self._heard is not None else said
        self.history.append({"role": "assistant", "content": heard})

    async def cancel(self, heard: str | None = None) -> None:
        self._stop, self._heard = True, heard


class FakeSpeechToSpeech(SpeechToSpeech):
    def __init__(self) -> None:
        self.conversations: list[FakeConversation] = []

    @classmethod
    def from_config(cls, config: S2SConfig, weights_dir: Path) -> FakeSpeechToSpeech:
        return cls()

    def new_conversation(
        self, *, system_prompt: str, voice: str | None = None, language: str | None = None
    ) -> SpeechConversation:
        self.conversations.append(FakeConversation(system_prompt))
        return self.conversations[-1]

    def voices(self) -> list[str]:
        return ["fake"]


@pytest.mark.parametrize("name", backends.backend_names("s2s"))
async def test_s2s_contract(name: str, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    await check_speech_to_speech(CASES["s2s"][name](request, tmp_path))


async def test_speech_to_speech_contract() -> None:
    model = FakeSpeechToSpeech()
    await check_speech_to_speech(model)
    history = model.conversations[0].history
    assert history[-1] == {"role": "assistant", "content": "Paris"}  # only what was heard


def test_a_speech_to_speech_backend_is_chosen_by_config(monkeypatch, tmp_path: Path) -> None:
    from core.config import load_config
    from models.s2s import load_speech_to_speech

    assert load_speech_to_speech(S2SConfig(), tmp_path) is None  # off by default
    config = load_config(**{"s2s.backend": "fake"})
    with pytest.raises(ConfigError, match=r"s2s\.backend: unknown backend 'fake'"):
        backends.check_backends(config)
    monkeypatch.setitem(backends._registered["s2s"], "fake", FakeSpeechToSpeech)
    backends.check_backends(config)
    assert isinstance(load_speech_to_speech(config.s2s, tmp_path), FakeSpeechToSpeech)


def test_the_registry_takes_only_backends_that_build_themselves(monkeypatch) -> None:
    monkeypatch.setitem(backends._registered, "s2s", {})  # whatever is registered here goes
    with pytest.raises(TypeError, match="not a SpeechRecognizer"):
        backends.backend("asr", "fake")(FakeSpeechToSpeech)

    class Unbuildable(SpeechToSpeech):
        def new_conversation(self, **kwargs: Any) -> SpeechConversation:
            raise NotImplementedError

        def voices(self) -> list[str]:
            return []

    with pytest.raises(TypeError, match="from_config"):
        backends.backend("s2s", "unbuildable")(Unbuildable)
    assert backends.backend("s2s", "fake")(FakeSpeechToSpeech) is FakeSpeechToSpeech
    assert backends.backend_names("s2s") == ["fake"]
    with pytest.raises(ValueError, match="already"):  # a name is taken once
        backends.backend("s2s", "fake")(type("Other", (FakeSpeechToSpeech,), {}))
