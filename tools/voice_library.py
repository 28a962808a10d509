"""User voices on disk, ``weights_dir/voices/<name>/``: their names, reading a
clip (any format PyAV decodes), checking it, matching it to a Kokoro voice
(tools/voice_match.py ``match_voice``), and listing, adding and removing them.

Layout of a user voice (models/tts/kokoro.py reads ``style.npy`` and ``meta.json``)::

    clip.wav    the clip as given, 16 kHz mono 16-bit, trimmed of leading and
                trailing silence
    style.npy   float32 (510, 1, 256): the matched Kokoro voice (the layout of
                the entries of weights/kokoro/voices.npz)
    meta.json   name, lang ("en" | "zh"), transcript (or null), speech_seconds,
                similarity, nearest_stock, nearest_similarity, created

A voice is built in ``voices/.tmp/`` and renamed into place, so a failure or a
crash never leaves a half-written voice. The offline path *matches* the clip
to a voice Kokoro can speak with; it does not clone it.
"""

from __future__ import annotations

import json
import logging
import shutil
import threading
import time
import uuid
import wave
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from core.lang import detect_lang
from models.speaker.speaker_count import voiced
from models.tts.piper import PIPER_VOICES
from tools.avatar_library import (
    NAME_RE,
    TMP_DIR,
    AvatarError,
    check_name,
    cleanup_tmp,
    remove_folder,
)

log = logging.getLogger(__name__)

VOICES_DIR = "voices"
SAMPLES_DIR = "voice_samples"
SAMPLE_RATE = 16_000
FRAME = 512  # Silero's window at 16 kHz (32 ms)
SPEECH_PROB = 0.5
PAD_S = 0.2  # kept around the speech when trimming
SILENCE_DBFS = -60.0  # a clip whose loudest frame is below this is silence
LANGS = ("en", "zh")
# Kokoro's voice names start with their language: a/b American/British English, z Chinese.
STOCK_PREFIX_LANG = {"a": "en", "b": "en", "z": "zh"}
SAMPLE_TEXT = {
    "en": "Hello! This is how I sound when I answer your questions.",
    "zh": "你好！这就是我回答你问题时的声音。",
}

Progress = Callable[[float, str], None]


class VoiceError(ValueError):
    """Bad input for a voice (the API answers ``status``, the CLI prints it)."""

    status = 400


class VoiceNotFound(VoiceError):
    status = 404


class VoiceTaken(VoiceError):
    status = 409


class VoiceTooLarge(VoiceError):
    status = 413


class Match(Protocol):
    """What tools/voice_match.py ``match_voice`` returns (its ``MatchResult``)."""

    style: np.ndarray
    similarity: float
    nearest_stock: str
    nearest_similarity: float
    lang: str


Matcher = Callable[[np.ndarray, str, Path, Progress], Match]


def default_matcher() -> Matcher:
    """tools/voice_match.py's ``match_voice`` (imported on use: it loads a
    speaker-embedding model; the tests put a stand-in here)."""
    try:
        from tools.voice_match import match_voice
    except ImportError as exc:
        raise RuntimeError(f"voice matching is not available: {exc}") from exc
    return match_voice  # type: ignore[no-any-return]


@dataclass
class VoiceLimits:
    max_upload_mb: float = 20.0
    min_speech_s: float = 3.0
    max_speech_s: float = 30.0
    max_clip_s: float = 120.0  # the whole clip, pauses included

    @classmethod
    def from_config(cls, config: Any) -> VoiceLimits:
        """From the config's ``voices`` section where it has one, else the defaults."""
        section = getattr(config, "voices", None)
        if section is None:
            return cls()
        defaults = cls()
        return cls(**{k: float(getattr(section, k, v)) for k, v in asdict(defaults).items()})


@dataclass
class VoiceInfo:
    name: str
    lang: str
    path: Path
    transcript: str | None = None
    speech_seconds: float = 0.0
    similarity: float = 0.0
    nearest_stock: str = ""
    nearest_similarity: float = 0.0
    created: str = ""

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("path")
        return d


# ===================================================================== names
def voices_dir(weights_dir: str | Path) -> Path:
    return Path(weights_dir) / VOICES_DIR


# Voices of the other TTS backends (tts.more_backends): a user voice of the
# same name would never be reached, as the router gives the name to them.
OTHER_BACKEND_VOICES = frozenset(PIPER_VOICES)


def stock_voice_names(weights_dir: str | Path) -> list[str]:
    """Kokoro's own voices (the names in weights/kokoro/voices.npz; [] without it)."""
    path = Path(weights_dir) / "kokoro" / "voices.npz"
    if not path.is_file():
        return []
    with np.load(path) as npz:  # reads the zip's directory only
        return sorted(npz.files)


def stock_lang(name: str) -> str | None:
    """A stock voice's language from its name: Kokoro's prefix ("af_heart"), or
    a locale as other backends name theirs ("zh-CN-XiaoxiaoNeural")."""
    if "_" in name:
        return STOCK_PREFIX_LANG.get(name[:1])
    locale = name[:3].lower()
    return {"en-": "en", "zh-": "zh"}.get(locale)


def stock_voices(weights_dir: str | Path) -> dict[str, list[str]]:
    """The stock voices of each language this project speaks."""
    out: dict[str, list[str]] = {lang: [] for lang in LANGS}
    for name in stock_voice_names(weights_dir):
        lang = stock_lang(name)
        if lang is not None:
            out[lang].append(name)
    return out


def check_voice_name(name: str, weights_dir: str | Path) -> str:
    """The name, if a user voice may have it: the avatars' rule, and not a stock voice's."""
    try:
        check_name(name, "voice")
    except AvatarError as exc:
        raise VoiceError(str(exc)) from None
    if name in stock_voice_names(weights_dir) or name in OTHER_BACKEND_VOICES:
        raise VoiceError(f"{name!r} is a built-in voice; choose another name")
    return name


# ==================================================================== manage
def read_voice(folder: Path) -> VoiceInfo | None:
    if not NAME_RE.fullmatch(folder.name) or not (folder / "style.npy").is_file():
        return None
    try:
        meta = json.loads((folder / "meta.json").read_text())
        return VoiceInfo(
            name=folder.name,
            lang=str(meta["lang"]),
            path=folder,
            transcript=meta.get("transcript"),
            speech_seconds=float(meta.get("speech_seconds", 0.0)),
            similarity=float(meta.get("similarity", 0.0)),
            nearest_stock=str(meta.get("nearest_stock", "")),
            nearest_similarity=float(meta.get("nearest_similarity", 0.0)),
            created=str(meta.get("created", "")),
        )
    except (OSError, ValueError, KeyError, TypeError):
        return None


def list_voices(weights_dir: str | Path) -> list[VoiceInfo]:
    root = voices_dir(weights_dir)
    if not root.is_dir():
        return []
    infos = (read_voice(p) for p in sorted(root.iterdir()) if p.is_dir())
    return [i for i in infos if i is not None]


def remove_voice(name: str, weights_dir: str | Path) -> None:
    if name in stock_voice_names(weights_dir):
        raise VoiceError(f"{name!r} is a built-in voice and cannot be removed")
    try:
        check_name(name, "voice")
    except AvatarError as exc:
        raise VoiceError(str(exc)) from None
    root = voices_dir(weights_dir)
    target = root / name
    if not target.is_dir():
        raise VoiceNotFound(f"no voice {name!r}")
    remove_folder(target)
    for sample in sample_dir(weights_dir).glob(f"user-{name}-*.wav"):
        sample.unlink(missing_ok=True)


# ================================================================== the clip
def decode_audio(path: Path, limits: VoiceLimits) -> np.ndarray:
    """The clip's first audio stream as 16 kHz mono float32 (any container and
    codec FFmpeg reads; a video's sound too). VoiceError when there is none."""
    import av

    not_audio = VoiceError(
        f"{path.name} could not be decoded as audio (WAV, MP3, OGG, WebM, M4A ...): "
        "it is damaged, truncated or not a sound file"
    )
    try:
        container = av.open(str(path))
    except Exception:
        raise not_audio from None
    chunks: list[np.ndarray] = []
    total = 0
    try:
        if not container.streams.audio:
            raise not_audio
        stream = container.streams.audio[0]
        resampler = av.AudioResampler(format="flt", layout="mono", rate=SAMPLE_RATE)
        for frame in container.decode(stream):
            for out in resampler.resample(frame):
                chunk = out.to_ndarray().reshape(-1).astype(np.float32)
                chunks.append(chunk)
                total += chunk.size
            if total > limits.max_clip_s * SAMPLE_RATE:
                raise VoiceError(
                    f"{path.name} is too long (more than {limits.max_clip_s:g} s): "
                    f"use {limits.min_speech_s:g}-{limits.max_speech_s:g} s of speech"
                )
        for out in resampler.resample(None):
            chunks.append(out.to_ndarray().reshape(-1).astype(np.float32))
    except VoiceError:
        raise
    except Exception:  # FFmpeg's errors on damaged data
        if not chunks:
            raise not_audio from None
        log.warning("%s: decoding stopped early on damaged data", path.name)
    finally:
        container.close()
    audio = np.concatenate(chunks) if chunks else np.zeros(0, np.float32)
    if audio.size < FRAME or not np.isfinite(audio).all():
        raise not_audio
    return np.clip(audio, -1.0, 1.0)


def speech_probabilities(audio: np.ndarray) -> np.ndarray:
    """Silero's speech probability of each 32 ms frame (models/vad)."""
    from models.vad.silero import SileroVoiceDetector

    detector = SileroVoiceDetector()
    n = audio.size // FRAME
    return np.array(
        [detector.speech_probability(audio[i * FRAME : (i + 1) * FRAME]) for i in range(n)],
        dtype=np.float32,
    )


@dataclass
class CheckedClip:
    audio: np.ndarray  # trimmed of leading and trailing silence
    speech_seconds: float
    speech: np.ndarray  # only its speech, pauses left out (the one-speaker check)


def check_clip(audio: np.ndarray, limits: VoiceLimits) -> CheckedClip:
    """The clip trimmed to its speech, if it has between ``min_speech_s`` and
    ``max_speech_s`` of it; VoiceError saying what is wrong otherwise."""
    n = audio.size // FRAME
    frames = audio[: n * FRAME].reshape(n, FRAME)
    rms = np.sqrt(np.mean(frames.astype(np.float64) ** 2, axis=1))
    loudest = 20 * np.log10(max(float(rms.max()) if n else 0.0, 1e-10))
    if loudest < SILENCE_DBFS:
        raise VoiceError("the clip is silent: record someone speaking")
    speech = speech_probabilities(audio) >= SPEECH_PROB
    seconds = float(speech.sum()) * FRAME / SAMPLE_RATE
    if seconds < 0.5:
        raise VoiceError("no speech found in the clip (only noise or silence): record a voice")
    if seconds < limits.min_speech_s:
        raise VoiceError(
            f"the clip has {seconds:.1f} s of speech; at least {limits.min_speech_s:g} s "
            "are needed"
        )
    if seconds > limits.max_speech_s:
        raise VoiceError(
            f"the clip has {seconds:.1f} s of speech; at most {limits.max_speech_s:g} s "
            "are used: cut it shorter"
        )
    spoken = np.flatnonzero(speech)
    pad = int(PAD_S * SAMPLE_RATE)
    start = max(0, int(spoken[0]) * FRAME - pad)
    end = min(audio.size, (int(spoken[-1]) + 1) * FRAME + pad)
    return CheckedClip(
        np.ascontiguousarray(audio[start:end]), round(seconds, 2), voiced(audio, speech, FRAME)
    )


SpeakerCheck = Callable[[CheckedClip, Path], None]


def check_one_speaker(clip: CheckedClip, weights_dir: Path) -> None:
    """VoiceError when the clip clearly holds two speakers (models/speaker/
    speaker_count.py; the configured speaker encoder). Two similar voices pass
    as one: only a clear second speaker is refused, never a single one."""
    from models.speaker.speaker_count import split_speakers
    from tools.voice_match import configured_encoder

    split = split_speakers(configured_encoder(weights_dir), clip.speech)
    log.info("speaker split: %s", split)
    if split.two_speakers:
        raise VoiceError(
            "the clip holds more than one speaker (about "
            f"{split.minor_seconds:.0f} s of it is another voice): use a clip of one "
            "person speaking alone"
        )


def write_wav(path: Path, audio: np.ndarray, sample_rate: int) -> None:
    pcm = np.clip(np.round(audio * 32767.0), -32768, 32767).astype("<i2")
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(sample_rate)
        out.writeframes(pcm.tobytes())


def clip_lang(
    lang: str | None,
    text: str | None,
    recognize: Callable[[np.ndarray], str] | None,
    audio: np.ndarray,
) -> str:
    """The clip's language: given, else the transcript's, else the recognizer's."""
    if lang:
        lang = lang.lower()
        if lang not in LANGS:
            raise VoiceError(f"lang must be 'en' or 'zh', not {lang!r}")
        return lang
    if text and text.strip():
        return detect_lang(text)
    if recognize is None:
        raise VoiceError("say the clip's language (en or zh) or give its transcript")
    found = recognize(audio[: 30 * SAMPLE_RATE])
    if found not in LANGS:
        raise VoiceError(f"the clip's language ({found}) is neither English nor Chinese")
    return found


# ====================================================================== add
_INSTALL_LOCK = threading.Lock()


def check_new_name(name: str, weights_dir: str | Path) -> None:
    """VoiceError when ``name`` is no valid name for a new user voice (400) or is
    taken (409)."""
    check_voice_name(name, weights_dir)
    if (voices_dir(weights_dir) / name).exists():
        raise VoiceTaken(f"a voice named {name!r} exists; remove it first or choose another name")


def add_voice(
    name: str,
    source_path: str | Path,
    weights_dir: str | Path,
    *,
    text: str | None = None,
    lang: str | None = None,
    recognize: Callable[[np.ndarray], str] | None = None,
    limits: VoiceLimits | None = None,
    progress: Progress | None = None,
    match: Matcher | None = None,
    one_speaker: SpeakerCheck | None = None,
) -> VoiceInfo:
    """Decode, check and match a clip into ``weights_dir/voices/<name>/``.
    ``recognize`` (audio -> "en" | "zh"): the language when neither ``lang``
    nor ``text`` tells it. ``one_speaker``: the check that the clip holds one
    speaker (``check_one_speaker``). Raises VoiceError on bad input, leaving nothing."""
    t0 = time.perf_counter()
    limits = limits or VoiceLimits()
    progress = progress or (lambda fraction, message: None)
    weights = Path(weights_dir)
    check_new_name(name, weights)
    if text is not None:
        text = text.strip() or None
        if text is not None and len(text) > 2000:
            raise VoiceError("the transcript is too long (at most 2000 characters)")
    src = Path(source_path)
    if not src.is_file():
        raise VoiceError(f"no such file: {src}")
    size_mb = src.stat().st_size / (1024 * 1024)
    if size_mb > limits.max_upload_mb:
        raise VoiceTooLarge(
            f"{src.name} is too large ({size_mb:.1f} MB; at most {limits.max_upload_mb:g} MB)"
        )
    if src.stat().st_size == 0:
        raise VoiceError(f"{src.name} is empty")
    progress(0.0, "reading the clip")
    audio = decode_audio(src, limits)
    progress(0.05, "finding the speech")
    clip = check_clip(audio, limits)
    progress(0.08, "checking it is one speaker")
    (one_speaker or check_one_speaker)(clip, weights)
    progress(0.1, "language")
    lang = clip_lang(lang, text, recognize, clip.audio)
    progress(0.15, "matching the voice")
    matcher = match or default_matcher()

    def matching(fraction: float, message: str) -> None:
        progress(0.15 + 0.8 * min(max(fraction, 0.0), 1.0), message)

    result = matcher(clip.audio, lang, weights, matching)
    style = np.asarray(result.style, dtype=np.float32)
    if style.shape != (510, 1, 256) or not np.isfinite(style).all():
        raise RuntimeError(f"voice matching gave a style of shape {style.shape}")
    progress(0.95, "writing")

    root = voices_dir(weights)
    tmp_root = root / TMP_DIR
    tmp_root.mkdir(parents=True, exist_ok=True)
    work = tmp_root / f"{name}-{uuid.uuid4().hex[:8]}"
    work.mkdir()
    info = VoiceInfo(
        name=name,
        lang=str(result.lang or lang),
        path=root / name,
        transcript=text,
        speech_seconds=clip.speech_seconds,
        similarity=round(float(result.similarity), 4),
        nearest_stock=str(result.nearest_stock),
        nearest_similarity=round(float(result.nearest_similarity), 4),
        created=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    )
    try:
        write_wav(work / "clip.wav", clip.audio, SAMPLE_RATE)
        np.save(work / "style.npy", style)
        (work / "meta.json").write_text(json.dumps(info.to_dict(), indent=1, ensure_ascii=False))
        with _INSTALL_LOCK:
            if info.path.exists():  # added meanwhile (another upload, the CLI)
                raise VoiceTaken(f"a voice named {name!r} exists; choose another name")
            work.rename(info.path)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    finally:
        cleanup_tmp(tmp_root)
    progress(1.0, "ready")
    log.info(
        "voice %r (%s) matched in %.1f s: similarity %.2f (nearest stock %s: %.2f)",
        name,
        info.lang,
        time.perf_counter() - t0,
        info.similarity,
        info.nearest_stock,
        info.nearest_similarity,
    )
    return info


# =================================================================== samples
def sample_dir(weights_dir: str | Path) -> Path:
    return Path(weights_dir) / SAMPLES_DIR


def sample_path(weights_dir: str | Path, name: str, user: VoiceInfo | None) -> Path:
    """Where the sample of a voice is cached; a user voice's names its creation,
    so a voice removed and added again under that name gets a new one."""
    if user is None:
        return sample_dir(weights_dir) / f"{name}.wav"
    stamp = "".join(c for c in user.created if c.isdigit()) or "0"
    return sample_dir(weights_dir) / f"user-{name}-{stamp}.wav"


def write_sample(path: Path, audio: np.ndarray, sample_rate: int) -> None:
    """Write a sample WAV atomically (concurrent readers see all of it or none)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}")
    try:
        write_wav(tmp, audio, sample_rate)
        tmp.rename(path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
