"""When to say an opener ("Sure,") or a filler ("Let me see."), and which
one: timed from the LLM's first token and the reply lag the planner learns."""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable

from core.config import Config
from models.registry import Engines, Opener
from pipelines.events import Mark
from pipelines.planner import ReplyPlanner
from pipelines.timebase import TimeSource, wait_event
from pipelines.turn import Turn

OPENER_PAUSE_S = 0.2  # a comma's pause between the opener and the answer
MAX_FILLER_GAP_S = 0.7  # the longest silence between a filler and the opener

# Says one pre-synthesized line: (line, whether it is a filler).
SayLine = Callable[[Opener, bool], Awaitable[None]]


class Openers:
    """One session's openers and fillers (the audio is made at start-up)."""

    def __init__(
        self,
        engines: Engines,
        config: Config,
        planner: ReplyPlanner,
        time_source: TimeSource,
        voice: str | None,
    ) -> None:
        self._engines = engines
        self._config = config
        self._planner = planner
        self._time = time_source
        self._voice = voice
        self._rng = random.Random()
        self._last: str | None = None

    def pick(self, lang: str) -> Opener | None:
        """An opener for this reply (not the last one said), or None where
        none was made in this session's voice or the LLM cannot continue a
        message."""
        choices = self._lines(self._engines.openers, self._engines.voice_openers).get(lang, [])
        choices = [o for o in choices if o.text != self._last] or choices
        if not choices or not self._engines.llm.supports_prefill:
            return None
        opener = choices[self._rng.randrange(len(choices))]
        self._last = opener.text
        return opener

    def _lines(
        self, default: dict[str, list[Opener]], by_voice: dict[str, dict[str, list[Opener]]]
    ) -> dict[str, list[Opener]]:
        """The lines made in this session's voice: the default voice's, those
        made for another backend's voice, or none (a voice of the user's: its
        lines would cost a TTS call each at start-up)."""
        return default if self._voice is None else by_voice.get(self._voice, {})

    async def say(self, turn: Turn, opener: Opener, say_line: SayLine) -> None:
        """Say the opener so that it ends a comma's pause before the answer
        starts. Said at once, the ~0.3-0.5 s opener ends long before the answer
        is written and synthesized and leaves a pause. So it waits for the
        LLM's first token, then for as long as the answer usually takes from
        there (learnt across sessions: a property of this machine and its
        load) less the opener's own length; never past ``llm.opener_wait_s``
        after the end of speech, nor once the answer may start.

        When the answer is still expected well after the opener would end
        (a slow or busy CPU), a filler ("Let me see.") is said first and the
        opener then waits again, but leaves at most ``MAX_FILLER_GAP_S`` of
        silence after the filler: thinking aloud, not dead air."""
        time_source = self._time
        deadline = turn.end_of_speech + self._config.llm.opener_wait_s
        await wait_event(time_source, turn.first_token, deadline)
        start = min(self._opener_start(turn, opener), deadline)
        await wait_event(time_source, turn.reply_ready, start)
        filler = self._pick_filler(turn, opener)
        if filler is not None:
            await say_line(filler, True)
            said = time_source.now() + filler.voiced_seconds
            start = min(self._opener_start(turn, opener), said + MAX_FILLER_GAP_S)
            await wait_event(time_source, turn.reply_ready, start)
        await say_line(opener, False)

    def learn_reply_lag(self, turn: Turn) -> None:
        """The answer may start now: learn the seconds since the first token."""
        first_token = turn.marks.get(Mark.LLM_FIRST_TOKEN)
        if first_token is not None:
            self._planner.observe_answer_lag(self._time.now() - first_token, turn.progress.lang)
            self._planner.observe_first_token_lag(first_token - turn.end_of_speech)

    def _expected_answer(self, turn: Turn) -> float:
        """When the answer is expected to start: the learnt lag after the first
        token; while no token has come, after when it usually comes (learnt
        too), and no sooner than after now."""
        first_token = turn.marks.get(Mark.LLM_FIRST_TOKEN)
        if first_token is None:
            usual = turn.end_of_speech + self._planner.first_token_lag_s
            first_token = max(self._time.now(), usual)
        return first_token + self._planner.answer_lag(turn.progress.lang)

    def _opener_start(self, turn: Turn, opener: Opener) -> float:
        return self._expected_answer(turn) - opener.voiced_seconds - OPENER_PAUSE_S

    def _pick_filler(self, turn: Turn, opener: Opener) -> Opener | None:
        """A filler when the answer is expected more than
        ``llm.filler_when_silence_ahead_s`` after the opener would end."""
        ahead = self._config.llm.filler_when_silence_ahead_s
        choices = self._lines(self._engines.fillers, self._engines.voice_fillers).get(
            opener.lang, []
        )
        if not ahead or not choices or turn.reply_ready.is_set():
            return None
        wait = self._expected_answer(turn) - self._time.now()
        if wait - opener.voiced_seconds < ahead:
            return None
        # The longer fillers for the longer waits ("Let me see." for a second,
        # "Hmm, let me think about that." for two): two of the longest that
        # fit, so the same one is not said every time. None that fits: none,
        # as a filler that ends after the answer is ready delays the answer
        # (measured on a fast machine: the shortest one anyway put the answer
        # 0.8 s later), while the silence it would fill is shorter than itself.
        room = wait - opener.voiced_seconds - 2 * OPENER_PAUSE_S
        fitting = sorted(
            (f for f in choices if f.voiced_seconds <= room), key=lambda f: -f.voiced_seconds
        )
        return self._rng.choice(fitting[:2]) if fitting else None
