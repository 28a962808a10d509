"""Integration: the real server and models, an aiortc client over loopback."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import httpx
import pytest

from bench.client import Client, read_wav, to_48k
from bench.launch import running_server
from core.config import load_config
from server.rtc import offer_loopback_only

pytestmark = pytest.mark.models
FIXTURES = Path(__file__).parent / "fixtures"
API_KEY = "test-api-key"
KEY = {"Authorization": f"Bearer {API_KEY}"}


@pytest.fixture(scope="module")
def server():
    offer_loopback_only()  # the test client, too, offers only 127.0.0.1
    env = {"VIDEOCHAT_SERVER__MAX_SESSIONS": "2", "VIDEOCHAT_SERVER__API_KEY": API_KEY}
    with running_server(env=env) as (base, process):
        yield base


def question(name: str):
    pcm, rate = read_wav(FIXTURES / name)
    return to_48k(pcm, rate)


async def ask(client: Client, wav: str, expect: str) -> dict:
    """Say a question, wait until the reply has been spoken; return the events."""
    since = len(client.received.events)
    client.mic.say(question(wav))
    spoken = time.perf_counter()
    final, turn = await client.wait_for_reply(since=since)
    assert expect in final["text"].lower(), final
    assert any(
        e["type"] == "state" and e["value"] == "speaking" for _, e in client.received.events[since:]
    )
    return {"final": final, "turn": turn, "spoken": spoken}


async def test_spoken_questions_are_answered_with_voice_and_video(server):
    client = Client(server)
    await client.connect()
    try:
        result = await ask(client, "question_en.wav", "capital")
        latency = result["turn"]["latency"]
        assert {"asr_final", "llm_first_token", "tts_first_audio", "first_audio_sent"} <= set(
            latency
        )
        assert 0 < latency["first_audio_sent"] < 30

        first_audio = client.first_loud_audio_after(result["spoken"])
        assert first_audio is not None, "no non-silent reply audio arrived"
        bot = [e for _, e in client.received.events if e["type"] == "bot_text"]
        assert bot and all(e["text"] for e in bot)

        end = client.received.events[-1][0]
        assert client.fps_between(first_audio, end) >= 20
        assert client.received.video_sizes == {(512, 512)}

        result_zh = await ask(client, "question_zh.wav", "天气")
        assert result_zh["turn"]["latency"]["first_audio_sent"] > 0
        assert client.first_loud_audio_after(result_zh["spoken"]) is not None

        async with httpx.AsyncClient() as http:
            listed = (await http.get(f"{server}/api/sessions", headers=KEY)).json()
            assert client.session_id in [s["id"] for s in listed]
            # The session's own token (from the /offer answer) reads it, too.
            url = f"{server}/api/sessions/{client.session_id}"
            detail = (await http.get(url, headers=client.auth)).json()
        assert len(detail["turn_log"]) >= 2
        assert detail["turn_log"][0]["latency"]["first_audio_sent"] > 0
        assert detail["history"][0]["role"] == "user"
    finally:
        await client.close()
    async with httpx.AsyncClient() as http:
        gone = await http.get(f"{server}/api/sessions/{client.session_id}", headers=KEY)
    assert gone.status_code == 404


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"sdp": "v=0 nonsense", "type": "offer"},
        {"sdp": "x", "type": "answer"},
        {"sdp": "x", "type": "offer", "lang": "fr"},
        {"sdp": "x", "type": "offer", "voice": "nobody"},
    ],
)
def test_bad_offers_get_400_and_the_server_keeps_serving(server, body):
    response = httpx.post(f"{server}/offer", json=body, timeout=10)
    assert response.status_code == 400
    assert response.json()["detail"]
    assert httpx.get(f"{server}/health", timeout=5).status_code == 200


def test_not_json_gets_400(server):
    response = httpx.post(
        f"{server}/offer",
        content=b"{not json",
        timeout=10,
        headers={"content-type": "application/json"},
    )
    assert response.status_code == 400


async def test_past_max_sessions_offer_gets_503(server):
    clients = [Client(server), Client(server)]
    try:
        for client in clients:
            await client.connect()
        extra = Client(server)
        with pytest.raises(httpx.HTTPStatusError) as error:
            await extra.connect()
        assert error.value.response.status_code == 503
        assert "busy" in error.value.response.json()["detail"]
        assert int(error.value.response.headers["retry-after"]) > 0
        await extra.pc.close()
    finally:
        for client in clients:
            await client.close()
    await asyncio.sleep(0.5)
    assert httpx.get(f"{server}/health", timeout=5).json()["sessions"] == 0


def test_unknown_session_is_404(server):
    url = f"{server}/api/sessions/nope"
    assert httpx.get(url, headers=KEY, timeout=5).status_code == 404
    assert httpx.delete(url, headers=KEY, timeout=5).status_code == 404
    assert httpx.get(url, timeout=5).status_code == 401  # no credential


async def test_barge_in_over_webrtc_stops_the_reply(server):
    client = Client(server)
    await client.connect()
    try:
        client.send({"type": "text", "text": "Tell me a long story about a brave little dragon."})
        # The story itself, not a filler or opener said while it is being made.
        llm = load_config().llm
        canned = {
            text
            for lists in (llm.fillers, llm.openers)
            for texts in lists.values()
            for text in texts
        }
        await client.wait_for(lambda e: e["type"] == "bot_text" and e["text"] not in canned, 120)
        speaking = await client.wait_for(
            lambda e: e["type"] == "state" and e["value"] == "speaking", 90
        )
        await asyncio.sleep(1.0)
        since = len(client.received.events)
        lead = 0.3  # question_en.wav starts with 0.3 s of silence
        client.mic.say(question("question_en.wav"), speech_start_offset=lead)
        await client.wait_for(
            lambda e: e["type"] == "state" and e["value"] == "listening", 10, since=since
        )
        talk_started = client.mic.speech_start_times[-1]
        await asyncio.sleep(1.0)
        # The reply's audio must have stopped soon after the user started talking.
        loud_after = [t for t, rms in client.received.audio if t > talk_started and rms > 0.01]
        heard_until = max(loud_after, default=talk_started)
        assert heard_until - talk_started < 0.5, heard_until - talk_started
        assert client.index_of(speaking) < since
        # The interrupted question is answered next, and the history holds only
        # what was heard of the story.
        await client.wait_for(
            lambda e: e["type"] == "user_text" and e["final"] and "capital" in e["text"].lower(),
            60,
            since=since,
        )
        async with httpx.AsyncClient() as http:
            detail = (
                await http.get(f"{server}/api/sessions/{client.session_id}", headers=KEY)
            ).json()
        story = detail["turn_log"][0]
        assert story["interrupted"]
        assert detail["history"][1]["role"] == "assistant"
        # What was heard, less a filler said first ("Let me think."): the
        # model's history holds only its own words.
        assert detail["history"][1]["content"]
        assert story["bot_text"].endswith(detail["history"][1]["content"])
    finally:
        await client.close()


async def test_two_sessions_at_once_stay_separate(server):
    english, chinese = Client(server), Client(server)
    await asyncio.gather(english.connect(), chinese.connect())
    try:
        results = await asyncio.gather(
            ask(english, "question_en.wav", "capital"), ask(chinese, "question_zh.wav", "天气")
        )
        for client, result in zip((english, chinese), results, strict=True):
            finals = [
                e["text"]
                for _, e in client.received.events
                if e["type"] == "user_text" and e["final"]
            ]
            assert finals == [result["final"]["text"]]
            assert client.first_loud_audio_after(result["spoken"]) is not None
            # Video keeps flowing during the reply. Not the 25 fps target: that is
            # make bench's, at the capacity calibration admits; this test runs two
            # sessions even where the machine holds one (a slow 2-core machine).
            reply_start = client.first_loud_audio_after(result["spoken"])
            assert client.fps_between(reply_start, client.received.events[-1][0]) >= 10
    finally:
        await asyncio.gather(english.close(), chinese.close())
