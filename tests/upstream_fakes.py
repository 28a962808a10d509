"""Fakes of the optional backends' upstream modules (funasr, cosyvoice,
edge_tts, openai's client), with the upstream call signatures, for
tests/test_contracts.py: what our side of each call sends is checked against
what the library takes.
"""

from __future__ import annotations

import asyncio
import io
import sys
import types
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pytest


def fake_modules(monkeypatch: pytest.MonkeyPatch, **modules: dict[str, Any]) -> None:
    """Install modules named like ``cosyvoice.cli.cosyvoice`` with the given attributes."""
    for name, attributes in modules.items():
        module = types.ModuleType(name)
        module.__dict__.update(attributes)
        monkeypatch.setitem(sys.modules, name, module)
        parent, _, child = name.rpartition(".")
        if parent:
            setattr(sys.modules[parent], child, module)


def mp3(seconds: float, sr: int = 24_000) -> bytes:
    import av

    tone = (0.3 * np.sin(2 * np.pi * 330 * np.arange(int(sr * seconds)) / sr)).astype(np.float32)
    buf = io.BytesIO()
    with av.open(buf, "w", format="mp3") as out:
        stream = out.add_stream("libmp3lame" if "libmp3lame" in av.codecs_available else "mp3")
        stream.rate, stream.layout = sr, "mono"
        frame = av.AudioFrame.from_ndarray(tone[None, :], format="flt", layout="mono")
        frame.sample_rate = sr
        for packet in [*stream.encode(frame), *stream.encode(None)]:
            out.mux(packet)
    return buf.getvalue()



class FakeAutoModel:
    """funasr.AutoModel as upstream calls it: ``AutoModel(model=..., **kwargs)``,
    ``generate(input, cache=..., is_final=..., chunk_size=..., ...)`` returning
    ``[{"key": ..., "text": ...}]``. The streaming model says one word a chunk."""

    WORDS = ["今天", "天气", "怎么样", "啊"]

    def __init__(self, model: str, **kwargs: Any) -> None:
        self.model = model
        self.calls: list[dict[str, Any]] = []

    def generate(self, input: np.ndarray, **kwargs: Any) -> list[dict[str, str]]:
        self.calls.append({"samples": len(input), **kwargs})
        name = Path(self.model).name.lower()
        if "streaming" in name:
            cache = kwargs["cache"]
            step = cache["steps"] = cache.get("steps", 0) + 1
            return [{"key": "utt", "text": " ".join(self.WORDS[(step - 1) % len(self.WORDS)])}]
        if "sensevoice" in name:
            return [{"key": "utt", "text": "<|zh|><|NEUTRAL|><|Speech|><|withitn|>今天天气"}]
        return [{"key": "utt", "text": "今 天 天 气 怎 么 样 啊"}]


def strip_tags(text: str) -> str:
    import re

    return re.sub(r"<\|[^|]*\|>", "", text)


class FakeTensor:
    """What CosyVoice yields as ``tts_speech``: a (1, samples) torch tensor."""

    def __init__(self, array: np.ndarray) -> None:
        self.array = array

    def squeeze(self, dim: int) -> FakeTensor:
        return FakeTensor(self.array.squeeze(dim))

    def float(self) -> FakeTensor:
        return self

    def cpu(self) -> FakeTensor:
        return self

    def numpy(self) -> np.ndarray:
        return self.array


class FakeCosyVoice2Model:
    """``CosyVoice2Model`` (cosyvoice/cli/model.py at ace7c47) as far as its
    streaming goes: 25 Hz speech tokens, a first chunk of ``token_hop_len``
    tokens, and after each chunk ``self.token_hop_len = min(token_max_hop_len,
    token_hop_len * stream_scale_factor)``, an attribute never reset (L360)."""

    TOKEN_SAMPLES = 960  # 24 kHz / 25 tokens a second

    def __init__(self) -> None:
        self.token_hop_len = 25
        self.token_max_hop_len = 4 * self.token_hop_len
        self.stream_scale_factor = 2
        self.pre_lookahead_len = 3  # flow.pre_lookahead_len

    def token2wav(
        self,
        token: int,
        prompt_token: Any,
        prompt_feat: Any,
        embedding: Any,
        token_offset: int,
        uuid: str,
        stream: bool = False,
        finalize: bool = False,
        speed: float = 1.0,
    ) -> FakeTensor:
        if speed != 1.0:  # L321: the hift cache of a stream is set
            assert not stream, "speed change only support non-stream inference mode"
        n = token * self.TOKEN_SAMPLES
        return FakeTensor((0.3 * np.sin(np.arange(n) / 5.0)).astype(np.float32)[None, :])

    def tts(self, tokens: int, stream: bool, speed: float) -> Iterator[dict[str, FakeTensor]]:
        if not stream:
            yield {"tts_speech": self.token2wav(tokens, None, None, None, 0, "u", speed=speed)}
            return
        offset = 0
        while tokens - offset >= self.token_hop_len + self.pre_lookahead_len:
            hop = self.token_hop_len
            speech = self.token2wav(hop, None, None, None, offset, "u", stream, False, speed)
            yield {"tts_speech": speech}
            offset += hop
            self.token_hop_len = min(self.token_max_hop_len, hop * self.stream_scale_factor)
        rest = tokens - offset
        speech = self.token2wav(rest, None, None, None, offset, "u", stream, True, speed)
        yield {"tts_speech": speech}


class FakeFrontend:
    def __init__(self, speakers: list[str]) -> None:
        self.spk2info: dict[str, dict[str, Any]] = {s: {"embedding": s} for s in speakers}


def _check_prompt_wav(prompt_wav: Any) -> None:
    """What upstream's load_wav does to ``prompt_wav``: a path torchaudio
    opens, asserting its rate is at least 16 kHz."""
    import wave

    assert isinstance(prompt_wav, str), "prompt_wav is a file path since 622a3a1"
    with wave.open(prompt_wav, "rb") as wav:
        assert wav.getframerate() >= 16_000, f"wav sample rate {wav.getframerate()} must be >= 16k"


class FakeCosyVoice2:
    """cosyvoice.cli.cosyvoice.CosyVoice2 at ace7c47 (cosyvoice/cli/cosyvoice.py):
    the constructor and the methods we call, with exactly the upstream parameter
    names and defaults. Speech is 5 tokens (0.2 s) per character."""

    sample_rate = 24_000
    SPEAKERS = ["中文女", "英文女"]
    made: list[FakeCosyVoice2] = []

    def __init__(
        self,
        model_dir: str,
        load_jit: bool = False,
        load_trt: bool = False,
        load_vllm: bool = False,
        fp16: bool = False,
        trt_concurrent: int = 1,
    ) -> None:
        self._setup(model_dir)

    def _setup(self, model_dir: str) -> None:
        # Upstream calls modelscope's snapshot_download(model_dir) when it is missing.
        assert Path(model_dir).is_dir(), f"would download {model_dir} from modelscope"
        self.model_dir = model_dir
        self.model = FakeCosyVoice2Model()
        self.frontend = FakeFrontend(list(self.SPEAKERS))
        self.calls: list[tuple[str, dict[str, Any]]] = []
        FakeCosyVoice2.made.append(self)

    def list_available_spks(self) -> list[str]:
        return list(self.frontend.spk2info.keys())

    def add_zero_shot_spk(self, prompt_text: str, prompt_wav: str, zero_shot_spk_id: str) -> bool:
        assert zero_shot_spk_id != "", "do not use empty zero_shot_spk_id"
        _check_prompt_wav(prompt_wav)
        call = {"prompt_text": prompt_text, "prompt_wav": prompt_wav, "id": zero_shot_spk_id}
        self.calls.append(("add_zero_shot_spk", call))
        self.frontend.spk2info[zero_shot_spk_id] = {"prompt_text": prompt_text}
        return True

    def inference_sft(
        self,
        tts_text: str,
        spk_id: str,
        stream: bool = False,
        speed: float = 1.0,
        text_frontend: bool = True,
    ) -> Iterator[dict[str, FakeTensor]]:
        assert spk_id in self.frontend.spk2info
        self.calls.append(("inference_sft", {"spk_id": spk_id, "stream": stream, "speed": speed}))
        return self.model.tts(5 * len(tts_text), stream, speed)

    def inference_zero_shot(
        self,
        tts_text: str,
        prompt_text: str,
        prompt_wav: str,
        zero_shot_spk_id: str = "",
        stream: bool = False,
        speed: float = 1.0,
        text_frontend: bool = True,
    ) -> Iterator[dict[str, FakeTensor]]:
        if zero_shot_spk_id == "":
            _check_prompt_wav(prompt_wav)
        else:  # the cached prompt is used, prompt_wav ignored
            assert zero_shot_spk_id in self.frontend.spk2info
        call = {"prompt_text": prompt_text, "id": zero_shot_spk_id, "stream": stream}
        call["speed"] = speed
        self.calls.append(("inference_zero_shot", call))
        return self.model.tts(5 * len(tts_text), stream, speed)


class FakeCosyVoice3(FakeCosyVoice2):
    """CosyVoice3 at ace7c47: no ``load_jit`` (passing it is a TypeError);
    Fun-CosyVoice3-0.5B-2512 comes without SFT speakers."""

    SPEAKERS: list[str] = []

    def __init__(
        self,
        model_dir: str,
        load_trt: bool = False,
        load_vllm: bool = False,
        fp16: bool = False,
        trt_concurrent: int = 1,
    ) -> None:
        self._setup(model_dir)


class FakeCommunicate:
    """edge_tts.Communicate (7.3.1, communicate.py L327-340); ``stream()`` yields
    {"type": "audio", "data": bytes} pieces and, as the service does, the
    boundary events asked for: word events (offset and duration in 100-ns
    ticks, each duration running a little into the next word) before the audio
    they describe, or sentence events by default."""

    loops: list[asyncio.AbstractEventLoop] = []
    boundaries: list[str] = []
    hang = False
    cancelled = 0

    def __init__(
        self,
        text: str,
        voice: str = "en-US-EmmaMultilingualNeural",
        *,
        rate: str = "+0%",
        volume: str = "+0%",
        pitch: str = "+0Hz",
        boundary: Literal["WordBoundary", "SentenceBoundary"] = "SentenceBoundary",
        connector: Any = None,
        proxy: Any = None,
        connect_timeout: int | None = 10,
        receive_timeout: int | None = 60,
    ) -> None:
        assert isinstance(connect_timeout, int) and isinstance(receive_timeout, int)
        assert boundary in ("WordBoundary", "SentenceBoundary")
        self.text = text
        self.boundary = boundary
        FakeCommunicate.boundaries.append(boundary)

    def _events(self, seconds: float) -> list[tuple[float, dict[str, Any]]]:
        """(fraction of the audio, event) for each boundary event."""
        ticks = int(seconds * 10_000_000)
        if self.boundary == "SentenceBoundary":
            event = {"type": "SentenceBoundary", "offset": 0, "duration": ticks, "text": self.text}
            return [(0.0, event)]
        words = self.text.split()
        each = ticks / len(words)
        kind = "WordBoundary"
        return [
            (i / len(words), {"type": kind, "offset": i * each, "duration": 1.2 * each, "text": w})
            for i, w in enumerate(words)
        ]

    async def stream(self) -> AsyncIterator[dict[str, Any]]:
        FakeCommunicate.loops.append(asyncio.get_running_loop())
        seconds = 0.05 * len(self.text)
        data = mp3(seconds)
        events = self._events(seconds)
        try:
            for i in range(0, len(data), 1500):
                if FakeCommunicate.hang:
                    await asyncio.sleep(3600)
                await asyncio.sleep(0.001)
                while events and events[0][0] < (i + 1500) / len(data):
                    yield events.pop(0)[1]
                yield {"type": "audio", "data": data[i : i + 1500]}
        except asyncio.CancelledError:
            FakeCommunicate.cancelled += 1
            raise


class FakeStream:
    """openai's AsyncStream of chat completion chunks; ``close`` ends the response."""

    def __init__(self, words: list[str]) -> None:
        self.words = words
        self.closed = False

    def __aiter__(self) -> AsyncIterator[Any]:
        return self._chunks()

    async def _chunks(self) -> AsyncIterator[Any]:
        for word in self.words:
            if self.closed:
                return
            choice = types.SimpleNamespace(delta=types.SimpleNamespace(content=word))
            yield types.SimpleNamespace(choices=[choice], model_extra={})

    async def close(self) -> None:
        self.closed = True


class FakeOpenAI:
    """openai.AsyncOpenAI(base_url=..., api_key=..., max_retries=...): streamed
    chat completions of a fixed reply, word by word."""

    requests: list[dict[str, Any]] = []

    def __init__(
        self, *, base_url: str, api_key: str, max_retries: int, timeout: Any = None
    ) -> None:
        self.chat = types.SimpleNamespace(completions=types.SimpleNamespace(create=self._create))

    async def _create(self, **request: Any) -> FakeStream:
        FakeOpenAI.requests.append(request)
        return FakeStream(["The ", "sky ", "is ", "blue."])

    async def close(self) -> None:
        pass


def install_funasr(monkeypatch: pytest.MonkeyPatch) -> None:
    fake_modules(
        monkeypatch,
        torch={},
        funasr={"AutoModel": FakeAutoModel},
        **{
            "funasr.utils": {},
            "funasr.utils.postprocess_utils": {"rich_transcription_postprocess": strip_tags},
        },
    )


class RecordingAutoModel(FakeAutoModel):
    """``funasr.AutoModel(**kwargs)`` (funasr/auto/auto_model.py at 3c58cb5,
    ``AutoModel.__init__``: ``model``, ``device``, ``ncpu``, ``disable_update``
    ...) that keeps its keyword arguments; SenseVoice answers ``sensevoice_raw``,
    its output before rich_transcription_postprocess."""

    made: list[RecordingAutoModel] = []
    sensevoice_raw = "<|zh|><|NEUTRAL|><|Speech|><|withitn|>今天天气"

    def __init__(self, model: str, **kwargs: Any) -> None:
        super().__init__(model, **kwargs)
        self.kwargs = {"model": model, **kwargs}
        RecordingAutoModel.made.append(self)

    def generate(self, input: np.ndarray, **kwargs: Any) -> list[dict[str, str]]:
        if "sensevoice" in Path(self.model).name.lower():
            self.calls.append({"samples": len(input), **kwargs})
            return [{"key": "utt", "text": self.sensevoice_raw}]
        return super().generate(input, **kwargs)


# funasr/utils/postprocess_utils.py at 3c58cb5 (emo_dict, event_dict, emoji_dict):
# what rich_transcription_postprocess makes of SenseVoice's tags.
_EMOTIONS = {"<|HAPPY|>": "😊", "<|SAD|>": "😔", "<|ANGRY|>": "😡", "<|NEUTRAL|>": ""}
_EVENTS = {"<|BGM|>": "🎼", "<|Applause|>": "👏", "<|Laughter|>": "😀", "<|Speech|>": ""}


def rich_postprocess_like_upstream(text: str) -> str:
    """rich_transcription_postprocess's visible behaviour on one segment: no
    speech becomes "❓", an event's emoji goes first, the emotion's last, the
    other tags vanish."""
    import re

    text = text.replace("<|nospeech|><|Event_UNK|>", "❓")
    events = "".join(e for tag, e in _EVENTS.items() if tag in text)
    emotion = next((e for tag, e in _EMOTIONS.items() if tag in text), "")
    return events + re.sub(r"<\|[^|]*\|>", "", text).strip() + emotion


def install_funasr_upstream(monkeypatch: pytest.MonkeyPatch, cuda: bool = False) -> None:
    """funasr with RecordingAutoModel and upstream-like post-processing, and a
    torch whose ``cuda.is_available()`` says ``cuda``."""
    monkeypatch.setattr(RecordingAutoModel, "made", [])
    torch = {
        "__version__": "2.13.0+cu128" if cuda else "2.13.0+cpu",
        "cuda": types.SimpleNamespace(is_available=lambda: cuda),
        "version": types.SimpleNamespace(cuda="12.8" if cuda else None),
    }
    fake_modules(
        monkeypatch,
        torch=torch,
        funasr={"AutoModel": RecordingAutoModel},
        **{
            "funasr.utils": {},
            "funasr.utils.postprocess_utils": {
                "rich_transcription_postprocess": rich_postprocess_like_upstream
            },
        },
    )


def install_cosyvoice(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(FakeCosyVoice2, "made", [])
    fake_modules(
        monkeypatch,
        torch={},
        cosyvoice={},
        **{
            "cosyvoice.cli": {},
            "cosyvoice.cli.cosyvoice": {
                "CosyVoice2": FakeCosyVoice2,
                "CosyVoice3": FakeCosyVoice3,
            },
        },
    )


def install_edge_tts(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(FakeCommunicate, "loops", [])
    monkeypatch.setattr(FakeCommunicate, "boundaries", [])
    fake_modules(monkeypatch, edge_tts={"Communicate": FakeCommunicate})


def install_openai(monkeypatch: pytest.MonkeyPatch) -> None:
    import openai

    monkeypatch.setattr(FakeOpenAI, "requests", [])
    monkeypatch.setattr(openai, "AsyncOpenAI", FakeOpenAI)


# ------------------------------------------------------------------ user voices
def write_user_voice(
    weights_dir: Path, name: str, seconds: float = 4.0, lang: str = "en", transcript: str = "Hi."
) -> Path:
    """A user voice in the layout tools/voice_library.py writes: clip.wav
    (16 kHz mono 16-bit) and meta.json (style.npy is Kokoro's: not needed here)."""
    import json
    import wave

    folder = weights_dir / "voices" / name
    folder.mkdir(parents=True, exist_ok=True)
    n = int(16_000 * seconds)
    pcm = (3000 * np.sin(2 * np.pi * 180 * np.arange(n) / 16_000)).astype("<i2")
    with wave.open(str(folder / "clip.wav"), "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(16_000)
        wav.writeframes(pcm.tobytes())
    meta = {"name": name, "lang": lang, "transcript": transcript or None}
    (folder / "meta.json").write_text(json.dumps(meta), encoding="utf-8")
    return folder


# -------------------------------------------------------------- GPT-SoVITS
def gpt_sovits_app(state: dict[str, Any]) -> Any:
    """GPT-SoVITS ``api_v2.py`` at 48b1a01 as far as ``POST /tts`` goes: the
    ``TTS_Request`` model (L154-178, same field names and defaults), the checks of
    ``check_params`` (400 with {"message": ...}), the reference clip's 3-10 s
    check (``TTS._set_prompt_semantic``, raised inside the generator, so a
    streamed answer breaks off), 1 s of 16 kHz silence for a failed synthesis,
    and the streamed WAV (a header alone, then raw int16 PCM, L420-431). The
    model runs at 32 kHz and says 0.1 s per character, in 0.2 s pieces.

    Stricter than upstream on purpose: unknown fields are a 422 (upstream's
    pydantic model ignores them), so a misspelt field name fails here."""
    import wave

    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse, StreamingResponse
    from pydantic import BaseModel, ConfigDict

    class TTS_Request(BaseModel):  # noqa: N801 - upstream's name
        model_config = ConfigDict(extra="forbid")
        text: str = None  # type: ignore[assignment]
        text_lang: str = None  # type: ignore[assignment]
        ref_audio_path: str = None  # type: ignore[assignment]
        aux_ref_audio_paths: list = None  # type: ignore[assignment]
        prompt_lang: str = None  # type: ignore[assignment]
        prompt_text: str = ""
        top_k: int = 15
        top_p: float = 1
        temperature: float = 1
        text_split_method: str = "cut5"
        batch_size: int = 1
        batch_threshold: float = 0.75
        split_bucket: bool = True
        speed_factor: float = 1.0
        fragment_interval: float = 0.3
        seed: int = -1
        media_type: str = "wav"
        streaming_mode: bool | int = False
        parallel_infer: bool = True
        repetition_penalty: float = 1.35
        sample_steps: int = 32
        super_sampling: bool = False
        overlap_length: int = 2
        min_chunk_length: int = 16

    rate = 32_000
    app = FastAPI()

    def header(sample_rate: int) -> bytes:
        buf = io.BytesIO()
        with wave.open(buf, "wb") as wav:
            wav.setnchannels(1)
            wav.setsampwidth(2)
            wav.setframerate(sample_rate)
            wav.writeframes(b"")
        return buf.getvalue()

    def run(req: dict[str, Any]) -> Iterator[tuple[int, np.ndarray]]:
        with wave.open(req["ref_audio_path"], "rb") as ref:  # librosa.load raises if missing
            seconds = ref.getnframes() / ref.getframerate()
        if not 3 <= seconds <= 10:
            raise OSError("参考音频在3~10秒范围外，请更换！")
        if "FAIL" in req["text"]:  # an error inside synthesis, swallowed upstream
            yield 16_000, np.zeros(16_000, dtype=np.int16)
            return
        n = int(0.1 * rate * len(req["text"]))
        pcm = (8000 * np.sin(np.arange(n) / 7.0)).astype(np.int16)
        for i in range(0, n, rate // 5):
            yield rate, pcm[i : i + rate // 5]

    async def tts(request: TTS_Request, raw: Request) -> Any:
        req = request.model_dump()
        state["requests"].append(req)
        assert raw.client is not None
        state["client_ports"].add(raw.client.port)
        languages = state["languages"]
        for field in ("ref_audio_path", "text", "text_lang", "prompt_lang"):
            if req[field] in (None, ""):
                return JSONResponse(status_code=400, content={"message": f"{field} is required"})
        for field in ("text_lang", "prompt_lang"):
            if req[field].lower() not in languages:
                message = f"{field}: {req[field]} is not supported in version v1"
                return JSONResponse(status_code=400, content={"message": message})
        if req["media_type"] not in ("wav", "raw", "ogg", "aac"):
            message = f"media_type: {req['media_type']} is not supported"
            return JSONResponse(status_code=400, content={"message": message})
        if req["streaming_mode"] not in (0, 1, 2, 3):
            message = "the value of streaming_mode must be 0, 1, 2, 3(int) or true/false(bool)"
            return JSONResponse(status_code=400, content={"message": message})

        def streamed() -> Iterator[bytes]:
            first = True
            for sr, chunk in run(req):
                if first and req["media_type"] == "wav":
                    yield header(sr)
                    first = False
                yield chunk.astype("<i2").tobytes()

        if req["streaming_mode"]:
            return StreamingResponse(streamed(), media_type=f"audio/{req['media_type']}")
        return JSONResponse(status_code=400, content={"message": "tests stream only"})

    # This module's annotations are strings (__future__) and these classes are local.
    tts.__annotations__ = {"request": TTS_Request, "raw": Request, "return": Any}
    app.post("/tts")(tts)
    return app


class FakeGPTSoVITSServer:
    """``gpt_sovits_app`` served by uvicorn on 127.0.0.1 (a free port) in a thread."""

    def __init__(self) -> None:
        import socket

        self.state: dict[str, Any] = {
            "requests": [],
            "client_ports": set(),
            "languages": ["auto", "auto_yue", "en", "zh", "ja", "yue", "ko", "all_zh"],
        }
        self._sock = socket.socket()
        self._sock.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self._sock.getsockname()[1]}"

    def __enter__(self) -> FakeGPTSoVITSServer:
        import threading
        import time

        import uvicorn

        config = uvicorn.Config(gpt_sovits_app(self.state), log_level="warning", lifespan="off")
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [self._sock]}, daemon=True
        )
        self._thread.start()
        for _ in range(500):
            if self._server.started:
                break
            time.sleep(0.01)
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=10)
        self._sock.close()
