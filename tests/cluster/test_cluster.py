"""Several `videochat` nodes as separate hosts (network namespaces) on one
Redis, behind nginx, with coturn relaying the media of a client that can
reach nothing else: placement, WebRTC over TURN, a SIGKILLed node, reconnects,
the same REST answers on every node, Redis going away and coming back.

Black-box over HTTP and WebRTC only; the nodes run the fake models
(tests/cluster/node.py). Run inside a fresh network namespace as root:
``make cluster-test`` (``unshare -n ... pytest -m cluster tests/cluster``);
anywhere else these tests skip, saying why."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from tests.cluster.harness import KEY, Cluster, RelayedClient, isolated, wait_until

REASON = isolated()
pytestmark = [
    pytest.mark.cluster,
    pytest.mark.skipif(REASON is not None, reason=f"cluster tests: {REASON}"),
]

MakeCluster = Callable[..., Cluster]
FRANCE = "What is the capital of France?"
PARIS = "Paris"
VOLATILE = ("frames_sent", "frames_dropped")  # they grow while a session is live


def mint(url: str, **options: Any) -> httpx.Response:
    return httpx.post(f"{url}/api/sessions", json=options, headers=KEY, timeout=15)


def minted(url: str, **options: Any) -> dict[str, Any]:
    response = mint(url, **options)
    assert response.status_code == 201, f"POST {url}/api/sessions: {response.text}"
    return response.json()


def session(url: str, sid: str, headers: dict[str, str] = KEY, path: str = "") -> httpx.Response:
    return httpx.get(f"{url}/api/sessions/{sid}{path}", headers=headers, timeout=15)


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def steady(detail: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in detail.items() if k not in VOLATILE}


def connected(bed: Cluster, url: str, token: str | None) -> tuple[RelayedClient, dict[str, Any]]:
    """A relayed client connected through ``url`` that got its reply."""
    client = RelayedClient(bed)
    result = client.connect(url, token)
    assert "error" not in result, f"{result}\nclient log:\n{client.stderr()}"
    assert PARIS in result["reply"], result
    return client, result


def wait_ended(url: str, sid: str, timeout: float) -> tuple[dict[str, Any], float]:
    """Poll the session (API key) until it shows ``ended``; it and the seconds it took."""
    start = time.monotonic()
    last: dict[str, Any] = {}
    while time.monotonic() - start < timeout:
        try:
            response = session(url, sid)
            if response.status_code == 200:
                last = response.json()
                if last.get("state") == "ended":
                    return last, time.monotonic() - start
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise AssertionError(f"session {sid} not ended after {timeout} s: {last}")


def cluster_view(url: str) -> dict[str, Any]:
    response = httpx.get(f"{url}/api/cluster", headers=KEY, timeout=15)
    assert response.status_code == 200, response.text
    return response.json()


# ---------------------------------------------------------------- placement
def test_sessions_beyond_a_node_go_to_another_and_beyond_the_cluster_503(
    make_cluster: MakeCluster,
) -> None:
    bed = make_cluster(nodes_count=2, max_sessions=2, with_client_ns=False, with_turn=False)
    first, second, third = (minted(bed.url, lang="en") for _ in range(3))
    # Three sessions do not fit one node of two: at least two nodes hold them.
    assert len({first["node"], second["node"], third["node"]}) == 2
    fourth = minted(bed.url, lang="en")
    counts: dict[str, int] = {}
    for one in (first, second, third, fourth):
        counts[one["node"]] = counts.get(one["node"], 0) + 1
        assert one["connect_url"] == bed.node(one["node"]).url
    assert counts == {"node1": 2, "node2": 2}
    # Every node says where each session is.
    for one in (first, second, third, fourth):
        for url in [bed.url, *(n.url for n in bed.nodes)]:
            summary = session(url, one["session_id"])
            assert summary.status_code == 200, summary.text
            assert summary.json()["node"] == one["node"]
    # The cluster is full: 503 with Retry-After, through nginx and on each node.
    for url in [bed.url, *(n.url for n in bed.nodes)]:
        full = mint(url, lang="en")
        assert full.status_code == 503, full.text
        assert full.headers.get("retry-after"), full.headers
    nodes = {n["id"]: n for n in cluster_view(bed.url)["nodes"]}
    assert {k: (v["capacity"], v["sessions"], v["alive"]) for k, v in nodes.items()} == {
        "node1": (2, 2, True),
        "node2": (2, 2, True),
    }
    # A deleted session gives its slot back to the node that held it.
    deleted = httpx.delete(f"{bed.url}/api/sessions/{first['session_id']}", headers=KEY)
    assert deleted.status_code == 200, deleted.text
    assert minted(bed.url, lang="en")["node"] == first["node"]


# ---------------------------------------------------------------- WebRTC over TURN
def test_a_client_that_reaches_only_turn_talks_to_the_sessions_node(
    make_cluster: MakeCluster,
) -> None:
    bed = make_cluster(nodes_count=2, max_sessions=2)
    one = minted(bed.url, lang="en")
    other = minted(bed.url, lang="en")
    assert one["node"] != other["node"]  # least loaded: one each
    clients = []
    try:
        # Signalled through nginx (any node passes the offer to the owner) ...
        client, result = connected(bed, bed.url, one["token"])
        clients.append(client)
        assert client.answer is not None
        assert client.answer["session_id"] == one["session_id"]
        assert client.answer["node"] == one["node"]
        # ... and through the connect_url the mint named.
        client, result_other = connected(bed, other["connect_url"], other["token"])
        clients.append(client)
        assert client.answer is not None and client.answer["node"] == other["node"]
        # The page's own flow (no token) is placed somewhere with room.
        client, result_page = connected(bed, bed.url, None)
        clients.append(client)
        assert client.answer is not None and client.answer["node"] in {"node1", "node2"}
        for got in (result, result_other, result_page):
            # The client reaches no node and not nginx: only coturn; ...
            assert got["checks"] and all(c["unreachable"] for c in got["checks"]), got
            # ... so its side of the pair is a TURN relay, the other a node.
            assert got["pair"] is not None, got
            assert got["pair"]["local"]["type"] == "relay", got["pair"]
            assert got["pair"]["remote"]["host"].startswith("10.77.0."), got["pair"]
        assert result["pair"]["remote"]["host"] == bed.node(one["node"]).ip
        assert result_other["pair"]["remote"]["host"] == bed.node(other["node"]).ip
        detail = session(bed.url, one["session_id"]).json()
        assert detail["node"] == one["node"] and detail["state"] != "ended", detail
        assert detail["turns"] == 1
    finally:
        for client in clients:
            client.close()


# ---------------------------------------------------------------- a dead node
def test_a_killed_nodes_sessions_end_node_lost_once_and_new_ones_go_elsewhere(
    make_cluster: MakeCluster,
) -> None:
    bed = make_cluster(nodes_count=3, max_sessions=2)
    hook = bed.webhook()
    first = [minted(bed.url, lang="en", webhook_url=hook.url) for _ in range(3)]
    assert len({m["node"] for m in first}) == 3  # one each
    live = first[0]
    victim = bed.node(live["node"])
    client, _ = connected(bed, bed.url, live["token"])
    try:
        wait_until(lambda: hook.of(live["session_id"], "session.started"), 10, "session.started")
        # A second session on the victim, minted and never connected.
        pending = None
        for _ in range(3):
            again = minted(victim.url, lang="en", webhook_url=hook.url)
            if again["node"] == victim.id:
                pending = again
                break
        survivors = [m for m in first[1:]]
        killed_at, killed_wall = time.monotonic(), time.time()
        bed.kill_node(victim)
        ended, took = wait_ended(bed.url, live["session_id"], bed.node_ttl_s * 4 + 10)
        print(f"\nnode_lost noticed {took:.2f} s after SIGKILL (node_ttl_s={bed.node_ttl_s})")
        assert ended["reason"] == "node_lost", ended
        assert ended.get("resumable") is True, ended
        assert ended["node"] == victim.id, ended
        assert took <= bed.node_ttl_s + bed.heartbeat_s + 4, f"took {took:.2f} s"
        # Every surviving node answers the same for the dead node's session.
        for node in bed.live_nodes():
            here = session(node.url, live["session_id"]).json()
            assert (here["state"], here["reason"]) == ("ended", "node_lost"), (node.id, here)
        if pending is not None:
            record, _ = wait_ended(bed.url, pending["session_id"], 10)
            assert record["reason"] == "node_lost", record
        # Sessions of the live nodes are untouched.
        for one in survivors:
            assert session(bed.url, one["session_id"]).json()["state"] != "ended"
        # session.ended (node_lost) fires once, however many nodes noticed.
        wait_until(lambda: hook.of(live["session_id"], "session.ended"), 10, "session.ended")
        time.sleep(bed.heartbeat_s * 3 + 1)
        ends = hook.of(live["session_id"], "session.ended")
        assert len(ends) == 1, ends
        assert ends[0]["reason"] == "node_lost", ends
        print(f"webhook session.ended came {ends[0]['_received_at'] - killed_wall:.2f} s after")
        assert time.monotonic() - killed_at < 60
        # The registry marks the node dead (or forgets it); the next sessions
        # go to the live nodes, through nginx whichever node it picks.
        nodes = {n["id"]: n for n in cluster_view(bed.url)["nodes"]}
        assert victim.id not in nodes or nodes[victim.id]["alive"] is False, nodes
        placed = []
        while True:
            response = mint(bed.url, lang="en")
            if response.status_code != 201:
                assert response.status_code == 503, response.text
                assert response.headers.get("retry-after")
                break
            placed.append(response.json()["node"])
            assert len(placed) <= 4
        assert placed and victim.id not in placed, placed
        # The live nodes' capacity (2 x 2) minus the two sessions they held.
        assert len(placed) == 2, placed
    finally:
        client.close()


def test_the_same_token_reconnects_on_a_live_node_and_the_conversation_continues(
    make_cluster: MakeCluster,
) -> None:
    bed = make_cluster(nodes_count=2, max_sessions=2)
    one = minted(bed.url, lang="en")
    client, _ = connected(bed, bed.url, one["token"])
    time.sleep(0.5)  # the turn reaches the registry
    victim = bed.node(one["node"])
    bed.kill_node(victim)
    ended, took = wait_ended(bed.url, one["session_id"], bed.node_ttl_s * 4 + 10)
    assert ended["reason"] == "node_lost" and ended.get("resumable") is True, ended
    client.close()
    again = RelayedClient(bed, text="And France, once more?")
    try:
        result = again.connect(bed.url, one["token"])
        assert "error" not in result, f"{result}\n{again.stderr()}"
        assert again.answer is not None
        assert again.answer["session_id"] == one["session_id"]
        assert again.answer["node"] != victim.id
        assert PARIS in result["reply"]
        assert result["pair"]["local"]["type"] == "relay"
        time.sleep(0.5)
        for url in [bed.url, *(n.url for n in bed.live_nodes())]:
            detail = session(url, one["session_id"]).json()
            assert detail["node"] == again.answer["node"] and detail["state"] != "ended", detail
            said = [m["content"] for m in detail["history"] if m["role"] == "user"]
            assert said[:2] == [FRANCE, "And France, once more?"], detail["history"]
            assert len(detail["history"]) >= 4, detail["history"]
            turns = session(url, one["session_id"], path="/transcript").json()["turns"]
            assert [t["user"] for t in turns][:2] == [FRANCE, "And France, once more?"], turns
            assert PARIS in turns[0]["avatar"], turns
        # The session's own token still works for it, on any node.
        token_view = session(bed.url, one["session_id"], bearer(one["token"]))
        assert token_view.status_code == 200, token_view.text
    finally:
        again.close()


# ---------------------------------------------------------------- any node answers
def test_every_node_and_nginx_give_the_same_rest_answers(make_cluster: MakeCluster) -> None:
    bed = make_cluster(nodes_count=2, max_sessions=2)
    one = minted(bed.url, lang="en")
    client, _ = connected(bed, bed.url, one["token"])
    try:
        time.sleep(0.5)  # the turn reaches the registry
        sid = one["session_id"]
        urls = [bed.url, *(n.url for n in bed.nodes)]
        owner = bed.node(one["node"])
        stranger = next(n for n in bed.nodes if n is not owner)
        for headers in (KEY, bearer(one["token"])):
            details = {u: session(u, sid, headers) for u in urls}
            transcripts = {u: session(u, sid, headers, "/transcript") for u in urls}
            for url in urls:
                assert details[url].status_code == 200, (url, details[url].text)
                assert transcripts[url].status_code == 200, (url, transcripts[url].text)
            reference = steady(details[owner.url].json())
            assert reference["node"] == owner.id and reference["turns"] == 1, reference
            for url in urls:
                assert steady(details[url].json()) == reference, url
                assert transcripts[url].json() == transcripts[owner.url].json(), url
        turns = transcripts[owner.url].json()["turns"]
        assert turns[0]["user"] == FRANCE and PARIS in turns[0]["avatar"], turns
        # Another session's token sees nothing of this one, on any node.
        other = minted(bed.url, lang="en")
        for url in urls:
            assert session(url, sid, bearer(other["token"])).status_code == 403, url
        # The list and the cluster: the whole cluster, from every node.
        for url in urls:
            listed = httpx.get(f"{url}/api/sessions", headers=KEY, timeout=15).json()
            by_id = {s["id"]: s for s in listed}
            assert by_id[sid]["node"] == owner.id, (url, listed)
            assert by_id[other["session_id"]]["node"] == other["node"], (url, listed)
            view = cluster_view(url)
            assert view["registry"] == "ok", view
            assert sorted((n["id"], n["alive"]) for n in view["nodes"]) == [
                ("node1", True),
                ("node2", True),
            ], view
        # say and interrupt through the node that does not hold the session.
        said = httpx.post(
            f"{stranger.url}/api/sessions/{sid}/say",
            json={"text": "Hello from the other node."},
            headers=bearer(one["token"]),
            timeout=15,
        )
        assert said.is_success, said.text
        interrupted = httpx.post(
            f"{stranger.url}/api/sessions/{sid}/interrupt", headers=KEY, timeout=15
        )
        assert interrupted.is_success, interrupted.text
        # Hung up through the other node: ended, reason deleted, everywhere.
        gone = httpx.delete(f"{stranger.url}/api/sessions/{sid}", headers=KEY, timeout=15)
        assert gone.status_code == 200, gone.text
        for url in urls:
            ended, _ = wait_ended(url, sid, 10)
            assert ended["reason"] == "deleted", (url, ended)
    finally:
        client.close()


# ---------------------------------------------------------------- Redis away
def test_redis_down_refuses_new_sessions_keeps_live_ones_and_recovers(
    make_cluster: MakeCluster,
) -> None:
    bed = make_cluster(nodes_count=2, max_sessions=2)
    one = minted(bed.url, lang="en")
    client, _ = connected(bed, bed.url, one["token"])
    owner = bed.node(one["node"])
    try:
        bed.stop_redis()

        def refused() -> bool:
            return mint(bed.url, lang="en").status_code == 503

        wait_until(refused, 15, "new sessions still admitted with Redis down", every=0.25)
        for url in [bed.url, *(n.url for n in bed.nodes)]:
            response = mint(url, lang="en")
            assert response.status_code == 503, (url, response.text)
            assert "registry" in response.json()["detail"].lower(), (url, response.text)
        # The nodes say the registry is away (checked at the end, after the rest).
        views_while_down = {
            node.id: httpx.get(f"{node.url}/api/cluster", headers=KEY, timeout=15)
            for node in bed.nodes
        }
        # The live session still talks, and its node still answers for it.
        second = client.turn("France, with Redis away?")
        assert "error" not in second and PARIS in second["reply"], second
        detail = session(owner.url, one["session_id"], bearer(one["token"]))
        assert detail.status_code == 200, detail.text
        assert detail.json()["state"] != "ended" and detail.json()["turns"] == 2, detail.json()
        # Redis back (empty: it kept nothing): the nodes rejoin, sessions are admitted.
        bed.start_redis()
        back = time.monotonic()
        wait_until(
            lambda: mint(bed.url, lang="en").status_code == 201,
            30,
            "new sessions still refused after Redis came back",
            every=0.25,
        )
        print(f"\nadmitting again {time.monotonic() - back:.2f} s after Redis restarted")
        bed.wait_cluster_sees(2)
        third = client.turn("France, with Redis back?")
        assert "error" not in third and PARIS in third["reply"], third
        # The live session is known to the registry again, on every node.
        for url in [bed.url, *(n.url for n in bed.nodes)]:
            wait_until(
                lambda url=url: session(url, one["session_id"]).status_code == 200,
                10,
                f"{url} does not know the live session after Redis came back",
            )
            assert session(url, one["session_id"]).json()["node"] == owner.id
        # GET /api/cluster while Redis was away: 200, "registry": "unreachable".
        for node_id, view in views_while_down.items():
            assert view.status_code == 200, (node_id, view.status_code, view.text)
            assert view.json()["registry"] == "unreachable", (node_id, view.text)
    finally:
        client.close()
