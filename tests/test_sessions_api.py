"""Sessions as a resource: minting, tokens and their scope, origins, admission,
lifetimes, webhooks, faults and bad input. The real server app and a real
aiortc client over loopback, with scripted models (fast, deterministic)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from aiortc import RTCPeerConnection

from bench.client import Client
from core.config import Config
from server.app import create_app
from server.rtc import keep_loopback_candidates, offer_loopback_only
from tests.fakes import FailingLLM, ScriptedLLM, Webhook, fake_engines, served

API_KEY = "k-test"
KEY = {"Authorization": f"Bearer {API_KEY}"}
HOST_APP = "http://127.0.0.1:8100"  # an embedding app's origin, on the allow-list
REPLIES = {"France": "The capital of France is Paris.", "weather": "It is sunny."}


def make_config(**server: Any) -> Config:
    config = Config()
    config.server.api_key = API_KEY
    config.server.max_sessions = 2
    config.server.allowed_origins = [HOST_APP]
    config.server.loopback_only = True
    for key, value in server.items():
        setattr(config.server, key, value)
    return config


@pytest.fixture(scope="module", autouse=True)
def loopback_only() -> None:
    offer_loopback_only()  # the test clients, too, offer only 127.0.0.1


@pytest.fixture
def server() -> Iterator[str]:
    with served(create_app(make_config(), fake_engines(ScriptedLLM(REPLIES)))) as base:
        yield base


async def offer_sdp() -> str:
    """A browser-like offer (audio, video, the events channel), never connected."""
    pc = RTCPeerConnection()
    pc.addTransceiver("audio", direction="sendrecv")
    pc.addTransceiver("video", direction="recvonly")
    pc.createDataChannel("events")
    await pc.setLocalDescription(await pc.createOffer())
    sdp = pc.localDescription.sdp
    await pc.close()
    return sdp


def mint(base: str, **options: Any) -> dict[str, Any]:
    response = httpx.post(f"{base}/api/sessions", json=options, headers=KEY, timeout=10)
    assert response.status_code == 201, response.text
    return response.json()


async def events_of(client: Client, kind: str, timeout: float = 20) -> dict[str, Any]:
    return await client.wait_for(lambda e: e["type"] == kind, timeout)


async def test_minted_session_end_to_end() -> None:
    hook = Webhook()
    app = create_app(make_config(), fake_engines(ScriptedLLM(REPLIES)))
    with served(app) as base:
        minted = mint(
            base,
            greeting="Hello, I am Ada.",
            system_prompt="You are Ada.",
            webhook_url=hook.url,
            lang="en",
        )
        client = Client(base, token=minted["token"])
        other = Client(base)  # the page's own flow: no token, no Origin
        try:
            await client.connect()
            assert client.session_id == minted["session_id"]
            greeting = await client.wait_for(
                lambda e: e["type"] == "bot_text" and "Ada" in e["text"], 20
            )
            assert greeting
            since = len(client.received.events)
            client.send({"type": "text", "text": "What is the capital of France?"})
            paris = await client.wait_for(
                lambda e: e["type"] == "bot_text" and "Paris" in e["text"], 20, since=since
            )
            await client.wait_for(lambda e: e["type"] == "turn", 20, since=client.index_of(paris))
            await other.connect()
            async with httpx.AsyncClient(timeout=10) as http:
                url = f"{base}/api/sessions/{client.session_id}"
                transcript = (await http.get(f"{url}/transcript", headers=client.auth)).json()
                assert transcript["turns"][-1]["user"] == "What is the capital of France?"
                assert "Paris" in transcript["turns"][-1]["avatar"]
                detail = (await http.get(url, headers=client.auth)).json()
                # The persona chosen at minting is the one the LLM was given.
                assert detail["turn_log"]
                # Another session's token sees nothing of this one.
                assert (await http.get(url, headers=other.auth)).status_code == 403
                assert (await http.delete(url, headers=other.auth)).status_code == 403
                assert (
                    await http.get(f"{base}/api/sessions", headers=client.auth)
                ).status_code == 403
                listed = (await http.get(f"{base}/api/sessions", headers=KEY)).json()
                assert {s["id"] for s in listed} == {client.session_id, other.session_id}
                # say and interrupt, with the session's own token.
                since = len(client.received.events)
                said = await http.post(
                    f"{url}/say", json={"text": "One moment."}, headers=client.auth
                )
                assert said.status_code == 202
                await client.wait_for(
                    lambda e: e["type"] == "bot_text" and "moment" in e["text"], 20, since=since
                )
                stopped = await http.post(f"{url}/interrupt", headers=client.auth)
                assert stopped.status_code == 200
                # The token is spent: a second offer with it is refused.
                again = await http.post(
                    f"{base}/offer",
                    json={"sdp": await offer_sdp(), "type": "offer", "token": minted["token"]},
                )
                assert again.status_code == 409
                since = len(client.received.events)
                assert (await http.delete(url, headers=client.auth)).status_code == 200
            ended = await client.wait_for(lambda e: e["type"] == "ended", 10, since=since)
            assert ended["reason"] == "deleted"
        finally:
            await client.close()
            await other.close()
        await asyncio.sleep(0.5)
    names = hook.names()
    assert names[0] == "session.started" and "turn.completed" in names
    assert hook.events[-1]["event"] == "session.ended"
    assert hook.events[-1]["reason"] == "deleted"
    assert all(e["session_id"] == minted["session_id"] for e in hook.events)
    turns = [e["turn"] for e in hook.events if e["event"] == "turn.completed"]
    assert turns[0]["source"] == "say"  # the greeting
    assert any(t["user_text"] == "What is the capital of France?" for t in turns)


def test_credentials_and_scope(server: str) -> None:
    sessions = f"{server}/api/sessions"
    assert httpx.get(sessions).status_code == 401
    assert httpx.get(sessions, headers={"Authorization": "Bearer nope"}).status_code == 403
    assert httpx.post(sessions, json={}).status_code == 401
    minted = mint(server, lang="zh")
    token = {"Authorization": f"Bearer {minted['token']}"}
    one = f"{sessions}/{minted['session_id']}"
    # Waiting for its browser: visible to its token and the key, not to others.
    assert httpx.get(one, headers=token).json()["state"] == "waiting"
    assert httpx.get(one, headers=KEY).status_code == 200
    assert httpx.get(one, headers={"Authorization": "Bearer nope"}).status_code == 401
    assert httpx.get(one).status_code == 401
    assert httpx.delete(one, headers=token).status_code == 200
    assert httpx.get(one, headers=KEY).status_code == 404
    bad = httpx.post(sessions, json={"lang": "fr", "extra": 1}, headers=KEY)
    assert bad.status_code == 400 and "lang" in bad.json()["detail"]
    bad = httpx.post(sessions, json={"allowed_origin": "javascript:alert(1)"}, headers=KEY)
    assert bad.status_code == 400
    assert httpx.post(sessions, json={"voice": "nobody"}, headers=KEY).status_code == 400


async def test_offers_from_other_origins_need_a_token_for_them(server: str) -> None:
    sdp = await offer_sdp()
    body = {"sdp": sdp, "type": "offer"}
    async with httpx.AsyncClient(timeout=10) as http:
        evil = await http.post(f"{server}/offer", json=body, headers={"Origin": "http://evil.test"})
        assert evil.status_code == 401 and "token" in evil.json()["detail"]
        # A token minted for the host app does not work from another origin.
        minted = mint(server)
        stolen = await http.post(
            f"{server}/offer",
            json={**body, "token": minted["token"]},
            headers={"Origin": "http://evil.test"},
        )
        assert stolen.status_code == 403
        expired = await http.post(f"{server}/offer", json={**body, "token": "made-up"})
        assert expired.status_code == 401
        # CORS: the host app's origin is answered, another is not.
        preflight = {"Access-Control-Request-Method": "POST"}
        ok = await http.options(f"{server}/offer", headers={"Origin": HOST_APP, **preflight})
        assert ok.headers.get("access-control-allow-origin") == HOST_APP
        refused = await http.options(
            f"{server}/offer", headers={"Origin": "http://evil.test", **preflight}
        )
        assert "access-control-allow-origin" not in refused.headers
        # A failed offer does not spend the token.
        garbled = {"sdp": sdp.replace("m=audio", "m=audiox"), "type": "offer"}
        failed = await http.post(
            f"{server}/offer",
            json={**garbled, "token": minted["token"]},
            headers={"Origin": HOST_APP},
        )
        assert failed.status_code == 400
        # The token works from the host app's origin (the widget's case).
        answered = await http.post(
            f"{server}/offer", json={**body, "token": minted["token"]}, headers={"Origin": HOST_APP}
        )
        assert answered.status_code == 200
        assert answered.json()["session_id"] == minted["session_id"]


async def test_concurrent_offers_cannot_overrun_capacity() -> None:
    config = make_config(max_sessions=2, handshake_timeout_s=30)
    with served(create_app(config, fake_engines())) as base:
        sdps = [await offer_sdp() for _ in range(6)]
        async with httpx.AsyncClient(timeout=20) as http:
            answers = await asyncio.gather(
                *(http.post(f"{base}/offer", json={"sdp": s, "type": "offer"}) for s in sdps)
            )
            codes = sorted(a.status_code for a in answers)
            assert codes == [200, 200, 503, 503, 503, 503]
            assert all(int(a.headers["retry-after"]) > 0 for a in answers if a.status_code == 503)
            assert (await http.get(f"{base}/health")).json()["sessions"] == 2


async def test_a_peer_that_never_connects_is_dropped() -> None:
    hook = Webhook()
    config = make_config(handshake_timeout_s=1.0)
    with served(create_app(config, fake_engines())) as base:
        minted = mint(base, webhook_url=hook.url)
        async with httpx.AsyncClient(timeout=10) as http:
            body = {"sdp": await offer_sdp(), "type": "offer", "token": minted["token"]}
            assert (await http.post(f"{base}/offer", json=body)).status_code == 200
            assert (await http.get(f"{base}/health")).json()["sessions"] == 1
            for _ in range(40):
                await asyncio.sleep(0.1)
                if (await http.get(f"{base}/health")).json()["sessions"] == 0:
                    break
            assert (await http.get(f"{base}/health")).json()["sessions"] == 0
        await asyncio.sleep(0.3)
    assert hook.events[-1]["event"] == "session.ended"
    assert hook.events[-1]["reason"] == "handshake_timeout"


async def test_idle_sessions_end_and_are_told_why() -> None:
    with served(create_app(make_config(), fake_engines())) as base:
        client = Client(base, token=mint(base, idle_timeout_s=1.0)["token"])
        try:
            await client.connect()
            ended = await events_of(client, "ended", 10)
            assert ended["reason"] == "idle_timeout"
        finally:
            await client.close()


async def test_shutdown_tells_live_sessions() -> None:
    serving = served(create_app(make_config(drain_s=0.3), fake_engines()))
    client = Client(serving.__enter__())
    try:
        await client.connect()
        # Stop the server (what SIGTERM does) while this loop keeps receiving.
        await asyncio.to_thread(serving.__exit__, None, None, None)
        ended = await client.wait_for(lambda e: e["type"] == "ended", 5)
        assert ended["reason"] == "server_shutdown"
    finally:
        await client.close()


async def test_llm_down_is_said_and_the_session_recovers() -> None:
    llm = FailingLLM(REPLIES)
    with served(create_app(make_config(), fake_engines(llm))) as base:
        client = Client(base)
        try:
            await client.connect()
            client.send({"type": "text", "text": "What is the weather like?"})
            error = await events_of(client, "error")
            assert error["stage"] == "llm" and error["message"]
            await events_of(client, "turn")
            async with httpx.AsyncClient(timeout=10) as http:
                health = (await http.get(f"{base}/health")).json()
                assert health["status"] == "degraded" and "llm" in health["failing"]
                llm.down = False
                since = len(client.received.events)
                client.send({"type": "text", "text": "What is the capital of France?"})
                await client.wait_for(
                    lambda e: e["type"] == "bot_text" and "Paris" in e["text"], 20, since=since
                )
                await client.wait_for(lambda e: e["type"] == "turn", 20, since=since)
                assert (await http.get(f"{base}/health")).json()["status"] == "ok"
                url = f"{base}/api/sessions/{client.session_id}"
                history = (await http.get(url, headers=client.auth)).json()["history"]
            # The unanswered question did not leak into the next one.
            assert history[0] == {"role": "user", "content": "What is the capital of France?"}
        finally:
            await client.close()


FUZZ = [
    "[" * 3000 + "]" * 3000,  # RecursionError in json.loads
    "x" * 20_000,  # over max_message_bytes
    b"\x00\x01binary",
    "not json",
    "[1, 2]",
    '{"type": "text", "text": {"nested": true}}',
    '{"type": "text", "text": ""}',
    '{"type": ["text"]}',
    '{"type": "' + "t" * 500 + '"}',
    '{"type": "text", "text": "' + "a" * 600 + '"}',
]


async def test_data_channel_fuzz_and_flood_leave_sessions_working() -> None:
    config = make_config(messages_per_s=2.0, messages_burst=len(FUZZ) + 2)
    with served(create_app(config, fake_engines(ScriptedLLM(REPLIES)))) as base:
        victim, bystander = Client(base), Client(base)
        try:
            await victim.connect()
            await bystander.connect()
            for message in FUZZ:
                victim.channel.send(message)
            errors = await victim.wait_for(
                lambda e: (
                    sum(1 for _, x in victim.received.events if x["type"] == "error") >= len(FUZZ)
                ),
                20,
            )
            assert errors
            for _ in range(50):  # a flood: most are refused, with a reason
                victim.channel.send(json.dumps({"type": "text", "text": "hi"}))
            await victim.wait_for(lambda e: e["type"] == "error" and "too many" in e["message"], 10)
            # Both sessions still answer.
            for client in (bystander, victim):
                await asyncio.sleep(1.5)  # the bucket refills
                since = len(client.received.events)
                client.send({"type": "text", "text": "What is the capital of France?"})
                await client.wait_for(
                    lambda e: e["type"] == "bot_text" and "Paris" in e["text"], 20, since=since
                )
        finally:
            await victim.close()
            await bystander.close()


def test_http_rate_limit_and_body_cap() -> None:
    config = make_config(http_requests_per_s=1.0, http_burst=3, max_body_kb=1)
    with served(create_app(config, fake_engines())) as base:
        codes = [httpx.get(f"{base}/api/sessions", headers=KEY).status_code for _ in range(5)]
        assert codes[:3] == [200, 200, 200] and codes[-1] == 429
        limited = httpx.get(f"{base}/api/sessions", headers=KEY)
        assert int(limited.headers["retry-after"]) >= 1
        assert httpx.get(f"{base}/health").status_code == 200  # not an API call
    with served(create_app(make_config(max_body_kb=1), fake_engines())) as base:
        big = httpx.post(f"{base}/offer", json={"sdp": "v=0" + "x" * 5000, "type": "offer"})
        assert big.status_code == 413

        def chunks() -> Iterator[bytes]:
            yield b'{"sdp": "'
            for _ in range(10):
                yield b"x" * 1000
            yield b'", "type": "offer"}'

        chunked = httpx.post(
            f"{base}/offer", content=chunks(), headers={"content-type": "application/json"}
        )
        assert chunked.status_code == 413
        assert httpx.get(f"{base}/health").status_code == 200


async def test_offers_without_the_events_channel_or_sense_get_400(server: str) -> None:
    pc = RTCPeerConnection()
    pc.addTransceiver("audio", direction="sendrecv")
    await pc.setLocalDescription(await pc.createOffer())
    no_channel = pc.localDescription.sdp
    await pc.close()
    async with httpx.AsyncClient(timeout=10) as http:
        missing = await http.post(f"{server}/offer", json={"sdp": no_channel, "type": "offer"})
        assert missing.status_code == 400 and "events" in missing.json()["detail"]
        sdp = await offer_sdp()
        broken = sdp.replace("a=fingerprint:", "a=fingerprint:x").replace("m=video", "m=videox")
        garbled = await http.post(f"{server}/offer", json={"sdp": broken, "type": "offer"})
        assert garbled.status_code == 400
        assert "list" not in garbled.json()["detail"]  # no internals
        assert (await http.get(f"{server}/health")).json()["sessions"] == 0


def test_loopback_only_drops_other_candidates() -> None:
    sdp = (
        "v=0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\n"
        "a=candidate:1 1 udp 2122260223 127.0.0.1 50000 typ host\r\n"
        "a=candidate:2 1 udp 2122260223 10.1.2.3 50001 typ host\r\n"
        "a=candidate:3 1 udp 2122260223 4f1b0c2e-1.local 50002 typ host\r\n"
        "a=candidate:4 1 udp 1686052607 203.0.113.9 50003 typ srflx raddr 0.0.0.0 rport 0\r\n"
        "a=candidate:5 1 udp 2122260223 ::1 50004 typ host\r\n"
    )
    kept = keep_loopback_candidates(sdp)
    candidates = [line for line in kept.splitlines() if line.startswith("a=candidate")]
    assert [c.split()[4] for c in candidates] == ["127.0.0.1", "::1"]
    assert kept.startswith("v=0\r\nm=audio")


def test_loopback_only_uses_no_stun_server() -> None:
    from aiortc.rtcicetransport import RTCIceGatherer

    from core.config import IceServer
    from server.rtc import rtc_configuration

    # offer_loopback_only() ran (the autouse fixture): aiortc's default STUN
    # server (stun.l.google.com) is never looked up by any peer here.
    assert RTCIceGatherer.getDefaultIceServers() == []
    servers = [IceServer(urls="turn:turn.example.test:3478", username="u", credential="p")]
    assert rtc_configuration(servers, loopback_only=True).iceServers == []
    chosen = rtc_configuration(servers, loopback_only=False).iceServers
    assert [(s.urls, s.username) for s in chosen] == [("turn:turn.example.test:3478", "u")]


def test_the_page_gets_the_ice_servers(server: str) -> None:
    assert httpx.get(f"{server}/api/rtc").json() == {"iceServers": []}  # loopback-only
    config = make_config(loopback_only=False)
    with served(create_app(config, fake_engines())) as base:
        servers = httpx.get(f"{base}/api/rtc").json()["iceServers"]
    assert servers == [{"urls": "stun:stun.l.google.com:19302"}]


def test_start_up_objects_are_frozen_out_of_garbage_collection(server: str) -> None:
    import gc

    # The served app's lifespan ran in this process: a full collection no
    # longer walks the start-up objects (it blocked the media loop for ~1 s).
    assert gc.get_freeze_count() > 0
    gc.unfreeze()
