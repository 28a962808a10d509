"""The FunASR backend against a fake of upstream's interface (FunASR at
3c58cb5: ``AutoModel(**kwargs)``, ``generate``, ``rich_transcription_postprocess``):
the device it is asked for, SenseVoice's rich tags, and streaming Paraformer's
partial transcripts reaching the page through a session."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
import pytest

from core.config import ASRConfig
from models.base import BackendUnavailable, SpeechRecognizer, Transcript
from pipelines.timebase import VirtualTime
from tests.fakes import ToneTTS, fake_engines, silence, tone
from tests.test_session import QUESTION_EN, make_session, of_type, wait_until
from tests.upstream_fakes import RecordingAutoModel, install_funasr_upstream

SR = 16_000


def funasr(tmp_path: Path, model: str, **config: str) -> SpeechRecognizer:
    from models.asr import load_recognizer

    (tmp_path / "funasr" / model).mkdir(parents=True, exist_ok=True)
    return load_recognizer(ASRConfig(backend="funasr", model=model, **config), tmp_path)


@pytest.fixture
async def clock() -> AsyncIterator[VirtualTime]:
    virtual = VirtualTime()
    yield virtual
    await virtual.aclose()


# ------------------------------------------------------------------ device
@pytest.mark.parametrize("model", ["SenseVoiceSmall", "paraformer-zh-streaming"])
def test_the_configured_device_reaches_automodel(tmp_path, monkeypatch, model):
    install_funasr_upstream(monkeypatch, cuda=True)
    funasr(tmp_path, model, device="cuda:0")
    (made,) = RecordingAutoModel.made
    assert made.kwargs["device"] == "cuda:0"
    assert made.kwargs["model"] == str(tmp_path / "funasr" / model)  # a local folder: no hub
    assert made.kwargs["disable_update"] is True


def test_the_default_device_is_the_cpu(tmp_path, monkeypatch):
    install_funasr_upstream(monkeypatch, cuda=False)
    funasr(tmp_path, "SenseVoiceSmall")
    assert RecordingAutoModel.made[0].kwargs["device"] == "cpu"


def test_a_gpu_torch_cannot_see_is_refused_not_replaced_by_the_cpu(tmp_path, monkeypatch):
    install_funasr_upstream(monkeypatch, cuda=False)
    with pytest.raises(BackendUnavailable) as err:
        funasr(tmp_path, "paraformer-zh-streaming", device="cuda:0")
    message = str(err.value)
    assert "asr.device is 'cuda:0'" in message and "CPU-only build" in message
    assert "asr.device: cpu" in message  # what to do instead
    assert RecordingAutoModel.made == []  # upstream would have loaded it on the CPU


# --------------------------------------------------------------- SenseVoice
RICH = [  # SenseVoice's raw output -> what the LLM reads and the page shows
    (
        "<|zh|><|NEUTRAL|><|Speech|><|withitn|>今天天气怎么样。",
        Transcript("今天天气怎么样。", "zh"),
    ),
    ("<|en|><|HAPPY|><|Laughter|><|withitn|>That is funny.", Transcript("That is funny.", "en")),
    ("<|nospeech|><|Event_UNK|>", Transcript("", "zh")),  # nothing said: nothing answered
]


@pytest.mark.parametrize(("raw", "expected"), RICH)
def test_sensevoice_rich_tags_become_plain_text_and_a_language(
    tmp_path, monkeypatch, raw, expected
):
    install_funasr_upstream(monkeypatch)
    monkeypatch.setattr(RecordingAutoModel, "sensevoice_raw", raw)
    asr = funasr(tmp_path, "SenseVoiceSmall")
    result = asr.transcribe(np.full(SR, 0.1, np.float32))
    if expected.text:
        assert result == expected  # no emoji: the LLM reads it, the page shows it
    else:
        assert result.text == ""
    call = RecordingAutoModel.made[0].calls[-1]
    assert call["language"] == "auto" and call["use_itn"] is True


def test_sensevoice_is_told_a_forced_language(tmp_path, monkeypatch):
    install_funasr_upstream(monkeypatch)
    asr = funasr(tmp_path, "SenseVoiceSmall", language="zh")
    assert asr.transcribe(np.full(SR, 0.1, np.float32)).language == "zh"
    assert RecordingAutoModel.made[0].calls[-1]["language"] == "zh"


# ------------------------------------------- streaming partials to the page
async def test_paraformer_partials_reach_the_page_while_the_user_speaks(
    tmp_path, monkeypatch, clock
):
    install_funasr_upstream(monkeypatch)
    asr = funasr(tmp_path, "paraformer-zh-streaming")
    engines = fake_engines(asr=asr, tts=ToneTTS(seconds_per_char=0.01))  # type: ignore[arg-type]
    session, events = make_session(engines, clock)
    try:
        audio = np.concatenate([tone(QUESTION_EN, 2.0), silence(0.6)])
        for i in range(0, audio.size, 320):  # 20 ms at a time, at the mic's pace
            session.feed_mic(audio[i : i + 320])
            await clock.sleep(0.02)
        await wait_until(lambda: len(session.turns) == 1, clock)
        user_text = of_type(events, "user_text")
        partials = [e["text"] for e in user_text if not e["final"] and e["text"]]
        finals = [e["text"] for e in user_text if e["final"]]
        # One upstream step per 600 ms heard, its words added to the partial.
        assert partials[:3] == ["今天", "今天天气", "今天天气怎么样"]
        first_partial = next(i for i, e in enumerate(events) if e in user_text and e["text"])
        assert first_partial < events.index({"type": "state", "value": "thinking"})
        assert len(finals) == 1 and finals[0].startswith(partials[-1])
        calls = RecordingAutoModel.made[0].calls
        assert calls[-1]["is_final"] and not any(c["is_final"] for c in calls[:-1])
        assert engines.llm.requests[0][1][-1] == {"role": "user", "content": finals[0]}
    finally:
        await session.close()
