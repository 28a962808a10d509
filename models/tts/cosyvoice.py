"""TTS backend ``cosyvoice``: CosyVoice 2 (0.5B; torch, practical only on a
GPU, weights in ``weights/cosyvoice/CosyVoice2-0.5B``), its SFT speakers or
zero-shot from a prompt clip. ``stream`` hands on each piece of audio
CosyVoice makes in its streaming mode, so the avatar can start speaking
before the sentence is finished.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from core.config import TTSConfig
from models.backends import backend
from models.base import BackendUnavailable, Speech, SpeechSynthesizer
from models.tts.common import normalize_lang

COSYVOICE_DIR = Path("cosyvoice") / "CosyVoice2-0.5B"


@backend("tts", "cosyvoice")
class CosyVoiceSynthesizer(SpeechSynthesizer):
    """CosyVoice 2 (0.5B): ``inference_sft`` for the speakers in its spk2info,
    ``inference_zero_shot`` for the voice ``"prompt"`` when
    ``<model_dir>/../prompt.wav`` (16 kHz mono, 3-10 s) and ``prompt.txt`` (its
    transcript) exist."""

    PROMPT_VOICE = "prompt"
    streams_audio = True

    def __init__(
        self,
        model_dir: str | Path,
        *,
        voice_en: str | None = None,
        voice_zh: str | None = None,
        speed: float = 1.0,
        prompt_wav: str | Path | None = None,
        prompt_text: str | None = None,
        fp16: bool = False,
    ) -> None:
        model_dir = Path(model_dir)
        problems = []
        try:
            import torch  # noqa: F401
            from cosyvoice.cli.cosyvoice import CosyVoice2
        except ImportError as exc:
            problems.append(
                f"the cosyvoice package and torch are not importable ({exc}): clone "
                "https://github.com/FunAudioLLM/CosyVoice (with --recursive), "
                "`pip install -r requirements.txt` in it, and put it and its "
                "third_party/Matcha-TTS on PYTHONPATH"
            )
        if not (model_dir / "cosyvoice2.yaml").is_file():
            problems.append(
                f"no CosyVoice 2 weights in {model_dir}: download the "
                "FunAudioLLM/CosyVoice2-0.5B model into weights/cosyvoice/CosyVoice2-0.5B"
            )
        if problems:
            raise BackendUnavailable("TTS backend 'cosyvoice': " + "; ".join(problems))

        self._model = CosyVoice2(str(model_dir), load_jit=False, load_trt=False, fp16=fp16)
        self.sample_rate = int(self._model.sample_rate)
        self.speed = speed
        # One synthesis at a time: CosyVoice's model keeps per-call state.
        self._lock = threading.Lock()

        prompt_wav = Path(prompt_wav) if prompt_wav else model_dir.parent / "prompt.wav"
        prompt_txt = model_dir.parent / "prompt.txt"
        if prompt_text is None and prompt_txt.is_file():
            prompt_text = prompt_txt.read_text(encoding="utf-8").strip()
        self._prompt: tuple[str, Any] | None = None
        if prompt_wav.is_file() and prompt_text:
            from cosyvoice.utils.file_utils import load_wav

            self._prompt = (prompt_text, load_wav(str(prompt_wav), 16000))
        self._speakers = list(self._model.list_available_spks())
        available = self.voices()
        if not available:
            raise BackendUnavailable(
                "CosyVoice 2 has no built-in speakers here: put a 3-10 s 16 kHz mono "
                f"prompt clip at {prompt_wav} and its transcript in {prompt_txt}"
            )
        default = self.PROMPT_VOICE if self._prompt else available[0]
        self.voice_en = voice_en if voice_en in available else default
        self.voice_zh = voice_zh if voice_zh in available else default

    @classmethod
    def from_config(cls, config: TTSConfig, weights_dir: Path) -> CosyVoiceSynthesizer:
        return cls(
            weights_dir / COSYVOICE_DIR,
            voice_en=config.voice_en,
            voice_zh=config.voice_zh,
            speed=config.speed,
        )

    def voices(self) -> list[str]:
        return ([self.PROMPT_VOICE] if self._prompt else []) + self._speakers

    def stream(self, text: str, lang: str, voice: str | None = None) -> Iterator[Speech]:
        for audio in self._generate(text, lang, voice, stream=True):
            yield Speech(audio, self.sample_rate)

    def synthesize(self, text: str, lang: str, voice: str | None = None) -> Speech:
        chunks = list(self._generate(text, lang, voice, stream=False))
        audio = np.concatenate(chunks) if chunks else np.zeros(0, dtype=np.float32)
        return Speech(audio, self.sample_rate)

    def _generate(
        self, text: str, lang: str, voice: str | None, stream: bool
    ) -> Iterator[np.ndarray]:
        """CosyVoice's outputs as float32 arrays (several in streaming mode)."""
        lang = normalize_lang(lang, text)
        voice = voice or (self.voice_zh if lang == "zh" else self.voice_en)
        if voice not in self.voices():
            raise ValueError(
                f"unknown CosyVoice voice {voice!r}; available: {', '.join(self.voices())}"
            )
        if not text.strip():  # nothing to say: no call (as Kokoro and edge-tts)
            return
        with self._lock:
            if voice == self.PROMPT_VOICE and self._prompt is not None:
                prompt_text, prompt_speech_16k = self._prompt
                outputs = self._model.inference_zero_shot(
                    text, prompt_text, prompt_speech_16k, stream=stream, speed=self.speed
                )
            else:
                outputs = self._model.inference_sft(text, voice, stream=stream, speed=self.speed)
            for out in outputs:
                yield out["tts_speech"].squeeze(0).float().cpu().numpy().astype(np.float32)
