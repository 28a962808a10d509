"""The cloning backends (CosyVoice 2/3, GPT-SoVITS) and edge-tts' word timings,
each at its boundary with upstream: fakes with the upstream signatures and
behaviour (tests/upstream_fakes.py), a real HTTP server for GPT-SoVITS."""

from __future__ import annotations

import inspect
import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from core.config import TTSConfig
from models.base import BackendUnavailable, SpeechSynthesizer
from models.tts import load_synthesizer
from tests.upstream_fakes import (
    FakeCommunicate,
    FakeCosyVoice2,
    FakeCosyVoice3,
    FakeGPTSoVITSServer,
    fake_modules,
    install_cosyvoice,
    install_edge_tts,
    write_user_voice,
)

TOKEN = 960  # samples of one CosyVoice speech token (24 kHz, 25 Hz)


# ------------------------------------------------------------------ user voices
def test_user_voices_are_read_from_the_store_layout(tmp_path: Path) -> None:
    from models.tts.user_voices import clip_seconds, user_voice, user_voice_names

    write_user_voice(tmp_path, "alice", seconds=4.0, lang="zh", transcript=" 你好 ")
    write_user_voice(tmp_path, "bob", transcript="")
    (tmp_path / "voices" / ".tmp").mkdir()  # the store's work folder is no voice
    (tmp_path / "voices" / "broken").mkdir()
    assert user_voice_names(tmp_path) == ["alice", "bob"]
    alice = user_voice(tmp_path, "alice")
    assert alice is not None and alice.clip_path.is_absolute()
    assert (alice.transcript, alice.lang) == ("你好", "zh")
    assert clip_seconds(alice.clip_path) == pytest.approx(4.0)
    bob = user_voice(tmp_path, "bob")
    assert bob is not None and bob.transcript == ""  # null in meta.json
    assert user_voice(tmp_path, "carol") is None and user_voice(tmp_path, "../alice") is None


# -------------------------------------------------------------------- CosyVoice
UPSTREAM_COSYVOICE = {  # cosyvoice/cli/cosyvoice.py at ace7c47
    "CosyVoice2.__init__": "(self, model_dir, load_jit=False, load_trt=False, load_vllm=False, "
    "fp16=False, trt_concurrent=1)",
    "CosyVoice3.__init__": "(self, model_dir, load_trt=False, load_vllm=False, fp16=False, "
    "trt_concurrent=1)",
    "add_zero_shot_spk": "(self, prompt_text, prompt_wav, zero_shot_spk_id)",
    "inference_sft": "(self, tts_text, spk_id, stream=False, speed=1.0, text_frontend=True)",
    "inference_zero_shot": "(self, tts_text, prompt_text, prompt_wav, zero_shot_spk_id='', "
    "stream=False, speed=1.0, text_frontend=True)",
}


def _plain(func: Any) -> str:
    """A signature without annotations, as upstream writes it."""
    sig = inspect.signature(func)
    params = [p.replace(annotation=inspect.Parameter.empty) for p in sig.parameters.values()]
    return str(sig.replace(parameters=params, return_annotation=inspect.Signature.empty))


def test_the_cosyvoice_fakes_have_the_upstream_signatures() -> None:
    ours = {
        "CosyVoice2.__init__": _plain(FakeCosyVoice2.__init__),
        "CosyVoice3.__init__": _plain(FakeCosyVoice3.__init__),
        "add_zero_shot_spk": _plain(FakeCosyVoice2.add_zero_shot_spk),
        "inference_sft": _plain(FakeCosyVoice2.inference_sft),
        "inference_zero_shot": _plain(FakeCosyVoice2.inference_zero_shot),
    }
    assert ours == UPSTREAM_COSYVOICE


def _cosyvoice(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, folder: str, yaml: str, **config: Any
) -> Any:
    install_cosyvoice(monkeypatch)
    model_dir = tmp_path / "cosyvoice" / folder
    model_dir.mkdir(parents=True, exist_ok=True)
    (model_dir / yaml).write_text("{}", encoding="utf-8")
    return load_synthesizer(TTSConfig(backend="cosyvoice", **config), tmp_path)


@pytest.fixture
def cosyvoice2(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    write_user_voice(tmp_path, "alice", lang="en", transcript="Hello, I am Alice.")
    write_user_voice(tmp_path, "mute", transcript="")  # no transcript: not offered
    return _cosyvoice(tmp_path, monkeypatch, "CosyVoice2-0.5B", "cosyvoice2.yaml", speed=1.2)


def test_cosyvoice_resets_the_hop_length_before_each_streamed_call(cosyvoice2: Any) -> None:
    fake = FakeCosyVoice2.made[-1]
    text = "x" * 60  # 300 tokens
    first = [c.audio.size // TOKEN for c in cosyvoice2.stream(text, "en")]
    assert first == [25, 50, 100, 100, 25]  # upstream doubles the hop after each chunk
    assert fake.model.token_hop_len == 100  # and leaves it there
    again = [c.audio.size // TOKEN for c in cosyvoice2.stream(text, "en", voice="alice")]
    assert again == first  # the next sentence starts at 1 s again, not 4 s
    early = cosyvoice2.stream(text, "en")  # stopped after its first chunk (barge-in)
    next(early)
    early.close()
    assert [c.audio.size // TOKEN for c in cosyvoice2.stream(text, "en")] == first


def test_cosyvoice_never_passes_speed_with_stream(cosyvoice2: Any) -> None:
    cosyvoice2.synthesize("Hello there.", "en")  # tts.speed is 1.2: the fake would assert
    fake = FakeCosyVoice2.made[-1]
    assert fake.calls and all(call["stream"] is True for _, call in fake.calls if "stream" in call)
    assert all(call.get("speed", 1.0) == 1.0 for _, call in fake.calls)


def test_cosyvoice_registers_a_user_voice_once(cosyvoice2: Any, tmp_path: Path) -> None:
    fake = FakeCosyVoice2.made[-1]
    assert cosyvoice2.voices() == ["中文女", "英文女", "alice"]
    for _ in range(2):
        assert cosyvoice2.synthesize("Hi there.", "en", voice="alice").audio.size
    added = [call for name, call in fake.calls if name == "add_zero_shot_spk"]
    clip = str((tmp_path / "voices" / "alice" / "clip.wav").resolve())
    assert [(c["prompt_text"], c["prompt_wav"]) for c in added] == [("Hello, I am Alice.", clip)]
    used = [call for name, call in fake.calls if name == "inference_zero_shot"]
    assert len(used) == 2 and {call["id"] for call in used} == {added[0]["id"]}
    # The speaker table holds our id beside the model's own speakers, which stay as they were.
    assert added[0]["id"] not in cosyvoice2.voices()
    # The voice added again (a new meta.json) is registered again.
    meta = tmp_path / "voices" / "alice" / "meta.json"
    meta.write_text(json.dumps({"name": "alice", "lang": "en", "transcript": "Hi, Alice here."}))
    os.utime(meta, ns=(1, 10**9))
    cosyvoice2.synthesize("Hi there.", "en", voice="alice")
    added = [call for name, call in fake.calls if name == "add_zero_shot_spk"]
    assert [call["prompt_text"] for call in added] == ["Hello, I am Alice.", "Hi, Alice here."]


def test_cosyvoice_refuses_a_user_voice_without_transcript(cosyvoice2: Any) -> None:
    with pytest.raises(ValueError, match="no transcript.*--text"):
        cosyvoice2.synthesize("Hi.", "en", voice="mute")
    with pytest.raises(ValueError, match="unknown CosyVoice voice"):
        cosyvoice2.synthesize("Hi.", "en", voice="nobody")


def test_cosyvoice3_is_picked_by_its_yaml_and_prompted_with_its_prefix(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_user_voice(tmp_path, "mei", lang="zh", transcript="你好，我是小美。")
    tts = _cosyvoice(tmp_path, monkeypatch, "Fun-CosyVoice3-0.5B-2512", "cosyvoice3.yaml")
    fake = FakeCosyVoice2.made[-1]
    assert type(fake) is FakeCosyVoice3 and tts.version == 3  # built without load_jit
    assert tts.voices() == ["mei"]  # no SFT speakers: the user voice is the default
    chunks = list(tts.stream("今天天气很好，我们出去走走吧。", "zh"))
    assert len(chunks) > 1
    (name, added), (_, used) = fake.calls
    assert name == "add_zero_shot_spk"
    assert added["prompt_text"] == "You are a helpful assistant.<|endofprompt|>你好，我是小美。"
    assert used["id"] == added["id"] and used["stream"] is True


def test_cosyvoice_prefers_version_3_when_both_are_there(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from models.tts.cosyvoice import find_model_dir

    for folder, yaml in (("CosyVoice2-0.5B", "cosyvoice2.yaml"), ("mine", "cosyvoice3.yaml")):
        (tmp_path / "cosyvoice" / folder).mkdir(parents=True)
        (tmp_path / "cosyvoice" / folder / yaml).write_text("{}")
    assert find_model_dir(tmp_path).name == "CosyVoice2-0.5B"  # the known names first
    (tmp_path / "cosyvoice" / "Fun-CosyVoice3-0.5B-2512").mkdir()  # empty: not a model
    assert find_model_dir(tmp_path).name == "CosyVoice2-0.5B"
    (tmp_path / "cosyvoice" / "Fun-CosyVoice3-0.5B-2512" / "cosyvoice3.yaml").write_text("{}")
    assert find_model_dir(tmp_path).name == "Fun-CosyVoice3-0.5B-2512"


def test_cosyvoice_refuses_a_missing_folder_instead_of_downloading(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    install_cosyvoice(monkeypatch)
    with pytest.raises(BackendUnavailable) as refused:
        load_synthesizer(TTSConfig(backend="cosyvoice"), tmp_path)
    message = str(refused.value)
    assert "weights/cosyvoice/CosyVoice2-0.5B" in message
    assert "weights/cosyvoice/Fun-CosyVoice3-0.5B-2512" in message
    assert FakeCosyVoice2.made == []  # upstream was never asked (it would download)


def test_cosyvoice_names_the_unrelated_pypi_package(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake_modules(monkeypatch, torch={}, cosyvoice={})  # PyPI's cosyvoice: no cosyvoice.cli
    monkeypatch.setitem(sys.modules, "cosyvoice.cli", None)
    with pytest.raises(BackendUnavailable, match="PyPI package named 'cosyvoice' is unrelated"):
        load_synthesizer(TTSConfig(backend="cosyvoice"), tmp_path)


# ------------------------------------------------------------------- GPT-SoVITS
@pytest.fixture(scope="module")
def server() -> Iterator[FakeGPTSoVITSServer]:
    with FakeGPTSoVITSServer() as running:
        yield running


@pytest.fixture
def gpt_sovits(tmp_path: Path, server: FakeGPTSoVITSServer) -> Iterator[Any]:
    server.state["requests"].clear()
    server.state["client_ports"].clear()
    write_user_voice(tmp_path, "alice", seconds=4.0, lang="en", transcript="Hello, I am Alice.")
    write_user_voice(tmp_path, "mei", seconds=5.0, lang="zh", transcript="")
    write_user_voice(tmp_path, "short", seconds=2.0)  # under upstream's 3 s
    tts: Any = load_synthesizer(TTSConfig(backend="gpt-sovits", base_url=server.url), tmp_path)
    yield tts
    tts.close()


def test_gpt_sovits_sends_the_upstream_request_and_streams_the_answer(
    gpt_sovits: Any, server: FakeGPTSoVITSServer, tmp_path: Path
) -> None:
    assert gpt_sovits.voices() == ["alice", "mei"]  # the 2 s clip is not offered
    text = "Hello there, how are you?"
    chunks = list(gpt_sovits.stream(text, "en", voice="alice"))
    assert len(chunks) > 1 and {c.sample_rate for c in chunks} == {32_000}
    assert sum(c.audio.size for c in chunks) == int(0.1 * 32_000 * len(text))
    assert 0.2 < max(float(np.abs(c.audio).max()) for c in chunks) < 0.3  # int16 scaled
    (request,) = server.state["requests"]
    clip = str((tmp_path / "voices" / "alice" / "clip.wav").resolve())
    sent = {k: request[k] for k in ("text", "text_lang", "ref_audio_path", "prompt_text")}
    assert sent == {"text": text, "text_lang": "en", "ref_audio_path": clip,
                    "prompt_text": "Hello, I am Alice."}  # fmt: skip
    assert (request["prompt_lang"], request["media_type"], request["streaming_mode"]) == (
        "en",
        "wav",
        2,
    )
    gpt_sovits.synthesize("你好。", "zh")  # no voice named: the Chinese one
    assert server.state["requests"][-1]["ref_audio_path"].endswith("/mei/clip.wav")
    assert server.state["requests"][-1]["prompt_text"] == ""  # reference-only mode
    assert len(server.state["client_ports"]) == 1  # one connection, reused


def test_gpt_sovits_refuses_a_clip_outside_3_to_10_s_before_calling(
    gpt_sovits: Any, server: FakeGPTSoVITSServer
) -> None:
    with pytest.raises(ValueError, match=r"2\.0 s.*3-10 s"):
        gpt_sovits.synthesize("Hello.", "en", voice="short")
    assert server.state["requests"] == []


def test_gpt_sovits_errors_carry_the_servers_message(
    gpt_sovits: Any, server: FakeGPTSoVITSServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(server.state, "languages", ["auto", "en", "ja"])  # a v1 model: no zh
    with pytest.raises(RuntimeError, match=r"\(400\): text_lang: zh is not supported"):
        gpt_sovits.synthesize("你好。", "zh", voice="mei")
    with pytest.raises(RuntimeError, match="1 s of silence"):  # upstream's swallowed error
        gpt_sovits.synthesize("Please FAIL now.", "en", voice="alice")


def test_gpt_sovits_maps_the_voice_store_to_the_servers_path(
    tmp_path: Path, server: FakeGPTSoVITSServer
) -> None:
    write_user_voice(tmp_path, "alice", seconds=4.0)
    config = TTSConfig(backend="gpt-sovits", base_url=server.url, voice_dir_on_server="/srv/v")
    tts: Any = load_synthesizer(config, tmp_path)
    try:
        # The server cannot open that path here: its stream breaks off, as upstream's does.
        with pytest.raises(RuntimeError, match="mid-answer|without audio"):
            tts.synthesize("Hello.", "en")
    finally:
        tts.close()
    assert server.state["requests"][-1]["ref_audio_path"] == "/srv/v/alice/clip.wav"


def test_the_fake_server_rejects_a_misspelt_field(server: FakeGPTSoVITSServer) -> None:
    from models.tts.gpt_sovits import GPTSoVITSSynthesizer
    from models.tts.user_voices import UserVoice

    body = {"text": "Hi.", "text_lang": "en", "ref_audio_path": "/x", "prompt_lang": "en"}
    answer = httpx.post(f"{server.url}/tts", json={**body, "text_language": "en"})
    assert answer.status_code == 422
    voice = UserVoice("a", Path("/a.wav"), "", "en", (0, 0))
    tts = GPTSoVITSSynthesizer.__new__(GPTSoVITSSynthesizer)  # what it sends, not a server
    tts.voice_dir_on_server, tts.speed = "", 1.0
    sent = tts.request("Hi.", "en", voice)
    assert set(sent) <= set(_upstream_fields())


def _upstream_fields() -> list[str]:
    """TTS_Request's fields in api_v2.py at 48b1a01 (L154-178)."""
    return [
        "text", "text_lang", "ref_audio_path", "aux_ref_audio_paths", "prompt_lang",
        "prompt_text", "top_k", "top_p", "temperature", "text_split_method", "batch_size",
        "batch_threshold", "split_bucket", "speed_factor", "fragment_interval", "seed",
        "media_type", "streaming_mode", "parallel_infer", "repetition_penalty",
        "sample_steps", "super_sampling", "overlap_length", "min_chunk_length",
    ]  # fmt: skip


def test_gpt_sovits_without_a_server_says_how_to_start_it(tmp_path: Path) -> None:
    import socket

    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    write_user_voice(tmp_path, "alice")
    with pytest.raises(BackendUnavailable, match=r"no GPT-SoVITS server.*api_v2\.py"):
        load_synthesizer(TTSConfig(backend="gpt-sovits", base_url=url), tmp_path)


def test_gpt_sovits_without_user_voices_says_how_to_add_one(
    tmp_path: Path, server: FakeGPTSoVITSServer
) -> None:
    with pytest.raises(BackendUnavailable, match="videochat voice add"):
        load_synthesizer(TTSConfig(backend="gpt-sovits", base_url=server.url), tmp_path)


def test_wav_stream_parser_takes_any_split() -> None:
    import io
    import wave

    from models.tts.gpt_sovits import WavStreamParser

    buf = io.BytesIO()
    with wave.open(buf, "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(24_000)
    pcm = (np.arange(-500, 500) * 30).astype("<i2")
    data = buf.getvalue() + pcm.tobytes()
    for size in (1, 3, 7, 45, len(data)):
        parser = WavStreamParser()
        out = np.concatenate([parser.feed(data[i : i + size]) for i in range(0, len(data), size)])
        assert parser.sample_rate == 24_000
        np.testing.assert_array_equal(out, pcm.astype(np.float32) / 32768.0)


# -------------------------------------------------------------------- edge-tts
@pytest.fixture
def edge(monkeypatch: pytest.MonkeyPatch) -> Iterator[SpeechSynthesizer]:
    install_edge_tts(monkeypatch)
    tts = load_synthesizer(TTSConfig(backend="edge-tts"), Path("."))
    yield tts
    tts.close()  # type: ignore[attr-defined]


def test_edge_tts_asks_for_word_boundaries_and_times_the_mouth(edge: Any) -> None:
    from models.phonemes import parse_phonemes

    text = "Hello there, how are you today?"
    chunks = list(edge.stream(text, "en"))
    assert FakeCommunicate.boundaries == ["WordBoundary"]
    assert edge.has_timings and len(chunks) > 1
    spoken: list[str] = []
    for chunk in chunks:
        duration = chunk.audio.size / chunk.sample_rate
        assert all(0 <= a < b <= duration + 1e-6 for _, a, b in chunk.phonemes)
        starts = [a for _, a, _ in chunk.phonemes]
        assert starts == sorted(starts)
        spoken += [p for p, _, _ in chunk.phonemes]
    assert len(spoken) > 10
    expected = [p for p in parse_phonemes(edge._phonemes("Hello")) if p not in " ."]
    assert spoken[: len(expected)] == expected  # the first word's phonemes first


def test_word_spans_end_at_the_next_word_and_are_relative_to_the_chunk() -> None:
    from models.tts.edge import word_spans

    words = [(0.0, 0.5, "ab"), (0.4, 0.9, "cd")]  # the first word's duration runs past 0.4

    def letters(word: str) -> list[str]:
        return list(word)

    spans = word_spans(words, 0.1, 0.6, letters)
    assert [p for p, _, _ in spans] == ["a", "b", "c"]  # "d" (0.65-0.9) is in the next chunk
    assert [s[1:] for s in spans] == [
        pytest.approx((0.0, 0.1)),  # "a": 0-0.2 of the audio, from the chunk's start
        pytest.approx((0.1, 0.3)),  # "b": 0.2-0.4, its word cut at the next word's offset
        pytest.approx((0.3, 0.5)),  # "c": 0.4-0.65, cut at the chunk's end
    ]
    assert word_spans(words, 1.0, 2.0, letters) == []


def test_edge_tts_phonemizes_chinese_words_with_misaki(edge: Any) -> None:
    letters = edge._phonemes("你好")
    assert letters and all(len(p) == 1 for p in letters)
