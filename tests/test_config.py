"""The configuration refuses what it does not know, and says what it knows."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from core.config import ConfigError, load_config
from server.cli import main


def test_the_shipped_config_loads():
    config = load_config()
    assert config.server.port == 8000 and config.llm.fault_lines["en"]


def test_a_misspelt_key_is_an_error_naming_the_known_ones(tmp_path: Path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("llm:\n  temprature: 0.3\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"llm\.temprature: unknown key .*temperature"):
        load_config(bad)


def test_environment_and_overrides_are_validated(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("VIDEOCHAT_SERVER__PORTT", "9000")
    with pytest.raises(ConfigError, match="server.portt"):
        load_config()
    monkeypatch.delenv("VIDEOCHAT_SERVER__PORTT")
    with pytest.raises(ConfigError, match="--server-port"):
        load_config(**{"server.port": "not a port"})
    assert load_config(**{"server.port": 9001}).server.port == 9001


def test_the_cli_says_what_is_wrong_and_exits_2(monkeypatch, capsys):
    monkeypatch.setenv("VIDEOCHAT_TTS__VOICE", "af_heart")
    assert main(["calibrate"]) == 2
    assert "tts.voice: unknown key" in capsys.readouterr().err


def test_backend_names_are_checked_against_the_registered_ones(monkeypatch):
    from models.backends import backend_names, check_backends

    check_backends(load_config())  # the shipped names are all registered
    monkeypatch.setenv("VIDEOCHAT_ASR__BACKEND", "whisperx")
    config = load_config(**{"tts.backend": "kokoro2"})  # names are strings in core/
    with pytest.raises(ConfigError) as err:
        check_backends(config)
    message = str(err.value)
    # Every wrong name at once, each with the names that would do.
    assert "asr.backend: unknown backend 'whisperx' (known here: faster-whisper, funasr)" in message
    assert "tts.backend: unknown backend 'kokoro2'" in message
    assert ", ".join(backend_names("tts")) in message
    assert "llm.backend" not in message


def test_an_unknown_backend_stops_the_loaders_before_any_model_loads(tmp_path):
    from models.asr import load_recognizer
    from models.llm import load_chat_model
    from models.registry import load_engines
    from models.tts import load_synthesizer
    from models.vad import load_vad

    config = load_config(**{"weights_dir": tmp_path, "vad.backend": "webrtcvad"})
    with pytest.raises(ConfigError, match=r"vad\.backend: unknown backend 'webrtcvad'.*silero"):
        asyncio.run(load_engines(config))  # no weights in tmp_path: nothing else was tried
    with pytest.raises(ConfigError, match="known here: energy, silero"):
        load_vad(config.vad)
    with pytest.raises(ConfigError, match="faster-whisper"):
        load_recognizer(config.asr.model_copy(update={"backend": "nope"}), tmp_path)
    with pytest.raises(ConfigError, match="embedded, openai"):
        load_chat_model(config.llm.model_copy(update={"backend": "nope"}), tmp_path)
    with pytest.raises(ConfigError, match="cosyvoice, edge-tts, gpt-sovits, kokoro"):
        load_synthesizer(config.tts.model_copy(update={"backend": "nope"}), tmp_path)
    with pytest.raises(ConfigError, match=r"s2s\.backend: unknown backend 'moshi'"):
        asyncio.run(load_engines(load_config(**{"s2s.backend": "moshi"})))


def test_the_cli_refuses_an_unknown_backend_before_loading_models(monkeypatch, capsys):
    monkeypatch.setenv("VIDEOCHAT_ASR__BACKEND", "whisperx")
    assert main(["calibrate"]) == 2
    err = capsys.readouterr().err
    assert "asr.backend: unknown backend 'whisperx' (known here: faster-whisper, funasr)" in err


@pytest.mark.parametrize(
    "path", sorted((Path(__file__).parent.parent / "configs").glob("*.yaml")), ids=lambda p: p.name
)
def test_every_shipped_config_loads_with_registered_backends(path: Path):
    from models.backends import check_backends

    config = load_config(path)  # unknown keys or bad values would raise here
    check_backends(config)


def test_the_gpu_config_runs_its_stages_on_cuda_and_its_llm_on_vllm():
    config = load_config(Path(__file__).parent.parent / "configs" / "gpu.yaml")
    assert (config.asr.backend, config.asr.device) == ("funasr", "cuda:0")
    assert (config.llm.backend, config.llm.server) == ("openai", "vllm")
    assert config.llm.base_url == "http://127.0.0.1:8001/v1"
    assert (config.tts.backend, config.avatar.backend) == ("cosyvoice", "musetalk")
    assert isinstance(config.server.max_sessions, int) and config.server.max_sessions > 4
