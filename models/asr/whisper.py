"""ASR backend ``faster-whisper`` (the default, offline, CPU).

Whisper base through faster-whisper / CTranslate2, int8, greedy. Each VAD
segment is decoded in one call (a batch backend: streams keep the audio and
transcribe it at their end). Short utterances are encoded in a 10 s mel
window instead of Whisper's padded 30 s (the encoder cost scales with the
window; accuracy held in MODELS.md's measurements), and the encoder output is
computed once and shared by language identification (restricted to English /
Chinese) and decoding. Silence, noise and breaths never become words: an
energy gate skips quiet audio before Whisper, and each decoded segment must
pass gates on Whisper's own confidence (see ``_rejection``).
"""

from __future__ import annotations

import dataclasses
import difflib
import logging
import os
import re
import threading
from pathlib import Path
from typing import Any

import numpy as np

from core.config import ASRConfig, Config
from models.asr.common import LANGUAGES, forced_language
from models.backends import backend
from models.base import (
    VAD_SAMPLE_RATE,
    BackendNeeds,
    BackendUnavailable,
    PackageNeed,
    SpeechRecognizer,
    Transcript,
    WeightNeed,
    mono_float32,
)
from models.needs import MB, VIDEOCHAT_WEIGHTS

log = logging.getLogger(__name__)

# Whisper's encoder input: 100 mel frames per second, 3000 frames = 30 s.
_FRAMES_PER_SECOND = 100
_FULL_WINDOW_FRAMES = 3000

# Energy gate: the level of the loudest 100 ms (5th-loudest 20 ms frame, mean
# removed) must reach this floor, or Whisper is not called. Digital silence,
# dither (-86 to -98 dBFS) and faint room noise (-70 dBFS) stay under it; the
# spoken fixtures reach -30 dBFS (0 dB), -57 dBFS (scaled down 30 dB) and -66 dBFS
# (40 dB down; still transcribed right), normal speech at a microphone -35 to -20.
ENERGY_FLOOR_DBFS = -60.0
_GATE_FRAME = VAD_SAMPLE_RATE // 50  # 20 ms
_GATE_LOUD_FRAMES = 5  # 100 ms: a lone click does not open the gate

# Gates on each decoded segment (Whisper's own signals). faster-whisper only
# skips a window when no_speech_prob > 0.6 AND avg_logprob < -1.0; on silence
# this CPU gets no_speech_prob 0.56, falls back to temperature 0.4 and keeps the
# best failed sample, " you" at avg_logprob -1.46.
MIN_AVG_LOGPROB = -1.0  # below: drop, whatever no_speech_prob says
NO_SPEECH_PROB = 0.6  # above, with avg_logprob under NO_SPEECH_LOGPROB: drop
NO_SPEECH_LOGPROB = -0.5
MAX_COMPRESSION_RATIO = 2.4  # above: a repetition loop
# A known hallucination phrase is kept only on strong evidence: greedy decode
# (temperature 0), avg_logprob >= -0.6 and no_speech_prob <= 0.4. Real short
# words measured -0.25..-0.5 and 0.01..0.1 ("Thank you.", "谢谢。").
PHRASE_MIN_AVG_LOGPROB = -0.6
PHRASE_MAX_NO_SPEECH_PROB = 0.4
# Whisper's classic hallucinations on silence and noise (its subtitle-laden
# training data), compared after _normalized().
_HALLUCINATED_PHRASES = frozenset(
    {
        "you",
        "thankyou",
        "thankyouverymuch",
        "thankyousomuch",
        "thanks",
        "thanksforwatching",
        "thankyouforwatching",
        "thankyousomuchforwatching",
        "thanksforwatchingandseeyounexttime",
        "pleasesubscribe",
        "subscribe",
        "likeandsubscribe",
        "seeyounexttime",
        "bye",
        "byebye",
        "theend",
        "谢谢",
        "谢谢大家",
        "谢谢观看",
        "感谢观看",
        "谢谢收看",
        "谢谢观看下次见",
        "中文字幕",
    }
)
# Channel credits (found anywhere in the text): "字幕由Amara.org社区提供",
# "请不吝点赞 订阅 转发 打赏支持明镜与点点栏目", "优优独播剧场——YoYo Television Series Exclusive".
_HALLUCINATED_PATTERN = re.compile(
    r"字幕.*(提供|制作)|amaraorg|点赞.*订阅|订阅.*点赞|明镜.*点点|独播剧场|yoyotelevision"
)
# Traditional -> simplified, for the characters of the phrases above only.
_SIMPLIFY = str.maketrans("謝觀區訂閱點讚贊賞鏡欄劇場製", "谢观区订阅点赞赞赏镜栏剧场制")
_NOT_WORD = re.compile(r"[\W_]+")


def loud_level_dbfs(audio: np.ndarray) -> float:
    """Level of the loudest ~100 ms of ``audio`` (float, 16 kHz) in dBFS: the
    5th-largest RMS of its 20 ms frames, each frame's mean removed (DC offset).
    -inf for digital silence."""
    frames = audio[: audio.size // _GATE_FRAME * _GATE_FRAME].reshape(-1, _GATE_FRAME)
    if not frames.size:
        return float("-inf")
    frames = frames.astype(np.float64)
    power = np.var(frames, axis=1)  # mean-square about the frame mean
    k = min(_GATE_LOUD_FRAMES, power.size)
    loud = float(np.partition(power, power.size - k)[power.size - k])
    return 10.0 * np.log10(loud) if loud > 0 else float("-inf")


def _normalized(text: str) -> str:
    """Lower case, simplified characters, no spaces or punctuation."""
    return _NOT_WORD.sub("", text.casefold().translate(_SIMPLIFY))


def is_hallucination_phrase(text: str) -> bool:
    """One of Whisper's stock phrases for silence / noise (subtitle credits,
    "Thanks for watching!", "you", ...)."""
    norm = _normalized(text)
    return bool(norm) and (
        norm in _HALLUCINATED_PHRASES or bool(_HALLUCINATED_PATTERN.search(norm))
    )


def _rejection(segment: Any) -> str | None:
    """Why a decoded faster-whisper ``Segment`` is not speech, or None to keep it."""
    nsp, logprob = segment.no_speech_prob, segment.avg_logprob
    if segment.compression_ratio > MAX_COMPRESSION_RATIO:
        return f"repetitive (compression ratio {segment.compression_ratio:.2f})"
    if logprob < MIN_AVG_LOGPROB:
        return f"low confidence (avg_logprob {logprob:.2f})"
    if nsp > NO_SPEECH_PROB and logprob < NO_SPEECH_LOGPROB:
        return f"no speech (no_speech_prob {nsp:.2f}, avg_logprob {logprob:.2f})"
    if is_hallucination_phrase(segment.text) and (
        segment.temperature > 0
        or logprob < PHRASE_MIN_AVG_LOGPROB
        or nsp > PHRASE_MAX_NO_SPEECH_PROB
    ):
        return (
            f"a stock hallucination on weak evidence (no_speech_prob {nsp:.2f}, "
            f"avg_logprob {logprob:.2f}, temperature {segment.temperature:.1f})"
        )
    return None


# --------------------------------------------------------------------- Whisper
@backend("asr", "faster-whisper")
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
        self.language = forced_language(language)
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

    @classmethod
    def needs(cls, config: Config) -> BackendNeeds:
        """What ``videochat doctor`` checks."""
        # asr.model names another backend's model when another backend is selected.
        name = config.asr.model if config.asr.backend == "faster-whisper" else "whisper-base"
        fetch = (
            VIDEOCHAT_WEIGHTS
            if name == "whisper-base"
            else f"a CTranslate2 Whisper folder into weights/{name}/, e.g. huggingface-cli "
            f"download Systran/faster-whisper-large-v3 --local-dir weights/{name}"
        )
        return BackendNeeds(
            packages=(PackageNeed("faster_whisper", "pip install -e ."),),
            weights=(
                WeightNeed(f"{name}/model.bin", 140 * MB if name == "whisper-base" else MB, fetch),
            ),
        )

    @classmethod
    def from_config(cls, config: ASRConfig, weights_dir: Path) -> WhisperRecognizer:
        return cls(
            weights_dir / config.model,
            language=config.language,
            threads=config.threads,
            beam_size=config.beam_size,
        )

    def _encode(self, features: np.ndarray) -> Any:
        """Encoder output for the first window of ``features`` (n_mels, frames)."""
        content_frames = features.shape[-1] - 1
        window = _FULL_WINDOW_FRAMES
        if self.window_frames and content_frames <= self.window_frames:
            window = self.window_frames
        return self._model.encode(self._pad_or_trim(features[:, :window], window))

    def _detect(self, encoder_output: Any) -> tuple[str, dict[str, float]]:
        """Whisper's language probabilities, restricted to en/zh."""
        results = self._model.model.detect_language(encoder_output)[0]
        probs = {token[2:-2]: prob for token, prob in results}
        restricted = {lang: probs.get(lang, 0.0) for lang in LANGUAGES}
        return max(restricted, key=lambda lang: restricted[lang]), probs

    def transcribe(self, audio: np.ndarray, language: str | None = None) -> Transcript:
        audio = mono_float32(audio)
        lang = forced_language(language) or self.language
        if audio.size < VAD_SAMPLE_RATE // 10:  # under 100 ms: nothing to hear
            return Transcript("", lang or "en")
        level = loud_level_dbfs(audio)
        if level < ENERGY_FLOOR_DBFS:
            log.debug("not decoding: level %.1f dBFS < %.0f (silence)", level, ENERGY_FLOOR_DBFS)
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
            options = dataclasses.replace(
                self._options[lang], max_new_tokens=self._max_new_tokens(audio.size)
            )
            segments = model.generate_segments(
                features, tokenizer, options, log_progress=False, encoder_output=encoder_output
            )
            kept = []
            for segment in segments:
                reason = _rejection(segment)
                if reason:
                    log.debug("dropping %r: %s", segment.text, reason)
                else:
                    kept.append(segment.text)
            text = "".join(kept).strip()
        if lang == "zh" and self._is_prompt_echo(text):
            log.debug("dropping %r: an echo of the initial prompt (silence?)", text)
            text = ""
        return Transcript(text, lang)

    @staticmethod
    def _max_new_tokens(samples: int) -> int | None:
        """A cap on decoded tokens for short audio: 16 a second (fast Chinese
        speech needs under 12) plus 16. A repetition loop on noise otherwise
        decodes up to Whisper's 448 tokens, twice (greedy and the retry): 10 s."""
        cap = 16 + 16 * -(-samples // VAD_SAMPLE_RATE)
        return cap if cap <= 200 else None

    def _is_prompt_echo(self, text: str) -> bool:
        """On (near) silence Whisper tends to repeat its initial prompt, or a
        variant of it ("这位置是普通话的句子。")."""
        prompt = self._options["zh"].initial_prompt
        if not prompt or not text:
            return False
        matcher = difflib.SequenceMatcher(None, text, prompt)
        common = matcher.find_longest_match(0, len(text), 0, len(prompt)).size
        return matcher.ratio() >= 0.75 or common >= max(4, len(prompt) // 2)
