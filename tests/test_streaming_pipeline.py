"""The pipeline on the streaming contracts, with scripted backends on virtual
time: a recognizer fed while the user speaks (partials, then the final), a
synthesizer whose chunks are pushed as they come, and an end-to-end model in
place of ASR + LLM + TTS."""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator

import numpy as np
import pytest

from models.base import BufferedRecognizerStream, RecognizerStream
from pipelines.timebase import VirtualTime
from pipelines.turn import _prefix
from tests.fakes import (
    ChunkedTTS,
    ScriptedASR,
    ScriptedLLM,
    ScriptedSpeechToSpeech,
    StreamingASR,
    ToneTTS,
    fake_engines,
    silence,
    tone,
)
from tests.test_session import QUESTION_EN, make_session, of_type, speak, wait_until

QUESTION = "What is the capital of France?"
ANSWER = "Sure, the capital of France is Paris. It is lovely."


@pytest.fixture
async def clock() -> AsyncIterator[VirtualTime]:
    virtual = VirtualTime()
    yield virtual
    await virtual.aclose()


def partials(events: list[dict]) -> list[str]:
    return [e["text"] for e in of_type(events, "user_text") if not e["final"] and e["text"]]


def finals(events: list[dict]) -> list[str]:
    return [e["text"] for e in of_type(events, "user_text") if e["final"]]


def record_pushes(session, clock: VirtualTime) -> list[tuple[float, tuple[int, int], int]]:
    """(time, tag, samples) of every push to the session's avatar."""
    pushes: list[tuple[float, tuple[int, int], int]] = []
    push_audio = session.avatar.push_audio

    def recording(audio, tag=None, speech=None, prepared=None):  # type: ignore[no-untyped-def]
        pushes.append((clock.now(), tag, audio.size))
        push_audio(audio, tag=tag, speech=speech, prepared=prepared)

    session.avatar.push_audio = recording
    return pushes


async def say_live(session, clock: VirtualTime, audio: np.ndarray) -> None:
    """Feed the microphone in 20 ms chunks at the pace it delivers them."""
    for i in range(0, audio.size, 320):
        session.feed_mic(audio[i : i + 320])
        await clock.sleep(0.02)


async def talk_over(session, clock: VirtualTime) -> None:
    """The user talks over the avatar until the reply stops."""
    started = clock.now()
    while session.state == "speaking":
        session.feed_mic(tone(660, 0.02))
        await clock.sleep(0.02)
        assert clock.now() - started < 1.0, "reply did not stop"


# ------------------------------------------------------------------ ASR
async def test_a_streaming_recognizer_gives_partials_while_the_user_speaks(clock):
    asr = StreamingASR({QUESTION_EN: QUESTION, 880: "你好"})
    engines = fake_engines(asr=asr, tts=ToneTTS(seconds_per_char=0.01))
    session, events = make_session(engines, clock)
    loop_thread = threading.get_ident()
    try:
        await say_live(session, clock, np.concatenate([tone(QUESTION_EN, 1.2), silence(0.5)]))
        await wait_until(lambda: len(session.turns) == 1, clock)
        shown = partials(events)
        # Word by word as the user speaks, each the transcript so far.
        assert len(shown) >= 3 and shown[-1] == QUESTION
        assert all(b.startswith(a) for a, b in zip(shown, shown[1:], strict=False))
        first_partial = next(
            i for i, e in enumerate(events) if e["type"] == "user_text" and e["text"]
        )
        thinking = events.index({"type": "state", "value": "thinking"})
        assert first_partial < thinking  # while the user spoke, before the turn ended
        assert finals(events) == [QUESTION]
        assert engines.llm.requests[0][1][-1] == {"role": "user", "content": QUESTION}
        # One stream for the utterance, fed in order while the user spoke, one
        # feed at a time, in worker threads; the end of turn only finished it.
        assert asr.transcribed == []
        assert len(asr.streams) == 1
        stream = asr.streams[0]
        assert len(stream.feeds) >= 10 and stream.finished and not stream.overlapped
        assert loop_thread not in stream.threads
        # Its audio: the utterance as the turn detector collected it (pre-roll,
        # 1.2 s of speech, the hang-over), up to the end of the turn.
        assert 1.2 * 16000 <= sum(stream.feeds) <= (1.2 + 0.2 + 0.25) * 16000
        assert session.history.turns[0]["content"] == QUESTION
    finally:
        await session.close()


async def test_a_dropped_speculation_is_redone_with_the_whole_utterance(clock):
    asr = StreamingASR({QUESTION_EN: QUESTION, 880: "你好"})
    engines = fake_engines(asr=asr, tts=ToneTTS(seconds_per_char=0.01))
    session, events = make_session(engines, clock)
    session.config.vad.speculate_ms = 64
    session.config.vad.hangover_ms = 400
    try:
        await say_live(session, clock, tone(QUESTION_EN, 0.6))
        await say_live(session, clock, silence(0.2))
        await clock.sleep(0.3)
        turn = session.current_turn
        assert turn is not None and turn.speculative
        # The speculation finished the live stream: 0.6 s heard, 4 words.
        assert asr.streams[0].finished
        assert engines.llm.requests[0][1][-1]["content"] == "What is the capital"
        await say_live(session, clock, np.concatenate([tone(QUESTION_EN, 0.4), silence(0.6)]))
        await wait_until(lambda: len(session.turns) == 1, clock)
        # The user went on: a new stream got the utterance so far and went on
        # with it; its final is the whole question.
        assert len(asr.streams) == 2
        assert asr.streams[1].feeds[0] >= 0.6 * 16000
        assert finals(events) == [QUESTION]
        assert engines.llm.requests[-1][1][-1] == {"role": "user", "content": QUESTION}
        assert [m["content"] for m in session.history.turns][0] == QUESTION
        assert session.turns[0].user_text == QUESTION and not session.turns[0].interrupted
    finally:
        await session.close()


async def test_a_batch_recognizer_decodes_the_utterance_once_at_the_end(clock):
    counts = {"streams": 0, "feeds": 0, "finishes": 0}
    started_at: list[float] = []

    class Counted(BufferedRecognizerStream):
        def feed(self, audio):  # type: ignore[no-untyped-def]
            counts["feeds"] += 1
            return super().feed(audio)

        def finish(self):  # type: ignore[no-untyped-def]
            counts["finishes"] += 1
            return super().finish()

    class CountingASR(ScriptedASR):
        def new_stream(self, language: str | None = None) -> RecognizerStream:
            counts["streams"] += 1
            started_at.append(clock.now())
            return Counted(self, language)

    asr = CountingASR({QUESTION_EN: QUESTION})
    engines = fake_engines(asr=asr, tts=ToneTTS(seconds_per_char=0.01))
    session, events = make_session(engines, clock)
    try:
        speak(session, QUESTION_EN, seconds=1.2)
        await wait_until(lambda: len(session.turns) == 1, clock)
        assert partials(events) == []  # only the empty "speech started" one
        assert finals(events) == [QUESTION]
        assert counts == {"streams": 1, "feeds": 1, "finishes": 1}
        assert len(asr.transcribed) == 1 and asr.transcribed[0] >= 1.2 * 16000
        assert started_at[0] >= session.turns[0].end_of_speech  # at the end, not live
    finally:
        await session.close()


# ------------------------------------------------------------------ TTS
async def test_streamed_speech_is_pushed_chunk_by_chunk(clock):
    tts = ChunkedTTS(chunks=4, chunk_delay=0.1, seconds_per_char=0.03)
    engines = fake_engines(llm=ScriptedLLM({"France": ANSWER}), tts=tts)
    session, events = make_session(engines, clock)
    session.config.llm.cut_when_queued_audio_below_s = 0
    pushes = record_pushes(session, clock)
    try:
        speak(session, QUESTION_EN)
        await wait_until(lambda: len(session.turns) == 1, clock)
        turn = session.turns[0]
        texts = [p.text for p in turn.pieces]
        assert texts == ["Sure,", "the capital of France is Paris.", "It is lovely."]
        # Each piece's four chunks went out under its tag, as they were made:
        # the first long before the last existed.
        for index, piece in enumerate(turn.pieces):
            mine = [(t, n) for t, tag, n in pushes if tag == (turn.index, index)]
            assert len(mine) == 4
            assert mine[-1][0] - mine[0][0] >= 3 * 0.1 - 1e-9
            assert sum(n for _, n in mine) == piece.samples == piece.played
            assert piece.complete
        assert turn.marks["tts_first_audio"] < pushes[3][0]
        # One bot_text per piece, not per chunk; everything heard is kept.
        assert [e["text"] for e in of_type(events, "bot_text")] == texts
        assert session.history.turns[-1]["content"] == ANSWER
        assert all(taken for _, taken in tts.ended)
    finally:
        await session.close()


async def test_barge_in_during_a_streamed_piece_keeps_what_was_played(clock):
    sentence = (
        "Paris has wide avenues and old bridges and many small cafes where people "
        "sit for hours and watch the river go by"
    )
    reply = "Sure. " + sentence + "."
    # Slower than real time: each 0.8 s chunk takes 1 s to make.
    tts = ChunkedTTS(chunks=8, chunk_delay=1.0, seconds_per_char=0.055)
    engines = fake_engines(llm=ScriptedLLM({"France": reply}), tts=tts)
    session, events = make_session(engines, clock)
    session.config.llm.cut_when_queued_audio_below_s = 0
    try:
        speak(session, QUESTION_EN)
        await wait_until(
            lambda: session.current_turn is not None and len(session.current_turn.pieces) == 2,
            clock,
        )
        await clock.sleep(1.5)
        turn = session.current_turn
        piece = turn.pieces[1]
        assert 0 < piece.played and not piece.complete  # mid-piece, more to come
        await talk_over(session, clock)
        assert turn.interrupted and session.avatar.queued_samples == 0
        made = len(tts.made)
        await clock.sleep(3.0)
        # The chunk being made then was the last: the stream was closed.
        assert len(tts.made) <= made + 1
        assert (sentence + ".", False) in tts.ended
        assert session.avatar.queued_samples == 0
        # What was heard: "Sure." and the share of the piece played, of the
        # whole piece (estimated: it was not all made yet).
        share = piece.played / max(piece.samples, piece.expected_samples)
        assert piece.expected_samples > piece.samples
        heard = ("Sure. " + _prefix(sentence + ".", share)).strip()
        assert turn.heard_text == heard and heard != "Sure."
        assert session.history.turns[-1] == {"role": "assistant", "content": heard}
    finally:
        await session.close()


# ------------------------------------------------------ speech to speech
def s2s_engines(**kwargs) -> tuple:
    model = ScriptedSpeechToSpeech(
        {QUESTION_EN: QUESTION, 880: "你好"}, {"France": ANSWER, "你好": "你好！"}, **kwargs
    )
    engines = fake_engines(tts=ToneTTS(seconds_per_char=0.01))
    engines.s2s = model
    return engines, model


async def test_a_voice_turn_goes_to_the_speech_to_speech_model(clock):
    engines, model = s2s_engines()
    session, events = make_session(
        engines, clock, system_prompt="You are a tour guide.", voice="scripted", lang="en"
    )
    pushes = record_pushes(session, clock)
    try:
        speak(session, QUESTION_EN)
        await wait_until(lambda: len(session.turns) == 1, clock)
        (conversation,) = model.conversations
        assert conversation.system_prompt == "You are a tour guide."
        assert (conversation.voice, conversation.language) == ("scripted", "en")
        assert isinstance(conversation.inputs[0], np.ndarray)
        assert conversation.inputs[0].size >= 0.8 * 16000  # the utterance, pre-roll and all
        # The cascade was not used.
        assert engines.asr.transcribed == [] and not engines.llm.requests and not engines.tts.calls
        assert partials(events) == ["What is the", QUESTION]  # as the model hears it
        assert finals(events) == [QUESTION]
        said = [e["text"] for e in of_type(events, "bot_text")]
        # Shown with the audio that follows the text, whole words only: the last
        # word of a delta may go on in the next one, so it waits for that.
        assert said == ["Sure, the", "capital of France", "is Paris. It", "is lovely."]
        states = [e["value"] for e in of_type(events, "state")]
        assert states[-3:] == ["thinking", "speaking", "listening"]
        turn = session.turns[0]
        # Two chunks per piece, under its tag.
        assert [tag for _, tag, _ in pushes] == [(1, i) for i in range(4) for _ in range(2)]
        assert all(p.complete and p.played == p.samples for p in turn.pieces)
        for mark in (
            "asr_final",
            "llm_first_token",
            "tts_first_audio",
            "first_audio_sent",
            "answer_audio_sent",
            "llm_done",
            "reply_done",
        ):
            assert mark in turn.marks
        assert session.history.turns == [
            {"role": "user", "content": QUESTION},
            {"role": "assistant", "content": ANSWER},
        ]
        assert turn.summary()["bot_text"] == ANSWER
        assert conversation.calls == ["respond"]
    finally:
        await session.close()
    assert conversation.closed and conversation.calls == ["respond", "close"]


async def test_a_typed_turn_goes_to_the_speech_to_speech_model(clock):
    engines, model = s2s_engines()
    session, events = make_session(engines, clock)
    try:
        session.handle_message({"type": "text", "text": "Tell me about France"})
        await wait_until(lambda: len(session.turns) == 1, clock)
        (conversation,) = model.conversations
        assert conversation.inputs == ["Tell me about France"]
        assert conversation.language is None  # the session's language is "auto"
        assert finals(events) == ["Tell me about France"]  # once, from the page's message
        assert " ".join(e["text"] for e in of_type(events, "bot_text")) == ANSWER
        assert session.turns[0].source == "text" and "asr_final" not in session.turns[0].marks
        assert [m["content"] for m in session.history.turns] == ["Tell me about France", ANSWER]
    finally:
        await session.close()


async def test_barge_in_cancels_the_conversation_with_what_was_heard(clock):
    long_answer = "Sure, " + " ".join(["Paris is a very old and beautiful city."] * 5)
    # Made faster than it is played, but still being made when the user talks.
    engines, model = s2s_engines(delay=0.2, seconds_per_char=0.06)
    model.replies["France"] = long_answer
    session, events = make_session(engines, clock)
    try:
        speak(session, QUESTION_EN)
        await wait_until(lambda: session.state == "speaking", clock)
        await clock.sleep(1.0)
        await talk_over(session, clock)
        turn = session.turns[0]
        assert turn.interrupted and session.avatar.queued_samples == 0
        await clock.sleep(0.5)
        (conversation,) = model.conversations
        # The reply stopped, and the model keeps what was played.
        assert conversation.stopped == 1
        assert conversation.calls == ["respond", "cancel"]
        heard = turn.heard(fillers=False)
        assert conversation.cancelled == [heard]
        assert heard and long_answer.startswith(heard) and heard != long_answer
        assert session.history.turns[-1] == {"role": "assistant", "content": heard}
        # The talk-over was a turn of its own, answered after the cancel.
        speak(session, 880)
        await wait_until(lambda: len(session.turns) >= 2 and session.state == "listening", clock)
        assert conversation.calls[:3] == ["respond", "cancel", "respond"]
    finally:
        await session.close()


async def test_closing_a_session_cancels_the_reply_then_closes_the_conversation(clock):
    long_answer = "Sure, " + " ".join(["Paris is a very old and beautiful city."] * 5)
    engines, model = s2s_engines()
    model.replies["France"] = long_answer
    session, _events = make_session(engines, clock)
    speak(session, QUESTION_EN)
    await wait_until(lambda: session.state == "speaking", clock)
    await session.close()
    (conversation,) = model.conversations
    assert conversation.calls == ["respond", "cancel", "close"] and conversation.closed


async def test_a_given_line_is_said_by_the_tts_beside_a_speech_to_speech_model(clock):
    engines, model = s2s_engines()
    session, events = make_session(engines, clock, voice="scripted")
    try:
        session.say("Welcome to Paris.")
        await wait_until(lambda: len(session.turns) == 1, clock)
        assert engines.tts.calls == ["Welcome to Paris."]
        assert model.conversations[0].calls == []
        assert [e["text"] for e in of_type(events, "bot_text")] == ["Welcome to Paris."]
    finally:
        await session.close()
