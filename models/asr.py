"""Speech recognition backends.

* ``WhisperRecognizer`` (default, offline, CPU): Whisper base through
  faster-whisper / CTranslate2, int8, greedy. Each VAD segment is decoded in
  one call. Short utterances are encoded in a 10 s mel window instead of
  Whisper's padded 30 s (the encoder cost scales with the window; accuracy
  held in MODELS.md's measurements), and the encoder output is computed once
  and shared by language identification (restricted to English / Chinese)
  and decoding.
* ``FunASRRecognizer``: FunASR Paraformer / SenseVoiceSmall (torch,
  downloaded weights under ``weights/funasr/``).
"""

from __future__ import annotations

import dataclasses
import difflib
import logging
import os
import re
import threading
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from models.base import VAD_SAMPLE_RATE, BackendUnavailable, SpeechRecognizer, Transcript

if TYPE_CHECKING:
    from server.config import ASRConfig

log = logging.getLogger(__name__)

LANGUAGES = ("en", "zh")
# Whisper's encoder input: 100 mel frames per second, 3000 frames = 30 s.
_FRAMES_PER_SECOND = 100
_FULL_WINDOW_FRAMES = 3000


def _forced(language: str | None) -> str | None:
    """ "en"/"zh" (also "zh-CN", "EN"), or None for auto-detection."""
    if not language or language == "auto":
        return None
    language = language.lower()
    for lang in LANGUAGES:
        if language.startswith(lang):
            return lang
    raise ValueError(f"unsupported ASR language {language!r}: use 'en', 'zh' or 'auto'")


def _as_audio(audio: np.ndarray) -> np.ndarray:
    audio = np.asarray(audio)
    if audio.dtype == np.int16:
        audio = audio.astype(np.float32) / 32768.0
    return np.ascontiguousarray(audio, dtype=np.float32).reshape(-1)


# --------------------------------------------------------------------- Whisper
class WhisperRecognizer(SpeechRecognizer):
    """faster-whisper on the CPU (int8, greedy by default).

    ``language``: "en", "zh" or "auto" (detected per call, restricted to en/zh).
    ``window_s``: utterances up to this long are encoded in a window of this
    size rather than 30 s; 0 keeps Whisper's 30 s window.
    ``zh_prompt``: initial prompt for Chinese, which steers Whisper to
    simplified characters with punctuation ("" to disable).
    ``temperatures``: greedy first; one sampled retry when the greedy result
    looks degenerate (faster-whisper's compression-ratio / log-prob checks).
    Whisper's default six-step ladder can cost six decodes on noise.
    """

    def __init__(
        self,
        model_dir: str | Path,
        *,
        language: str = "auto",
        threads: int = 2,
        beam_size: int = 1,
        window_s: float = 10.0,
        zh_prompt: str = "以下是普通话的句子。",
        temperatures: tuple[float, ...] = (0.0, 0.4),
        warmup: bool = True,
    ) -> None:
        model_dir = Path(model_dir)
        if not (model_dir / "model.bin").is_file():
            raise BackendUnavailable(
                f"Whisper weights not found in {model_dir}; run `videochat weights`"
            )
        os.environ.setdefault("HF_HUB_OFFLINE", "1")  # local folder only, never the hub
        try:
            from faster_whisper import WhisperModel
            from faster_whisper.audio import pad_or_trim
            from faster_whisper.tokenizer import Tokenizer
        except ImportError as exc:
            raise BackendUnavailable(
                f"ASR backend 'faster-whisper' needs faster-whisper ({exc}): "
                "`pip install faster-whisper==1.2.1`"
            ) from exc
        self._Tokenizer = Tokenizer
        self._pad_or_trim = pad_or_trim
        self.language = _forced(language)
        self.window_frames = int(round(window_s * _FRAMES_PER_SECOND)) if window_s else 0
        self._model = WhisperModel(
            str(model_dir),
            device="cpu",
            compute_type="int8",
            cpu_threads=max(1, int(threads)),
            num_workers=1,
            local_files_only=True,
        )
        # One decode at a time: CTranslate2 runs one call per worker anyway, and
        # faster-whisper's feature extractor keeps per-call state.
        self._lock = threading.Lock()

        # Let faster-whisper build its TranscriptionOptions (defaults, suppressed
        # tokens) from the public API; the segment generator is never consumed.
        _, info = self._model.transcribe(
            np.zeros(VAD_SAMPLE_RATE // 10, dtype=np.float32),
            language="en",
            beam_size=beam_size,
            best_of=1,
            temperature=list(temperatures),
            condition_on_previous_text=False,
            without_timestamps=True,
            vad_filter=False,
        )
        options = info.transcription_options
        self._options = {
            "en": dataclasses.replace(options, initial_prompt=None),
            "zh": dataclasses.replace(options, initial_prompt=zh_prompt or None),
        }
        if warmup:
            noise = np.random.default_rng(0).normal(0, 0.01, VAD_SAMPLE_RATE).astype(np.float32)
            self.transcribe(noise, "en")

    def _encode(self, features: np.ndarray):
        """Encoder output for the first window of ``features`` (n_mels, frames)."""
        content_frames = features.shape[-1] - 1
        window = _FULL_WINDOW_FRAMES
        if self.window_frames and content_frames <= self.window_frames:
            window = self.window_frames
        return self._model.encode(self._pad_or_trim(features[:, :window], window))

    def _detect(self, encoder_output) -> tuple[str, dict[str, float]]:
        """Whisper's language probabilities, restricted to en/zh."""
        results = self._model.model.detect_language(encoder_output)[0]
        probs = {token[2:-2]: prob for token, prob in results}
        restricted = {lang: probs.get(lang, 0.0) for lang in LANGUAGES}
        return max(restricted, key=restricted.get), probs

    def transcribe(self, audio: np.ndarray, language: str | None = None) -> Transcript:
        audio = _as_audio(audio)
        lang = _forced(language) or self.language
        if audio.size < VAD_SAMPLE_RATE // 10:  # under 100 ms: nothing to hear
            return Transcript("", lang or "en")
        model = self._model
        with self._lock:
            # Passing chunk_length resets the extractor's window (it is sticky).
            features = model.feature_extractor(audio, chunk_length=30)
            encoder_output = self._encode(features)
            if lang is None:
                lang, probs = self._detect(encoder_output)
                log.debug(
                    "language %s (en %.2f, zh %.2f)", lang, probs.get("en", 0), probs.get("zh", 0)
                )
            tokenizer = self._Tokenizer(
                model.hf_tokenizer, model.model.is_multilingual, task="transcribe", language=lang
            )
            options = dataclasses.replace(self._options[lang])
            segments = model.generate_segments(
                features, tokenizer, options, log_progress=False, encoder_output=encoder_output
            )
            text = "".join(segment.text for segment in segments).strip()
        if lang == "zh" and self._is_prompt_echo(text):
            log.debug("dropping %r: an echo of the initial prompt (silence?)", text)
            text = ""
        return Transcript(text, lang)

    def _is_prompt_echo(self, text: str) -> bool:
        """On (near) silence Whisper tends to repeat its initial prompt."""
        prompt = self._options["zh"].initial_prompt
        if not prompt or not text:
            return False
        return difflib.SequenceMatcher(None, text, prompt).ratio() >= 0.75


# ---------------------------------------------------------------------- FunASR
_CJK_SPACE = re.compile(r"(?<=[\u3400-\u9fff])\s+(?=[\u3400-\u9fff])")
_SENSEVOICE_TAG = re.compile(r"<\|([a-z]{2,3})\|>")


class FunASRRecognizer(SpeechRecognizer):
    """FunASR ``AutoModel`` on a local model folder: SenseVoiceSmall
    (multilingual, language tag in its output) or Paraformer (Chinese; the
    ``-streaming`` variant is fed in 600 ms chunks with a cache)."""

    CHUNK_SIZE = [0, 10, 5]  # 600 ms per step, 300 ms look-ahead
    ENCODER_LOOK_BACK = 4
    DECODER_LOOK_BACK = 1

    def __init__(
        self,
        model_dir: str | Path,
        *,
        language: str = "auto",
        threads: int = 2,
        device: str = "cpu",
    ) -> None:
        model_dir = Path(model_dir)
        problems = []
        try:
            import torch  # noqa: F401
            from funasr import AutoModel
        except ImportError as exc:
            problems.append(f"`pip install funasr torch` ({exc})")
        if not model_dir.is_dir():
            problems.append(
                f"the model folder {model_dir} (download e.g. ModelScope iic/SenseVoiceSmall "
                "into weights/funasr/SenseVoiceSmall, or Hugging Face "
                "funasr/paraformer-zh-streaming into weights/funasr/paraformer-zh-streaming)"
            )
        if problems:
            raise BackendUnavailable("ASR backend 'funasr' needs: " + "; ".join(problems))

        name = model_dir.name.lower()
        self.kind = (
            "sensevoice"
            if "sensevoice" in name
            else "streaming"
            if "streaming" in name
            else "offline"
        )
        self.language = _forced(language)
        self._model = AutoModel(
            model=str(model_dir),
            device=device,
            ncpu=max(1, int(threads)),
            disable_update=True,
            disable_pbar=True,
            disable_log=True,
        )
        self._lock = threading.Lock()

    def transcribe(self, audio: np.ndarray, language: str | None = None) -> Transcript:
        from models.tts import detect_lang

        audio = _as_audio(audio)
        lang = _forced(language) or self.language
        if audio.size == 0:
            return Transcript("", lang or "zh")
        with self._lock:
            if self.kind == "sensevoice":
                from funasr.utils.postprocess_utils import rich_transcription_postprocess

                result = self._model.generate(
                    input=audio, cache={}, language=lang or "auto", use_itn=True, disable_pbar=True
                )
                raw = result[0]["text"] if result else ""
                tag = _SENSEVOICE_TAG.search(raw)
                text = rich_transcription_postprocess(raw)
                detected = tag.group(1) if tag and tag.group(1) in LANGUAGES else None
            elif self.kind == "streaming":
                text = self._streaming(audio)
                detected = None
            else:
                result = self._model.generate(input=audio, disable_pbar=True)
                text = result[0]["text"] if result else ""
                detected = None
        text = _CJK_SPACE.sub("", text).strip()
        return Transcript(text, lang or detected or detect_lang(text))

    def _streaming(self, audio: np.ndarray) -> str:
        stride = self.CHUNK_SIZE[1] * 960  # 600 ms at 16 kHz
        cache: dict = {}
        parts = []
        chunks = max(1, -(-len(audio) // stride))
        for i in range(chunks):
            result = self._model.generate(
                input=audio[i * stride : (i + 1) * stride],
                cache=cache,
                is_final=i == chunks - 1,
                chunk_size=self.CHUNK_SIZE,
                encoder_chunk_look_back=self.ENCODER_LOOK_BACK,
                decoder_chunk_look_back=self.DECODER_LOOK_BACK,
                disable_pbar=True,
            )
            if result:
                parts.append(result[0].get("text", ""))
        return "".join(parts)


# --------------------------------------------------------------------- factory
def load_recognizer(config: ASRConfig, weights_dir: str | Path) -> SpeechRecognizer:
    """Build the ASR backend named by ``config.backend`` (BackendUnavailable if
    it cannot run here)."""
    weights_dir = Path(weights_dir)
    if config.backend == "faster-whisper":
        model_dir = weights_dir / config.model
        if not (model_dir / "model.bin").is_file():
            raise BackendUnavailable(
                f"Whisper weights not found in {model_dir}; run `videochat weights`"
            )
        return WhisperRecognizer(
            model_dir,
            language=config.language,
            threads=config.threads,
            beam_size=config.beam_size,
        )
    if config.backend == "funasr":
        name = config.model if not config.model.startswith("whisper") else "SenseVoiceSmall"
        return FunASRRecognizer(
            weights_dir / "funasr" / name, language=config.language, threads=config.threads
        )
    raise BackendUnavailable(f"unknown ASR backend {config.backend!r}")
