"""The per-session pipeline with scripted backends: turns, barge-in, isolation.

The tests run on virtual time (pipelines/timebase.py): every delay of the
scripted models and every frame of the media clock is on the same virtual
clock, so a reply of several seconds plays out at once and the same way on
every run. One test runs on the wall clock, to check the pipeline paces
itself there too.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import numpy as np
import pytest

from core.config import Config
from pipelines.session import Session
from pipelines.timebase import REAL_TIME, TimeSource, VirtualTime
from tests.fakes import ScriptedLLM, ToneTTS, fake_engines, silence, tone, use_time

QUESTION_EN = 440  # the tone ScriptedASR hears as "What is the capital of France?"


@pytest.fixture
async def clock() -> AsyncIterator[VirtualTime]:
    virtual = VirtualTime()
    yield virtual
    await virtual.aclose()


def make_session(engines, clock: TimeSource, **kwargs) -> tuple[Session, list[dict]]:
    """A started session whose scripted models and media run on ``clock``."""
    config = Config()
    config.vad.hangover_ms = 200
    config.vad.min_speech_ms = 100
    use_time(engines, clock)  # type: ignore[arg-type]
    session = Session(engines, config, time_source=clock, **kwargs)
    events: list[dict] = []
    session.attach(events.append)
    session.start()
    return session, events


def speak(session: Session, freq: float, seconds: float = 0.8) -> None:
    """Feed an utterance followed by enough silence to end the turn."""
    feed(session, np.concatenate([tone(freq, seconds), silence(0.5)]))


def feed(session: Session, audio: np.ndarray) -> None:
    for i in range(0, audio.size, 320):  # 20 ms chunks, as WebRTC delivers them
        session.feed_mic(audio[i : i + 320])


async def wait_until(predicate, clock: TimeSource = REAL_TIME, timeout: float = 10.0) -> None:
    deadline = clock.now() + timeout
    while not predicate():
        if clock.now() > deadline:
            raise TimeoutError("condition not met")
        await clock.sleep(0.01)


def of_type(events: list[dict], kind: str) -> list[dict]:
    return [e for e in events if e["type"] == kind]


async def voice_turn_runs_through_every_stage(clock: TimeSource) -> None:
    engines = fake_engines(tts=ToneTTS(seconds_per_char=0.01))
    session, events = make_session(engines, clock)
    # Pieces as the splitter cuts them (the tone audio is too short to keep the
    # queue from running dry, which would cut them at word boundaries).
    session.config.llm.cut_when_queued_audio_below_s = 0
    try:
        speak(session, QUESTION_EN)
        await wait_until(lambda: len(session.turns) == 1, clock)
        finals = [e["text"] for e in of_type(events, "user_text") if e["final"]]
        assert finals == ["What is the capital of France?"]
        assert [e["text"] for e in of_type(events, "bot_text")] == [
            "Sure,",
            "the capital of France is Paris.",
            "It is lovely.",
        ]
        states = [e["value"] for e in of_type(events, "state")]
        assert states[-3:] == ["thinking", "speaking", "listening"]
        latency = of_type(events, "turn")[0]["latency"]
        for stage in (
            "asr_final",
            "llm_first_token",
            "first_clause",
            "tts_first_audio",
            "first_audio_sent",
            "reply_done",
        ):
            assert stage in latency
        assert latency["asr_final"] <= latency["llm_first_token"] <= latency["first_audio_sent"]
        # The reply's audio is played at its own pace: it ends no sooner than
        # its length after it started (the tones of its three pieces).
        reply_seconds = sum(p.samples for p in session.turns[0].pieces) / 48_000
        assert latency["reply_done"] - latency["first_audio_sent"] >= reply_seconds - 0.04
        assert session.history.turns[-1]["content"] == (
            "Sure, the capital of France is Paris. It is lovely."
        )
        assert engines.llm.requests[0][1][0]["role"] == "system"
    finally:
        await session.close()


async def test_voice_turn_runs_through_every_stage(clock):
    await voice_turn_runs_through_every_stage(clock)


async def test_voice_turn_runs_through_every_stage_on_the_wall_clock():
    """The same turn on real time: the media clock paces itself by the wall clock."""
    await voice_turn_runs_through_every_stage(REAL_TIME)


async def test_barge_in_stops_reply_and_keeps_only_what_was_heard(clock):
    long_reply = "Sure, " + " ".join(["Paris is a very old and beautiful city."] * 6)
    engines = fake_engines(
        llm=ScriptedLLM({"France": long_reply}), tts=ToneTTS(seconds_per_char=0.03)
    )
    session, events = make_session(engines, clock)
    try:
        speak(session, QUESTION_EN)
        await wait_until(lambda: session.state == "speaking", clock)
        await clock.sleep(0.6)
        assert session.avatar.queued_samples > 0
        # The user talks over the avatar: feed speech as it comes until it stops.
        started = clock.now()
        while session.state == "speaking":
            session.feed_mic(tone(660, 0.02))
            await clock.sleep(0.02)
            assert clock.now() - started < 1.0, "reply did not stop"
        stopped_after = clock.now() - started
        # Noticed after barge_in_ms (96 ms) of speech: the 5th 20 ms chunk.
        assert stopped_after == pytest.approx(0.08, abs=0.001)
        assert session.turns[0].barge_in_after == pytest.approx(0.096, abs=0.02)
        assert session.avatar.queued_samples == 0
        turn = session.turns[0]
        assert turn.interrupted
        heard = session.history.turns[1]["content"]
        assert heard and heard != long_reply and long_reply.startswith(heard)
        assert session.history.turns[1]["role"] == "assistant"
    finally:
        await session.close()


async def test_two_sessions_do_not_hear_each_other(clock):
    engines = fake_engines(
        llm=ScriptedLLM({"France": "Paris.", "你好": "你好！"}),
        tts=ToneTTS(seconds_per_char=0.01),
    )
    first, first_events = make_session(engines, clock)
    second, second_events = make_session(engines, clock)
    try:
        speak(first, QUESTION_EN)
        speak(second, 880)
        await wait_until(lambda: len(first.turns) == 1 and len(second.turns) == 1, clock)
        assert [m["content"] for m in first.history.turns] == [
            "What is the capital of France?",
            "Paris.",
        ]
        assert [m["content"] for m in second.history.turns] == ["你好", "你好！"]
        assert [e["text"] for e in of_type(first_events, "bot_text")] == ["Paris."]
        assert [e["text"] for e in of_type(second_events, "bot_text")] == ["你好！"]
        conversations = {conversation for conversation, _ in engines.llm.requests}
        assert conversations == {first.id, second.id}
    finally:
        await first.close()
        await second.close()
    # Their LLM cache slots are freed for the next conversations.
    assert engines.llm.released == [first.id, second.id]


async def test_each_exchange_is_primed_into_the_llm_cache_before_the_next_question(clock):
    """After a reply, the next prompt's start (the history, trimmed as the next
    question will trim it) goes to the LLM's cache while the user talks:
    measured on a slow machine, from the 7th exchange on a trimmed history
    cost 2.5 s before the first token without it, 0.5 s with it."""
    engines = fake_engines(tts=ToneTTS(seconds_per_char=0.005))
    session, _ = make_session(engines, clock)
    session.history.max_messages = 4
    try:
        for n, question in enumerate(("What is the capital of France?", "Hi", "Hello"), 1):
            session.handle_message({"type": "text", "text": question})
            await wait_until(lambda n=n: len(session.turns) == n, clock)
            await clock.sleep(0.1)
        # The session's first priming (the persona) and one after each reply;
        # from the second on, the next question will trim the oldest exchange.
        assert [len(m) for _, m in engines.llm.primed] == [1, 3, 3, 3]
        assert {c for c, _ in engines.llm.primed} == {session.id}
        last = engines.llm.primed[-1][1]
        # The next prompt starts with the system prompt and the last exchange.
        assert last == session.history.next_prefix()
        assert [m["role"] for m in last] == ["system", "user", "assistant"]
        next_prompt = session.history.messages_with_user("And Spain?")
        assert next_prompt[: len(last)] == last
    finally:
        await session.close()


async def test_a_reply_ends_after_the_sentence_that_passes_max_reply_audio(clock):
    """``llm.max_reply_audio_s`` (a slow machine's plan): the reply ends at the
    first sentence end past that much speech; the LLM stops writing, and the
    history holds what was said."""
    engines = fake_engines(tts=ToneTTS(seconds_per_char=0.005))
    session, events = make_session(engines, clock)
    session.config.llm.max_reply_audio_s = 2.0  # 30 characters of English here
    session.config.llm.cut_when_queued_audio_below_s = 0  # pieces as the splitter cuts them
    try:
        session.handle_message({"type": "text", "text": "What is the capital of France?"})
        await wait_until(lambda: len(session.turns) == 1, clock)
        # "Sure," (a clause, 5 characters) does not end it; the sentence after it does.
        said = [e["text"] for e in of_type(events, "bot_text")]
        assert said == ["Sure,", "the capital of France is Paris."]
        assert engines.llm.cancelled == 1  # "It is lovely." was never written
        assert session.history.turns[-1]["content"] == "Sure, the capital of France is Paris."
    finally:
        await session.close()


async def test_typed_message_and_interrupt_message(clock):
    reply = "Sure, " + " ".join(["Paris is a very old and beautiful city."] * 6)
    engines = fake_engines(
        llm=ScriptedLLM({"France": reply}, token_delay=0.05), tts=ToneTTS(seconds_per_char=0.05)
    )
    session, events = make_session(engines, clock)
    try:
        session.handle_message({"type": "text", "text": "Tell me about France"})
        await wait_until(lambda: session.state == "speaking", clock)
        assert engines.llm.cancelled == 0  # still writing: 50 words at 50 ms
        said = len(of_type(events, "bot_text"))
        synthesized = len(engines.tts.calls)
        session.handle_message({"type": "interrupt"})
        assert session.state == "listening"
        assert session.avatar.queued_samples == 0
        turn = session.turns[0]
        assert turn.source == "text" and turn.interrupted
        await clock.sleep(2.0)
        # The turn's work stopped with it: the LLM's stream was cancelled, no
        # TTS call started, nothing more was queued, shown or said.
        assert engines.llm.cancelled == 1
        assert len(engines.tts.calls) == synthesized
        assert session.avatar.queued_samples == 0
        assert len(of_type(events, "bot_text")) == said
        assert session.state == "listening" and len(session.turns) == 1
        # The history keeps the question and what was heard of the answer.
        assert session.history.turns[0]["content"] == "Tell me about France"
        if len(session.history.turns) > 1:
            assert session.history.turns[1]["content"] == turn.heard_text
        assert reply.startswith(turn.heard_text) and turn.heard_text != reply.strip()
    finally:
        await session.close()


@pytest.mark.parametrize(
    "message, error",
    [
        ({"type": "text", "text": "   "}, "empty"),
        ({"type": "text", "text": "x" * 600}, "longer"),
        ({"type": "dance"}, "unknown"),
    ],
)
async def test_bad_client_messages_get_an_error_event(message, error, clock):
    session, events = make_session(fake_engines(), clock)
    try:
        session.handle_message(message)
        assert error in of_type(events, "error")[-1]["message"]
        assert session.state == "listening"
    finally:
        await session.close()


async def test_speculative_turn_is_dropped_when_the_user_goes_on(clock):
    engines = fake_engines(tts=ToneTTS(seconds_per_char=0.01))
    session, events = make_session(engines, clock)
    session.config.vad.speculate_ms = 64
    session.config.vad.hangover_ms = 400
    try:
        # Speech, a pause longer than speculate_ms but shorter than the hangover,
        # then more speech: the speculative turn must vanish without a trace.
        feed(session, tone(QUESTION_EN, 0.6))
        feed(session, silence(0.2))
        await clock.sleep(0.3)  # long enough for it to reach the LLM and TTS
        turn = session.current_turn
        assert turn is not None and turn.speculative
        assert len(engines.llm.requests) == 1 and engines.tts.calls
        # Nothing of it was shown, said or kept.
        assert [e["value"] for e in of_type(events, "state")] == ["listening"]
        assert not of_type(events, "bot_text") and not session.history.turns
        assert not [e for e in of_type(events, "user_text") if e["final"]]
        speak(session, QUESTION_EN, seconds=0.4)
        assert session.current_turn is not turn  # dropped at the first new speech
        await wait_until(lambda: len(session.turns) == 1, clock)
        finals = [e["text"] for e in of_type(events, "user_text") if e["final"]]
        assert finals == ["What is the capital of France?"]
        assert len(engines.llm.requests) == 2  # the dropped speculation, then the turn
        assert session.turns[0].index == 1 and not session.turns[0].interrupted
        said = " ".join(e["text"] for e in of_type(events, "bot_text"))
        assert said == "Sure, the capital of France is Paris. It is lovely."  # once
        assert [m["role"] for m in session.history.turns] == ["user", "assistant"]
    finally:
        await session.close()


def canned(text: str):
    """An opener or filler as start-up synthesizes it (a tone here)."""
    from models.registry import Opener

    return Opener(text, "en", ToneTTS(delay=0).synthesize(text, "en"))


def engines_with_opener(llm: ScriptedLLM, opener: str):
    llm.supports_prefill = True
    engines = fake_engines(llm=llm, tts=ToneTTS(seconds_per_char=0.01))
    engines.openers = {"en": [canned(opener)]}
    return engines


async def test_opener_is_spoken_first_and_the_llm_continues_it(clock):
    llm = ScriptedLLM({"France": "the capital of France is Paris."})
    engines = engines_with_opener(llm, "Sure,")
    session, events = make_session(engines, clock)
    try:
        speak(session, QUESTION_EN)
        await wait_until(lambda: len(session.turns) == 1, clock)
        spoken = [e["text"] for e in of_type(events, "bot_text")]
        assert spoken[0] == "Sure,"
        assert " ".join(spoken[1:]) == "the capital of France is Paris."
        assert llm.requests[-1][1][-1] == {"role": "assistant", "content": "Sure,"}
        assert "Sure," not in engines.tts.calls  # pre-synthesized, not synthesized per turn
        assert session.history.turns[-1]["content"] == "Sure, the capital of France is Paris."
    finally:
        await session.close()


async def test_a_session_in_a_voice_without_lines_gets_them_made_once_in_the_background():
    """A user's voice (or a stock one other than the default) has no openers
    made at start-up: the first session in it has them made, in that voice,
    once for the process; replies use them once they are ready."""
    llm = ScriptedLLM({"France": "the capital of France is Paris."})
    engines = engines_with_opener(llm, "Sure,")
    engines.tts.seconds_per_char = 0.002
    config = Config()
    config.llm.openers = {"en": ["Okay,"]}
    config.llm.fillers = {"en": ["Let me see."]}
    voices_heard: list[str | None] = []
    synthesize = engines.tts.synthesize

    def recording(text, lang, voice=None):
        voices_heard.append(voice)
        return synthesize(text, lang, voice)

    engines.tts.synthesize = recording
    sessions = [Session(engines, config, voice="mine") for _ in range(2)]
    try:
        for session in sessions:
            session.start()
        await wait_until(lambda: "mine" in engines.voice_openers)
        assert [o.text for o in engines.voice_openers["mine"]["en"]] == ["Okay,"]
        assert [f.text for f in engines.voice_fillers["mine"]["en"]] == ["Let me see."]
        assert voices_heard == ["mine", "mine"]  # made once for both sessions
        events: list[dict] = []
        sessions[1].attach(events.append)
        sessions[1].handle_message({"type": "text", "text": "What is the capital of France?"})
        await wait_until(lambda: len(sessions[1].turns) == 1)
        assert [e["text"] for e in of_type(events, "bot_text")][0] == "Okay,"
        # The voice removed: its lines go with it.
        engines.forget_voice_lines("mine")
        assert "mine" not in engines.voice_openers and "mine" not in engines.voice_fillers
    finally:
        for session in sessions:
            await session.close()


class SlowFirstToken(ScriptedLLM):
    """The first token arrives after ``first_delay`` seconds (a slow prefill)."""

    def __init__(self, replies: dict[str, str], first_delay: float) -> None:
        super().__init__(replies)
        self.first_delay = first_delay

    async def stream_chat(self, messages, *, conversation=None):
        await self.time.sleep(self.first_delay)
        async for delta in super().stream_chat(messages, conversation=conversation):
            yield delta


@pytest.mark.parametrize("wait_s", [3.0, 0.0])
async def test_the_opener_waits_for_the_first_token_up_to_opener_wait(wait_s, clock):
    llm = SlowFirstToken({"France": "the capital of France is Paris."}, first_delay=0.8)
    engines = engines_with_opener(llm, "Sure,")
    session, events = make_session(engines, clock)
    session.config.llm.opener_wait_s = wait_s
    try:
        speak(session, QUESTION_EN)
        await wait_until(lambda: len(session.turns) == 1, clock)
        latency = of_type(events, "turn")[0]["latency"]
        assert [e["text"] for e in of_type(events, "bot_text")][0] == "Sure,"
        if wait_s:  # held until the model starts answering
            assert latency["first_audio_sent"] >= latency["llm_first_token"]
        else:  # said at once, long before the model's first token
            assert latency["first_audio_sent"] < latency["llm_first_token"] - 0.3
    finally:
        await session.close()


@pytest.mark.parametrize("first_delay", [1.2, 0.0])
async def test_a_filler_comes_before_the_opener_only_when_the_reply_will_be_late(
    first_delay, clock
):
    llm = SlowFirstToken({"France": "the capital of France is Paris."}, first_delay=first_delay)
    engines = engines_with_opener(llm, "Sure,")
    engines.fillers = {"en": [canned("Let me see.")]}
    session, events = make_session(engines, clock)
    session.config.llm.opener_wait_s = 0.3
    if first_delay:  # and earlier turns taught it when the token and the first piece come
        session.planner.first_token_lag_s = first_delay
        session.planner.answer_lag_s = 1.0
    try:
        speak(session, QUESTION_EN)
        await wait_until(lambda: len(session.turns) == 1, clock)
        spoken = [e["text"] for e in of_type(events, "bot_text")]
        if first_delay:  # no token by the opener's deadline: say the filler first
            assert spoken[:2] == ["Let me see.", "Sure,"]
            # The user heard it; the model's history keeps only its own words.
            assert session.turns[-1].heard_text.startswith("Let me see. Sure, the")
            assert session.history.turns[-1]["content"].startswith("Sure, the")
        else:
            assert spoken[0] == "Sure,"
        assert " ".join(spoken).endswith("Sure, the capital of France is Paris.")
    finally:
        await session.close()


async def test_an_empty_continuation_after_the_opener_is_asked_again(clock):
    class SilentAfterOpener(ScriptedLLM):
        async def stream_chat(self, messages, *, conversation=None):
            if messages[-1]["role"] == "assistant":
                self.requests.append((conversation, list(messages)))
                return
            async for delta in super().stream_chat(messages, conversation=conversation):
                yield delta

    llm = SilentAfterOpener({"France": "Paris is the capital."})
    engines = engines_with_opener(llm, "Hmm,")
    session, events = make_session(engines, clock)
    try:
        speak(session, QUESTION_EN)
        await wait_until(lambda: len(session.turns) == 1, clock)
        assert len(llm.requests) == 2 and llm.requests[1][1][-1]["role"] == "user"
        assert session.history.turns[-1]["content"] == "Hmm, Paris is the capital."
    finally:
        await session.close()


@pytest.mark.parametrize("low_water", [0.8, 0.0])
async def test_a_long_sentence_is_cut_when_the_reply_audio_runs_dry(low_water, clock):
    long_sentence = (
        "London has mild winters and warm summers and a lot of parks to walk in "
        "when the sun comes out after the rain."
    )
    llm = ScriptedLLM({"France": "Sure. " + long_sentence}, token_delay=0.05)
    engines = fake_engines(llm=llm, tts=ToneTTS(seconds_per_char=0.005))
    session, events = make_session(engines, clock)
    session.config.llm.cut_when_queued_audio_below_s = low_water
    try:
        speak(session, QUESTION_EN)
        await wait_until(lambda: len(session.turns) == 1, clock)
        spoken = [e["text"] for e in of_type(events, "bot_text")]
        assert " ".join(spoken) == "Sure. " + long_sentence  # nothing lost or doubled
        if low_water:  # the audio ran dry long before the sentence ended
            assert len(spoken) > 2
        else:  # later pieces wait for the sentence end
            assert spoken == ["Sure.", long_sentence]
    finally:
        await session.close()


async def test_the_reply_is_synthesized_while_the_opener_is_held(clock):
    class TimedTTS(ToneTTS):
        def synthesize(self, text, lang, voice=None):
            self.started = getattr(self, "started", None) or clock.now()
            return super().synthesize(text, lang, voice)

    llm = ScriptedLLM({"France": "the capital of France is Paris."})
    engines = engines_with_opener(llm, "Sure,")
    engines.tts = TimedTTS(delay=0.6, seconds_per_char=0.01)
    session, events = make_session(engines, clock)
    session.config.llm.opener_wait_s = 3.0
    try:
        speak(session, QUESTION_EN)
        await wait_until(lambda: len(session.turns) == 1, clock)
        turn = session.turns[0]
        assert [e["text"] for e in of_type(events, "bot_text")][0] == "Sure,"
        # The opener went out after the first token, but the reply's TTS call
        # had already started: holding the opener does not delay the reply.
        assert turn.marks["llm_first_token"] <= turn.marks["first_audio_sent"]
        assert engines.tts.started < turn.marks["first_audio_sent"]
    finally:
        await session.close()


async def speaking_session(
    clock: VirtualTime, sentences: int, seconds_per_char: float
) -> tuple[Session, str]:
    """A session whose avatar is saying a reply of that many sentences."""
    reply = "Sure, " + " ".join(["Paris is a very old and beautiful city."] * sentences)
    engines = fake_engines(
        llm=ScriptedLLM({"France": reply}), tts=ToneTTS(seconds_per_char=seconds_per_char)
    )
    session, _events = make_session(engines, clock)
    speak(session, QUESTION_EN)
    await wait_until(lambda: session.state == "speaking", clock)
    return session, reply


async def test_a_cough_pauses_the_reply_and_it_resumes_where_it_stopped(clock):
    session, reply = await speaking_session(clock, 3, 0.02)
    try:
        await clock.sleep(0.3)
        # 40 ms of noise: one VAD frame of "speech", less than a barge-in.
        session.feed_mic(tone(660, 0.04))
        assert session.clock.held
        queued = session.avatar.queued_samples
        await clock.sleep(0.2)
        assert session.avatar.queued_samples == queued  # nothing played while paused
        for _ in range(10):  # then silence
            session.feed_mic(silence(0.02))
        assert not session.clock.held
        await wait_until(lambda: len(session.turns) == 1, clock)
        assert not session.turns[0].interrupted
        assert session.history.turns[-1]["content"] == reply  # heard in full
    finally:
        await session.close()


async def test_speech_that_goes_on_turns_the_pause_into_a_barge_in(clock):
    session, _reply = await speaking_session(clock, 6, 0.03)
    try:
        session.feed_mic(tone(660, 0.04))
        assert session.clock.held and session.state == "speaking"
        session.feed_mic(tone(660, 0.08))  # 120 ms in all: past barge_in_ms
        assert session.state == "listening" and not session.clock.held
        assert session.turns[0].interrupted
    finally:
        await session.close()


async def test_between_the_opener_and_a_late_answer_the_avatar_shows_it_is_thinking(
    clock,
):
    llm = SlowFirstToken({"France": "the capital of France is Paris."}, first_delay=1.2)
    engines = engines_with_opener(llm, "Sure,")
    session, events = make_session(engines, clock)
    session.config.llm.opener_wait_s = 0.1  # the opener is said long before the answer
    try:
        speak(session, QUESTION_EN)
        await wait_until(lambda: len(session.turns) == 1, clock)
        states = [e["value"] for e in of_type(events, "state")]
        # listening, thinking (turn confirmed), speaking ("Sure,"), thinking
        # (the opener is said, the answer is not ready), speaking, listening
        start = states.index("speaking")
        assert states[start:] == ["speaking", "thinking", "speaking", "listening"]
        latency = session.turns[0].latency()
        assert latency["answer_audio_sent"] - latency["first_audio_sent"] >= 0.8
        assert session.turns[0].playback()["longest_gap"] >= 0.8
    finally:
        await session.close()


async def test_the_avatar_prepares_reply_audio_off_the_event_loop(clock):
    """The mouth track (13-32 ms of CPU per piece) is made in a worker thread,
    never on the loop that paces media."""
    import threading

    import numpy as np

    from tests.fakes import BlankAvatarModel

    loop_thread = threading.get_ident()
    made_in: list[int] = []

    class TrackedAvatars(BlankAvatarModel):
        def new_stream(self, avatar=None):  # type: ignore[no-untyped-def]
            stream = super().new_stream(avatar)

            def make_track(samples, speech):  # type: ignore[no-untyped-def]
                made_in.append(threading.get_ident())
                return np.zeros((1, 4), np.float32)

            stream.make_track = make_track  # type: ignore[method-assign]
            return stream

    engines = fake_engines()
    engines.avatar = TrackedAvatars()
    session, events = make_session(engines, clock)
    try:
        session.handle_message({"type": "text", "text": "What is the capital of France?"})
        await wait_until(lambda: len(session.turns) == 1, clock)
        assert len(of_type(events, "bot_text")) >= 2  # opener and answer
        assert made_in and loop_thread not in made_in
    finally:
        await session.close()


async def test_idle_time_counts_from_the_end_of_the_reply(clock: VirtualTime) -> None:
    engines = fake_engines(tts=ToneTTS(seconds_per_char=0.05))
    session, _ = make_session(engines, clock)
    try:
        session.handle_message({"type": "text", "text": "Tell me about France"})
        await wait_until(lambda: session.state == "speaking", clock)
        assert session.idle_seconds() == 0.0  # a turn in flight is not idle
        await wait_until(lambda: len(session.turns) == 1, clock, timeout=60)
        reply_ended = clock.now()
        assert reply_ended > 1.0  # the reply took time, so the difference shows
        await clock.sleep(0.5)
        assert session.idle_seconds() == pytest.approx(clock.now() - reply_ended, abs=0.02)
    finally:
        await session.close()


async def test_a_filler_that_would_end_after_the_answer_is_ready_is_not_said(clock):
    # No token by the opener's deadline (0.3 s), and the answer expected 1 s
    # later: "Let me see." (0.66 s) and "Sure," (0.3 s) with their pauses do not
    # fit, so the opener comes alone (a filler would only delay the answer).
    llm = SlowFirstToken({"France": "the capital of France is Paris."}, first_delay=0.5)
    engines = engines_with_opener(llm, "Sure,")
    engines.fillers = {"en": [canned("Let me see.")]}
    session, events = make_session(engines, clock)
    session.config.llm.opener_wait_s = 0.3
    session.planner.answer_lag_s = 1.0
    try:
        speak(session, QUESTION_EN)
        await wait_until(lambda: len(session.turns) == 1, clock)
        spoken = [e["text"] for e in of_type(events, "bot_text")]
        assert "Let me see." not in spoken and spoken[0] == "Sure,"
        # It learnt when the first token comes, for the next turn's decision.
        latency = of_type(events, "turn")[0]["latency"]
        assert session.planner.first_token_lag_s > 0.5
        assert session.planner.first_token_lag_s == pytest.approx(
            latency["llm_first_token"], abs=0.35
        )
    finally:
        await session.close()
