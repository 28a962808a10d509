"""The configuration refuses what it does not know, and says what it knows."""

from __future__ import annotations

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
