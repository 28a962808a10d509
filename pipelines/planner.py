"""When the answer starts, and how its text is cut into TTS calls.

A reply must never stall once the answer has started. On a fast machine a
short first piece is spoken at once and the rest keeps ahead of playback; on a
slow one (Kokoro slower than real time, a second or more of fixed cost per
call) the same policy says "Sure," and then falls silent between fragments.
So the planner predicts, from this machine's calibrated costs, how long the
rest of the reply takes to write and synthesize, and lets the answer start
only once the audio already made lasts that long. It also merges the text
waiting for TTS into fewer, longer calls where a call's fixed cost is large.

Predictions are corrected as replies go: the ratio of measured to predicted
synthesis time (other sessions, other programs) and the usual reply length are
learnt process-wide, since they are properties of the machine and its load,
not of one conversation.

A session whose voice another backend speaks (Piper's ``joe``, from
``tts.more_backends``) is planned with that backend's calibrated costs in the
languages it speaks (the primary's in the others): ``for_backend`` gives a
planner per such backend, made once and learning on its own.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field

from models.calibration import Calibration, TTSCost

log = logging.getLogger(__name__)

# Above this fixed cost per TTS call, waiting pieces are merged into one call.
MERGE_WHEN_FIXED_ABOVE_S = 0.6
# A piece of a reply, in seconds of audio (one spoken sentence).
PIECE_AUDIO_S = 2.5
# Silence the targets allow once the answer has started (summed per reply).
STALL_TOLERANCE_S = 0.3
MAX_MERGED_CHARS = {"en": 240, "zh": 80}  # Kokoro takes ~510 phonemes per batch
LEARNING_RATE = 0.3


@dataclass
class ReplyCosts:
    """This machine's costs, for the planner (seconds unless said)."""

    tts_fixed_s: dict[str, float]
    tts_per_audio_s: dict[str, float]
    chars_per_audio_s: dict[str, float]
    tokens_per_char: dict[str, float]
    gen_tok_s: float
    parallel_calls: int = 1
    # The same costs for sessions in a voice of another backend (by its name),
    # with that backend's TTS figures where it was calibrated.
    more_backends: dict[str, ReplyCosts] = field(default_factory=dict)

    @classmethod
    def from_calibration(
        cls, cal: Calibration, tts_threads: int = 1, llm_threads: int = 1, parallel_calls: int = 1
    ) -> ReplyCosts:
        # A language the TTS does not speak (Piper alone: Chinese) was not measured.
        tts = {lang: by[str(tts_threads)] for lang, by in cal.tts.items() if by}
        llm = cal.llm.get(str(llm_threads)) or next(iter(cal.llm.values()))
        costs = cls._with_tts(tts, cal, llm.gen_tok_s, parallel_calls)
        for name in dict.fromkeys(n for c in tts.values() for n in c.more_backends):
            # The other backend's figures in the languages it speaks, the
            # primary's in the rest (its text in them goes to the primary).
            theirs = {lang: c.more_backends.get(name, c) for lang, c in tts.items()}
            costs.more_backends[name] = cls._with_tts(theirs, cal, llm.gen_tok_s, parallel_calls)
        return costs

    @classmethod
    def _with_tts(
        cls, tts: dict[str, TTSCost], cal: Calibration, gen_tok_s: float, parallel_calls: int
    ) -> ReplyCosts:
        return cls(
            tts_fixed_s={lang: c.fixed_s for lang, c in tts.items()},
            tts_per_audio_s={lang: c.per_audio_s for lang, c in tts.items()},
            chars_per_audio_s={lang: c.chars_per_audio_s for lang, c in tts.items()},
            tokens_per_char=dict(cal.tokens_per_char),
            gen_tok_s=gen_tok_s,
            parallel_calls=parallel_calls,
        )

    @classmethod
    def fast_default(cls) -> ReplyCosts:
        """A fast 2-core machine's figures (MODELS.md), for runs without a
        calibration (tests with scripted models)."""
        return cls(
            tts_fixed_s={"en": 0.35, "zh": 0.4},
            tts_per_audio_s={"en": 0.3, "zh": 0.3},
            chars_per_audio_s={"en": 15.0, "zh": 4.5},
            tokens_per_char={"en": 0.25, "zh": 0.7},
            gen_tok_s=18.0,
        )


@dataclass
class ReplyProgress:
    """One reply as the planner sees it (characters of the model's text)."""

    lang: str
    written_chars: int = 0  # handed to TTS so far by the splitter
    synthesized_chars: int = 0
    pending_pieces: int = 0  # written, not yet synthesized
    generation_done: bool = False


@dataclass
class ReplyPlanner:
    """Process-wide: one per loaded model set, shared by the sessions."""

    costs: ReplyCosts | None  # None: no calibration, the answer starts at once
    slowdown: float = 1.0  # measured / predicted TTS time, learnt
    writing_slowdown: float = 1.0  # measured / calibrated LLM writing time, learnt
    # Seconds from the LLM's first token until the answer may start (the
    # opener is timed by it), learnt; the initial value is what the first
    # piece takes on a fast machine, or what calibration predicts.
    answer_lag_s: float = 0.5
    # The same, learnt per language once a reply in it has been seen (a
    # Chinese first piece takes longer to write and synthesize than an English
    # one: one shared figure put the opener too early for Chinese answers).
    answer_lags: dict[str, float] = field(default_factory=dict)
    # Seconds from the end of the user's speech to the LLM's first token,
    # learnt (0: none seen yet): an opener deciding before the token has come
    # expects the answer no sooner than this plus ``answer_lag_s``.
    first_token_lag_s: float = 0.0
    reply_chars: dict[str, float] = field(default_factory=lambda: {"en": 110.0, "zh": 40.0})
    # ``llm.max_reply_audio_s``: replies end at the first sentence past it,
    # so a usual one is expected about twice that long until some are seen.
    max_reply_audio_s: float = 0.0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    # The planners of sessions in another backend's voice, by backend name.
    _by_backend: dict[str, ReplyPlanner] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        # What the estimates use: the calibration, or a fast machine's figures.
        self._estimate = self.costs or ReplyCosts.fast_default()
        if self.max_reply_audio_s > 0:
            expected = 2 * self.max_reply_audio_s
            self.reply_chars = {
                lang: min(chars, self.chars_for(expected, lang))
                for lang, chars in self.reply_chars.items()
            }
        if self.costs is not None:
            self.answer_lag_s = self.predicted_answer_lag()

    @classmethod
    def immediate(cls) -> ReplyPlanner:
        """Without a calibration (scripted models in tests, a server given its
        models): every piece is spoken as soon as it is synthesized."""
        return cls(None)

    def for_backend(self, backend: str | None) -> ReplyPlanner:
        """The planner for a session whose voice ``backend`` speaks (None: the
        primary TTS, this planner). Made once per backend from its calibrated
        costs, starting from what this one has learnt of the LLM and the
        replies; its TTS slowdown and answer lags are its own. A backend the
        calibration did not measure (a cache from before it was added) is
        planned with the primary's costs, which are higher, so replies start
        later than they could but do not stall."""
        if backend is None or self.costs is None:
            return self
        with self._lock:
            known = self._by_backend.get(backend)
            if known is not None:
                return known
            costs = self.costs.more_backends.get(backend)
            if costs is None:
                log.warning(
                    "no calibrated TTS costs for %r: its voices are planned with the primary's "
                    "(`videochat calibrate --force` measures them)",
                    backend,
                )
                self._by_backend[backend] = self
                return self
            planner = ReplyPlanner(
                costs,
                writing_slowdown=self.writing_slowdown,
                first_token_lag_s=self.first_token_lag_s,
                reply_chars=dict(self.reply_chars),
            )
            self._by_backend[backend] = planner
            return planner

    # ------------------------------------------------------------ estimates
    def audio_seconds(self, chars: float, lang: str) -> float:
        return chars / self._estimate.chars_per_audio_s.get(lang, 15.0)

    def chars_for(self, audio_s: float, lang: str) -> float:
        return audio_s / self.audio_seconds(1, lang)

    def synth_seconds(self, chars: float, lang: str, calls: int = 1) -> float:
        """Predicted wall time of TTS for ``chars`` characters in ``calls`` calls."""
        fixed = self._estimate.tts_fixed_s.get(lang, 0.4)
        per_audio = self._estimate.tts_per_audio_s.get(lang, 0.3)
        return (calls * fixed + per_audio * self.audio_seconds(chars, lang)) * self.slowdown

    def writing_seconds(self, chars: float, lang: str) -> float:
        """Predicted time for the LLM to write ``chars`` characters."""
        tokens = chars * self._estimate.tokens_per_char.get(lang, 0.3)
        return tokens / max(self._estimate.gen_tok_s, 0.1) * self.writing_slowdown

    def merges(self, lang: str) -> bool:
        """Whether waiting pieces go to TTS as one call (a call's fixed cost is large)."""
        if self.costs is None:
            return False
        return self.costs.tts_fixed_s.get(lang, 0.4) * self.slowdown >= MERGE_WHEN_FIXED_ABOVE_S

    def max_merged_chars(self, lang: str) -> int:
        return MAX_MERGED_CHARS.get(lang, 240)

    # ------------------------------------------------------------- the gate
    def _unwritten(self, reply: ReplyProgress) -> float:
        if reply.generation_done:
            return 0.0
        return max(0.0, self.reply_chars.get(reply.lang, 100.0) - reply.written_chars)

    def _waiting(self, reply: ReplyProgress) -> float:
        """Characters not synthesized yet: written and waiting, or to come."""
        return reply.written_chars - reply.synthesized_chars + self._unwritten(reply)

    def seconds_to_finish(self, reply: ReplyProgress) -> float:
        """Predicted time until the whole reply is synthesized."""
        assert self.costs is not None
        lang = reply.lang
        unwritten = self._unwritten(reply)
        waiting = self._waiting(reply)
        if waiting <= 0:
            return 0.0
        calls = max(1, reply.pending_pieces) + (1 if unwritten else 0)
        if self.merges(lang):
            calls = min(calls, 2)
        tts = self.synth_seconds(waiting, lang, calls) / max(1, self.costs.parallel_calls)
        if not unwritten:
            return tts
        # The text still to come is written first; its last piece is then
        # synthesized in one more call.
        writing = self.writing_seconds(unwritten, lang)
        last = min(unwritten, self.chars_for(PIECE_AUDIO_S, lang))
        return max(tts, writing + self.synth_seconds(last, lang))

    def may_start(self, reply: ReplyProgress, buffered_audio_s: float) -> bool:
        """Whether the answer may start now and play to its end without a
        stall longer than the targets allow. Two conditions: the next piece
        is ready before the audio made so far has played, and the last piece
        is ready before everything before it has played (production at a
        steady rate then keeps ahead everywhere in between)."""
        if self.costs is None:
            return True
        lang = reply.lang
        waiting = self._waiting(reply)
        if waiting <= 0:
            return True
        finish = self.seconds_to_finish(reply)
        rest_audio = self.audio_seconds(waiting, lang)
        last_audio = min(rest_audio, PIECE_AUDIO_S)
        next_chars = min(waiting, self.chars_for(PIECE_AUDIO_S, lang))
        next_ready = self.synth_seconds(next_chars, lang)
        if reply.written_chars <= reply.synthesized_chars and not reply.generation_done:
            # Nothing written waits for TTS: the next piece must be written first.
            next_ready += self.writing_seconds(next_chars, lang)
        slack = STALL_TOLERANCE_S
        return (
            buffered_audio_s + slack >= next_ready
            and buffered_audio_s + rest_audio - last_audio + slack >= finish
        )

    # ------------------------------------------------------------- learning
    def observe_synthesis(self, chars: int, lang: str, seconds: float) -> None:
        if self.costs is None:
            return
        predicted = self.synth_seconds(chars, lang) / self.slowdown
        if predicted <= 0:
            return
        with self._lock:
            ratio = min(4.0, max(0.5, seconds / predicted))
            self.slowdown += LEARNING_RATE * (ratio - self.slowdown)

    def observe_writing(self, chars: int, lang: str, seconds: float) -> None:
        """The LLM wrote ``chars`` characters in ``seconds`` (first token to done)."""
        if self.costs is None or chars < 20 or seconds <= 0:
            return
        predicted = self.writing_seconds(chars, lang) / self.writing_slowdown
        with self._lock:
            ratio = min(6.0, max(0.5, seconds / predicted))
            self.writing_slowdown += LEARNING_RATE * (ratio - self.writing_slowdown)

    def answer_lag(self, lang: str) -> float:
        """Seconds from the first token until the answer may start, in ``lang``:
        learnt, else predicted from the calibration, else ``answer_lag_s``."""
        learnt = self.answer_lags.get(lang)
        if learnt is not None:
            return learnt
        return self.predicted_answer_lag(lang) if self.costs else self.answer_lag_s

    def observe_answer_lag(self, seconds: float, lang: str) -> None:
        with self._lock:
            lag = self.answer_lag(lang)
            self.answer_lags[lang] = lag + LEARNING_RATE * (seconds - lag)

    def observe_first_token_lag(self, seconds: float) -> None:
        with self._lock:
            if self.first_token_lag_s <= 0:
                self.first_token_lag_s = seconds
            else:
                self.first_token_lag_s += LEARNING_RATE * (seconds - self.first_token_lag_s)

    def predicted_answer_lag(self, lang: str = "en") -> float:
        """From the first token to the first piece synthesized: its words
        written (about 8 tokens) and its TTS call."""
        if self.costs is None:
            return self.answer_lag_s
        first_chars = self.chars_for(1.5, lang)
        return self.writing_seconds(first_chars, lang) + self.synth_seconds(first_chars, lang)

    def observe_reply(self, chars: int, lang: str) -> None:
        if chars <= 0:
            return
        with self._lock:
            usual = self.reply_chars.get(lang, float(chars))
            self.reply_chars[lang] = usual + LEARNING_RATE * (chars - usual)
