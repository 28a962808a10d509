"""This machine: calibrate once, then plan for it.

``videochat calibrate`` (and ``make run`` through it) times every stage on the
configured models (models/calibration.py) and caches the result in
``weights/calibration.json`` under a key made of the CPU (model, flags,
cores) and the parts of the config that change the models. From the
measurements, ``plan_for`` works out how many conversations this machine holds
in real time and the settings that fit it; any setting the config pins (a
number instead of ``auto``) is kept as it is.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from core.config import AUTO, Config
from models.calibration import Calibration, CPUFacts, cpu_facts, more_tts_text
from pipelines.planner import PIECE_AUDIO_S, STALL_TOLERANCE_S

log = logging.getLogger(__name__)

CACHE_FILE = "calibration.json"
# Share of the cores the plan may fill: the rest is for the event loop, Opus,
# SRTP, ASR bursts and the odd other program.
USABLE_SHARE = 0.85
FASTER_VOICE_SHARE = 0.5  # another backend's voice this much cheaper is worth a note
# Live, a reply costs about this many times the cores its stages' calibrated
# costs add up to. The sum assumes the stages pack the cores perfectly; they
# do not: the LLM writes while the TTS speaks, so a two-thread TTS call gets
# about one core (measured on an AVX2 machine: the TTS thread ran 44-70 % of
# each call's wall time), and the event loop, SRTP and a browser on the same
# machine take their share. Checked against three measured runs
# (docs/benchmarks.md): one conversation on the AVX-512 kind (2.33x real time
# by the sum: no stalls), one on the AVX2 kind (1.43x: stalls in 9 of 10
# replies) and two at once on the AVX-512 kind (1.05x each: stalls, answers
# 5.6-6.7 s). Twice the sum separates them.
LIVE_REPLY_COST = 2.0
# A first piece of about this much audio is what a 4-word cap gives.
SHORT_FIRST_PIECE_AUDIO_S = 1.2
# A two-thread TTS call is chosen when it costs less than this share of a
# one-thread call per second of audio.
TWO_THREADS_PAY = 0.75
# Above this TTS fixed cost per call, cutting pieces short costs more than it saves.
CUT_EARLY_MAX_FIXED_S = 0.6
# The first-token limit covers the longest prompt a turn processes uncached
# (a slot primed again: persona and history, about this many tokens) at the
# calibrated one-thread prompt rate, plus a margin, within these bounds.
LONGEST_UNCACHED_PROMPT_TOKENS = 600
FIRST_TOKEN_TIMEOUT_BOUNDS_S = (15.0, 60.0)

# A TTS call at start-up this much slower (or faster) than the cached
# calibration predicts is said in the log: the host is busier (or freer) than
# when it was measured (measured on a slow 2-core VM: the same machine 1.3-1.7x
# slower in the afternoon than at its morning calibration).
SPOT_CHECK_DRIFT = 1.3
SPOT_CHECK_BOUNDS = (0.5, 4.0)  # the planner's learnt slowdown stays within these

# Other programs using more than this share of the CPU while calibrating make
# its figures low, and the plan too cautious: said in the log and the summary.
BUSY_SHARE = 0.15

Progress = Callable[[float, str], None]


def _no_progress(fraction: float, message: str) -> None:
    pass


# ----------------------------------------------------------------- the key
def cache_key(cpu: CPUFacts, config: Config) -> str:
    """What the measurements depend on: the CPU and the models, not the port."""
    parts = {
        "cpu": [cpu.model, sorted(cpu.flags), cpu.cores],
        "asr": [config.asr.backend, config.asr.model],
        "llm": [config.llm.backend, config.llm.model_file, config.llm.base_url],
        "tts": [
            config.tts.backend,
            config.tts.voice_en,
            config.tts.voice_zh,
            config.tts.speed,
            sorted(config.tts.more_backends),  # their voices are measured too
        ],
        "avatar": [config.avatar.backend, config.avatar.size],
        # 2: another backend is timed in its costliest voice (Piper's joan).
        "version": 2,
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]


def _cache_path(config: Config) -> Path:
    return config.weights_path / CACHE_FILE


def load_cached(config: Config) -> Calibration | None:
    path = _cache_path(config)
    try:
        entries = json.loads(path.read_text(encoding="utf-8"))
        data = entries.get(cache_key(cpu_facts(), config))
        return Calibration.from_dict(data) if data else None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        if path.exists():
            log.warning("ignoring unreadable %s: %s", path, exc)
        return None


def _store(config: Config, calibration: Calibration) -> None:
    path = _cache_path(config)
    try:
        entries = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        entries = {}
    entries[cache_key(calibration.cpu, config)] = calibration.to_dict()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(entries, indent=1), encoding="utf-8")
    tmp.replace(path)


# -------------------------------------------------------------- calibrating
def calibrate(config: Config, progress: Progress = _no_progress) -> Calibration:
    """Time every stage on this machine with the configured models (about a
    minute on a fast 2-core machine, two on a slow one) and cache it."""
    return asyncio.run(_calibrate(config, progress))


async def _calibrate(config: Config, progress: Progress) -> Calibration:
    from models import calibration as measure
    from models.asr import load_recognizer
    from models.tts import load_voices

    started = time.perf_counter()
    others = measure.OthersCPU()
    cpu = cpu_facts()
    weights = config.weights_path
    progress(0.02, "TTS, 1 thread")
    tts_costs: dict[str, dict[str, Any]] = {"en": {}, "zh": {}}
    synthesizers = {}
    for step, threads in enumerate((1, 2)):
        tts_config = config.tts.model_copy(update={"threads": threads})
        # The primary and tts.more_backends: measure_tts times each (Piper beside Kokoro).
        tts = await asyncio.to_thread(load_voices, tts_config, weights)
        synthesizers[threads] = tts
        for lang, cost in (await asyncio.to_thread(measure.measure_tts, tts)).items():
            tts_costs[lang][str(threads)] = cost
        progress(0.2 + 0.2 * step, f"TTS, {threads + 1} threads" if step == 0 else "ASR")
    tts_costs = {lang: by for lang, by in tts_costs.items() if by}  # Piper alone: no zh
    tts = synthesizers[1]
    asr = await asyncio.to_thread(load_recognizer, config.asr, weights)
    asr_s = await asyncio.to_thread(measure.measure_asr, asr, tts)
    del asr
    progress(0.45, "avatar render + VP8")
    render_ms, encode_ms = await asyncio.to_thread(_measure_avatar, config, tts)
    progress(0.55, "LLM, 1 thread")
    llm_rates, tokens_per_char = await _measure_llm(config, progress)
    calibration = Calibration(
        cpu=cpu,
        asr_s=asr_s,
        llm=llm_rates,
        tts=tts_costs,
        tokens_per_char=tokens_per_char,
        render_ms=render_ms,
        encode_ms=encode_ms,
        seconds=round(time.perf_counter() - started, 1),
        others_cpu_share=others.share(),
    )
    if calibration.others_cpu_share > BUSY_SHARE:
        log.warning("%s", busy_note(calibration))
    _store(config, calibration)
    progress(1.0, "done")
    return calibration


def _measure_avatar(config: Config, tts: Any) -> tuple[float, float]:
    from models import calibration as measure
    from models.avatar.model import PhotoAvatarModel

    model = PhotoAvatarModel(config.weights_path, size=config.avatar.size)
    stream = model.new_stream(model.avatars()[0] if model.avatars() else None)
    return measure.measure_avatar(stream, tts)


async def _measure_llm(
    config: Config, progress: Progress
) -> tuple[dict[str, Any], dict[str, float]]:
    from models import calibration as measure
    from models.llm import load_chat_model

    rates: dict[str, Any] = {}
    tokens_per_char = {"en": 0.25, "zh": 0.7}  # typical, for endpoints without /tokenize
    thread_counts = (1, 2) if config.llm.backend == "embedded" else (0,)
    for step, threads in enumerate(thread_counts):
        llm_config = config.llm.model_copy(
            update={"threads": threads or 1, "batch_threads": threads or 1, "parallel_slots": 1}
        )
        llm = load_chat_model(llm_config, config.weights_path)
        await llm.start(warm=False)  # type: ignore[call-arg]
        try:
            base_url = llm.base_url  # type: ignore[attr-defined]
            rates[str(threads) if threads else "remote"] = await measure.measure_llm(
                base_url, config.llm.model
            )
            if step == 0:
                try:
                    tokens_per_char = await measure.measure_tokens_per_char(base_url)
                except Exception as exc:  # not every endpoint tokenizes
                    log.info("no /tokenize on the LLM endpoint (%s): typical rates used", exc)
        finally:
            await llm.close()
        progress(0.8 + 0.15 * step, "LLM, 2 threads" if step == 0 else "planning")
    return rates, tokens_per_char


def load_or_calibrate(
    config: Config, progress: Progress = _no_progress, force: bool = False
) -> Calibration:
    cached = None if force else load_cached(config)
    if cached is not None:
        return cached
    log.info("calibrating this machine (once per CPU and model set)")
    return calibrate(config, progress)


# ----------------------------------------------------------------- planning
@dataclass
class MachinePlan:
    """What this machine holds and the settings chosen for it."""

    capacity: int  # conversations held in real time (at least 1)
    realtime_factor: float  # reply audio made per second, all sessions replying at once
    reply_cores: dict[str, float]  # cores one reply takes per second of its audio, by language
    media_cores: float  # cores one session's video takes, always
    # One conversation alone, live: reply audio made per second of playback,
    # by language and TTS backend ("main": tts.backend; others by name, in the
    # languages they speak). Below 1 answers start late and may pause.
    voice_realtime: dict[str, dict[str, float]] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)  # chosen: dotted key -> value
    pinned: dict[str, Any] = field(default_factory=dict)  # kept from the config
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def reply_cores(
    cal: Calibration, lang: str, tts_threads: str = "1", backend: str | None = None
) -> float:
    """Cores a reply takes per second of its audio by the calibration: the LLM
    writing it and the TTS speaking it (a fixed cost per piece of about
    PIECE_AUDIO_S); ``backend`` names another TTS backend's voices."""
    cost = cal.tts[lang][tts_threads]
    if backend is not None:
        cost = cost.more_backends[backend]
    gen = cal.llm.get("1") or next(iter(cal.llm.values()))
    tokens_per_audio_s = cal.tokens_per_char[lang] * cost.chars_per_audio_s
    llm = tokens_per_audio_s / max(gen.gen_tok_s, 0.1) if "remote" not in cal.llm else 0.0
    return cost.per_audio_s + cost.fixed_s / PIECE_AUDIO_S + llm


def first_token_timeout(cal: Calibration) -> float:
    """Seconds without a first token before the LLM counts as failed: long
    enough for the slowest honest prompt on this machine (measured on a slow
    one: 18 tok/s, so a primed-again slot takes over 30 s, past a fixed 20 s)."""
    local = [rates.prompt_tok_s for key, rates in cal.llm.items() if key != "remote"]
    if not local:  # a remote endpoint: its speed is not this machine's
        return 20.0
    low, high = FIRST_TOKEN_TIMEOUT_BOUNDS_S
    seconds = LONGEST_UNCACHED_PROMPT_TOKENS / max(min(local), 1.0) + 5.0
    return round(min(max(seconds, low), high), 1)


def voice_realtime(cal: Calibration, cores: float) -> dict[str, dict[str, float]]:
    """One conversation's live real-time factor with ``cores`` for its replies,
    by language and TTS backend ("main", or another backend in the languages
    it was measured in): what the page shows beside each voice."""
    factors: dict[str, dict[str, float]] = {}
    for lang, by_threads in cal.tts.items():
        backends = [None, *by_threads["1"].more_backends]
        factors[lang] = {
            name or "main": round(cores / (LIVE_REPLY_COST * reply_cores(cal, lang, "1", name)), 2)
            for name in backends
        }
    return factors


def faster_voices_notes(cal: Calibration) -> list[str]:
    """A note per language where another TTS backend's voices (Piper's) cost
    under half the main one's per second of audio. The plan does not switch
    voices by itself (the voice is part of who the avatar is), but measured
    on a 2-core AVX2 machine such a voice turned answers with pauses into
    answers without (docs/benchmarks.md)."""
    notes = []
    for lang, by_threads in cal.tts.items():
        main = by_threads["1"]
        for name, other in main.more_backends.items():
            if other.per_audio_s < FASTER_VOICE_SHARE * main.per_audio_s:
                notes.append(
                    f"{lang}: {name.capitalize()}'s voices cost {other.per_audio_s:.2f} s per "
                    f"second of audio here against {main.per_audio_s:.2f} for the main TTS; "
                    f"pick one (GET /api/voices, backend {name!r}) for faster answers "
                    "without pauses"
                )
    return notes


def plan_for(cal: Calibration, config: Config) -> MachinePlan:
    usable = cal.cpu.cores * USABLE_SHARE
    media = cal.media_cores
    per_reply = {lang: round(reply_cores(cal, lang), 3) for lang in cal.tts}
    worst = max(per_reply.values()) * LIVE_REPLY_COST
    # Every session replying at once (the bench's two-session case): each
    # needs its media plus a reply's live cores for real time.
    fits = int(usable // (media + worst)) if media + worst > 0 else 1
    capacity = max(1, fits)
    # With `capacity` sessions replying at once, how much reply audio is made
    # per second of playback (>= 1: real time; < 1: replies must start later).
    realtime = (usable - capacity * media) / (capacity * worst) if worst else math.inf
    plan = MachinePlan(capacity, round(realtime, 2), per_reply, round(media, 3))
    plan.voice_realtime = voice_realtime(cal, usable - media)
    if fits < 1:
        plan.notes.append(
            f"one reply needs {worst:.2f} cores per second of audio live plus {media:.2f} for "
            f"video, more than the {usable:.2f} usable: replies start once enough is synthesized"
        )
    tts = {lang: cal.tts[lang]["1"] for lang in cal.tts}
    max_fixed = max(c.fixed_s for c in tts.values())
    prompt = {k: v.prompt_tok_s for k, v in cal.llm.items()}
    alone = capacity == 1
    # One conversation alone: a TTS call on both cores where that is much
    # faster (measured: 0.67 against 1.21 s per second of audio on an AVX2
    # machine); else two one-thread calls at once once the first piece is out.
    two_threads = alone and all(
        "2" in by and by["2"].per_audio_s < TWO_THREADS_PAY * by["1"].per_audio_s
        for by in cal.tts.values()
    )
    choices: dict[str, Any] = {
        "server.max_sessions": capacity,
        "llm.threads": 1,
        # Prompt processing on both cores pays only when no other
        # conversation's decoding shares them (measured: it blocked another
        # session's ASR for 3 s on a fast machine).
        "llm.batch_threads": 2 if alone and prompt.get("2", 0) > 1.3 * prompt.get("1", 0) else 1,
        # Below the media and TTS threads where sessions compete (ASR and TTS
        # of one preempt another's decoding: measured on a fast machine); at
        # their level where one conversation is alone (measured on a slow one:
        # at nice 10 a two-thread TTS call froze the LLM, and the answer,
        # waiting for the rest of the reply, came 2 s later).
        "llm.nice": 0 if alone else 10,
        "tts.threads": 2 if two_threads else 1,
        "tts.parallel_calls": 2 if alone and not two_threads else 1,
        # Cutting a piece short pays only when a call's fixed cost is small.
        "llm.cut_when_queued_audio_below_s": 1.2 if max_fixed <= CUT_EARLY_MAX_FIXED_S else 0.0,
        # A KV-cache slot per conversation admitted and one spare (a session
        # closing while the next opens); each costs context_tokens of cache
        # (0.1 GB for the 1.5B at 4096), allocated at start-up.
        "llm.parallel_slots": capacity + 1,
    }
    # Half the pictures while the user has the turn where replies are slower
    # than real time (80 ms apart); thinking and speaking get every frame.
    choices["avatar.idle_fps"] = 12.5 if realtime < 1 else 25.0
    # A short first piece only when the next one is ready before it has played.
    # The piece after a capped first one (a sentence) must be synthesized,
    # with the TTS threads chosen, while the first plays at the machine's pace.
    # Measured on a slow machine: capping anyway made the answer later (the
    # extra TTS call starves the LLM, and the gate then waits for the rest).
    # This one is judged by the calibration's sum, as when it was measured
    # (LIVE_REPLY_COST came later and was chosen for the capacity alone).
    used = str(choices["tts.threads"])
    next_ready_s = max(by.get(used, by["1"]).seconds(PIECE_AUDIO_S) for by in cal.tts.values())
    summed = realtime * LIVE_REPLY_COST
    short_first = next_ready_s <= SHORT_FIRST_PIECE_AUDIO_S * max(summed, 0.01) + STALL_TOLERANCE_S
    plan.notes.extend(faster_voices_notes(cal))
    choices["llm.first_token_timeout_s"] = first_token_timeout(cal)
    choices["llm.first_piece_max_words"] = 4 if short_first else 0
    choices["llm.first_piece_max_cjk"] = 6 if short_first else 0
    for dotted, value in choices.items():
        section, _, key = dotted.partition(".")
        current = getattr(getattr(config, section), key)
        if current == AUTO:
            plan.settings[dotted] = value
        else:
            plan.pinned[dotted] = current
    return plan


def apply_plan(config: Config, plan: MachinePlan | None) -> Config:
    """Replace every ``auto`` in the config by the plan's value (or, without a
    plan, by the built-in default), in place."""
    from core.config import AUTO_DEFAULTS

    for dotted, default in AUTO_DEFAULTS.items():
        section, _, key = dotted.partition(".")
        target = getattr(config, section)
        if getattr(target, key) == AUTO:
            value = plan.settings.get(dotted, default) if plan else default
            setattr(target, key, value)
    return config


# --------------------------------------------------------------- reporting
def describe(cal: Calibration, plan: MachinePlan) -> str:
    """One readable paragraph: the machine, what each stage costs, what it holds."""
    tts = cal.tts
    llm = "; ".join(
        f"{k} thread{'s' if k != '1' else ''} {v.prompt_tok_s:.0f} tok/s prompt, "
        f"{v.gen_tok_s:.1f} tok/s generation"
        for k, v in cal.llm.items()
    )
    tts_text = "; ".join(
        f"{lang} {c['1'].fixed_s:.2f} s per call + {c['1'].per_audio_s:.2f} s per s of audio "
        f"(2 threads {c['2'].fixed_s:.2f} + {c['2'].per_audio_s:.2f})"
        if "2" in c
        else f"{lang} {c['1'].fixed_s:.2f} + {c['1'].per_audio_s:.2f}"
        for lang, c in tts.items()
    )
    more = more_tts_text(tts)
    if more:
        tts_text += f"; other voices: {more}"
    holds = (
        f"holds {plan.capacity} conversation{'s' if plan.capacity > 1 else ''} in real time"
        if plan.realtime_factor >= 1
        else f"holds 1 conversation, with replies made at {plan.realtime_factor:.2f}x real "
        "time (each reply starts once enough of it is synthesized)"
    )
    pinned = f"; pinned in the config: {plan.pinned}" if plan.pinned else ""
    busy = f" {busy_note(cal)}" if cal.others_cpu_share > BUSY_SHARE else ""
    notes = "".join(f" Note: {note}." for note in plan.notes)
    return (
        f"This machine: {cal.cpu.model}, {cal.cpu.cores} cores, {cal.cpu.kind} "
        f"({', '.join(cal.cpu.flags) or 'no SIMD flags read'}), {cal.cpu.memory_gib} GiB. "
        f"ASR {cal.asr_s:.2f} s per 5 s utterance; LLM {llm}; TTS {tts_text}; avatar "
        f"{cal.render_ms:.1f} ms render + {cal.encode_ms:.1f} ms VP8 per frame "
        f"({plan.media_cores:.2f} cores per session). It {holds}; chosen: {plan.settings}"
        f"{pinned}. (Calibrated in {cal.seconds:.0f} s; `videochat calibrate --force` redoes it.)"
        f"{notes}{busy}"
    )


def busy_note(cal: Calibration) -> str:
    return (
        f"Other programs used {cal.others_cpu_share:.0%} of the CPU while it was measured, so "
        "these figures may be low and the plan cautious: run `videochat calibrate --force` "
        "when the machine is idle."
    )


@dataclass
class SpotCheck:
    """One TTS call timed at start-up against the cached calibration."""

    measured_s: float
    predicted_s: float

    @property
    def ratio(self) -> float:
        low, high = SPOT_CHECK_BOUNDS
        return min(high, max(low, self.measured_s / max(self.predicted_s, 1e-3)))

    @property
    def slower(self) -> bool:
        """Slower than calibrated by enough to warn about."""
        return self.ratio >= SPOT_CHECK_DRIFT

    def to_dict(self) -> dict[str, float]:
        return {
            "measured_s": round(self.measured_s, 3),
            "predicted_s": round(self.predicted_s, 3),
            "ratio": round(self.ratio, 2),
        }

    def describe(self) -> str:
        said = (
            f"TTS spot check: the calibration's sentence took {self.measured_s:.2f} s, "
            f"{self.predicted_s:.2f} s predicted"
        )
        if self.slower:
            return (
                f"{said}: this machine is {self.ratio:.1f}x slower than when it was calibrated "
                "(other programs, or a busier host); replies are planned from today's speed, "
                "and `videochat calibrate --force` re-plans the settings"
            )
        if self.ratio <= 1 / SPOT_CHECK_DRIFT:
            return f"{said}: faster than when it was calibrated; replies are planned from it"
        return f"{said}: as calibrated"


def tts_spot_check(tts: Any, cal: Calibration, tts_threads: int, runs: int = 2) -> SpotCheck:
    """Time the calibration's middle sentence with the primary TTS now (the
    median of ``runs``, as calibration times it; the openers made at start-up
    warmed it) against what the cached calibration predicts for its audio at
    ``tts_threads`` threads."""
    from functools import partial

    from models.calibration import MID, median_time
    from models.tts.voices_router import VoicesRouter

    primary = tts.primary if isinstance(tts, VoicesRouter) else tts
    lang = "en" if "en" in cal.tts else next(iter(cal.tts))
    by_threads = cal.tts[lang]
    cost = by_threads.get(str(tts_threads), by_threads["1"])
    seconds, speech = median_time(partial(primary.synthesize, MID[lang], lang), runs)
    return SpotCheck(seconds, cost.seconds(speech.audio.size / speech.sample_rate))


@dataclass
class Machine:
    calibration: Calibration
    plan: MachinePlan

    def public(self) -> dict[str, Any]:
        """What /health, /api/machine and /metrics show."""
        return {
            "summary": describe(self.calibration, self.plan),
            "calibration": self.calibration.to_dict(),
            "plan": self.plan.to_dict(),
        }


def plan_machine(config: Config) -> Machine:
    """Calibrate (cached), plan, apply the plan to ``config`` and log what this
    machine holds."""
    calibration = load_or_calibrate(config, progress=_log_progress)
    plan = plan_for(calibration, config)
    apply_plan(config, plan)
    log.info("%s", describe(calibration, plan))
    return Machine(calibration, plan)


def _log_progress(fraction: float, message: str) -> None:
    log.info("calibrating: %3.0f%% %s", fraction * 100, message)
