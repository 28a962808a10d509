"""The models of every stage, loaded once per process from the backends the
config names (models/backends.py knows the names), and the lines said at
start-up (openers, fillers, fault lines)."""

from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial

import numpy as np

from core.config import Config, LLMConfig
from models.base import (
    MEDIA_SAMPLE_RATE,
    AvatarModel,
    ChatModel,
    Speech,
    SpeechRecognizer,
    SpeechSynthesizer,
    SpeechToSpeech,
    VADModel,
    to_media_rate,
)
from models.threads import lower_this_thread, run_in_low_priority_thread

log = logging.getLogger(__name__)


@dataclass
class Opener:
    """A short reply opening ("Sure,", "嗯，") or filler ("Let me see.")
    synthesized once at start-up."""

    text: str
    lang: str
    speech: Speech
    audio: np.ndarray = field(init=False)  # at the media rate, resampled once
    voiced_seconds: float = field(init=False)  # up to its last audible sample

    def __post_init__(self) -> None:
        self.audio = to_media_rate(self.speech)
        level = np.abs(self.audio.astype(np.float32))
        loud = np.flatnonzero(level > 0.05 * float(level.max(initial=0.0)))
        self.voiced_seconds = (int(loud[-1]) + 1 if loud.size else 0) / MEDIA_SAMPLE_RATE


class StageHealth:
    """Which shared stages are failing right now (for /health): a stage is
    "failing" from its last failure until it next works."""

    def __init__(self) -> None:
        self._failing: dict[str, dict[str, object]] = {}

    def failed(self, stage: str, error: BaseException | None) -> None:
        entry = self._failing.setdefault(stage, {"since": time.time(), "failures": 0})
        entry["failures"] = int(entry["failures"]) + 1  # type: ignore[call-overload]
        entry["last_error"] = str(error) if error is not None else "unknown"

    def ok(self, stage: str) -> None:
        if self._failing.pop(stage, None) is not None:
            log.info("%s works again", stage)

    def report(self) -> dict[str, dict[str, object]]:
        return {stage: dict(entry) for stage, entry in self._failing.items()}


@dataclass
class Engines:
    vad: VADModel
    asr: SpeechRecognizer
    llm: ChatModel
    tts: SpeechSynthesizer
    avatar: AvatarModel
    # An end-to-end model in place of ASR + LLM + TTS, when the config names one.
    s2s: SpeechToSpeech | None = None
    openers: dict[str, list[Opener]] = field(default_factory=dict)  # by language
    fillers: dict[str, list[Opener]] = field(default_factory=dict)  # by language
    # The same lines in the voices of tts.more_backends (Piper's: cheap to make
    # at start-up), by voice, then language. Other chosen voices have none.
    voice_openers: dict[str, dict[str, list[Opener]]] = field(default_factory=dict)
    voice_fillers: dict[str, dict[str, list[Opener]]] = field(default_factory=dict)
    fault_lines: dict[str, Opener] = field(default_factory=dict)  # "the LLM is down", by language
    # Lines being made in the background for a voice chosen by a session (a
    # user's voice, a stock one), by voice: see ``make_voice_lines``.
    _making_lines: dict[str, asyncio.Task[None]] = field(default_factory=dict, repr=False)
    health: StageHealth = field(default_factory=StageHealth)
    # ASR and TTS calls of every session run here: two workers for two cores, so
    # inference never blocks the event loop that paces media.
    inference: ThreadPoolExecutor = field(
        default_factory=lambda: ThreadPoolExecutor(max_workers=2, thread_name_prefix="infer")
    )

    @classmethod
    def with_priority(cls, nice: int, **models: object) -> Engines:
        pool = ThreadPoolExecutor(
            max_workers=2,
            thread_name_prefix="infer",
            initializer=lower_this_thread,
            initargs=(nice,),
        )
        return cls(inference=pool, **models)  # type: ignore[arg-type]

    def make_voice_lines(self, voice: str, config: LLMConfig, nice: int) -> None:
        """Make the openers and fillers in ``voice`` once per process, in a
        low-priority thread, if they are not made yet (a user's matched voice
        or a stock voice other than the default: at start-up each would cost
        a TTS call per line and voice). Until they are ready the session's
        replies start without an opener, as before; then every session in
        that voice gets them (a first audio of ~1 s instead of the answer's)."""
        if not self.openers or voice in self.voice_openers or voice in self._making_lines:
            return

        async def make() -> None:
            started = time.perf_counter()
            openers, fillers = await lines_in_voice(
                config, self.tts, voice, (self.openers, self.fillers), nice
            )
            if voice in self._making_lines:  # not forgotten meanwhile (the voice removed)
                self.voice_fillers[voice] = fillers
                self.voice_openers[voice] = openers
                log.info(
                    "lines in the voice %s made in %.1f s", voice, time.perf_counter() - started
                )

        def done(task: asyncio.Task[None]) -> None:
            if not task.cancelled() and task.exception() is not None:
                # Kept in _making_lines: not tried again for every session.
                log.warning("no openers in the voice %s: %s", voice, task.exception())

        task = asyncio.get_running_loop().create_task(make())
        task.add_done_callback(done)
        self._making_lines[voice] = task

    def forget_voice_lines(self, voice: str) -> None:
        """The voice was removed: its lines go (a voice of that name added
        later gets its own)."""
        task = self._making_lines.pop(voice, None)
        if task is not None:
            task.cancel()
        self.voice_openers.pop(voice, None)
        self.voice_fillers.pop(voice, None)

    async def close(self) -> None:
        for task in self._making_lines.values():
            task.cancel()
        await self.llm.close()
        if self.s2s is not None:
            await self.s2s.close()
        self.inference.shutdown(wait=False, cancel_futures=True)


async def load_engines(config: Config) -> Engines:
    """Load every model once. Raises ConfigError for a backend name nobody
    registered (before any model loads) and BackendUnavailable with a readable
    message for one that cannot run here."""
    from models.asr import load_recognizer
    from models.avatar import load_avatar
    from models.backends import backend_class, check_backends
    from models.llm import load_chat_model
    from models.s2s import load_speech_to_speech
    from models.tts import load_voices
    from models.vad import load_vad

    check_backends(config)
    for name in config.tts.more_backends:  # unknown names refused before any model loads
        backend_class("tts", name)
    weights = config.weights_path
    started = time.perf_counter()
    nice = config.inference_nice
    llm = load_chat_model(config.llm, weights, nice=max(nice, int(config.llm.nice)))
    # The LLM loads in llama.cpp's threads while Python loads the rest.
    llm_start = asyncio.create_task(llm.start())
    vad = load_vad(config.vad)
    # Models load in low-priority threads so the worker threads they create
    # inherit the lower priority (models/threads.py).
    log.info("loading ASR (%s)", config.asr.backend)
    asr = await run_in_low_priority_thread(lambda: load_recognizer(config.asr, weights), nice)
    tts_names = dict.fromkeys([config.tts.backend, *config.tts.more_backends])
    log.info("loading TTS (%s)", " + ".join(tts_names))
    # The primary backend plus the voices of tts.more_backends that can run here.
    tts = await run_in_low_priority_thread(lambda: load_voices(config.tts, weights), nice)
    log.info("loading avatar renderer (%s)", config.avatar.backend)
    avatar = await asyncio.to_thread(load_avatar, config.avatar, weights)
    if config.s2s.backend:
        log.info("loading speech-to-speech (%s)", config.s2s.backend)
    s2s = await run_in_low_priority_thread(lambda: load_speech_to_speech(config.s2s, weights), nice)
    if s2s is not None:
        await s2s.start()
    openers: dict[str, list[Opener]] = {}
    fillers: dict[str, list[Opener]] = {}
    voice_openers: dict[str, dict[str, list[Opener]]] = {}
    voice_fillers: dict[str, dict[str, list[Opener]]] = {}
    if config.llm.use_openers and config.llm.openers and llm.supports_prefill:
        # Fillers are said before an opener, so they exist only with openers.
        openers, fillers = await run_in_low_priority_thread(
            lambda: (
                synthesize_openers(config.llm.openers, tts),
                synthesize_openers(config.llm.fillers, tts, "fillers"),
            ),
            nice,
        )
        for voice in other_backend_voices(tts):
            voice_openers[voice], voice_fillers[voice] = await lines_in_voice(
                config.llm, tts, voice, (openers, fillers), nice
            )
    fault_lines = await run_in_low_priority_thread(
        lambda: synthesize_openers(
            {lang: [text] for lang, text in config.llm.fault_lines.items()}, tts, "fault lines"
        ),
        nice,
    )
    await llm_start
    log.info("all models loaded in %.1f s", time.perf_counter() - started)
    return Engines.with_priority(
        nice,
        vad=vad,
        asr=asr,
        llm=llm,
        tts=tts,
        avatar=avatar,
        s2s=s2s,
        openers=openers,
        fillers=fillers,
        voice_openers=voice_openers,
        voice_fillers=voice_fillers,
        fault_lines={lang: lines[0] for lang, lines in fault_lines.items() if lines},
    )


async def lines_in_voice(
    config: LLMConfig,
    tts: SpeechSynthesizer,
    voice: str,
    default: tuple[dict[str, list[Opener]], dict[str, list[Opener]]],
    nice: int,
) -> tuple[dict[str, list[Opener]], dict[str, list[Opener]]]:
    """The openers and fillers in ``voice``, made in low-priority threads;
    ``default``: the default voice's (openers, fillers), kept for a language
    the voice's backend does not speak."""
    openers = await run_in_low_priority_thread(
        partial(synthesize_openers, config.openers, tts, "openers", voice, default[0]), nice
    )
    fillers = await run_in_low_priority_thread(
        partial(synthesize_openers, config.fillers, tts, "fillers", voice, default[1]), nice
    )
    return openers, fillers


def other_backend_voices(tts: SpeechSynthesizer) -> list[str]:
    """The voices that a backend of tts.more_backends speaks."""
    from models.tts.voices_router import voice_backend

    return [v for v in tts.voices() if voice_backend(tts, v) is not None]


def synthesize_openers(
    texts: dict[str, list[str]],
    tts: SpeechSynthesizer,
    what: str = "openers",
    voice: str | None = None,
    default: dict[str, list[Opener]] | None = None,
) -> dict[str, list[Opener]]:
    """Synthesize the configured openers (or fillers) once, in the default
    voices (or in ``voice``), in the languages the TTS speaks (Piper alone:
    English only). A language ``voice``'s backend does not speak is spoken in
    the default voice (as its replies are): ``default``'s lines are kept."""
    from models.tts.voices_router import VoicesRouter, speaks

    openers: dict[str, list[Opener]] = {}
    for lang, items in texts.items():
        if voice is not None and isinstance(tts, VoicesRouter):
            if not speaks(tts.backend(tts.backend_of(voice)), lang):
                if default and lang in default:
                    openers[lang] = default[lang]
                continue
        if not speaks(tts, lang):
            log.info("no %s %s: the TTS (%s) does not speak it", lang, what, type(tts).__name__)
            continue
        openers[lang] = [Opener(text, lang, tts.synthesize(text, lang, voice)) for text in items]
    log.info(
        "%s ready%s: %s",
        what,
        f" in the voice {voice}" if voice else "",
        {lang: len(items) for lang, items in openers.items()},
    )
    return openers
