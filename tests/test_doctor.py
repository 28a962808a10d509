"""`videochat doctor`: every registered backend with what it needs, what is
here, and the command that gets what is missing; exit 1 when a backend the
config selects is not ready. Weights are sparse files of the right size in a
temporary folder; the GPU is described, not probed, except where the probe
itself is tested (a fake nvidia-smi)."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import Any

import pytest

from core.config import REPO_ROOT, Config, load_config
from models.backends import CONTRACTS, backend_class, backend_names
from models.base import BackendNeeds
from models.needs import VIDEOCHAT_WEIGHTS
from server.cli import main
from tests.fakes import openai_server_app, served
from tools import doctor
from tools.doctor import GPUDevice, GPUInfo, diagnose

GPU_CONFIG = str(REPO_ROOT / "configs" / "gpu.yaml")
NO_GPU = GPUInfo("none", [], False, "torch is not installed; no nvidia-smi")
H100 = GPUInfo("torch", [GPUDevice("NVIDIA H100", 80.0, 79.0)], True, "torch 2.13.0, CUDA 12.8")


def sized(path: Path, size: int) -> None:
    """A sparse file of ``size`` bytes (a stand-in for a weight file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as f:
        f.truncate(size)


def default_weights(root: Path) -> None:
    """What `videochat weights` assembles for the CPU stack, by size."""
    sized(root / "whisper-base" / "model.bin", 145_217_532)
    sized(root / "qwen2.5-coder-1.5b-instruct-q4_k_m.gguf", 1_117_320_768)
    sized(root / "kokoro" / "kokoro-v1.0.int8.onnx", 92_361_271)
    sized(root / "kokoro" / "voices.npz", 28_214_398)
    sized(root / "piper" / "en_US-joe-medium.onnx", 63_201_294)
    sized(root / "piper" / "en_US-joe-medium.onnx.json", 4_888)
    sized(root / "avatars" / "astronaut" / "image.png", 395_139)


def config_in(weights: Path, **overrides: Any) -> Config:
    return load_config(**{"weights_dir": weights, **overrides})


def by_name(report: doctor.Report) -> dict[tuple[str, str], doctor.BackendCheck]:
    return {(b.stage, b.name): b for b in report.backends}


def test_every_registered_backend_is_listed_with_declared_needs(tmp_path):
    report = diagnose(config_in(tmp_path), "test", gpu=NO_GPU)
    listed = [(b.stage, b.name) for b in report.backends]
    assert listed == [(s, n) for s in CONTRACTS for n in backend_names(s)]  # type: ignore[arg-type]
    # Every backend says what it needs (its class, or the doctor's table for now).
    assert [b.name for b in report.backends if not b.declared] == []
    selected = {(b.stage, b.name) for b in report.backends if b.selected}
    assert selected == {
        ("vad", "silero"),
        ("asr", "faster-whisper"),
        ("llm", "embedded"),
        ("tts", "kokoro"),
        ("avatar", "photo"),
    }
    offered = {b.name for b in report.backends if b.offered}
    assert offered == set(config_in(tmp_path).tts.more_backends) - {"kokoro"}


def test_the_default_stack_with_its_weights_is_ready(tmp_path, capsys):
    default_weights(tmp_path)
    report = diagnose(config_in(tmp_path), "test", gpu=NO_GPU)
    assert report.not_ready == []
    assert doctor.run(config_in(tmp_path), "test") == 0
    out = capsys.readouterr().out
    assert "Every selected backend is ready." in out
    assert "* faster-whisper   ready" in out


def test_a_missing_weight_names_the_command_that_gets_it_and_fails(tmp_path, capsys):
    default_weights(tmp_path)
    (tmp_path / "kokoro" / "voices.npz").unlink()
    assert doctor.run(config_in(tmp_path), "test") == 1
    out = capsys.readouterr().out
    assert "weights/kokoro/voices.npz is missing" in out
    assert "-> videochat weights" in out
    assert "NOT READY (selected): tts kokoro" in out


def test_a_truncated_weight_is_not_ready(tmp_path):
    default_weights(tmp_path)
    sized(tmp_path / "whisper-base" / "model.bin", 134)  # what a Git LFS pointer weighs
    check = by_name(diagnose(config_in(tmp_path), "test", gpu=NO_GPU))["asr", "faster-whisper"]
    assert not check.ready
    assert "is 134 B, expected at least 140.0 MB" in check.problems[0]


def test_a_gpu_stack_without_a_gpu_says_what_to_fetch_and_install(tmp_path, capsys):
    default_weights(tmp_path)
    config = load_config(GPU_CONFIG, weights_dir=tmp_path)
    report = diagnose(config, GPU_CONFIG, gpu=NO_GPU)
    bad = {f"{b.stage} {b.name}" for b in report.not_ready}
    assert {"asr funasr", "tts cosyvoice", "avatar musetalk"} <= bad
    checks = by_name(report)
    funasr = checks["asr", "funasr"]
    assert funasr.cuda and "needs a CUDA GPU: none found" in funasr.problems
    fixes = "\n".join(funasr.fixes)
    assert (
        "huggingface-cli download funasr/paraformer-zh-streaming "
        "--local-dir weights/funasr/paraformer-zh-streaming" in fixes
    )
    musetalk = "\n".join(checks["avatar", "musetalk"].fixes)
    assert (
        "huggingface-cli download TMElyralab/MuseTalk --local-dir weights/musetalk "
        "--include 'musetalkV15/unet.pth'" in musetalk
    )
    assert "stabilityai/sd-vae-ft-mse" in musetalk and "openai/whisper-tiny" in musetalk


def test_gpu_memory_is_checked_against_what_the_backends_take(tmp_path):
    small = GPUInfo("torch", [GPUDevice("a small GPU", 8.0, 7.5)], True, "")
    config = config_in(tmp_path, **{"s2s.backend": "glm-4-voice"})
    glm = by_name(diagnose(config, "test", gpu=small))["s2s", "glm-4-voice"]
    assert glm.selected and "needs about 24 GB of GPU memory" in glm.problems
    assert "needs about" not in " ".join(
        by_name(diagnose(config, "test", gpu=H100))["s2s", "glm-4-voice"].problems
    )


def test_a_gpu_torch_cannot_use_is_reported(tmp_path, monkeypatch):
    """No usable torch, but nvidia-smi (a fake here) sees a GPU: the probe says so."""
    fake = tmp_path / "bin" / "nvidia-smi"
    fake.parent.mkdir()
    fake.write_text("#!/bin/sh\necho 'NVIDIA H200, 143771, 143000'\n")
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{fake.parent}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setattr(doctor, "torch_installed", lambda: False)
    gpu = doctor.probe_gpu()
    assert (gpu.source, gpu.torch_cuda) == ("nvidia-smi", False)
    assert gpu.devices[0].name == "NVIDIA H200" and gpu.devices[0].total_gb > 140
    assert "install a CUDA build of torch" in gpu.note
    musetalk = by_name(diagnose(config_in(tmp_path), "test", gpu=gpu))["avatar", "musetalk"]
    assert "torch cannot use the GPU nvidia-smi sees" in musetalk.problems


def test_a_class_declares_its_own_needs_and_a_subclass_does_not_inherit_them(tmp_path):
    config = config_in(tmp_path)
    funasr = doctor.needs_of("asr", "funasr", config)  # declared on the class
    assert funasr is not None and funasr.weights[0].path == "funasr/SenseVoiceSmall/"
    embedded = doctor.needs_of("llm", "embedded", config)  # not openai's, which it subclasses
    assert embedded is not None and embedded.weights[0].path == config.llm.model_file


def test_every_backend_declares_its_needs_on_its_class_not_in_the_doctor(tmp_path):
    """The doctor keeps no second list."""
    config = config_in(tmp_path)
    assert not hasattr(doctor, "UNDECLARED_NEEDS")
    for stage in CONTRACTS:
        for name in backend_names(stage):  # type: ignore[arg-type]
            cls = backend_class(stage, name)  # type: ignore[arg-type]
            assert "needs" in vars(cls), f"{stage} {name}: no needs() on {cls.__name__}"
            assert isinstance(cls.needs(config), BackendNeeds), f"{stage} {name}"


def test_the_selected_vllm_server_is_asked_what_it_serves(tmp_path):
    state: dict[str, Any] = {"models": ["Qwen/Qwen2.5-7B-Instruct"]}
    with served(openai_server_app(state)) as url:
        config = config_in(tmp_path, **{"llm.backend": "openai", "llm.base_url": f"{url}/v1"})
        check = by_name(diagnose(config, "test", gpu=NO_GPU))["llm", "openai"]
        assert "llm.model 'qwen2.5-1.5b' is not served" in check.problems[0]
        assert "set llm.model to one of: Qwen/Qwen2.5-7B-Instruct" in check.fixes[0]
        config.llm.model = "Qwen/Qwen2.5-7B-Instruct"
        check = by_name(diagnose(config, "test", gpu=NO_GPU))["llm", "openai"]
        assert check.ready and "answering: vllm" in check.external
    down = config_in(tmp_path, **{"llm.backend": "openai", "llm.base_url": "http://127.0.0.1:9/v1"})
    check = by_name(diagnose(down, "test", gpu=NO_GPU))["llm", "openai"]
    assert "no LLM server answers" in check.problems[0] and "vllm serve" in check.fixes[0]


def test_the_cli_prints_json_and_exits_1_for_a_selected_backend_not_ready(
    tmp_path, monkeypatch, capsys
):
    monkeypatch.setattr(doctor, "probe_gpu", lambda: NO_GPU)
    monkeypatch.setenv("VIDEOCHAT_WEIGHTS_DIR", str(tmp_path))  # empty: nothing assembled
    assert main(["doctor", "--json"]) == 1
    report = json.loads(capsys.readouterr().out)
    assert report["ok"] is False
    assert "asr faster-whisper" in report["selected_not_ready"]
    whisper = next(b for b in report["backends"] if b["name"] == "faster-whisper")
    assert whisper["selected"] and not whisper["ready"]
    assert whisper["weights"][0] == {
        "path": "whisper-base/model.bin",
        "min_bytes": 140_000_000,
        "found_bytes": None,
        "ok": False,
        "fetch": VIDEOCHAT_WEIGHTS,
    }
    assert report["gpu"]["source"] == "none"


@pytest.mark.parametrize("args", [["doctor"], ["doctor", "--config", GPU_CONFIG]])
def test_the_cli_refuses_a_bad_config_with_exit_2(args, monkeypatch, capsys):
    monkeypatch.setenv("VIDEOCHAT_LLM__SERVR", "vllm")
    assert main(args) == 2
    assert "llm.servr: unknown key" in capsys.readouterr().err
