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
from typing import Any

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


class FakeCosyVoice2:
    """cosyvoice.cli.cosyvoice.CosyVoice2's upstream calls: streaming yields
    0.2 s pieces, non-streaming the whole in one; 0.1 s per character."""

    sample_rate = 24_000

    def __init__(
        self, model_dir: str, load_jit: bool = False, load_trt: bool = False, fp16: bool = False
    ) -> None:
        self.model_dir = model_dir

    def list_available_spks(self) -> list[str]:
        return ["中文女", "英文女"]

    def _speech(self, text: str, stream: bool) -> Iterator[dict[str, FakeTensor]]:
        n = int(0.1 * self.sample_rate * len(text))
        audio = (0.3 * np.sin(np.arange(n) / 5.0)).astype(np.float32)
        step = int(0.2 * self.sample_rate) if stream else max(n, 1)
        for i in range(0, n, step):
            yield {"tts_speech": FakeTensor(audio[None, i : i + step])}

    def inference_sft(
        self,
        tts_text: str,
        spk_id: str,
        stream: bool = False,
        speed: float = 1.0,
        text_frontend: bool = True,
    ) -> Iterator[dict[str, FakeTensor]]:
        assert spk_id in self.list_available_spks()
        return self._speech(tts_text, stream)

    def inference_zero_shot(
        self,
        tts_text: str,
        prompt_text: str,
        prompt_speech_16k: Any,
        zero_shot_spk_id: str = "",
        stream: bool = False,
        speed: float = 1.0,
        text_frontend: bool = True,
    ) -> Iterator[dict[str, FakeTensor]]:
        return self._speech(tts_text, stream)


class FakeCommunicate:
    """edge_tts.Communicate(text, voice, *, rate, ..., connect_timeout,
    receive_timeout); ``stream()`` yields {"type": "audio", "data": bytes} pieces
    and boundary events, as the service sends them."""

    loops: list[asyncio.AbstractEventLoop] = []
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
        boundary: str = "SentenceBoundary",
        connector: Any = None,
        proxy: Any = None,
        connect_timeout: int | None = 10,
        receive_timeout: int | None = 60,
    ) -> None:
        assert isinstance(connect_timeout, int) and isinstance(receive_timeout, int)
        self.text = text

    async def stream(self) -> AsyncIterator[dict[str, Any]]:
        FakeCommunicate.loops.append(asyncio.get_running_loop())
        data = mp3(0.05 * len(self.text))
        try:
            for i in range(0, len(data), 1500):
                if FakeCommunicate.hang:
                    await asyncio.sleep(3600)
                await asyncio.sleep(0.001)
                yield {"type": "audio", "data": data[i : i + 1500]}
                if i == 0:
                    yield {"type": "WordBoundary", "offset": 0, "duration": 10**6, "text": "x"}
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

    def __init__(self, *, base_url: str, api_key: str, max_retries: int) -> None:
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


def install_cosyvoice(monkeypatch: pytest.MonkeyPatch) -> None:
    fake_modules(
        monkeypatch,
        torch={},
        cosyvoice={},
        **{
            "cosyvoice.cli": {},
            "cosyvoice.cli.cosyvoice": {"CosyVoice2": FakeCosyVoice2},
            "cosyvoice.utils": {},
            "cosyvoice.utils.file_utils": {"load_wav": lambda path, sr: np.zeros(sr)},
        },
    )


def install_edge_tts(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(FakeCommunicate, "loops", [])
    fake_modules(monkeypatch, edge_tts={"Communicate": FakeCommunicate})


def install_openai(monkeypatch: pytest.MonkeyPatch) -> None:
    import openai

    monkeypatch.setattr(FakeOpenAI, "requests", [])
    monkeypatch.setattr(openai, "AsyncOpenAI", FakeOpenAI)
