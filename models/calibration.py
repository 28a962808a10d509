"""Measure what this machine does with the configured models.

Two machines of the same kind (2 cores) differ by 2.5x and more (AVX-512 and
VNNI or not), so figures from someone else's machine are not ours: every
stage is timed here, on the real models, once per machine and config
(server/machine.py caches the result and plans from it).

Each ``measure_*`` function takes loaded models (or paths) and returns plain
numbers; nothing here knows the server or the config.
"""

from __future__ import annotations

import logging
import os
import platform
import statistics
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from models.base import MEDIA_FPS, SpeechRecognizer, SpeechSynthesizer, to_media_rate

log = logging.getLogger(__name__)

# The sentences every stage is timed on: a short opening (a TTS call's fixed
# cost), a clause and an answer-sized sentence (its cost per second of audio).
SHORT = {"en": "Sure,", "zh": "好的，"}
MID = {"en": "The capital of France is Paris.", "zh": "中国的首都是北京。"}
LONG = {
    "en": "The capital of France is Paris, a city famous for its art, food and old bridges.",
    "zh": "中国的首都是北京，它是一座历史悠久的城市，有很多名胜古迹。",
}
# What the CPU flags tell about int8 and llama.cpp speed (MODELS.md: about
# 2.5x between AVX2-only and AVX-512 + VNNI machines).
FLAGS = ("avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "amx_int8")


@dataclass
class CPUFacts:
    model: str
    cores: int  # the cores this process may use
    flags: list[str]  # those of FLAGS the CPU has
    mhz: float | None
    memory_gib: float

    @property
    def kind(self) -> str:
        """A short label: which vector units int8 and llama.cpp work can use."""
        if "avx512_vnni" in self.flags or "amx_int8" in self.flags:
            return "AVX-512 VNNI"
        if "avx512f" in self.flags:
            return "AVX-512"
        if "avx_vnni" in self.flags:
            return "AVX-VNNI"
        return "AVX2" if "avx2" in self.flags else "no AVX2"


def cpu_facts() -> CPUFacts:
    model, mhz = platform.processor() or platform.machine(), None
    flags: set[str] = set()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as info:
            for line in info:
                key, _, value = line.partition(":")
                key, value = key.strip(), value.strip()
                if key == "model name":
                    model = value
                elif key == "flags" and not flags:
                    flags = set(value.split())
                elif key == "cpu MHz" and mhz is None:
                    mhz = float(value)
    except OSError:
        pass
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    try:
        memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    except (ValueError, OSError, AttributeError):
        memory = 0.0
    return CPUFacts(model, cores, [f for f in FLAGS if f in flags], mhz, round(memory, 1))


@dataclass
class TTSCost:
    """One TTS call costs ``fixed_s + per_audio_s * seconds of audio``."""

    fixed_s: float
    per_audio_s: float
    chars_per_audio_s: float  # how fast the voice speaks this language's text
    # The same call in the voices of each of ``tts.more_backends`` that speaks
    # this language (Piper), measured alongside: a session in such a voice is
    # planned with these. Empty in caches written before they were measured.
    more_backends: dict[str, TTSCost] = field(default_factory=dict)

    def seconds(self, audio_s: float) -> float:
        return self.fixed_s + self.per_audio_s * audio_s

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TTSCost:
        more = data.get("more_backends") or {}
        return cls(
            fixed_s=data["fixed_s"],
            per_audio_s=data["per_audio_s"],
            chars_per_audio_s=data["chars_per_audio_s"],
            more_backends={name: cls.from_dict(cost) for name, cost in more.items()},
        )


class OthersCPU:
    """Measures how much of the machine's CPU other programs use between
    ``start()`` and ``share()``: the machine's busy time (/proc/stat) less this
    process's own (its threads and children). 0 where /proc is not there."""

    def __init__(self) -> None:
        self._start = self._sample()

    @staticmethod
    def _sample() -> tuple[float, float, float] | None:
        try:
            fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
        except OSError:
            return None
        ticks = [int(x) for x in fields]
        idle = ticks[3] + (ticks[4] if len(ticks) > 4 else 0)  # idle + iowait
        hz = os.sysconf("SC_CLK_TCK")
        own = os.times()
        mine = own.user + own.system + own.children_user + own.children_system
        return (sum(ticks) - idle) / hz, time.monotonic(), mine

    def share(self) -> float:
        end = self._sample()
        if self._start is None or end is None:
            return 0.0
        busy, wall, mine = (b - a for a, b in zip(self._start, end, strict=True))
        cores = os.cpu_count() or 1
        return round(min(max((busy - mine) / max(wall * cores, 1e-6), 0.0), 1.0), 3)


@dataclass
class LLMRates:
    prompt_tok_s: float  # prompt processing (the user's new turn), tokens/s
    gen_tok_s: float  # generation, tokens/s


@dataclass
class Calibration:
    cpu: CPUFacts
    asr_s: float  # one answer-sized utterance (~4 s), end to end
    llm: dict[str, LLMRates]  # by thread count ("1", "2")
    tts: dict[str, dict[str, TTSCost]]  # by language, then thread count
    tokens_per_char: dict[str, float]  # the LLM's tokenizer on each language
    render_ms: float  # one avatar frame, one core
    encode_ms: float  # one VP8 frame as aiortc encodes it
    seconds: float = 0.0  # how long calibrating took
    created: float = field(default_factory=time.time)
    # Share of the machine's CPU that other programs used while it was measured:
    # a busy machine measures slow (seen: 1.2 against 10.9 tok/s on 2 threads).
    others_cpu_share: float = 0.0

    @property
    def media_cores(self) -> float:
        """Cores one session's video takes all the time (render + encode at 25 fps)."""
        return (self.render_ms + self.encode_ms) * MEDIA_FPS / 1000

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Calibration:
        return cls(
            cpu=CPUFacts(**data["cpu"]),
            asr_s=data["asr_s"],
            llm={k: LLMRates(**v) for k, v in data["llm"].items()},
            tts={
                lang: {k: TTSCost.from_dict(v) for k, v in by_threads.items()}
                for lang, by_threads in data["tts"].items()
            },
            tokens_per_char=data["tokens_per_char"],
            render_ms=data["render_ms"],
            encode_ms=data["encode_ms"],
            seconds=data.get("seconds", 0.0),
            created=data.get("created", 0.0),
            others_cpu_share=data.get("others_cpu_share", 0.0),
        )


def median_time(fn: Callable[[], Any], runs: int) -> tuple[float, Any]:
    """The median wall time of ``runs`` calls of ``fn``, and its last result."""
    times, result = [], None
    for _ in range(runs):
        started = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - started)
    return statistics.median(times), result


def more_tts_text(tts: dict[str, dict[str, TTSCost]]) -> str:
    """The costs of the other backends' voices, for the calibration paragraph
    ("Piper (en) 0.05 s per call + 0.08 s per s of audio"); "" if none."""
    parts = []
    for lang, by_threads in tts.items():
        one = by_threads.get("1")
        for name, cost in (one.more_backends if one else {}).items():
            parts.append(
                f"{name.capitalize()} ({lang}) {cost.fixed_s:.2f} s per call + "
                f"{cost.per_audio_s:.2f} s per s of audio"
            )
    return "; ".join(parts)


# -------------------------------------------------------------------- stages
def measure_tts(
    tts: SpeechSynthesizer, langs: Sequence[str] = ("en", "zh"), runs: int = 2
) -> dict[str, TTSCost]:
    """Fixed cost per call and cost per second of audio: a least-squares line
    through the median times of three sentences of different lengths (the
    first call of each language is a warm-up). ``tts`` routing between
    backends (models/tts/voices_router.py): the primary's configured voices,
    and each other backend in the languages it speaks under ``more_backends``."""
    from models.tts.voices_router import VoicesRouter, speaks

    primary = tts.primary if isinstance(tts, VoicesRouter) else tts
    more = tts.more if isinstance(tts, VoicesRouter) else {}
    costs: dict[str, TTSCost] = {}
    for lang in langs:
        if not speaks(primary, lang):  # Piper alone: English only
            log.info("TTS %s does not speak %s: not measured", type(primary).__name__, lang)
            continue
        costs[lang] = _measure_one(primary, lang, runs)
        for name, other in more.items():
            if speaks(other, lang):
                costs[lang].more_backends[name] = _measure_one(other, lang, runs)
    return costs


def _measure_one(tts: SpeechSynthesizer, lang: str, runs: int) -> TTSCost:
    voice = tts.calibration_voice  # Piper's joan: its costliest voice
    tts.synthesize(SHORT[lang], lang, voice)
    points = []
    for text in (SHORT[lang], MID[lang], LONG[lang]):
        seconds, speech = median_time(partial(tts.synthesize, text, lang, voice), runs)
        points.append((speech.audio.size / speech.sample_rate, seconds))
    audio, seconds = np.array(points).T
    per_audio, fixed = np.polyfit(audio, seconds, 1)
    return TTSCost(
        round(max(0.0, float(fixed)), 3),
        round(max(0.0, float(per_audio)), 3),
        round(len(LONG[lang]) / float(audio[-1]), 2),
    )


def measure_asr(asr: SpeechRecognizer, tts: SpeechSynthesizer, runs: int = 2) -> float:
    """Seconds to transcribe an answer-sized English utterance (the project's
    own TTS speaks it, so no recording is needed)."""
    from scipy.signal import resample_poly

    speech = tts.synthesize(LONG["en"], "en")
    audio = resample_poly(speech.audio, 16_000, speech.sample_rate).astype(np.float32)
    asr.transcribe(audio, "en")  # warm-up
    seconds, _ = median_time(lambda: asr.transcribe(audio, None), runs)
    return round(seconds, 3)


def measure_render(render_frame: Callable[[], Any], frames: int = 50) -> float:
    """Milliseconds per avatar frame (``render_frame`` renders one)."""
    for _ in range(5):
        render_frame()
    started = time.process_time()
    for _ in range(frames):
        render_frame()
    return round((time.process_time() - started) * 1000 / frames, 2)


def measure_encode(images: Sequence[np.ndarray]) -> float:
    """Milliseconds of CPU per frame for aiortc's VP8 encoder (the one the
    server's tracks use), RGB to YUV conversion included."""
    import fractions

    import av
    from aiortc.codecs.vpx import Vp8Encoder

    encoder = Vp8Encoder()
    started = time.process_time()
    for index, image in enumerate(images):
        frame = av.VideoFrame.from_ndarray(image, format="rgb24")
        frame.pts = index * (90_000 // MEDIA_FPS)
        frame.time_base = fractions.Fraction(1, 90_000)
        encoder.encode(frame)
    return round((time.process_time() - started) * 1000 / max(1, len(images)), 2)


def measure_avatar(
    avatar_stream: Any, tts: SpeechSynthesizer, frames: int = 75
) -> tuple[float, float]:
    """(render ms, encode ms) per frame of an avatar speaking a sentence."""
    speech = tts.synthesize(LONG["en"], "en")
    avatar_stream.push_audio(to_media_rate(speech), speech=speech)
    images: list[np.ndarray] = []
    render_ms = measure_render(lambda: images.append(avatar_stream.next_frame().image), frames)
    return render_ms, measure_encode(images[-frames:])


# ------------------------------------------------------------------------ LLM
def _nonce() -> str:
    return uuid.uuid4().hex[:8]  # keeps llama.cpp's prompt cache out of the measurement


async def measure_llm(base_url: str, model: str, runs: int = 2) -> LLMRates:
    """Prompt and generation rates of an OpenAI-compatible llama.cpp server,
    from the ``timings`` it reports (uncached prompts, 48 generated tokens)."""
    import httpx

    filler = (
        "Here is some background about trains, rivers, mountains and cities "
        "that you may ignore completely. "
    ) * 4
    prompt_rates, gen_rates = [], []
    async with httpx.AsyncClient(base_url=base_url, timeout=120) as client:
        for _ in range(runs):
            body = {
                "model": model,
                "messages": [
                    {"role": "system", "content": f"[{_nonce()}] {filler}"},
                    {"role": "user", "content": "Tell me a long story about a dragon."},
                ],
                "max_tokens": 48,
                "temperature": 0,
                "cache_prompt": False,
            }
            reply = (await client.post("/chat/completions", json=body)).raise_for_status().json()
            timings = reply.get("timings") or {}
            prompt_rates.append(float(timings.get("prompt_per_second", 0.0)))
            gen_rates.append(float(timings.get("predicted_per_second", 0.0)))
    return LLMRates(
        round(statistics.median(prompt_rates), 1), round(statistics.median(gen_rates), 1)
    )


async def measure_tokens_per_char(
    base_url: str, langs: Sequence[str] = ("en", "zh")
) -> dict[str, float]:
    """The LLM tokenizer's tokens per character of each language's answer text."""
    import httpx

    root = base_url.removesuffix("/v1")
    rates: dict[str, float] = {}
    async with httpx.AsyncClient(base_url=root, timeout=30) as client:
        for lang in langs:
            reply = await client.post("/tokenize", json={"content": LONG[lang]})
            tokens = len(reply.raise_for_status().json().get("tokens", []))
            rates[lang] = round(tokens / len(LONG[lang]), 3)
    return rates
