"""ASR backend ``funasr``: FunASR's ``AutoModel`` on a local model folder
(torch; weights under ``weights/funasr/<asr.model>``).

* SenseVoiceSmall (multilingual, a language tag in its output) and offline
  Paraformer are batch models: streams keep the audio and decode it at their
  end. SenseVoice's rich tags (``<|zh|><|NEUTRAL|><|Speech|><|withitn|>``)
  go through upstream's ``rich_transcription_postprocess``, which turns the
  emotion and event tags into emoji; those are dropped here (the transcript
  is what the LLM reads and the page shows) and ``<|nospeech|>`` is no text.
* ``paraformer-zh-streaming`` decodes while the user speaks: 600 ms chunks go
  to ``generate`` with a per-utterance cache (``chunk_size=[0, 10, 5]``:
  600 ms steps with 300 ms look-ahead), as FunASR's own streaming example does,
  and each chunk's text extends the partial transcript.

``asr.device`` goes to ``AutoModel(device=...)``. Upstream quietly falls back
to the CPU when torch sees no CUDA (funasr/auto/auto_model.py L551-559);
asked for a GPU, this backend refuses to start instead. Signatures: FunASR
at 3c58cb5 (README.md L201-212: the streaming loop; funasr/models/sense_voice/
model.py L971-983: ``language``, ``use_itn``; funasr/utils/postprocess_utils.py
L436: ``rich_transcription_postprocess``).
"""

from __future__ import annotations

import re
import threading
from pathlib import Path
from typing import Any

import numpy as np

from core.config import ASRConfig, Config
from core.lang import detect_lang
from models.asr.common import LANGUAGES, forced_language
from models.backends import backend
from models.base import (
    BackendNeeds,
    BackendUnavailable,
    PackageNeed,
    RecognizerStream,
    SpeechRecognizer,
    Transcript,
    WeightNeed,
    mono_float32,
)

_CJK_SPACE = re.compile(r"(?<=[\u3400-\u9fff])\s+(?=[\u3400-\u9fff])")
_SENSEVOICE_TAG = re.compile(r"<\|([a-z]{2,3})\|>")
# What rich_transcription_postprocess makes of SenseVoice's emotion and event
# tags (funasr/utils/postprocess_utils.py, emoji_dict): not words.
_SENSEVOICE_MARKS = frozenset("😊😔😡😰🤢😮🎼👏😀😭🤧😷❓")
_NO_SPEECH = "<|nospeech|>"
# Where each model this backend knows comes from (upstream's own names), and
# a lower bound on its size (model.pt is ~0.9 GB for both).
_DOWNLOADS: dict[str, tuple[str, int]] = {
    "SenseVoiceSmall": (
        "huggingface-cli download FunAudioLLM/SenseVoiceSmall "
        "--local-dir weights/funasr/SenseVoiceSmall  "
        "(or: modelscope download --model iic/SenseVoiceSmall "
        "--local_dir weights/funasr/SenseVoiceSmall)",
        800_000_000,
    ),
    "paraformer-zh-streaming": (
        "huggingface-cli download funasr/paraformer-zh-streaming "
        "--local-dir weights/funasr/paraformer-zh-streaming  "
        "(or: modelscope download --model "
        "iic/speech_paraformer-large_asr_nat-zh-cn-16k-common-vocab8404-online "
        "--local_dir weights/funasr/paraformer-zh-streaming)",
        800_000_000,
    ),
}


def _clean(text: str) -> str:
    """FunASR spaces Chinese characters apart; join them again."""
    return _CJK_SPACE.sub("", text).strip()


def _model_name(config: ASRConfig) -> str:
    # The default model name is Whisper's: SenseVoiceSmall is FunASR's counterpart.
    return config.model if not config.model.startswith("whisper") else "SenseVoiceSmall"


def _check_device(device: str) -> None:
    """Refuse a CUDA device torch cannot see (upstream would use the CPU)."""
    if not device.startswith("cuda"):
        return
    import torch

    if not torch.cuda.is_available():
        built = getattr(torch.version, "cuda", None)
        why = "a CPU-only build" if not built else f"built for CUDA {built}, but no GPU is visible"
        raise BackendUnavailable(
            f"asr.device is {device!r} but torch {torch.__version__} sees no CUDA GPU ({why}): "
            "install a CUDA build of torch (https://pytorch.org/get-started/locally/) on a "
            "machine with an NVIDIA GPU, or set asr.device: cpu"
        )


@backend("asr", "funasr")
class FunASRRecognizer(SpeechRecognizer):
    """SenseVoiceSmall or offline Paraformer, one call per utterance;
    ``from_config`` picks ``FunASRStreamingRecognizer`` for a streaming model."""

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

        _check_device(device)
        self.kind = "sensevoice" if "sensevoice" in model_dir.name.lower() else "paraformer"
        self.language = forced_language(language)
        self._model = AutoModel(
            model=str(model_dir),
            device=device,
            ncpu=max(1, int(threads)),
            disable_update=True,
            disable_pbar=True,
            disable_log=True,
        )
        # One generate call at a time: FunASR's model objects are not thread-safe.
        self._lock = threading.Lock()

    @classmethod
    def from_config(cls, config: ASRConfig, weights_dir: Path) -> FunASRRecognizer:
        name = _model_name(config)
        kind = FunASRStreamingRecognizer if "streaming" in name.lower() else FunASRRecognizer
        return kind(
            weights_dir / "funasr" / name,
            language=config.language,
            threads=config.threads,
            device=config.device,
        )

    @classmethod
    def needs(cls, config: Config) -> BackendNeeds:
        name = _model_name(config.asr)
        fetch, min_bytes = _DOWNLOADS.get(
            name, (f"download FunASR's {name} into weights/funasr/{name}/ (its model zoo)", 0)
        )
        on_gpu = config.asr.device.startswith("cuda")
        return BackendNeeds(
            packages=(
                PackageNeed("torch", "pip install torch  (a CUDA build for asr.device cuda:N)"),
                PackageNeed("funasr", "pip install funasr"),
            ),
            weights=(WeightNeed(f"funasr/{name}/", min_bytes, fetch),),
            cuda=on_gpu,
            gpu_memory_gb=2.0 if on_gpu else 0.0,
        )

    def transcribe(self, audio: np.ndarray, language: str | None = None) -> Transcript:
        audio = mono_float32(audio)
        lang = forced_language(language) or self.language
        if audio.size == 0:
            return Transcript("", lang or "zh")
        detected = None
        with self._lock:
            if self.kind == "sensevoice":
                from funasr.utils.postprocess_utils import rich_transcription_postprocess

                result = self._model.generate(
                    input=audio, cache={}, language=lang or "auto", use_itn=True, disable_pbar=True
                )
                raw = str(result[0]["text"]) if result else ""
                tag = _SENSEVOICE_TAG.search(raw)
                detected = tag.group(1) if tag and tag.group(1) in LANGUAGES else None
                text = "" if _NO_SPEECH in raw else rich_transcription_postprocess(raw)
                text = "".join(c for c in text if c not in _SENSEVOICE_MARKS)
            else:
                result = self._model.generate(input=audio, disable_pbar=True)
                text = result[0]["text"] if result else ""
        text = _clean(text)
        return Transcript(text, lang or detected or detect_lang(text))


class FunASRStreamingRecognizer(FunASRRecognizer):
    """Paraformer-zh-streaming: decodes each 600 ms of an utterance as it comes."""

    streams_partials = True
    CHUNK_SIZE = [0, 10, 5]  # 600 ms per step, 300 ms look-ahead
    ENCODER_LOOK_BACK = 4  # chunks the encoder's self-attention looks back
    DECODER_LOOK_BACK = 1  # encoder chunks the decoder's cross-attention looks back
    CHUNK_SAMPLES = CHUNK_SIZE[1] * 960  # 600 ms at 16 kHz (60 ms frames)

    def new_stream(self, language: str | None = None) -> RecognizerStream:
        return ParaformerStream(self, forced_language(language) or self.language)

    def transcribe(self, audio: np.ndarray, language: str | None = None) -> Transcript:
        stream = self.new_stream(language)
        stream.feed(audio)
        return stream.finish()

    def decode_chunk(self, chunk: np.ndarray, cache: dict[str, Any], final: bool) -> str:
        """One streaming step: the text this chunk added."""
        with self._lock:
            result = self._model.generate(
                input=chunk,
                cache=cache,
                is_final=final,
                chunk_size=self.CHUNK_SIZE,
                encoder_chunk_look_back=self.ENCODER_LOOK_BACK,
                decoder_chunk_look_back=self.DECODER_LOOK_BACK,
                disable_pbar=True,
            )
        return str(result[0].get("text", "")) if result else ""


class ParaformerStream(RecognizerStream):
    """One utterance through the streaming Paraformer, with its own cache."""

    def __init__(self, recognizer: FunASRStreamingRecognizer, language: str | None) -> None:
        self._recognizer = recognizer
        self._language = language
        self._cache: dict[str, Any] = {}
        self._pending = np.zeros(0, np.float32)
        self._parts: list[str] = []
        self._heard = False  # any audio at all
        self._finished = False

    @property
    def text(self) -> str:
        return _clean("".join(self._parts))

    def feed(self, audio: np.ndarray) -> str | None:
        if self._finished:
            raise RuntimeError("this utterance is finished")
        audio = mono_float32(audio)
        self._heard |= audio.size > 0
        self._pending = np.concatenate([self._pending, audio])
        stride = self._recognizer.CHUNK_SAMPLES
        before = self.text
        # The last whole chunk waits for more audio: the final step must carry
        # audio, as in FunASR's example where the last slice is the final one.
        while self._pending.size > stride:
            chunk, self._pending = self._pending[:stride], self._pending[stride:]
            self._parts.append(self._recognizer.decode_chunk(chunk, self._cache, final=False))
        text = self.text
        return text if text != before else None

    def finish(self) -> Transcript:
        if self._finished:
            raise RuntimeError("this utterance is finished")
        self._finished = True
        if self._pending.size:  # empty only when no audio came at all
            self._parts.append(self._recognizer.decode_chunk(self._pending, self._cache, True))
        self._pending = np.zeros(0, np.float32)
        text = self.text
        if not self._heard:
            return Transcript("", self._language or "zh")
        return Transcript(text, self._language or detect_lang(text))
