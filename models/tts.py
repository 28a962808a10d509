"""Text-to-speech backends.

* ``KokoroSynthesizer`` (default, offline, CPU): Kokoro-82M int8 ONNX through
  kokoro-onnx. English text is phonemized by espeak-ng (kokoro-onnx's own
  tokenizer, library from ``espeakng-loader``), Chinese by misaki's ``ZHG2P``
  (pypinyin + jieba, no espeak); the phonemes go to
  ``Kokoro.create(..., is_phonemes=True)``. Mixed text is split into runs so
  that English words inside a Chinese sentence (and Chinese inside English)
  are phonemized by the right front end.
* ``EdgeTTSSynthesizer``: Microsoft Edge's online voices (``pip install
  edge-tts``, needs internet), MP3 decoded with PyAV.
* ``CosyVoiceSynthesizer``: CosyVoice 2 (GPU, torch, downloaded weights in
  ``weights/cosyvoice/CosyVoice2-0.5B``), SFT speakers or zero-shot from a
  prompt clip.

Heavy imports happen inside the classes, so the factory is cheap to import.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import io
import logging
import re
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from core.lang import CJK_CHARS, detect_lang
from models.base import BackendUnavailable, Speech, SpeechSynthesizer

if TYPE_CHECKING:
    from core.config import TTSConfig

log = logging.getLogger(__name__)

KOKORO_SAMPLE_RATE = 24_000
KOKORO_MODEL_FILE = "kokoro-v1.0.int8.onnx"
KOKORO_VOICES_FILE = "voices.npz"
COSYVOICE_DIR = Path("cosyvoice") / "CosyVoice2-0.5B"

_CJK_RUN = re.compile(f"([{CJK_CHARS}]+)")
# A run of Latin words inside Chinese text ("用 ChatGPT 写", "Hello World").
_LATIN_RUN = re.compile(r"([A-Za-z][A-Za-z'\-]*(?:\s+[A-Za-z][A-Za-z'\-]*)*)")


def _normalize_lang(lang: str | None, text: str) -> str:
    if lang is None or lang in ("", "auto"):
        return detect_lang(text)
    lang = lang.lower()
    if lang.startswith("zh"):
        return "zh"
    if lang.startswith("en"):
        return "en"
    raise ValueError(f"unsupported language {lang!r}: use 'en' or 'zh'")


# --------------------------------------------------------------------- Kokoro
class KokoroSynthesizer(SpeechSynthesizer):
    """Kokoro-82M (v1.0, int8 ONNX), 24 kHz, 54 voices in English and Chinese.

    ``synthesize`` is blocking and safe to call from several worker threads
    (onnxruntime sessions are thread-safe; espeak and the Chinese G2P are
    serialized by locks)."""

    sample_rate = KOKORO_SAMPLE_RATE

    def __init__(
        self,
        model_path: str | Path,
        voices_path: str | Path,
        *,
        voice_en: str = "af_heart",
        voice_zh: str = "zf_xiaoxiao",
        speed: float = 1.0,
        threads: int = 2,
        warmup: bool = True,
    ) -> None:
        model_path, voices_path = Path(model_path), Path(voices_path)
        missing = [str(p) for p in (model_path, voices_path) if not p.is_file()]
        if missing:
            raise BackendUnavailable(
                f"Kokoro weights not found: {', '.join(missing)}; run `videochat weights`"
            )
        try:
            import onnxruntime as ort
            from kokoro_onnx import Kokoro
            from misaki import zh
        except ImportError as exc:
            raise BackendUnavailable(
                f"TTS backend 'kokoro' needs kokoro-onnx and misaki[zh] ({exc}): "
                "`pip install kokoro-onnx==0.6.1 'misaki[zh]==0.9.4' espeakng-loader==0.2.4`"
            ) from exc
        if not 0.5 <= speed <= 2.0:
            raise ValueError(f"speed must be between 0.5 and 2.0, got {speed}")

        # kokoro-onnx's own create_session() takes no options; build the session
        # ourselves so the thread count is ours, then hand it over.
        options = ort.SessionOptions()
        options.intra_op_num_threads = max(1, int(threads))
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        # The same graph with Kokoro's per-phoneme durations as a second output
        # (models/kokoro_timing.py, written by `videochat weights`): identical
        # audio, plus real phoneme timings for the avatar's mouth.
        from models.kokoro_timing import timed_path

        timed = timed_path(model_path)
        session = ort.InferenceSession(
            str(timed if timed.is_file() else model_path),
            sess_options=options,
            providers=["CPUExecutionProvider"],
        )
        self._kokoro = Kokoro.from_session(session, str(voices_path))
        # True when Speech.phonemes come from Kokoro's own durations, False when
        # they come from aligning the phonemes to the audio (models/mouth.py).
        self.timed = bool(getattr(self._kokoro, "has_timings", False)) and hasattr(
            self._kokoro, "_create_batches"
        )
        # np.load gives a lazy NpzFile that re-reads the zip on every lookup and
        # is not thread-safe: load all 54 voices (28 MB) once.
        self._kokoro.voices = {name: np.asarray(v) for name, v in self._kokoro.voices.items()}
        self._voices = sorted(self._kokoro.voices)

        logging.getLogger("jieba").setLevel(logging.WARNING)  # "Building prefix dict..."
        # espeak splits "ChatGPT" into several words; phonemizer warns about it
        logging.getLogger("phonemizer").setLevel(logging.ERROR)
        self._g2p_zh = zh.ZHG2P()  # version=None: the IPA phoneme set of Kokoro v1.0
        self._g2p_lock = threading.Lock()

        self.voice_en = self._check_voice(voice_en)
        self.voice_zh = self._check_voice(voice_zh)
        self.speed = speed
        if warmup:
            # First calls pay for onnxruntime's allocations and jieba's dictionary.
            self.synthesize("Hello there.", "en")
            self.synthesize("你好。", "zh")

    # -- voices
    def voices(self) -> list[str]:
        return list(self._voices)

    def _check_voice(self, voice: str) -> str:
        if voice not in self._kokoro.voices:
            raise ValueError(
                f"unknown Kokoro voice {voice!r}; available: {', '.join(self._voices)}"
            )
        return voice

    # -- phonemes
    @staticmethod
    def _espeak_lang(voice: str) -> str:
        return "en-gb" if voice.startswith("b") else "en-us"

    def _phonemize_en(self, text: str, voice: str) -> str:
        if not text.strip():
            return ""
        return self._kokoro.tokenizer.phonemize(text, self._espeak_lang(voice))

    def _phonemize_zh(self, text: str) -> str:
        if not text.strip():
            return ""
        with self._g2p_lock:
            phonemes, _ = self._g2p_zh(text)
        return phonemes

    def phonemize(self, text: str, lang: str, voice: str | None = None) -> str:
        """Kokoro phonemes for ``text``; ``lang`` picks the front end for the
        text between runs of the other script."""
        lang = _normalize_lang(lang, text)
        voice = voice or (self.voice_zh if lang == "zh" else self.voice_en)
        parts: list[str] = []
        if lang == "zh":
            # Latin runs -> espeak; the rest (Chinese, digits, punctuation) -> misaki,
            # which also spells out Arabic numerals in Chinese.
            for i, chunk in enumerate(_LATIN_RUN.split(text)):
                parts.append(
                    self._phonemize_en(chunk, voice) if i % 2 else self._phonemize_zh(chunk)
                )
        else:
            for i, chunk in enumerate(_CJK_RUN.split(text)):
                parts.append(
                    self._phonemize_zh(chunk) if i % 2 else self._phonemize_en(chunk, voice)
                )
        vocab = self._kokoro.tokenizer.vocab
        phonemes = " ".join(p.strip() for p in parts if p.strip())
        return "".join(ch for ch in phonemes if ch in vocab).strip()

    # -- synthesis
    def synthesize(self, text: str, lang: str, voice: str | None = None) -> Speech:
        lang = _normalize_lang(lang, text)
        voice = self._check_voice(voice or (self.voice_zh if lang == "zh" else self.voice_en))
        phonemes = self.phonemize(text, lang, voice)
        if not phonemes.strip(" .,!?;:"):
            return Speech(np.zeros(0, dtype=np.float32), self.sample_rate)
        if self.timed:
            return self._synthesize_timed(phonemes, voice)
        audio, sample_rate = self._kokoro.create(
            phonemes, voice, speed=self.speed, is_phonemes=True
        )
        audio = np.asarray(audio, dtype=np.float32).reshape(-1)
        # This graph does not output its durations: align the phonemes to the
        # audio (models/mouth.py, a few ms) so the avatar gets timed mouth shapes.
        try:
            from models.mouth import align_phonemes

            timings = align_phonemes(phonemes, audio, int(sample_rate))
        except Exception:  # lip-sync falls back to the audio; never fail the reply
            log.exception("phoneme alignment failed")
            timings = []
        return Speech(audio, int(sample_rate), timings)

    def _synthesize_timed(self, phonemes: str, voice: str) -> Speech:
        """Kokoro.create's own steps (kokoro-onnx 0.6.1) minus its timing-based
        pause insertion, so the audio is sample for sample what ``create`` gives
        with the plain graph; the timings are Kokoro's predicted durations."""
        from models.mouth import spans_from_tokens

        k = self._kokoro
        style, _, batches = k._prepare(phonemes, voice, self.speed, "en-us", True, 0.25, 0.1)
        audio, spoken = k._create_batches(batches, style, self.speed, True)
        audio = np.asarray(audio, dtype=np.float32).reshape(-1)
        return Speech(audio, self.sample_rate, spans_from_tokens(spoken))


# --------------------------------------------------------------------- edge-tts
_EDGE_VOICE = re.compile(r"^[a-z]{2,3}-[A-Z]{2,4}(?:-[A-Za-z]+)?-[A-Za-z]+Neural$")


def decode_audio(data: bytes, sample_rate: int) -> np.ndarray:
    """Decode a compressed clip (MP3, ...) to mono float32 at ``sample_rate`` with PyAV."""
    import av

    chunks: list[np.ndarray] = []
    resampler = av.AudioResampler(format="flt", layout="mono", rate=sample_rate)
    with av.open(io.BytesIO(data), mode="r") as container:
        for frame in container.decode(audio=0):
            for out in resampler.resample(frame):
                chunks.append(out.to_ndarray().reshape(-1))
    for out in resampler.resample(None):
        chunks.append(out.to_ndarray().reshape(-1))
    if not chunks:
        return np.zeros(0, dtype=np.float32)
    return np.concatenate(chunks).astype(np.float32, copy=False)


def _run_coroutine(coro_factory):
    """Run a coroutine to completion from blocking code, even when the calling
    thread already runs an event loop."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro_factory())
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, coro_factory()).result()


class EdgeTTSSynthesizer(SpeechSynthesizer):
    """Microsoft Edge's online neural voices through ``edge-tts`` (needs internet)."""

    sample_rate = 24_000  # edge-tts streams audio-24khz-48kbitrate-mono-mp3
    DEFAULT_VOICES = {"en": "en-US-AriaNeural", "zh": "zh-CN-XiaoxiaoNeural"}
    KNOWN_VOICES = [
        "en-US-AriaNeural",
        "en-US-AvaNeural",
        "en-US-JennyNeural",
        "en-US-AndrewNeural",
        "en-US-GuyNeural",
        "en-GB-SoniaNeural",
        "en-GB-RyanNeural",
        "zh-CN-XiaoxiaoNeural",
        "zh-CN-XiaoyiNeural",
        "zh-CN-YunxiNeural",
        "zh-CN-YunjianNeural",
        "zh-CN-YunyangNeural",
    ]

    def __init__(
        self, voice_en: str | None = None, voice_zh: str | None = None, speed: float = 1.0
    ) -> None:
        try:
            import av  # noqa: F401
            import edge_tts  # noqa: F401
        except ImportError as exc:
            raise BackendUnavailable(
                f"TTS backend 'edge-tts' needs the edge-tts package ({exc}): "
                "`pip install edge-tts`. It calls Microsoft's online service, "
                "so it also needs internet access."
            ) from exc
        self.voice_en = self._pick(voice_en, "en")
        self.voice_zh = self._pick(voice_zh, "zh")
        self.speed = speed

    def _pick(self, voice: str | None, lang: str) -> str:
        if voice and _EDGE_VOICE.match(voice):
            return voice
        if voice:
            log.info(
                "edge-tts: %r is not an Edge voice, using %s", voice, self.DEFAULT_VOICES[lang]
            )
        return self.DEFAULT_VOICES[lang]

    def voices(self) -> list[str]:
        return sorted(set(self.KNOWN_VOICES) | {self.voice_en, self.voice_zh})

    def synthesize(self, text: str, lang: str, voice: str | None = None) -> Speech:
        import edge_tts

        lang = _normalize_lang(lang, text)
        voice = voice or (self.voice_zh if lang == "zh" else self.voice_en)
        if not _EDGE_VOICE.match(voice):
            raise ValueError(
                f"unknown edge-tts voice {voice!r}; e.g. {', '.join(self.KNOWN_VOICES)}"
            )
        if not text.strip():
            return Speech(np.zeros(0, dtype=np.float32), self.sample_rate)
        rate = f"{round((self.speed - 1.0) * 100):+d}%"

        async def fetch() -> bytes:
            mp3 = bytearray()
            async for chunk in edge_tts.Communicate(text, voice, rate=rate).stream():
                if chunk.get("type") == "audio":
                    mp3 += chunk["data"]
            return bytes(mp3)

        mp3 = _run_coroutine(fetch)
        return Speech(decode_audio(mp3, self.sample_rate), self.sample_rate)


# ------------------------------------------------------------------- CosyVoice
class CosyVoiceSynthesizer(SpeechSynthesizer):
    """CosyVoice 2 (0.5B): ``inference_sft`` for the speakers in its spk2info,
    ``inference_zero_shot`` for the voice ``"prompt"`` when
    ``<model_dir>/../prompt.wav`` (16 kHz mono, 3-10 s) and ``prompt.txt`` (its
    transcript) exist. Needs torch; practical only on a GPU."""

    PROMPT_VOICE = "prompt"

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
        self._lock = threading.Lock()

        prompt_wav = Path(prompt_wav) if prompt_wav else model_dir.parent / "prompt.wav"
        prompt_txt = model_dir.parent / "prompt.txt"
        if prompt_text is None and prompt_txt.is_file():
            prompt_text = prompt_txt.read_text(encoding="utf-8").strip()
        self._prompt = None
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

    def voices(self) -> list[str]:
        return ([self.PROMPT_VOICE] if self._prompt else []) + self._speakers

    def stream(self, text: str, lang: str, voice: str | None = None) -> Iterator[np.ndarray]:
        """Yield float32 chunks at ``self.sample_rate`` as CosyVoice produces them
        (``stream=True``)."""
        yield from self._generate(text, lang, voice, stream=True)

    def _generate(self, text: str, lang: str, voice: str | None, stream: bool):
        lang = _normalize_lang(lang, text)
        voice = voice or (self.voice_zh if lang == "zh" else self.voice_en)
        if voice not in self.voices():
            raise ValueError(
                f"unknown CosyVoice voice {voice!r}; available: {', '.join(self.voices())}"
            )
        with self._lock:
            if voice == self.PROMPT_VOICE:
                prompt_text, prompt_speech_16k = self._prompt
                outputs = self._model.inference_zero_shot(
                    text, prompt_text, prompt_speech_16k, stream=stream, speed=self.speed
                )
            else:
                outputs = self._model.inference_sft(text, voice, stream=stream, speed=self.speed)
            for out in outputs:
                yield out["tts_speech"].squeeze(0).float().cpu().numpy().astype(np.float32)

    def synthesize(self, text: str, lang: str, voice: str | None = None) -> Speech:
        chunks = list(self._generate(text, lang, voice, stream=False))
        audio = np.concatenate(chunks) if chunks else np.zeros(0, dtype=np.float32)
        return Speech(audio, self.sample_rate)


# --------------------------------------------------------------------- factory
def load_synthesizer(config: TTSConfig, weights_dir: str | Path) -> SpeechSynthesizer:
    """Build the TTS backend named by ``config.backend`` (BackendUnavailable if
    it cannot run here)."""
    weights_dir = Path(weights_dir)
    if config.backend == "kokoro":
        return KokoroSynthesizer(
            weights_dir / "kokoro" / KOKORO_MODEL_FILE,
            weights_dir / "kokoro" / KOKORO_VOICES_FILE,
            voice_en=config.voice_en,
            voice_zh=config.voice_zh,
            speed=config.speed,
            threads=config.threads,
        )
    if config.backend == "edge-tts":
        return EdgeTTSSynthesizer(config.voice_en, config.voice_zh, config.speed)
    if config.backend == "cosyvoice":
        return CosyVoiceSynthesizer(
            weights_dir / COSYVOICE_DIR,
            voice_en=config.voice_en,
            voice_zh=config.voice_zh,
            speed=config.speed,
        )
    raise BackendUnavailable(f"unknown TTS backend {config.backend!r}")
