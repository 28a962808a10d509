"""Several nodes on one Redis, in one process: placement, the same answers
from every node, a dead node's sessions, reconnects, Redis going away; and a
single node's reconnect after a failed peer. A real redis-server on
127.0.0.1, the real server app with scripted models, real aiortc clients over
loopback. (tests/cluster/ runs whole nodes as separate hosts, with nginx and
coturn: `make cluster-test`.)"""

from __future__ import annotations

import asyncio
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from bench.client import Client
from core.config import Config
from pipelines.events import EndReason
from server.app import create_app
from server.cluster import ClusterRegistry
from server.rtc import offer_loopback_only
from tests.fakes import ScriptedLLM, Webhook, fake_engines, on_server_loop, served
from tests.test_sessions_api import API_KEY, KEY, REPLIES, make_config, offer_sdp

REDIS = shutil.which("redis-server")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class RedisServer:
    """A throwaway redis-server on 127.0.0.1 that can be stopped and restarted."""

    def __init__(self) -> None:
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="videochat-redis-"))
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        if REDIS is None:
            raise RuntimeError("no redis-server: apt-get install redis-server (make test does)")
        self.process = subprocess.Popen(
            [
                REDIS,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.dir),
            ],
            stdout=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("redis-server did not start")

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(10)
            self.process = None


@pytest.fixture
def redis() -> Iterator[RedisServer]:
    server = RedisServer()
    server.start()
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(server.dir, ignore_errors=True)


@pytest.fixture(scope="module", autouse=True)
def loopback_only() -> None:
    offer_loopback_only()  # the test clients, too, offer only 127.0.0.1


def node_config(redis_url: str, node: str, port: int, capacity: int = 1) -> Config:
    config = Config()
    config.server.api_key = API_KEY
    config.server.max_sessions = capacity
    config.server.loopback_only = True
    config.server.port = port
    config.cluster.redis_url = redis_url
    config.cluster.node_id = node
    config.cluster.heartbeat_s = 0.2
    config.cluster.node_ttl_s = 1.0
    return config


@contextmanager
def node(redis_url: str, name: str, capacity: int = 1) -> Iterator[tuple[str, Any]]:
    """A node on its own port; yields (its URL, its app)."""
    port = free_port()
    app = create_app(
        node_config(redis_url, name, port, capacity), fake_engines(ScriptedLLM(REPLIES))
    )
    with served(app, port=port) as base:
        wait_until(lambda: app.state.manager.cluster.available, 10)
        yield base, app


def wait_until(check: Any, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError("timed out")
        time.sleep(0.05)


def steady(summary: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in summary.items() if k not in ("frames_sent", "frames_dropped")}


def mint(base: str, **options: Any) -> httpx.Response:
    return httpx.post(f"{base}/api/sessions", json=options, headers=KEY, timeout=10)


def test_sessions_are_placed_on_the_least_loaded_node_with_room(redis: RedisServer) -> None:
    with node(redis.url, "a") as (a, _), node(redis.url, "b") as (b, _):
        cluster = httpx.get(f"{a}/api/cluster", headers=KEY).json()
        assert {n["id"] for n in cluster["nodes"]} == {"a", "b"}
        first, second = mint(a).json(), mint(a).json()
        # Both minted through a; one slot each: a and b.
        assert {first["node"], second["node"]} == {"a", "b"}
        assert {first["connect_url"], second["connect_url"]} == {a, b}
        full = mint(b)
        assert full.status_code == 503 and full.headers["retry-after"]
        assert "Every node is busy" in full.json()["detail"]
        # Deleting one frees its slot, wherever it is asked.
        other = b if first["node"] == "a" else a
        assert (
            httpx.delete(f"{other}/api/sessions/{first['session_id']}", headers=KEY).status_code
            == 200
        )
        assert mint(b).json()["node"] == first["node"]


def test_concurrent_mints_on_two_nodes_never_overrun_capacity(redis: RedisServer) -> None:
    with node(redis.url, "a", capacity=2) as (a, _), node(redis.url, "b", capacity=2) as (b, _):

        async def burst() -> list[int]:
            async with httpx.AsyncClient(timeout=10, headers=KEY) as http:
                answers = await asyncio.gather(
                    *(http.post(f"{url}/api/sessions", json={}) for url in [a, b] * 5)
                )
            return [r.status_code for r in answers]

        codes = asyncio.run(burst())
        assert sorted(codes) == [201] * 4 + [503] * 6


async def test_every_node_gives_the_same_answers(
    redis: RedisServer,
) -> None:
    hook = Webhook()
    with node(redis.url, "a") as (a, _), node(redis.url, "b") as (b, app_b):
        minted = mint(a, webhook_url=hook.url, lang="en").json()
        home = minted["connect_url"]
        elsewhere = b if home == a else a
        # The session connects through the node that did not place it: passed on.
        client = Client(elsewhere, token=minted["token"])
        try:
            await client.connect()
            assert client.session_id == minted["session_id"]
            since = len(client.received.events)
            client.send({"type": "text", "text": "What is the capital of France?"})
            await client.wait_for(lambda e: e["type"] == "turn", 20, since=since)
            url = f"/api/sessions/{client.session_id}"
            async with httpx.AsyncClient(timeout=10) as http:
                await asyncio.sleep(0.3)  # the turn reaches the registry
                for path in (url, f"{url}/transcript"):
                    here = (await http.get(a + path, headers=client.auth)).json()
                    there = (await http.get(b + path, headers=client.auth)).json()
                    # (but the media counters, which move between the two calls)
                    assert steady(here) == steady(there), path
                assert here["turns"][0]["user"] == "What is the capital of France?"
                said = await http.post(
                    f"{elsewhere}{url}/say", json={"text": "One moment."}, headers=KEY
                )
                assert said.status_code == 202
                listed_a = (await http.get(f"{a}/api/sessions", headers=KEY)).json()
                listed_b = (await http.get(f"{b}/api/sessions", headers=KEY)).json()
                assert listed_a == listed_b and listed_a[0]["node"] == minted["node"]
            since = len(client.received.events)
            deleted = httpx.delete(f"{elsewhere}{url}", headers=client.auth)
            assert deleted.status_code == 200
            ended = await client.wait_for(lambda e: e["type"] == "ended", 10, since=since)
            assert ended["reason"] == "deleted"
        finally:
            await client.pc.close()
        await asyncio.sleep(0.3)
        after = httpx.get(f"{elsewhere}{url}", headers=KEY).json()
        assert after["state"] == "ended" and after["resumable"] is False
    names = hook.names()
    assert names.count("session.started") == 1 and names.count("session.ended") == 1


async def test_a_dead_nodes_session_ends_once_and_reconnects_elsewhere(
    redis: RedisServer,
) -> None:
    hook = Webhook()
    with node(redis.url, "a") as (a, app_a):
        # A node that joined, took a session, then stopped beating (killed).
        ghost_config = node_config(redis.url, "ghost", free_port())
        ghost = ClusterRegistry(ghost_config)
        assert await ghost.heartbeat(1, [], [], [])
        expires = time.time() + 300
        # Equal loads: the preferred node wins the tie.
        assert await ghost.place("s-lost", expires, None, None) == "ghost"
        token = "tok-lost"
        await ghost.save_waiting(
            "s-lost", "ghost", {"lang": "en", "webhook_url": hook.url}, token, expires
        )
        await ghost.mark_live("s-lost")
        history = [
            {"role": "user", "content": "My name is Ada."},
            {"role": "assistant", "content": "Nice to meet you, Ada."},
        ]
        await ghost.save_turns(
            "s-lost",
            [{"user": "My name is Ada.", "avatar": "Nice to meet you, Ada.", "source": "text"}],
            history,
        )
        await ghost.redis.aclose()  # no more heartbeats: its key expires
        # a notices within node_ttl_s + a heartbeat.
        started = time.monotonic()
        summary: dict[str, Any] = {}
        while time.monotonic() - started < 5:
            summary = httpx.get(f"{a}/api/sessions/s-lost", headers=KEY).json()
            if summary["state"] == "ended":
                break
            await asyncio.sleep(0.1)
        assert summary["state"] == "ended" and summary["reason"] == "node_lost"
        assert summary["resumable"] is True
        await asyncio.sleep(1.0)  # more heartbeats: the webhook still fires once
        ended = [e for e in hook.events if e["event"] == "session.ended"]
        assert len(ended) == 1 and ended[0]["reason"] == "node_lost"
        # The same token reconnects on a live node; the conversation goes on.
        client = Client(a, token=token)
        try:
            await client.connect()
            assert client.session_id == "s-lost"
            detail = httpx.get(f"{a}/api/sessions/s-lost", headers=client.auth).json()
            assert detail["state"] != "ended" and detail["node"] == "a"
            assert detail["history"][:2] == history
            transcript = httpx.get(
                f"{a}/api/sessions/s-lost/transcript", headers=client.auth
            ).json()
            assert transcript["turns"][0]["user"] == "My name is Ada."
            assert app_a.state.manager.live["s-lost"].session.history.turns[:2] == history
        finally:
            await client.close()
        await asyncio.sleep(0.3)
        started_events = [e for e in hook.events if e["event"] == "session.started"]
        assert started_events and started_events[-1]["resumed"] is True


def test_without_redis_a_node_keeps_serving_but_takes_no_new_sessions(
    redis: RedisServer,
) -> None:
    with node(redis.url, "a", capacity=2) as (a, app):
        kept = mint(a).json()
        redis.stop()
        wait_until(lambda: not app.state.manager.cluster.available, 10)
        refused = mint(a)
        assert refused.status_code == 503 and "registry" in refused.json()["detail"]
        assert refused.headers["retry-after"]
        health = httpx.get(f"{a}/health").json()
        assert health["status"] == "degraded"
        assert "cluster registry (Redis)" in health["failing"]
        redis.start()  # an empty Redis: the node rejoins by itself
        wait_until(lambda: app.state.manager.cluster.available, 10)
        assert mint(a).status_code == 201
        assert kept["session_id"]


async def test_a_single_nodes_session_reconnects_after_its_peer_failed() -> None:
    app = create_app(make_config(), fake_engines(ScriptedLLM(REPLIES)))
    with served(app) as base:
        client = Client(base)
        try:
            await client.connect()
            since = len(client.received.events)
            client.send({"type": "text", "text": "What is the capital of France?"})
            await client.wait_for(lambda e: e["type"] == "turn", 20, since=since)
            sid, token = client.session_id, client.token
            await on_server_loop(app, app.state.manager.close(sid, EndReason.CONNECTION_FAILED))
            summary = httpx.get(
                f"{base}/api/sessions/{sid}", headers={"Authorization": f"Bearer {token}"}
            ).json()
            assert summary["state"] == "ended" and summary["resumable"] is True
            await client.pc.close()
            again = Client(base, token=token)
            await again.connect()
            assert again.session_id == sid
            detail = httpx.get(f"{base}/api/sessions/{sid}", headers=again.auth).json()
            assert detail["history"][0]["content"] == "What is the capital of France?"
            assert detail["turns"] == 1
            await again.close()
            # A hang-up is not resumable: the token is spent.
            late = Client(base, token=token)
            with pytest.raises(Exception, match="401"):
                await late.connect()
        finally:
            await client.pc.close()


async def test_the_pages_own_flow_is_placed_anywhere_and_passed_on(redis: RedisServer) -> None:
    with node(redis.url, "a") as (a, _), node(redis.url, "b") as (b, _):
        first, second, third = Client(a), Client(a), Client(a)  # no token: the page's flow
        try:
            await first.connect()
            await second.connect()
            nodes = {
                httpx.get(f"{a}/api/sessions/{c.session_id}", headers=KEY).json()["node"]
                for c in (first, second)
            }
            assert nodes == {"a", "b"}  # the second was placed on b and passed there
            with pytest.raises(Exception, match="503"):
                await third.connect()
            # The refused offer left no reservation behind.
            cluster = httpx.get(f"{b}/api/cluster", headers=KEY).json()
            assert sum(n["sessions"] for n in cluster["nodes"]) == 2
            await first.close()
            again = Client(b)
            await again.connect()
            await again.close()
        finally:
            for client in (first, second, third):
                await client.pc.close()


async def test_an_offer_takes_over_from_a_peer_that_never_connected(redis: RedisServer) -> None:
    """The browser noticed its lost network before the server: its new offer
    with the token replaces the old peer (a connected one would get 409)."""
    with node(redis.url, "a") as (a, _), node(redis.url, "b") as (b, _):
        minted = mint(a).json()
        home = minted["connect_url"]
        elsewhere = b if home == a else a
        lost = httpx.post(
            f"{home}/offer",
            json={"sdp": await offer_sdp(), "type": "offer", "token": minted["token"]},
            timeout=10,
        )
        assert lost.status_code == 200  # answered, but that peer never connects
        client = Client(elsewhere, token=minted["token"])  # passed to the session's node
        try:
            await client.connect()
            assert client.session_id == minted["session_id"]
            summary = httpx.get(f"{a}/api/sessions/{client.session_id}", headers=KEY).json()
            assert summary["node"] == minted["node"]  # it stayed where it was
            # Now connected: another offer with the token is refused.
            again = httpx.post(
                f"{elsewhere}/offer",
                json={"sdp": await offer_sdp(), "type": "offer", "token": minted["token"]},
                timeout=10,
            )
            assert again.status_code == 409
        finally:
            await client.close()


async def test_a_single_node_offer_takes_over_from_a_lost_peer() -> None:
    with served(create_app(make_config(), fake_engines(ScriptedLLM(REPLIES)))) as base:
        minted = httpx.post(f"{base}/api/sessions", json={}, headers=KEY).json()
        lost = httpx.post(
            f"{base}/offer",
            json={"sdp": await offer_sdp(), "type": "offer", "token": minted["token"]},
        )
        assert lost.status_code == 200
        client = Client(base, token=minted["token"])
        try:
            await client.connect()
            assert client.session_id == minted["session_id"]
        finally:
            await client.close()


async def test_a_single_nodes_reconnect_window_ends() -> None:
    config = make_config()
    config.cluster.reconnect_window_s = 0.5
    app = create_app(config, fake_engines(ScriptedLLM(REPLIES)))
    with served(app) as base:
        client = Client(base)
        try:
            await client.connect()
            sid, token = client.session_id, client.token
            await on_server_loop(app, app.state.manager.close(sid, EndReason.CONNECTION_FAILED))
            assert httpx.get(f"{base}/api/sessions/{sid}", headers=KEY).json()["resumable"]
            await asyncio.sleep(0.7)
            # Any later session's end (or offer, or mint) forgets it.
            assert httpx.post(f"{base}/api/sessions", json={}, headers=KEY).status_code == 201
            assert httpx.get(f"{base}/api/sessions/{sid}", headers=KEY).status_code == 404
            late = Client(base, token=token)
            with pytest.raises(Exception, match="401"):
                await late.connect()
        finally:
            await client.pc.close()
